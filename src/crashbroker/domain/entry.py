"""From a journal entry (fields as strings) to a trusted :class:`CoredumpEntry`.

Anyone can log ``MESSAGE_ID=fc2e…`` with ``logger`` or ``systemd-cat``; only journald's trusted
fields (``_UID``, ``_EXE``, ``_SYSTEMD_UNIT``, which a sender cannot set) and the core file that
systemd-coredump wrote as root tell that systemd-coredump wrote the entry. :func:`classify` is
the whole trust decision; it is total and pure: the facts about the core file come in as a
:class:`CoreFile` that an adapter gathered (:func:`core_to_check` says which file, if any).
"""

from __future__ import annotations

import enum
import re
import signal as _signal
from collections.abc import Mapping
from dataclasses import dataclass

from crashbroker.domain.model import COREDUMP_MESSAGE_ID, CoredumpEntry, KCrashLib
from crashbroker.domain.text import TIMESTAMP_LIMIT, U32_MAX, clean_text, dbus_string_ok

JournalFields = Mapping[str, str]

COREDUMP_EXES = frozenset({"/usr/lib/systemd/systemd-coredump", "/lib/systemd/systemd-coredump"})
CORE_DIR = "/var/lib/systemd/coredump"
# Debian's SYSTEM_UID_MAX: systemd-coredump logs as itself for uids up to this, and as the
# crashed user (having dropped to its uid/gid) above it.
SYSTEM_UID_MAX = 999
# Set by the journal adapter: the fields logged more than once in an entry (comma-separated).
REPEATED = "__REPEATED"
# systemd-coredump names its cores core.<comm>.<uid>.<boot id>.<pid>.<µs>[.zst|.xz|.lz4]; comm may
# hold dots, so the name is read from the right.
_CORE_NAME = re.compile(
    r"core\.(?P<comm>.+)\.(?P<uid>[0-9]+)\.(?P<boot>[0-9a-f]{32})\.(?P<pid>[0-9]+)"
    r"\.(?P<usec>[0-9]+)(?:\.(?:zst|xz|lz4))?"
)
# Caps for the free-text fields we keep; journald itself allows fields far larger.
MAX_TEXT = 4096
MAX_PATH = 4096
_HEX32 = re.compile(r"[0-9a-f]{32}")
# A journal number: decimal ASCII digits only (int() would also take "1_000", "+5" and other
# scripts' digits), and few enough of them that parsing stays cheap.
_DECIMAL = re.compile(r"-?[0-9]{1,40}")
# "/usr/lib/…/libKF5Crash.so.5.103.0" in the maps, "(libKF5Crash.so.5 + 0x583d)" in the trace.
_KF5_CRASH = re.compile(r"\blibKF5Crash\.so")
_KF6_CRASH = re.compile(r"\blibKF6Crash\.so")


class Verdict(enum.Enum):
    ACCEPT = "accept"
    FORGED = "forged"  # not written by systemd-coredump
    OTHER_USER = "other-user"  # a real crash of a user this daemon does not serve
    # written by systemd-coredump (or so it says) but missing what identifies a crash, or with a
    # field no real crash has (a number out of range, a NUL in a name)
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """Who may have written a coredump entry, and whose crashes this daemon publishes.

    Args:
        writer_uids: uids systemd-coredump logs as for crashes of system uids (root, and the
            ``systemd-coredump`` user it drops to before logging).
        own_uid: publish only crashes with this ``COREDUMP_UID``; ``None`` publishes all users.
        machine_id: this machine's id. A regular user's entry from this machine must prove
            itself by its core file; entries of other machines (a fleet's journal directory)
            carry whatever their uploader sent, and trust rests on authenticated uploaders.
            ``None``: no entry is taken as local.
        core_dir: where systemd-coredump stores cores (root-owned; only it writes there).
    """

    writer_uids: frozenset[int]
    own_uid: int | None
    machine_id: str | None = None
    core_dir: str = CORE_DIR


