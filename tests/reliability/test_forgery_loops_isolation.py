"""Forged entries written by ordinary tools, a real crash loop of 100 kernel crashes, and a daemon
run as an unprivileged user."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus

from conftest import (
    COREDUMP_MESSAGE_ID,
    Daemon,
    RemoteJournal,
    as_user,
    missing_rig,
    wait_exec,
)
from crashbroker.client import BrokerClient


async def start_local(daemon: Daemon, *extra: str) -> None:
    daemon.args = ["--catch-up=none", *extra]
    await daemon.start()
    await daemon.caught_up()


def forged_fields(pid: int, uid: int) -> dict[str, str]:
    return {
        "MESSAGE": f"Process {pid} (evil) of user {uid} dumped core.",
        "MESSAGE_ID": COREDUMP_MESSAGE_ID,
        "SYSLOG_IDENTIFIER": "systemd-coredump",
        "COREDUMP_PID": str(pid),
        "COREDUMP_UID": str(uid),
        "COREDUMP_GID": str(uid),
        "COREDUMP_SIGNAL": "11",
        "COREDUMP_SIGNAL_NAME": "SIGSEGV",
        "COREDUMP_TIMESTAMP": "1795400000000000",
        "COREDUMP_EXE": "/usr/bin/kronometer",
        "COREDUMP_COMM": "kronometer",
        "COREDUMP_CMDLINE": "kronometer",
        "COREDUMP_FILENAME": "/var/lib/systemd/coredump/core.kronometer.0.x.1.1.zst",
    }


@pytest.mark.rig
@pytest.mark.usefixtures("rig")
async def test_entries_forged_with_logger_and_systemd_cat_are_never_published(
    daemon: Daemon, tmp_path: Path
):
    if shutil.which("logger") is None or shutil.which("systemd-cat") is None:
        missing_rig("logger and systemd-cat are needed (util-linux, systemd)")
    await start_local(daemon)
    base = 3_000_000 + os.getpid() % 100_000
    forgeries = 0
    for i, user in enumerate(["root", "nobody"]):
        fields = forged_fields(base + i, os.getuid())
        text = "".join(f"{k}={v}\n" for k, v in fields.items())
        prefix = (
            []
            if user == "root"
            else ["setpriv", "--reuid=nobody", "--regid=65534", "--clear-groups"]
        )
        done = subprocess.run([*prefix, "logger", "--journald"], input=text.encode(), check=False)
        assert done.returncode == 0, user
        forgeries += 1
        # systemd-cat can only write MESSAGE (stream transport): a MESSAGE_ID in the text is text.
        subprocess.run(
            [
                *prefix,
                "systemd-cat",
                "-t",
                "systemd-coredump",
                "echo",
                f"MESSAGE_ID={COREDUMP_MESSAGE_ID}",
            ],
            check=True,
        )
    # A real crash after the forgeries: once it is published, the forgeries were read too.
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    await wait_exec(sleeper.pid, "/usr/bin/sleep")
    sleeper.send_signal(signal.SIGSEGV)
    await sleeper.wait()
    await daemon.client.crash(sleeper.pid, timeout=30)
    published = {c["pid"] for c in daemon.client.detected()}
    assert not published & {base, base + 1}
    assert (await daemon.stats())["forged"] >= forgeries
    match = [f"MESSAGE_ID={COREDUMP_MESSAGE_ID}", f"COREDUMP_PID={base + 1}"]
    found = subprocess.run(["journalctl", "-o", "cat", *match], capture_output=True, check=False)
    assert b"dumped core" in found.stdout  # the forgery is in the journal, with the real MESSAGE_ID


@pytest.mark.rig
@pytest.mark.usefixtures("rig")
async def test_100_real_crashes_of_one_program_are_one_evolving_event(
    daemon: Daemon, tmp_path: Path
):
    exe = tmp_path / f"cb-loop-{uuid.uuid4().hex[:8]}"  # a name no other test crashes
    shutil.copy2("/usr/bin/sleep", exe)
    await start_local(daemon, "--loop-window=60", "--loop-threshold=3")
    pids = []
    for _ in range(100):
        proc = await asyncio.create_subprocess_exec(str(exe), "60")
        await wait_exec(proc.pid, str(exe))
        proc.send_signal(signal.SIGSEGV)
        await proc.wait()
        pids.append(proc.pid)

    def mine() -> list[dict[str, object]]:
        return [c for c in daemon.client.detected() if c["exe"] == str(exe)]

    [head] = await daemon.client.wait_for(mine, 30)
    updates = await daemon.client.wait_for(
        lambda: (
            (
                u := [
                    b[1]
                    for n, b in daemon.client.signals
                    if n == "CrashUpdated" and b[0] == head["id"]
                ]
            )
            and u[-1].get("burst") == 100
            and u
        ),
        120,
    )
    assert len(mine()) == 1  # one CrashDetected for 100 crashes
    assert updates[-1]["loop"] is True and updates[-1]["occurrences"] == 100
    listed = await daemon.call(
        "ListCrashes", "a{sv}", {"exe": __import__("dbus_fast").Variant("s", str(exe))}
    )
    assert sorted(c["pid"] for c in listed) == sorted(pids)
    stats = await daemon.stats()
    assert stats["loops"] >= 1 and stats["folded"] >= 99


# ---- isolation ----------------------------------------------------------------------------------

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:dir={dir}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>
<allow own="*"/><allow user="*"/></policy>
</busconfig>
"""


