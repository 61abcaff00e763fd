"""The CLI against a running daemon on a private bus, and without one."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import Daemon, RemoteJournal, cli, written_at_crash


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


# ---- coredumpctl's habits: matches, -S/-U, -r, -1, -n, --json=MODE, --no-legend, the pager ----


async def _three_crashes(daemon: Daemon, remote_journal: RemoteJournal) -> dict[str, Any]:
    """sleep 10 days ago, kronometer 5 days ago (in app.service), sleep 2 days ago (SIGABRT),
    at 10:00, 12:00 and 08:00 local time; by name: ``old``, ``kron``, ``new``."""
    midnight = datetime.combine(date.today(), datetime.min.time())
    at = {
        "old": midnight - timedelta(days=10) + timedelta(hours=10),
        "kron": midnight - timedelta(days=5) + timedelta(hours=12),
        "new": midnight - timedelta(days=2) + timedelta(hours=8),
    }
    usec = {k: int(v.timestamp()) * 1_000_000 for k, v in at.items()}
    extra: dict[str, dict[str, str]] = {
        "old": {},
        "kron": {"COREDUMP_UNIT": "app.service"},
        "new": {"COREDUMP_SIGNAL": "6", "COREDUMP_SIGNAL_NAME": "SIGABRT"},
    }
    pids = {"old": 910_001, "kron": 910_002, "new": 910_003}
    for name, template in (
        ("old", "sleep-sigsegv.export"),
        ("kron", "kronometer-sigsegv.export"),
        ("new", "sleep-sigsegv.export"),
    ):
        entry = remote_journal.coredump(
            template,
            pid=pids[name],
            COREDUMP_TIMESTAMP=str(usec[name]),
            __REALTIME_TIMESTAMP=str(usec[name] + 400_000),
            **extra[name],
        )
        if name == "kron":  # KCrash metadata: the app's name is Kronometer
            ini = daemon.kcrash_dir / f"{pids[name]}.ini"
            ini.write_text(
                f"[KCrash]\nexe=/usr/bin/kronometer\nprogramname=Kronometer\npid={pids[name]}\n"
            )
            written_at_crash(ini, entry)
        remote_journal.append(entry)
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    ids = {name: (await daemon.client.crash(pid))["id"] for name, pid in pids.items()}
    return {"ids": ids, "at": at}


async def _listed(addr: str, *args: str) -> list[str]:
    rc, out, err = await cli(addr, "list", "--json", *args)
    assert rc == 0, err
    return [c["id"] for c in json.loads(out)]


async def test_list_matches_like_coredumpctl(daemon: Daemon, remote_journal: RemoteJournal):
    crashes = await _three_crashes(daemon, remote_journal)
    old, kron, new = (crashes["ids"][k] for k in ("old", "kron", "new"))
    addr = daemon.bus_address
    assert await _listed(addr) == [new, kron, old]
    assert await _listed(addr, "910001") == [old]  # a PID
    assert await _listed(addr, "sleep") == [new, old]  # COMM
    assert await _listed(addr, "Kronometer") == [kron]  # the app's name
    assert await _listed(addr, "/usr/bin/kronometer") == [kron]  # the exe
    assert await _listed(addr, "signal_name=SIGABRT") == [new]  # FIELD=VALUE
    assert await _listed(addr, "COREDUMP_PID=910002") == [kron]
    assert await _listed(addr, "unit=app.service") == [kron]  # a key only full records have
    assert await _listed(addr, "910001", "910003") == [new, old]  # one field: OR
    assert await _listed(addr, "sleep", "signal_name=SIGSEGV") == [old]  # fields: AND
    assert await _listed(addr, "sleep", "-n", "1") == [new]  # the limit after the match
    rc, _, err = await cli(addr, "list", "colour=red")
    assert rc == 2 and "no record key 'colour'" in err


async def test_list_since_until_with_dates_and_relative_times(
    daemon: Daemon, remote_journal: RemoteJournal
):
    crashes = await _three_crashes(daemon, remote_journal)
    old, kron, new = (crashes["ids"][k] for k in ("old", "kron", "new"))
    addr = daemon.bus_address
    day = crashes["at"]["kron"].date()
    after = day + timedelta(days=1)
    assert await _listed(addr, "-S", str(day), "-U", str(after)) == [kron]
    assert await _listed(addr, "--since", f"{day} 12:00:00", "--until", f"{day} 12:00") == [kron]
    assert await _listed(addr, "-S", f"{day} 12:00:01") == [new]
    assert await _listed(addr, "-U", f"{day} 11:59") == [old]
    assert await _listed(addr, "-S", "-4d") == [new]  # relative, with a leading dash
    assert await _listed(addr, "--since=-7d", "-U", "-3d") == [kron]
    assert await _listed(addr, "-U", "yesterday") == [new, kron, old]
    assert await _listed(addr, "-S", "today") == []
    assert await _listed(addr, "--since", "3600") == []  # seconds ago, as before
    assert await _listed(addr, "--since", str(11 * 86400)) == [new, kron, old]
    rc, _, err = await cli(addr, "list", "-S", "last tuesday")
    assert rc == 2 and "invalid time 'last tuesday'" in err


async def test_list_order_count_json_modes_and_legend(
    daemon: Daemon, remote_journal: RemoteJournal
):
    crashes = await _three_crashes(daemon, remote_journal)
    old, kron, new = (crashes["ids"][k] for k in ("old", "kron", "new"))
    addr = daemon.bus_address
    assert await _listed(addr, "-r") == [old, kron, new]
    assert await _listed(addr, "-1") == [new]
    assert await _listed(addr, "-n", "2") == [new, kron]
    assert await _listed(addr, "-n", "2", "-r") == [kron, new]  # the newest 2, oldest first
    assert await _listed(addr, "--limit", "1") == [new]

    _, short, _ = await cli(addr, "list", "--json", "sleep")  # a bare --json before a match
    _, short2, _ = await cli(addr, "list", "sleep", "--json=short")
    _, pretty, _ = await cli(addr, "list", "--json=pretty", "sleep")
    assert short == short2 and len(short.splitlines()) == 1
    assert len(pretty.splitlines()) > 20 and pretty.startswith("[\n  {\n    ")
    assert json.loads(short) == json.loads(pretty)
    _, shown, _ = await cli(addr, "show", new, "--json=pretty")
    assert shown.startswith("{\n  ") and json.loads(shown)["id"] == new

    _, table, _ = await cli(addr, "list", "-r")
    _, bare, _ = await cli(addr, "list", "-r", "--no-legend")
    assert table.splitlines()[0].split()[:2] == ["ID", "TIME"]
    assert bare.splitlines() == table.splitlines()[1:]
    assert [line.split()[0] for line in bare.splitlines()] == [old, kron, new]
    _, none, _ = await cli(addr, "list", "--no-legend", "-S", "today")
    assert none == ""


async def _on_a_terminal(addr: str, env: dict[str, str], *args: str) -> tuple[int, str]:
    """The CLI with a pseudo-terminal as stdout: its return code and what the terminal got."""
    master, slave = os.openpty()
    env = {**{k: v for k, v in os.environ.items() if not k.endswith("PAGER")}, **env}
    env["DBUS_SESSION_BUS_ADDRESS"] = addr
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crashbroker", *args, env=env, stdout=slave,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = await asyncio.to_thread(os.read, master, 65536)
        except OSError:  # EIO: the terminal's last writer closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, b"".join(chunks).decode().replace("\r\n", "\n")


async def test_list_show_backtrace_page_on_a_terminal_only(
    daemon: Daemon, remote_journal: RemoteJournal, tmp_path: Path
):
    crashes = await _three_crashes(daemon, remote_journal)
    new = crashes["ids"]["new"]
    addr = daemon.bus_address
    paged = tmp_path / "paged"
    # The pager's command line goes through sh, as systemd's does; LESS is set for it.
    pager = f'{{ echo "LESS=$LESS"; cat; }} > {paged}'
    rc, seen = await _on_a_terminal(addr, {"PAGER": pager}, "list")
    assert rc == 0 and seen == ""
    text = paged.read_text()
    assert text.startswith("LESS=FRSXMK\nID ") and new in text
    paged.unlink()

    rc, seen = await _on_a_terminal(addr, {"SYSTEMD_PAGER": pager, "PAGER": "false"}, "show", new)
    assert rc == 0 and "Crash: " in paged.read_text() and seen == ""
    paged.unlink()

    rc, seen = await _on_a_terminal(addr, {"PAGER": pager}, "list", "--no-pager")
    assert rc == 0 and seen.startswith("ID ") and not paged.exists()
    rc, seen = await _on_a_terminal(addr, {"PAGER": "cat"}, "show", new)  # cat: none
    assert rc == 0 and "Crash: " in seen
    # Not a terminal: never a pager.
    env_pager = {**os.environ, "PAGER": pager}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crashbroker", "list", env={**env_pager, "DBUS_SESSION_BUS_ADDRESS":
        addr}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().startswith("ID ") and not paged.exists()
    # backtrace is paged too (its gdb run fails without a core: nothing to page, no pager).
    rc, seen = await _on_a_terminal(addr, {"PAGER": pager}, "backtrace", new, "--timeout", "30")
    assert not paged.exists()
