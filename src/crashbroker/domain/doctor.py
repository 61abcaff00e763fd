"""``crashbroker doctor``: verdicts from gathered facts (pure).

Also the rules ``crashbroker install`` shares (:func:`kcrash_bypasses_feed`) and the parsing of
``systemctl --user`` output, so the shell only runs commands and reads files.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of doctor's report."""

    name: str
    status: Status
    detail: str
    hint: str = ""


# Our units, as `crashbroker install` writes them; the daemon's is the one D-Bus activation needs.
DAEMON_UNIT = "crashbroker.service"
UNITS = (
    DAEMON_UNIT,
    "crashbroker-launcher.service",
    "crashbroker-notifier.service",
    "crashbroker-cleanup.timer",
)
DRKONQI_SOCKET = "drkonqi-coredump-launcher.socket"
KCRASH_DUMP_ONLY = "KCRASH_DUMP_ONLY"


@dataclass(frozen=True, slots=True)
class UnitState:
    """One unit as ``systemctl --user show -p Id,LoadState,ActiveState,UnitFileState`` says."""

    name: str
    load: str  # loaded, not-found, masked, bad-setting, error
    active: str  # active, inactive, failed, activating, deactivating, reloading
    file_state: str  # enabled, disabled, static, masked, linked, ... ("" when not found)
    sub: str = ""  # SubState: running, dead, auto-restart (failed, and restarted by Restart=)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the shell found out; every field is a plain observation."""

    core_pattern: str | None  # None: unreadable
    uid: int
    user: str
    journal_groups: tuple[str, ...]  # our groups among systemd-journal, adm, wheel
    journal_readable: bool  # a system journal file we can open (a group, or an ACL)
    # /var/log/journal/<machine-id> when journald writes there (system.journal or
    # user-<UID>.journal in it); /run/log/journal/<machine-id> when it writes there instead.
    persistent_journal: str | None
    volatile_journal: str | None
    user_journal: str | None  # <persistent>/user-<UID>.journal, when it exists
    user_journal_readable: bool  # we can open it
    zstd: str | None  # systemd-coredump compresses cores with zstd; backtraces unpack them
    gdb: str | None
    coredump_processor: str | None  # drkonqi-coredump-processor on KCrash's libexec path
    drkonqi: str | None
    drkonqi_version: str | None
    drkonqi_launcher_enabled: str | None  # where DrKonqi's own launcher socket is enabled
    bus_error: str | None  # None: the session bus answered
    daemon_owner: str | None
    daemon_version: str | None
    state_dir: str
    state_writable: bool
    kf5_kcrash: str | None  # libKF5Crash.so.5, when installed
    session_env_source: str  # where the session environment was read
    kcrash_dump_only: str | None  # KCRASH_DUMP_ONLY in the session environment (None: unset)
    kcrash_dropin: str | None  # our environment.d drop-in, when installed
    user_manager: str | None  # $XDG_RUNTIME_DIR/systemd/private, when it exists
    units: tuple[UnitState, ...] = field(default=())  # our units and DrKonqi's socket
    units_error: str | None = None  # the user manager could not be asked


def dump_only_active(value: str | None) -> bool:
    """KCrash reads ``KCRASH_DUMP_ONLY`` as an integer (Qt's qEnvironmentVariableIntValue:
    anything but a non-zero number reads as 0)."""
    if value is None:
        return False
    try:
        return int(value.strip(), 0) != 0
    except ValueError:
        return False


def kcrash_bypasses_feed(*, kf5_kcrash: bool, drkonqi: bool, dump_only: str | None) -> bool:
    """KF5's KCrash starts DrKonqi itself from the crash handler ("just in time") when DrKonqi is
    installed and ``KCRASH_DUMP_ONLY`` is not set, and holds the application without a core dump
    while DrKonqi waits: the crash reaches systemd-coredump, the journal and us only if the user
    closes DrKonqi (then without its KCrash metadata, which DrKonqi removed), else never.
    KF6's KCrash dumps by default when core_pattern is a pipe."""
    return kf5_kcrash and drkonqi and not dump_only_active(dump_only)


_SHOW_ENV_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")


