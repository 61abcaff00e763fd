"""End to end on the real pipeline: the kernel, systemd-coredump, journald, the daemon following
the local journal, a private session bus, busctl and a real KCrash application."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal

import pytest

from conftest import (
    COREDUMP_MESSAGE_ID,
    Daemon,
    crash_kronometer,
    crash_sleep,
    missing_rig,
)

pytestmark = [pytest.mark.rig, pytest.mark.usefixtures("rig")]


async def start_local(daemon: Daemon) -> None:
    """Follow the host journal from its current end (older crashes are not this test's)."""
    daemon.args = ["--catch-up=none", "--grace-ms=2000"]
    await daemon.start()
    await daemon.caught_up()


async def test_real_sigsegv_reaches_subscribers_and_busctl(daemon: Daemon):
    await start_local(daemon)
    pid = await crash_sleep(signal.SIGSEGV)
    crash = await daemon.client.crash(pid)
    assert crash["exe"] == "/usr/bin/sleep"
    assert crash["signal_name"] == "SIGSEGV"
    assert crash["uid"] == os.getuid()
    assert crash["past"] is False
    assert crash["core_available"] is True

    proc = await asyncio.create_subprocess_exec(
        "busctl", "--user", "call", "org.kde.crashbroker1", "/org/kde/crashbroker1",
        "org.kde.crashbroker1.Manager", "ListCrashes", "a{sv}", "0",
        env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": daemon.bus_address},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    text = out.decode()
    assert text.startswith("aa{sv} 1 ")
    assert f'"id" s "{crash["id"]}"' in text
    assert f'"pid" u {pid}' in text


async def test_real_kcrash_crash_carries_its_metadata(daemon: Daemon, kcrash_env: dict[str, str]):
    if shutil.which("kronometer") is None:
        missing_rig("kronometer is not installed (scripts/setup installs it)")
    kcrash_env["XDG_CACHE_HOME"] = str(daemon.cache_home)
    await start_local(daemon)
    pid = await crash_kronometer(kcrash_env)
    crash = await daemon.client.crash(pid, timeout=30)
    kcrash = crash["kcrash"]
    assert kcrash["appname"] == "kronometer"
    assert kcrash["programname"] == "Kronometer"
    assert kcrash["bugaddress"] == "submit@bugs.kde.org"
    assert re.fullmatch(r"\d+\.\d+\.\d+", kcrash["appversion"])
    assert kcrash["signal"] == "11"
    assert kcrash["pid"] == str(pid)
    assert crash["kcrash_source"] == "kcrash-v1"
    assert crash["kcrash_filled"] == []
    assert crash["app_name"] == "Kronometer"


async def test_forged_journal_entry_is_not_published(daemon: Daemon):
    from systemd import journal

    await start_local(daemon)
    forged_pid = 4_000_000 + os.getpid() % 100_000
    journal.send(
        f"Process {forged_pid} (evil) of user {os.getuid()} dumped core.",
        MESSAGE_ID=COREDUMP_MESSAGE_ID,
        SYSLOG_IDENTIFIER="systemd-coredump",
        COREDUMP_PID=str(forged_pid),
        COREDUMP_UID=str(os.getuid()),
        COREDUMP_SIGNAL="11",
        COREDUMP_TIMESTAMP="1700000000000000",
        COREDUMP_EXE="/usr/bin/evil",
    )
    # A real crash logged after the forgery: once it is published, the forgery was read.
    real_pid = await crash_sleep()
    await daemon.client.crash(real_pid)
    assert forged_pid not in [c["pid"] for c in daemon.client.detected()]
    assert (await daemon.stats())["forged"] >= 1


async def test_crashes_while_stopped_appear_once_as_past(daemon: Daemon):
    await start_local(daemon)
    assert await daemon.stop() == 0
    pids = [await crash_sleep(), await crash_sleep(signal.SIGABRT)]
    daemon.client.signals.clear()
    await daemon.start()
    crashes = [await daemon.client.crash(pid) for pid in pids]
    assert all(c["past"] for c in crashes)
    assert [c["signal_name"] for c in crashes] == ["SIGSEGV", "SIGABRT"]
    await daemon.caught_up()
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    assert sorted(c["pid"] for c in listed) == sorted(pids)
    # Once more: nothing is announced twice.
    await daemon.stop()
    daemon.client.signals.clear()
    await daemon.start()
    await daemon.caught_up()
    assert daemon.client.detected() == []
    assert len(await daemon.call("ListCrashes", "a{sv}", {})) == 2


async def test_follows_across_journal_rotation(daemon: Daemon):
    await start_local(daemon)
    before = await crash_sleep()
    await daemon.client.crash(before)
    rotate = await asyncio.create_subprocess_exec("journalctl", "--rotate")
    assert await rotate.wait() == 0
    after = await crash_sleep()
    crash = await daemon.client.crash(after)
    assert crash["past"] is False
    assert daemon.proc is not None and daemon.proc.returncode is None
