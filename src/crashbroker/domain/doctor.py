"""``crashbroker doctor``: verdicts from gathered facts (pure)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    """What the shell found out; every field is a plain observation."""

    core_pattern: str | None  # None: unreadable
    uid: int
    user: str
    journal_groups: tuple[str, ...]  # our groups among systemd-journal, adm, wheel
    journal_readable: bool  # a system journal file we can open
    coredumpctl: str | None
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
    if f.uid == 0 or f.journal_groups or f.journal_readable:
        why = "root" if f.uid == 0 else (", ".join(f.journal_groups) or "a readable journal file")
        out.append(Check("journal", Status.OK, f"can read the system journal ({why})"))
    else:
        out.append(
            Check(
                "journal",
                Status.FAIL,
                f"{f.user} cannot read the system journal, where systemd-coredump logs crashes",
                f"sudo usermod -aG systemd-journal {f.user}  (then log in again)",
            )
        )
    out.append(
        Check("coredumpctl", Status.OK, f.coredumpctl)
        if f.coredumpctl
        else Check(
            "coredumpctl", Status.FAIL, "not found: no backtraces", "apt install systemd-coredump"
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
    if f.drkonqi_launcher_enabled:
        out.append(
            Check(
                "double-launch",
                Status.WARN,
                f"DrKonqi's own launcher is enabled ({f.drkonqi_launcher_enabled}) as well as "
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
    out.append(
        Check("state", Status.OK, f"{f.state_dir} is writable")
        if f.state_writable
        else Check(
            "state", Status.FAIL, f"{f.state_dir} is not writable", "check its owner and mode"
        )
    )
    return out


def exit_code(results: list[Check]) -> int:
    return 1 if any(c.status is Status.FAIL for c in results) else 0