def parse_show_environment(text: str) -> dict[str, str]:
    """``systemctl --user show-environment`` output as a mapping.

    A value with special characters is printed C-quoted (``$'a\\nb'``) and kept so: the
    variables doctor looks at are numbers, and a quoted one is not a number to KCrash either.
    """
    env: dict[str, str] = {}
    for line in text.splitlines():
        m = _SHOW_ENV_LINE.fullmatch(line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def parse_unit_states(text: str) -> tuple[UnitState, ...]:
    """``systemctl show -p Id,LoadState,ActiveState,SubState,UnitFileState UNIT…``: one block
    per unit, blocks separated by an empty line."""
    states = []
    for block in re.split(r"\n\s*\n", text.strip()):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            states.append(
                UnitState(
                    name=props["Id"],
                    load=props.get("LoadState", ""),
                    active=props.get("ActiveState", ""),
                    file_state=props.get("UnitFileState", ""),
                    sub=props.get("SubState", ""),
                )
            )
    return tuple(states)


def checks(f: Facts) -> list[Check]:
    out: list[Check] = []
    if f.core_pattern is None:
        out.append(Check("core_pattern", Status.FAIL, "cannot read /proc/sys/kernel/core_pattern"))
    elif "systemd-coredump" in f.core_pattern:
        out.append(Check("core_pattern", Status.OK, "cores go to systemd-coredump"))
    else:
        out.append(
            Check(
                "core_pattern",
                Status.FAIL,
                f"cores go to {f.core_pattern!r}, not to systemd-coredump: "
                "no crash reaches the journal",
                "install systemd-coredump (it sets kernel.core_pattern), or ask your admin",
            )
        )
    out.append(_journal(f))
    out.append(
        Check("zstd", Status.OK, f.zstd)
        if f.zstd
        else Check(
            "zstd",
            Status.WARN,
            "not found: no backtraces of cores systemd-coredump stored compressed (*.zst)",
            "apt install zstd",
        )
    )
    out.append(
        Check("gdb", Status.OK, f.gdb)
        if f.gdb
        else Check("gdb", Status.WARN, "not found: GetBacktrace fails", "apt install gdb")
    )
    out.append(
        Check(
            "kcrash-metadata", Status.OK, f"KCrash writes metadata ({f.coredump_processor} found)"
        )
        if f.coredump_processor
        else Check(
            "kcrash-metadata",
            Status.WARN,
            "drkonqi-coredump-processor is not on KCrash's libexec path: KF5 apps write no "
            "metadata (crashes still arrive, without app name and bug address)",
            "apt install drkonqi",
        )
    )
    if f.drkonqi:
        out.append(Check("drkonqi", Status.OK, f"{f.drkonqi} (DrKonqi {f.drkonqi_version})"))
    else:
        out.append(
            Check("drkonqi", Status.WARN, "not installed: the launcher has nothing to start")
        )
    out.append(_kcrash_dump_only(f))
    double = _drkonqi_launcher(f)
    if double:
        out.append(
            Check(
                "double-launch",
                Status.WARN,
                f"DrKonqi's own launcher is enabled ({double}) as well as "
                "crashbroker-launcher: some crashes could show two dialogs",
                "systemctl --user mask drkonqi-coredump-launcher.socket",
            )
        )
    if f.bus_error is not None:
        out.append(
            Check(
                "session-bus",
                Status.FAIL,
                f"no session bus: {f.bus_error}",
                "run inside a desktop session (DBUS_SESSION_BUS_ADDRESS)",
            )
        )
    else:
        out.append(Check("session-bus", Status.OK, "reachable"))
        if f.daemon_owner:
            out.append(
                Check(
                    "daemon",
                    Status.OK,
                    f"org.kde.crashbroker1 is {f.daemon_owner} (version {f.daemon_version})",
                )
            )
        else:
            out.append(
                Check(
                    "daemon",
                    Status.WARN,
                    "org.kde.crashbroker1 has no owner (D-Bus activation starts it on first use)",
                    "systemctl --user enable --now crashbroker  (after crashbroker install)",
                )
            )
    out.extend(_units(f))
    out.append(
        Check("state", Status.OK, f"{f.state_dir} is writable")
        if f.state_writable
        else Check(
            "state", Status.FAIL, f"{f.state_dir} is not writable", "check its owner and mode"
        )
    )
    return out


def _journal(f: Facts) -> Check:
    """Who reads crashes where: systemd-coredump logs a regular user's crash as that user, so on
    a persistent journal it lands in ``user-<UID>.journal``, which journald gives that user an
    ACL to read — no group needed. A volatile journal has no per-user files: only members of
    systemd-journal/adm (or an ACL an admin set) read it."""
    if f.uid == 0:
        return Check("journal", Status.OK, "root reads every journal")
    if f.journal_groups:
        groups = ", ".join(f.journal_groups)
        return Check("journal", Status.OK, f"{f.user} reads the system journal ({groups})")
    usermod = f"sudo usermod -aG systemd-journal {f.user}  (then log in again)"
    if f.volatile_journal:
        if f.journal_readable:
            return Check("journal", Status.OK, f"{f.user} can read the volatile journal (an ACL)")
        return Check(
            "journal",
            Status.FAIL,
            f"the journal is volatile ({f.volatile_journal}): it keeps no per-user files, so "
            f"{f.user} reads crashes only as a member of systemd-journal or adm",
            f"{usermod}; or make it persistent: sudo mkdir -p /var/log/journal && "
            "sudo systemctl restart systemd-journald",
        )
    if f.persistent_journal:
        if f.user_journal is None:
            return Check(
                "journal",
                Status.OK,
                f"persistent journal ({f.persistent_journal}): {f.user}'s crashes go to "
                f"user-{f.uid}.journal, which journald creates with the first one and lets "
                f"{f.user} read (no group needed)",
            )
        if f.user_journal_readable:
            return Check(
                "journal",
                Status.OK,
                f"persistent journal: {f.user} reads its own crashes in {f.user_journal} "
                "(no group needed)",
            )
        return Check(
            "journal",
            Status.FAIL,
            f"{f.user} cannot read its own journal file {f.user_journal} (journald grants it "
            "with an ACL; the file system may not support ACLs)",
            usermod,
        )
    return Check(
        "journal",
        Status.FAIL,
        "no journal: nothing in /var/log/journal/<machine-id> or /run/log/journal/<machine-id>",
        "is systemd-journald running?",
    )


def _kcrash_dump_only(f: Facts) -> Check:
    name = "kcrash-dump-only"
    if not f.kf5_kcrash:
        return Check(name, Status.OK, "no KF5 KCrash (KF6's KCrash dumps when cores go to a pipe)")
    if not f.drkonqi:
        return Check(name, Status.OK, f"{f.kf5_kcrash}: without DrKonqi, KDE crashes dump")
    if not kcrash_bypasses_feed(kf5_kcrash=True, drkonqi=True, dump_only=f.kcrash_dump_only):
        return Check(
            name,
            Status.OK,
            f"{KCRASH_DUMP_ONLY}={f.kcrash_dump_only} in the session environment "
            f"({f.session_env_source}): KDE crashes dump to systemd-coredump and reach the feed",
        )
    hint = (
        f"log out and in again: {f.kcrash_dropin} sets it for new sessions"
        if f.kcrash_dropin
        else "crashbroker install --kcrash-dump-only  (then log out and in again)"
    )
    return Check(
        name,
        Status.WARN,
        f"KDE crashes bypass the feed: KF5 KCrash ({f.kf5_kcrash}) starts DrKonqi itself from "
        f"the crash handler, since {KCRASH_DUMP_ONLY} is not set in the session environment "
        f"({f.session_env_source}); the application is held without a core dump while DrKonqi "
        "waits, and its crash arrives only if the user closes DrKonqi, without its metadata",
        hint,
    )


def _drkonqi_launcher(f: Facts) -> str | None:
    """Where DrKonqi's own launcher is enabled: the user manager's word when it answered, else
    the install links on disk."""
    for u in f.units:
        if u.name == DRKONQI_SOCKET and u.load != "not-found":
            if u.load == "masked" or u.file_state.startswith("masked"):
                return None
            if u.active in ("active", "activating") or u.file_state.startswith("enabled"):
                return f"{DRKONQI_SOCKET} is {u.active}, {u.file_state or 'no unit file'}"
            return None
    return f.drkonqi_launcher_enabled


def _unit_check(u: UnitState, *, daemon_on_bus: bool) -> Check:
    daemon = u.name == DAEMON_UNIT
    install = "crashbroker install && systemctl --user daemon-reload"
    enable = f"systemctl --user enable --now {u.name}"
    if u.load == "not-found":
        if daemon and not daemon_on_bus:
            return Check(
                u.name, Status.FAIL, "not installed: nothing can start the daemon", install
            )
        return Check(u.name, Status.WARN, "not installed", install)
    if u.load == "masked" or u.file_state.startswith("masked"):
        return Check(u.name, Status.WARN, "masked", f"systemctl --user unmask {u.name}")
    if u.load != "loaded":
        return Check(u.name, Status.FAIL, f"{u.load}", f"systemctl --user status {u.name}")
    state = f"{u.active} ({u.file_state or 'no unit file state'})"
    if u.active == "failed" or u.sub == "auto-restart":
        # auto-restart: it exited with an error and Restart= starts it again — failing in a loop.
        why = "failed" if u.active == "failed" else "exited with an error, restarting"
        return Check(u.name, Status.FAIL, f"{why}: {state}", f"systemctl --user status {u.name}")
    running = u.active in ("active", "activating", "reloading")
    enabled = u.file_state.startswith(("enabled", "static", "linked", "alias", "indirect"))
    if running and (enabled or daemon):
        # The daemon may be D-Bus activated without being enabled: running is what counts.
        return Check(u.name, Status.OK, state)
    if running:
        return Check(u.name, Status.WARN, f"{state}: not started at the next login", enable)
    if daemon:
        why = "the launcher and the notifier wait for it; crashes are caught up when it starts"
        return Check(u.name, Status.WARN, f"{state}: {why}", enable)
    return Check(u.name, Status.WARN, state, enable)


def _units(f: Facts) -> list[Check]:
    if f.user_manager is None:
        return [
            Check(
                "user-manager",
                Status.WARN,
                "no systemd --user manager ($XDG_RUNTIME_DIR/systemd/private): units not checked",
                "run doctor inside your desktop session",
            )
        ]
    if f.units_error is not None:
        return [
            Check(
                "user-manager",
                Status.WARN,
                f"cannot ask the user manager at {f.user_manager}: {f.units_error}",
            )
        ]
    out = [Check("user-manager", Status.OK, f"systemd --user at {f.user_manager}")]
    by_name = {u.name: u for u in f.units}
    for name in UNITS:
        u = by_name.get(name, UnitState(name, "not-found", "inactive", ""))
        out.append(_unit_check(u, daemon_on_bus=bool(f.daemon_owner)))
    return out


def exit_code(results: list[Check]) -> int:
    return 1 if any(c.status is Status.FAIL for c in results) else 0
