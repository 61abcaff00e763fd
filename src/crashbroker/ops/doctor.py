"""Gathers the facts ``crashbroker doctor`` judges (``domain/doctor.py``)."""

from __future__ import annotations

import glob
import grp
import os
import pwd
import shutil
from collections.abc import Mapping
from pathlib import Path

from crashbroker.adapters.dbus_names import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from crashbroker.client import BrokerClient, ClientError, connect_bus
from crashbroker.config import xdg_dir
from crashbroker.domain.doctor import Facts
from crashbroker.launcher import LIBEXEC_DIRS, detect_flavor, find_drkonqi

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


def _journal_readable() -> bool:
    for path in glob.glob("/var/log/journal/*/system*.journal") + glob.glob(
        "/run/log/journal/*/system*.journal"
    ):
        try:
            with open(path, "rb"):
                return True
        except OSError:
            continue
    return False


def _processor(env: Mapping[str, str]) -> str | None:
    dirs = [d for d in env.get("LIBEXEC_PATH", "").split(":") if d] + list(LIBEXEC_DIRS)
    for d in dirs:
        path = os.path.join(d, "drkonqi-coredump-processor")
        if os.access(path, os.X_OK):
            return path
    return None


def _drkonqi_launcher_enabled(env: Mapping[str, str]) -> str | None:
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
    return Facts(
        core_pattern=_core_pattern(),
        uid=uid,
        user=user,
        journal_groups=tuple(groups),
        journal_readable=_journal_readable(),
        coredumpctl=shutil.which("coredumpctl"),
        gdb=shutil.which("gdb"),
        coredump_processor=_processor(env),
        drkonqi=drkonqi,
        drkonqi_version=detect_flavor(drkonqi).value if drkonqi else None,
        drkonqi_launcher_enabled=_drkonqi_launcher_enabled(env),
        bus_error=bus_error,
        daemon_owner=owner,
        daemon_version=version,
        state_dir=str(state_dir),
        state_writable=_writable(state_dir),
    )
