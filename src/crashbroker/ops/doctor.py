"""Gathers the facts ``crashbroker doctor`` judges (``domain/doctor.py``): files, groups, the
session bus, and the user manager through ``systemctl --user``."""

from __future__ import annotations

import asyncio
import glob
import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from crashbroker.adapters.dbus_names import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from crashbroker.client import BrokerClient, ClientError, connect_bus
from crashbroker.config import xdg_dir
from crashbroker.domain.doctor import (
    DRKONQI_SOCKET,
    KCRASH_DUMP_ONLY,
    UNITS,
    Facts,
    UnitState,
    parse_show_environment,
    parse_unit_states,
)
from crashbroker.launcher import LIBEXEC_DIRS, detect_flavor, find_drkonqi, manager_socket
from crashbroker.ops.install import Targets, ours

JOURNAL_GROUPS = ("systemd-journal", "adm", "wheel")
DRKONQI_SOCKET_WANTS = (
    "/etc/systemd/user/sockets.target.wants/drkonqi-coredump-launcher.socket",
    "/usr/lib/systemd/user/sockets.target.wants/drkonqi-coredump-launcher.socket",
)


def _core_pattern() -> str | None:
    try:
        return Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        return None


PERSISTENT_ROOT = Path("/var/log/journal")
VOLATILE_ROOT = Path("/run/log/journal")
KF5_KCRASH = "libKF5Crash.so.5"
LIB_DIRS = ("/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib")
SYSTEMCTL_TIMEOUT_S = 10.0