@dataclass(frozen=True, slots=True)
class CoreFile:
    """What the file system says about the core file an entry names (never its content).

    Attributes:
        path: the path as the entry names it.
        owner_uid: the file's owner (systemd-coredump stores cores as root).
        regular: a regular file, not a link, FIFO, device or directory.
        others_write: group or others may write it.
        links: its hard-link count (a second name could be anyone's).
        xattrs: systemd-coredump's ``user.coredump.*`` attributes, without that prefix (only
            the file's owner can set them: root). Empty where the file system has none.
    """

    path: str
    owner_uid: int
    regular: bool
    others_write: bool
    links: int
    xattrs: Mapping[str, str]


def _int(fields: JournalFields, key: str) -> int | None:
    raw = fields.get(key)
    if raw is None:
        return None
    raw = raw.strip()
    return int(raw) if _DECIMAL.fullmatch(raw) else None


def _text(fields: JournalFields, key: str, cap: int = MAX_TEXT) -> str:
    """Free text (shown, never matched on): capped and cleaned (:func:`clean_text`)."""
    return clean_text(fields.get(key, "")[:cap])


def _name(fields: JournalFields, key: str, cap: int | None = None) -> str | None:
    """An identifying field, capped but otherwise exact; None when it cannot be a D-Bus string
    (a NUL: no real systemd-coredump entry has one in these fields)."""
    value = fields.get(key, "")[:cap]
    return value if dbus_string_ok(value) else None