@pytest.fixture
def test_user() -> Iterator[str]:
    if os.getuid() != 0 or shutil.which("useradd") is None:
        missing_rig("creating a test user needs root and useradd")
    name = f"cbt{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


async def test_a_daemon_of_an_ordinary_user_publishes_only_its_crashes_and_no_unreadable_core(
    remote_journal: RemoteJournal, test_user: str
):
    user = pwd.getpwnam(test_user)
    shared = Path(tempfile.mkdtemp(prefix="crashbroker-isolation-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        shared.chmod(0o755)
        (shared / "bus").mkdir()
        (shared / "bus").chmod(0o777)
        (shared / "bus.conf").write_text(BUS_CONF.format(dir=shared / "bus"))
        conf = f"--config-file={shared / 'bus.conf'}"
        bus_proc = subprocess.Popen(
            ["dbus-daemon", conf, "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(bus_proc)
        assert bus_proc.stdout is not None
        address = bus_proc.stdout.readline().strip()
        home = shared / "home"
        home.mkdir()
        os.chown(home, user.pw_uid, user.pw_gid)
        journal = shared / "journal"
        shutil.copytree(remote_journal.directory, journal)  # filled below, then copied again
        unreadable = shared / "root-only.core"
        unreadable.write_bytes(b"core")
        unreadable.chmod(0o600)
        readable = home / "mine.core"
        readable.write_bytes(b"core")
        os.chown(readable, user.pw_uid, user.pw_gid)
        mine_hidden = remote_journal.coredump(
            COREDUMP_UID=str(user.pw_uid), COREDUMP_FILENAME=str(unreadable)
        )
        mine_shown = remote_journal.coredump(
            COREDUMP_UID=str(user.pw_uid), COREDUMP_FILENAME=str(readable)
        )
        roots = remote_journal.coredump(COREDUMP_UID="0")
        remote_journal.append(mine_hidden, mine_shown, roots)
        remote_journal.wait_written(3)
        shutil.rmtree(journal)
        shutil.copytree(remote_journal.directory, journal)
        for p in [journal, *journal.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)

        bus = await MessageBus(bus_address=address).connect()
        client = BrokerClient(bus)
        await client.subscribe()
        env = {
            "HOME": str(home), "PATH": "/usr/bin:/bin", "DBUS_SESSION_BUS_ADDRESS": address,
            "XDG_STATE_HOME": str(home / "state"), "XDG_CACHE_HOME": str(home / "cache"),
        }  # fmt: skip
        with (shared / "daemon.log").open("wb") as log:
            daemon = subprocess.Popen(
                [*as_user(test_user), "-m", "crashbroker", "daemon", f"--journal-dir={journal}",
                 "--loop-window=0"],
                env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append(daemon)
        seen: dict[int, dict[str, object]] = {}
        try:
            async with asyncio.timeout(30):
                async for event in client.events():
                    if event.kind == "detected":
                        seen[int(event.data["pid"])] = event.data
                    if len(seen) >= 2:
                        break
        except TimeoutError:
            raise AssertionError((shared / "daemon.log").read_text()) from None
        await asyncio.sleep(0.5)  # a wrong third crash would arrive by now
        stats = await client.call("GetStats")
        assert set(seen) == {int(mine_hidden["COREDUMP_PID"]), int(mine_shown["COREDUMP_PID"])}
        # Found while catching up: the signal has the list record, GetCrash the core's keys.
        hidden = await client.get_crash(str(seen[int(mine_hidden["COREDUMP_PID"])]["id"]))
        shown = await client.get_crash(str(seen[int(mine_shown["COREDUMP_PID"])]["id"]))
        bus.disconnect()
        assert stats["other_user"] == 1  # root's crash was seen and dropped
        assert (hidden["core_filename"], hidden["core_available"]) == ("", False)
        assert (shown["core_filename"], shown["core_available"]) == (str(readable), True)
        assert daemon.poll() is None, (shared / "daemon.log").read_text()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()
        shutil.rmtree(shared, ignore_errors=True)
