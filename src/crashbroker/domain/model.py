"""Frozen value types of the crash domain.

Nothing here does I/O. Mappings inside frozen dataclasses are never mutated after construction;
code that needs a changed crash builds a new one with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"


class KCrashLib(enum.Enum):
    """Which KCrash the crashed process had mapped (from ``COREDUMP_PROC_MAPS``)."""

    NONE = "none"
    KF5 = "kf5"  # writes <pid>.ini and never the [KCrashComplete] marker
    KF6 = "kf6"  # writes <exe>.<boot>.<pid>.ini; the marker since 6.23


class CrashState(enum.StrEnum):
    NEW = "new"
    CLAIMED = "claimed"
    DISMISSED = "dismissed"


@dataclass(frozen=True, slots=True)
class CrashKey:
    """Identity of one coredump: the journal's boot id, the crashed pid and COREDUMP_TIMESTAMP,
    and for a crash of another machine (a fleet's journal directory) that machine's id.

    The timestamp separates two crashes of a reused pid within one boot. Boot ids of two
    machines never meet in practice, but an uploader sends whatever boot id it likes: with the
    machine id in the key, one machine cannot make a crash of another look already known.
    Crashes of the daemon's own machine keep ``machine_id`` empty, so their ids stay those of
    stores written before fleet entries were keyed by machine.
    """

    boot_id: str
    pid: int
    timestamp: int
    machine_id: str = ""

    @property
    def crash_id(self) -> str:
        """A stable id, valid as a D-Bus object path element (``[A-Za-z0-9_]``)."""
        text = f"{self.boot_id}:{self.pid}:{self.timestamp}"
        if self.machine_id:
            text = f"{self.machine_id}:{text}"
        digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        return f"c{digest}"


@dataclass(frozen=True, slots=True)
class CoredumpEntry:
    """A trusted systemd-coredump journal entry, reduced to what crashbroker uses."""

    cursor: str
    realtime: int  # __REALTIME_TIMESTAMP, µs
    boot_id: str  # 32 lowercase hex digits
    machine_id: str
    hostname: str
    pid: int
    uid: int
    gid: int
    signal: int
    signal_name: str
    timestamp: int  # COREDUMP_TIMESTAMP, µs
    exe: str
    comm: str
    cmdline: str
    unit: str
    user_unit: str
    core_filename: str  # "" when systemd-coredump kept no external core
    core_in_journal: bool
    truncated: bool
    kcrash_lib: KCrashLib
    # Logged on another machine than the daemon's (TrustPolicy.machine_id): a fleet's upload.
    # Such crashes are keyed and grouped by machine as well.
    fleet: bool = False

    @property
    def key(self) -> CrashKey:
        return CrashKey(
            self.boot_id, self.pid, self.timestamp, self.machine_id if self.fleet else ""
        )

    @property
    def exe_basename(self) -> str:
        """Basename of COREDUMP_EXE without the kernel's `` (deleted)`` suffix."""
        exe = self.exe.removesuffix(" (deleted)")
        return exe.rsplit("/", 1)[-1]


class MetadataSource(enum.StrEnum):
    KCRASH_V2 = "kcrash-v2"  # <exe>.<bootid>.<pid>.ini
    KCRASH_V1 = "kcrash-v1"  # <pid>.ini
    DRKONQI = "drkonqi"  # ~/.cache/drkonqi/crashes/<exe>.<bootid>.<pid>.<ts>.ini (JSON)


@dataclass(frozen=True, slots=True)
class KCrashMetadata:
    """What KCrash (or DrKonqi's record of it) said about a crash."""

    kcrash: Mapping[str, str]
    tags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)
    gpu: Mapping[str, str] = field(default_factory=dict)
    complete: bool = False
    source: MetadataSource = MetadataSource.KCRASH_V2
    path: str = ""
    # The file's (st_dev, st_ino) when it was read: Dismiss and the launcher act on that file
    # only, never on whatever sits at ``path`` later. 0, 0: unknown.
    dev: int = 0
    ino: int = 0


@dataclass(frozen=True, slots=True)
class Crash:
    """One published crash: the journal entry, its metadata and its lifecycle state."""

    id: str
    entry: CoredumpEntry
    kcrash: Mapping[str, str]
    kcrash_complete: bool
    kcrash_source: str  # a MetadataSource value, or "" without metadata
    kcrash_filled: tuple[str, ...]  # [KCrash] keys filled in from the journal
    metadata_path: str
    past: bool
    detected: int  # µs wall clock when crashbroker published it
    state: CrashState = CrashState.NEW
    claimed_by: str = ""
    signature: str = ""
    occurrences: int = 1
    # Grouping (see domain/loops.py): a burst is a run of crashes of one exe+signal, each within
    # the loop window of the previous; its first crash is the head, the rest point to it.
    first_seen: int = 0  # COREDUMP_TIMESTAMP of the first indexed crash with this exe+signal
    last_seen: int = 0  # heads: of the burst's latest crash; others: their own
    burst: int = 1  # heads: crashes in the burst, itself included
    loop: bool = False  # heads: the burst reached the loop threshold
    loop_head: str = ""  # folded crashes: the head's id
    last_id: str = ""  # heads: the burst's latest crash
    backtrace_available: bool = False
    # Whether this daemon's user could read core_filename when the crash was published: a path
    # it cannot read (another user's core, a fleet machine's disk) is not shown to clients.
    core_readable: bool = True
    # (st_dev, st_ino) of the metadata file as read (see KCrashMetadata); 0, 0 when unknown
    # (no metadata, or a record stored before they were kept).
    metadata_dev: int = 0
    metadata_ino: int = 0

    @property
    def app_name(self) -> str:
        return (
            self.kcrash.get("programname")
            or self.kcrash.get("appname")
            or self.entry.exe_basename
            or self.entry.comm
        )

    @property
    def bug_address(self) -> str:
        return self.kcrash.get("bugaddress", "")

    @property
    def dismissed(self) -> bool:
        return self.state is CrashState.DISMISSED