def _can_open(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


def _machine_id() -> str | None:
    try:
        return Path("/etc/machine-id").read_text().strip() or None
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class JournalFacts:
    """Where journald writes and what this user can open there (fields of ``Facts``)."""

    journal_readable: bool
    persistent_journal: str | None
    volatile_journal: str | None
    user_journal: str | None
    user_journal_readable: bool


def _present(path: Path) -> bool:
    """Whether ``path`` exists, as far as this user can tell. journald may make its directory
    root-only (0750 root:root, seen for /run/log/journal/<machine-id> after a relinquish):
    Python 3.11's ``exists()`` raises PermissionError there. A directory we may not search
    holds the journal for all we know: say yes, and the open check says it cannot be read."""
    try:
        return path.exists()
    except PermissionError:
        return True


def journal_facts(
    uid: int,
    machine_id: str | None,
    persistent_root: Path = PERSISTENT_ROOT,
    volatile_root: Path = VOLATILE_ROOT,
) -> JournalFacts:
    """Look at the journal directories as the calling user (permissions are the point)."""
    pattern = machine_id or "*"
    persistent = volatile = None
    for d in sorted(persistent_root.glob(pattern)):
        if _present(d / "system.journal") or _present(d / f"user-{uid}.journal"):
            persistent = d
            break
    for d in sorted(volatile_root.glob(pattern)):
        if _present(d / "system.journal"):
            volatile = d
            break
    systems = [d / "system.journal" for d in (persistent, volatile) if d is not None]
    user = persistent / f"user-{uid}.journal" if persistent else None
    if user is not None and not _present(user):
        user = None
    return JournalFacts(
        journal_readable=any(_can_open(p) for p in systems if _present(p)),
        persistent_journal=str(persistent) if persistent else None,
        volatile_journal=str(volatile) if volatile else None,
        user_journal=str(user) if user else None,
        user_journal_readable=user is not None and _can_open(user),
    )


def find_kf5_kcrash(lib_dirs: tuple[str, ...] = LIB_DIRS) -> str | None:
    """KF5's KCrash library, when installed (KF5 apps link it)."""
    for pattern in lib_dirs:
        for path in sorted(glob.glob(os.path.join(pattern, KF5_KCRASH))):
            return path
    return None


def _systemctl(env: Mapping[str, str], *args: str) -> str:
    """``systemctl --user ARGS`` against the user manager of ``env``; its standard output.

    Raises:
        OSError: systemctl is missing, failed (its message), or did not answer in time.
    """
    systemctl = shutil.which("systemctl", path=env.get("PATH")) or "/usr/bin/systemctl"
    try:
        done = subprocess.run(
            [systemctl, "--user", *args],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"no answer in {SYSTEMCTL_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"systemctl exited with {done.returncode}")
    return done.stdout


def user_manager(env: Mapping[str, str]) -> str | None:
    """The user manager's socket when one runs (``$XDG_RUNTIME_DIR/systemd/private``)."""
    path = manager_socket(env)
    return path if path and os.path.exists(path) else None


def session_environment(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The environment a desktop session gives its applications, and where it was read: the
    user manager's (environment.d, ``set-environment``) when one runs, else ours."""
    if user_manager(env) is None:
        return dict(env), "this process's environment: no user manager"
    try:
        return parse_show_environment(_systemctl(env, "show-environment")), (
            "systemctl --user show-environment"
        )
    except OSError as exc:
        return dict(env), f"this process's environment: systemctl --user failed: {exc}"


def unit_states(env: Mapping[str, str]) -> tuple[UnitState, ...]:
    """Our units and DrKonqi's launcher socket as the user manager sees them.

    Raises:
        OSError: the user manager could not be asked.
    """
    props = "Id,LoadState,ActiveState,SubState,UnitFileState"
    return parse_unit_states(_systemctl(env, "show", "-p", props, "--", *UNITS, DRKONQI_SOCKET))


def kcrash_dropin(env: Mapping[str, str]) -> str | None:
    """Our environment.d drop-in, when ``install --kcrash-dump-only`` wrote it."""
    path = Targets.from_env(env).kcrash_dropin
    return str(path) if ours(path) else None


def _processor(env: Mapping[str, str]) -> str | None:
    dirs = [d for d in env.get("LIBEXEC_PATH", "").split(":") if d] + list(LIBEXEC_DIRS)
    for d in dirs:
        path = os.path.join(d, "drkonqi-coredump-processor")
        if os.access(path, os.X_OK):
            return path
    return None


def drkonqi_launcher_enabled(env: Mapping[str, str]) -> str | None:
    user_wants = xdg_dir(env, "XDG_CONFIG_HOME", ".config") / "systemd/user/sockets.target.wants"
    masked = xdg_dir(env, "XDG_CONFIG_HOME", ".config") / "systemd/user"
    for path in (*DRKONQI_SOCKET_WANTS, str(user_wants / "drkonqi-coredump-launcher.socket")):
        if os.path.lexists(path):
            try:
                if os.readlink(masked / "drkonqi-coredump-launcher.socket") == "/dev/null":
                    return None  # masked by the user
            except OSError:
                pass
            return path
    return None


def _writable(path: Path) -> bool:
    """The directory, or the nearest existing parent it would be created in, is writable."""
    probe = path
    try:
        while not probe.exists():
            probe = probe.parent
    except OSError:
        return False
    return os.access(probe, os.W_OK | os.X_OK)


async def gather(env: Mapping[str, str], bus_address: str | None) -> Facts:
    """Every fact doctor judges; a command that fails becomes a fact, never an exception."""
    uid = os.getuid()
    user = pwd.getpwuid(uid).pw_name
    mine = set(os.getgroups())
    groups = []
    for name in JOURNAL_GROUPS:
        try:
            if grp.getgrnam(name).gr_gid in mine:
                groups.append(name)
        except KeyError:
            continue
    drkonqi = find_drkonqi(env)
    bus_error = owner = version = None
    try:
        bus = await connect_bus(bus_address)
    except Exception as exc:  # any failure to reach a bus reads the same to a user
        bus_error = str(exc) or type(exc).__name__
    else:
        try:
            client = BrokerClient(bus)
            if await client.daemon_running():
                owner = await client.call(
                    "GetNameOwner", "s", [BUS_NAME],
                    destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                )  # fmt: skip
                try:
                    version = await client.call(
                        "Get", "ss", [MANAGER_INTERFACE, "Version"],
                        path=OBJECT_PATH, interface="org.freedesktop.DBus.Properties",
                    )  # fmt: skip
                except ClientError as exc:
                    version = f"unknown: {exc.short_name}"
        finally:
            bus.disconnect()
    state_dir = xdg_dir(env, "XDG_STATE_HOME", ".local/state") / "crashbroker"
    journal = await asyncio.to_thread(journal_facts, uid, _machine_id())
    session_env, session_source = await asyncio.to_thread(session_environment, env)
    manager = user_manager(env)
    units: tuple[UnitState, ...] = ()
    units_error = None
    if manager is not None:
        try:
            units = await asyncio.to_thread(unit_states, env)
        except OSError as exc:
            units_error = str(exc)
    return Facts(
        core_pattern=_core_pattern(),
        uid=uid,
        user=user,
        journal_groups=tuple(groups),
        journal_readable=journal.journal_readable,
        persistent_journal=journal.persistent_journal,
        volatile_journal=journal.volatile_journal,
        user_journal=journal.user_journal,
        user_journal_readable=journal.user_journal_readable,
        zstd=shutil.which("zstd"),
        gdb=shutil.which("gdb"),
        coredump_processor=_processor(env),
        drkonqi=drkonqi,
        drkonqi_version=detect_flavor(drkonqi).value if drkonqi else None,
        drkonqi_launcher_enabled=drkonqi_launcher_enabled(env),
        bus_error=bus_error,
        daemon_owner=owner,
        daemon_version=version,
        state_dir=str(state_dir),
        state_writable=_writable(state_dir),
        kf5_kcrash=find_kf5_kcrash(),
        session_env_source=session_source,
        kcrash_dump_only=session_env.get(KCRASH_DUMP_ONLY),
        kcrash_dropin=kcrash_dropin(env),
        user_manager=manager,
        units=units,
        units_error=units_error,
    )