def written_by_coredump(fields: JournalFields, writer_uids: frozenset[int]) -> bool:
    """True when journald's trusted fields say systemd-coredump logged this entry as a system
    user (a crash of a system uid: root or below 1000).

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


def _repeats_crash_fields(fields: JournalFields) -> bool:
    """A crash field logged twice: systemd-coredump never does, but its ``--backtrace`` mode
    (which any user can run) appends whatever it reads on stdin to an entry of its own."""
    repeated = fields.get(REPEATED, "")
    return any(name == "MESSAGE_ID" or name.startswith("COREDUMP") for name in repeated.split(","))


def _regular_uid(fields: JournalFields) -> int | None:
    """The ``_UID`` of an entry logged by a regular user (above SYSTEM_UID_MAX), else None."""
    uid = _int(fields, "_UID")
    return uid if uid is not None and uid > SYSTEM_UID_MAX else None


def _local(fields: JournalFields, policy: TrustPolicy) -> bool:
    machine = fields.get("_MACHINE_ID", "").replace("-", "").lower()
    return policy.machine_id is not None and machine in ("", policy.machine_id)


def core_to_check(fields: JournalFields, policy: TrustPolicy) -> str | None:
    """The core file whose facts decide this entry's trust, or None when nothing on disk does.

    That is the ``COREDUMP_FILENAME`` of an entry of this machine logged by a regular user as
    its own crash (the facts of any other path would not help: :func:`classify` rejects it).
    """
    uid = _regular_uid(fields)
    if uid is None or _int(fields, "COREDUMP_UID") != uid or not _local(fields, policy):
        return None
    path = fields.get("COREDUMP_FILENAME", "")
    if not path or "/" in path[len(policy.core_dir) + 1 :]:
        return None
    return path if path.startswith(policy.core_dir + "/") else None


def core_proves(
    core: CoreFile,
    *,
    uid: str,
    boot_id: str,
    pid: str,
    timestamp: str,
    exe: str | None,
    core_dir: str = CORE_DIR,
) -> bool:
    """True when ``core`` is a core that only systemd-coredump can have stored for this crash:
    a root-owned regular file of its own in ``core_dir``, whose name (and its root-set
    ``user.coredump.*`` attributes, where the file system keeps them) encode the same uid, boot
    id, pid and timestamp (and exe, when given) as the crash. The values are as the journal
    spells them (decimal text, 32 lowercase hex digits).

    A process of the same user can name an existing core of another crash in a forged entry;
    it cannot make a root-owned file whose name and attributes describe a crash that did not
    happen, and a forged copy of a real crash's fields is that same crash (the same id).
    """
    directory, _, base = core.path.rpartition("/")
    if directory != core_dir:
        return False
    if core.owner_uid != 0 or not core.regular or core.others_write or core.links != 1:
        return False
    name = _CORE_NAME.fullmatch(base)
    if name is None:
        return False
    if (name["uid"], name["boot"], name["pid"], name["usec"]) != (uid, boot_id, pid, timestamp):
        return False
    expected = {"uid": uid, "pid": pid, "timestamp": timestamp}
    if exe is not None:
        expected["exe"] = exe
    return all(core.xattrs.get(k, v) == v for k, v in expected.items())


def _core_proves_entry(core: CoreFile, fields: JournalFields, policy: TrustPolicy) -> bool:
    return core.path == fields.get("COREDUMP_FILENAME") and core_proves(
        core,
        uid=fields.get("COREDUMP_UID", ""),
        boot_id=fields.get("_BOOT_ID", "").replace("-", "").lower(),
        pid=fields.get("COREDUMP_PID", ""),
        timestamp=fields.get("COREDUMP_TIMESTAMP", ""),
        exe=fields.get("COREDUMP_EXE"),
        core_dir=policy.core_dir,
    )


def _regular_user_trusted(
    fields: JournalFields, policy: TrustPolicy, core: CoreFile | None
) -> bool:
    """A regular user's crash, logged by systemd-coredump after it dropped to that user's
    uid/gid: ``_UID == COREDUMP_UID``, plus evidence that only systemd-coredump can produce.

    * On this machine, an entry that names a core must be proven by that core
      (:func:`core_proves`): otherwise a forged entry could point gdb at a file of its choosing.
      One that names none (``Storage=none``, too big) needs systemd-coredump's ``_EXE``, which
      ``logger``, ``systemd-cat`` or a process that exits at once cannot have.
    * From another machine (a fleet's uploads), ``_EXE`` must be systemd-coredump's when
      present; trust in the rest rests on the uploader.
    """
    uid = _regular_uid(fields)
    if uid is None or _int(fields, "COREDUMP_UID") != uid:
        return False
    exe = fields.get("_EXE")
    exe_is_coredump = exe in COREDUMP_EXES
    if fields.get("_SYSTEMD_UNIT", "").startswith("systemd-coredump"):
        exe_is_coredump = True  # journald puts a process in a unit by its cgroup
    if not _local(fields, policy):
        return exe is None or exe_is_coredump
    if fields.get("COREDUMP_FILENAME"):
        return core is not None and _core_proves_entry(core, fields, policy)
    return exe_is_coredump


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
    if given.startswith("SIG") and given.isascii() and given[3:].isalnum() and len(given) <= 16:
        return given
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def classify(
    fields: JournalFields, policy: TrustPolicy, core: CoreFile | None = None
) -> tuple[Verdict, CoredumpEntry | None]:
    """Decide whether an entry is a crash to publish, and parse it if so.

    Trusted are entries that systemd-coredump logged as a system user (root or
    ``systemd-coredump``: :func:`written_by_coredump`) and those it logged as the crashed
    regular user (:func:`_regular_user_trusted`, which may need ``core``: the facts about the
    file :func:`core_to_check` names).

    Every field kept is validated, so that every accepted entry can be stored and sent: pid, uid,
    gid and signal fit D-Bus 'u' (pid > 0), timestamps are in (0, 2**63); identifying strings
    (exe, comm, core file, cursor, machine id) with a NUL make the entry MALFORMED, free text
    (hostname, command line, units) has its control characters replaced
    (:func:`~crashbroker.domain.text.clean_text`). So every string of the entry is a valid
    D-Bus string (:func:`~crashbroker.domain.text.dbus_string_ok`).

    Returns:
        ``(Verdict.ACCEPT, entry)`` or ``(other verdict, None)``. Never raises on bad input.
    """
    if fields.get("MESSAGE_ID") != COREDUMP_MESSAGE_ID:
        return Verdict.MALFORMED, None
    if _repeats_crash_fields(fields):
        return Verdict.FORGED, None
    if not (
        written_by_coredump(fields, policy.writer_uids)
        or _regular_user_trusted(fields, policy, core)
    ):
        return Verdict.FORGED, None
    pid = _int(fields, "COREDUMP_PID")
    uid = _int(fields, "COREDUMP_UID")
    gid = _int(fields, "COREDUMP_GID") if "COREDUMP_GID" in fields else 0
    sig = _int(fields, "COREDUMP_SIGNAL")
    timestamp = _int(fields, "COREDUMP_TIMESTAMP")
    realtime = _int(fields, "__REALTIME_TIMESTAMP") if "__REALTIME_TIMESTAMP" in fields else None
    boot_id = fields.get("_BOOT_ID", "").replace("-", "").lower()
    # Fields that identify the crash, name files, or are matched against KCrash files are kept
    # exactly as the journal has them — a path may hold any byte but NUL, so a program named
    # with escape sequences is still that program (its name is escaped only when printed) — and
    # an entry whose identifying fields cannot be sent is refused. Free text (hostname, command
    # line, units) is only shown: its control characters are replaced, and the entry kept.
    cursor = _name(fields, "__CURSOR")
    exe = _name(fields, "COREDUMP_EXE", MAX_PATH)
    comm = _name(fields, "COREDUMP_COMM", 64)
    core_filename = _name(fields, "COREDUMP_FILENAME", MAX_PATH)
    machine_id = _name(fields, "_MACHINE_ID", 64)
    # The numbers must fit their D-Bus types (pid, uid, gid, signal: 'u'); timestamps must be
    # after 1970 and fit the store's signed 64-bit integers.
    if (
        pid is None
        or not 0 < pid <= U32_MAX
        or uid is None
        or not 0 <= uid <= U32_MAX
        or gid is None
        or not 0 <= gid <= U32_MAX
        or sig is None
        or not 0 <= sig <= U32_MAX
        or timestamp is None
        or not 0 < timestamp < TIMESTAMP_LIMIT
        or (realtime is not None and not 0 < realtime < TIMESTAMP_LIMIT)
        or not _HEX32.fullmatch(boot_id)
        or not cursor
        or exe is None
        or comm is None
        or core_filename is None
        or machine_id is None
    ):
        return Verdict.MALFORMED, None
    if policy.own_uid is not None and uid != policy.own_uid:
        return Verdict.OTHER_USER, None
    entry = CoredumpEntry(
        cursor=cursor,
        realtime=realtime or timestamp,
        boot_id=boot_id,
        machine_id=machine_id.replace("-", "").lower()[:32],
        hostname=_text(fields, "COREDUMP_HOSTNAME") or _text(fields, "_HOSTNAME"),
        pid=pid,
        uid=uid,
        gid=gid,
        signal=sig,
        signal_name=signal_name(sig, fields.get("COREDUMP_SIGNAL_NAME", "")),
        timestamp=timestamp,
        exe=exe,
        comm=comm,
        cmdline=_text(fields, "COREDUMP_CMDLINE"),
        unit=_text(fields, "COREDUMP_UNIT", 256),
        user_unit=_text(fields, "COREDUMP_USER_UNIT", 256),
        core_filename=core_filename,
        core_in_journal="COREDUMP" in fields,
        truncated=fields.get("COREDUMP_TRUNCATED", "") in ("1", "yes", "true"),
        kcrash_lib=kcrash_lib_from(fields.get("COREDUMP_PROC_MAPS", ""), fields.get("MESSAGE", "")),
        # Only when our own id is known: without it every crash would be re-keyed, and the ids
        # of an existing store would change.
        fleet=policy.machine_id is not None and not _local(fields, policy),
    )
    return Verdict.ACCEPT, entry
