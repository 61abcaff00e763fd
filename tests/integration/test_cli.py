"""The CLI against a running daemon on a private bus, and without one."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import Daemon, RemoteJournal, written_at_crash


async def cli(address: str | None, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    if address is not None:
        env["DBUS_SESSION_BUS_ADDRESS"] = address
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crashbroker", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_list_show_dismiss(daemon: Daemon, remote_journal: RemoteJournal):
    entry = remote_journal.coredump("kronometer-sigsegv.export")
    pid = int(entry["COREDUMP_PID"])
    (daemon.kcrash_dir / f"{pid}.ini").write_text(
        f"[KCrash]\nexe=/usr/bin/kronometer\nprogramname=Kronometer\npid={pid}\n"
    )
    written_at_crash(daemon.kcrash_dir / f"{pid}.ini", entry)
    remote_journal.append(entry)
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    crash = await daemon.client.crash(pid)
    addr = daemon.bus_address

    rc, out, _ = await cli(addr, "list", "--json")
    assert rc == 0
    assert [c["id"] for c in json.loads(out)] == [crash["id"]]

    rc, out, _ = await cli(addr, "list")
    assert rc == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["ID", "TIME", "PID", "SIGNAL"]
    assert row.startswith(crash["id"]) and "Kronometer" in row and "(past)" in row

    rc, out, _ = await cli(addr, "show", crash["id"][:6])
    assert rc == 0
    assert "Kronometer" in out and "programname=Kronometer" in out and str(pid) in out

    rc, out, _ = await cli(addr, "show", crash["id"], "--json")
    assert json.loads(out)["pid"] == pid

    rc, _, err = await cli(addr, "show", "cffffffff")
    assert rc == 1 and "NoSuchCrash" in err

    rc, _, _ = await cli(addr, "dismiss", crash["id"])
    assert rc == 0
    assert not (daemon.kcrash_dir / f"{pid}.ini").exists()
    rc, out, _ = await cli(addr, "list")
    assert out.strip() == "No crashes."
    rc, out, _ = await cli(addr, "list", "--all", "--json")
    assert json.loads(out)[0]["state"] == "dismissed"

    rc, out, _ = await cli(addr, "stats", "--json")
    assert json.loads(out)["published"] == 1


async def test_watch_prints_one_json_line_per_signal(daemon: Daemon, remote_journal: RemoteJournal):
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": daemon.bus_address}
    watch = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crashbroker", "watch", "--count", "2", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert watch.stderr is not None and watch.stdout is not None
    # watch says so on stderr once its match rule is installed.
    assert "watching" in (await watch.stderr.readline()).decode()
    entry = remote_journal.coredump()
    remote_journal.append(entry)
    first_line = asyncio.ensure_future(watch.stdout.readline())
    await first_line
    event = json.loads(first_line.result())
    assert event["signal"] == "CrashDetected"
    await daemon.call("Dismiss", "s", event["id"])
    second = json.loads(await watch.stdout.readline())
    assert second == {"signal": "CrashRemoved", "id": event["id"]}
    assert await watch.wait() == 0


async def test_not_running_is_a_clear_error(bus_address: str):
    rc, out, err = await cli(bus_address, "list")
    assert rc == 3
    assert out == ""
    assert "daemon is not running" in err and "Traceback" not in err


async def test_no_session_bus_is_a_clear_error(tmp_path):
    rc, _, err = await cli(f"unix:path={tmp_path}/nothing-here", "list")
    assert rc == 3
    assert "cannot connect to the session bus" in err and "Traceback" not in err


def test_the_installed_scripts_start_their_programs() -> None:
    """The console scripts go through crashbroker.entry (which keeps OpenSSL out)."""
    bindir = Path(sys.executable).parent
    for script, words in (
        ("crashbroker", "Crash feed on the session bus"),
        ("crashbroker-launcher", "usage: crashbroker-launcher"),
        ("crashbroker-notifier", "usage: crashbroker-notifier"),
    ):
        done = subprocess.run(
            [bindir / script, "--help"], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr
        assert words in done.stdout


def test_openssl_is_kept_where_a_hash_is_not_built_in() -> None:
    """Without its OpenSSL backend hashlib serves each hash from a built-in module; a Python
    built without some of those keeps the backend rather than lose sha512 (`import random`)."""
    probe = (
        "import sys\n"
        "missing = sys.argv[1:]\n"
        "for name in missing: sys.modules[name] = None\n"
        "from crashbroker import entry\n"
        "entry._without_openssl()\n"
        "import hashlib, random, asyncio\n"
        "print(sys.modules.get('_hashlib') is None, sys.modules.get('ssl') is None,"
        " hashlib.sha512(b'').hexdigest()[:8], hashlib.blake2b(b'').hexdigest()[:8])\n"
    )
    for missing, blocked in (([], "True"), (["_sha512", "_sha2"], "False")):
        done = subprocess.run(
            [sys.executable, "-c", probe, *missing],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [blocked, "True", "cf83e135", "786a02f7"], done.stdout
        assert "ERROR" not in done.stderr, done.stderr
