"""From a journal entry (fields as strings) to a trusted :class:`CoredumpEntry`.

Anyone can log ``MESSAGE_ID=fc2e…`` with ``logger`` or ``systemd-cat``; only journald's trusted
fields (``_UID``, ``_EXE``, ``_SYSTEMD_UNIT``, which a sender cannot set) tell that
systemd-coredump wrote the entry. :func:`classify` is the whole trust decision; it is total.
"""

from __future__ import annotations

import enum
import re
import signal as _signal
from collections.abc import Mapping
from dataclasses import dataclass

from crashbroker.domain.model import COREDUMP_MESSAGE_ID, CoredumpEntry, KCrashLib

JournalFields = Mapping[str, str]

COREDUMP_EXES = frozenset({"/usr/lib/systemd/systemd-coredump", "/lib/systemd/systemd-coredump"})
# Caps for the free-text fields we keep; journald itself allows fields far larger.
MAX_TEXT = 4096
MAX_PATH = 4096
_HEX32 = re.compile(r"[0-9a-f]{32}")
# "/usr/lib/…/libKF5Crash.so.5.103.0" in the maps, "(libKF5Crash.so.5 + 0x583d)" in the trace.
_KF5_CRASH = re.compile(r"\blibKF5Crash\.so")
_KF6_CRASH = re.compile(r"\blibKF6Crash\.so")


class Verdict(enum.Enum):
    ACCEPT = "accept"
    FORGED = "forged"  # not written by systemd-coredump
    OTHER_USER = "other-user"  # a real crash of a user this daemon does not serve
    MALFORMED = "malformed"  # written by systemd-coredump but missing what identifies a crash


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """Who may have written a coredump entry, and whose crashes this daemon publishes.

    Args:
        writer_uids: uids systemd-coredump logs as (root, and the ``systemd-coredump`` user it
            drops to before logging).
        own_uid: publish only crashes with this ``COREDUMP_UID``; ``None`` publishes all users.
    """

    writer_uids: frozenset[int]
    own_uid: int | None


def _int(fields: JournalFields, key: str) -> int | None:
    raw = fields.get(key)
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


def _text(fields: JournalFields, key: str, cap: int = MAX_TEXT) -> str:
    return fields.get(key, "")[:cap]


def written_by_coredump(fields: JournalFields, writer_uids: frozenset[int]) -> bool:
    """True when journald's trusted fields say systemd-coredump logged this entry.

    ``_UID`` comes from the kernel (SCM_CREDENTIALS) and is always there. ``_EXE``, ``_COMM``
    and ``_CMDLINE`` are read by journald from ``/proc/<sender>``, and systemd-coredump often
    exits before journald gets there: real entries then carry ``_UID=<systemd-coredump>`` and
    no ``_EXE`` (seen on the rig). So:

    * ``_UID`` must be one of ``writer_uids``;
    * a present ``_EXE`` must be systemd-coredump's (or ``_SYSTEMD_UNIT`` a coredump unit);
    * without ``_EXE``/unit, only the dedicated ``systemd-coredump`` user (a system user no
      other program runs as) is trusted; root is not, since root-run tools log on behalf of
      users.
    """
    uid = _int(fields, "_UID")
    if uid is None or uid not in writer_uids:
        return False
    unit = fields.get("_SYSTEMD_UNIT", "")
    if unit.startswith("systemd-coredump"):
        return True
    exe = fields.get("_EXE")
    if exe is not None:
        return exe in COREDUMP_EXES
    return uid != 0


def kcrash_lib_from(*texts: str) -> KCrashLib:
    """Which KCrash library the crashed process had, from ``COREDUMP_PROC_MAPS`` and the stack
    trace in ``MESSAGE``.

    Both are needed: systemd-coredump can store the maps cut short (the recorded kronometer entry
    ends among Qt's plugins, before ``libKF5Crash.so``), while the trace names the module of each
    frame, and a KCrash crash always passes through ``KCrash::defaultCrashHandler``.
    """
    for text in texts:
        # The maps are tens of KiB per entry: a plain substring scan first, the regex only to
        # confirm (it was most of classify()'s time in a catch-up).
        if "Crash.so" not in text:
            continue
        if "libKF6Crash.so" in text and _KF6_CRASH.search(text):
            return KCrashLib.KF6
        if "libKF5Crash.so" in text and _KF5_CRASH.search(text):
            return KCrashLib.KF5
    return KCrashLib.NONE


def signal_name(number: int, given: str) -> str:
    if given.startswith("SIG") and given[3:].isalnum():
        return given
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def classify(fields: JournalFields, policy: TrustPolicy) -> tuple[Verdict, CoredumpEntry | None]:
    """Decide whether an entry is a crash to publish, and parse it if so.

    Returns:
        ``(Verdict.ACCEPT, entry)`` or ``(other verdict, None)``. Never raises on bad input.
    """
    if fields.get("MESSAGE_ID") != COREDUMP_MESSAGE_ID:
        return Verdict.MALFORMED, None
    if not written_by_coredump(fields, policy.writer_uids):
        return Verdict.FORGED, None
    pid = _int(fields, "COREDUMP_PID")
    uid = _int(fields, "COREDUMP_UID")
    sig = _int(fields, "COREDUMP_SIGNAL")
    timestamp = _int(fields, "COREDUMP_TIMESTAMP")
    boot_id = fields.get("_BOOT_ID", "").replace("-", "").lower()
    cursor = fields.get("__CURSOR", "")
    if (
        pid is None
        or pid <= 0
        or uid is None
        or uid < 0
        or sig is None
        or timestamp is None
        or timestamp <= 0  # no crash before 1970; the store orders by it as a positive number
        or not _HEX32.fullmatch(boot_id)
        or not cursor
    ):
        return Verdict.MALFORMED, None
    if policy.own_uid is not None and uid != policy.own_uid:
        return Verdict.OTHER_USER, None
    core_filename = _text(fields, "COREDUMP_FILENAME", MAX_PATH)
    entry = CoredumpEntry(
        cursor=cursor,
        realtime=_int(fields, "__REALTIME_TIMESTAMP") or timestamp,
        boot_id=boot_id,
        machine_id=fields.get("_MACHINE_ID", "").replace("-", "").lower()[:32],
        hostname=_text(fields, "COREDUMP_HOSTNAME") or _text(fields, "_HOSTNAME"),
        pid=pid,
        uid=uid,
        gid=_int(fields, "COREDUMP_GID") or 0,
        signal=sig,
        signal_name=signal_name(sig, fields.get("COREDUMP_SIGNAL_NAME", "")),
        timestamp=timestamp,
        exe=_text(fields, "COREDUMP_EXE", MAX_PATH),
        comm=_text(fields, "COREDUMP_COMM", 64),
        cmdline=_text(fields, "COREDUMP_CMDLINE"),
        unit=_text(fields, "COREDUMP_UNIT", 256),
        user_unit=_text(fields, "COREDUMP_USER_UNIT", 256),
        core_filename=core_filename,
        core_in_journal="COREDUMP" in fields,
        truncated=fields.get("COREDUMP_TRUNCATED", "") in ("1", "yes", "true"),
        kcrash_lib=kcrash_lib_from(fields.get("COREDUMP_PROC_MAPS", ""), fields.get("MESSAGE", "")),
    )
    return Verdict.ACCEPT, entry
