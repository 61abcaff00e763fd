"""install, cleanup and doctor on real files, the real systemd-analyze and a real daemon."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Daemon, RemoteJournal, as_user, missing_rig, write_ini
from crashbroker.domain.cleanup import DAY_S, FileInfo, stale_files
from crashbroker.domain.doctor import Facts, Status, checks, exit_code

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


async def run(*args: str, env: dict[str, str], user: str | None = None) -> tuple[int, str, str]:
    cmd = [str(BIN / "crashbroker"), *args]
    if user:
        cmd = [*as_user(user), "-m", "crashbroker", *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    h = tmp_path / "home"
    run_dir = tmp_path / "run"
    for d in (h, run_dir):
        d.mkdir()
    run_dir.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DBUS_"))}
    env.update(HOME=str(h), XDG_RUNTIME_DIR=str(run_dir), PATH=f"{BIN}:/usr/bin:/bin")
    return env


# ---- install + systemd-analyze verify --------------------------------------------------------


async def test_install_writes_units_that_systemd_analyze_verifies_clean(home: dict[str, str]):
    if shutil.which("systemd-analyze") is None:
        missing_rig("systemd-analyze missing (package systemd)")
    rc, _, err = await run("install", env=home)
    assert rc == 0, err
    units = Path(home["HOME"]) / ".config" / "systemd" / "user"
    activation = Path(home["HOME"]) / ".local/share/dbus-1/services/org.kde.crashbroker1.service"
    names = sorted(p.name for p in units.iterdir())
    assert names == sorted(
        [
            "crashbroker.service",
            "crashbroker-launcher.service",
            "crashbroker-notifier.service",
            "crashbroker-cleanup.service",
            "crashbroker-cleanup.timer",
        ]
    )
    assert f"Exec={BIN}/crashbroker daemon" in activation.read_text()
    assert "SystemdService=crashbroker.service" in activation.read_text()
    for unit in sorted(units.iterdir()):
        text = unit.read_text()
        assert "@BINDIR@" not in text
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--user", "--man=no", str(unit)],
            env=home,
            capture_output=True,
            text=True,
            check=False,
        )
        # Any diagnostic about our unit fails the test (unknown keys, bad paths, bad values).
        assert verify.returncode == 0 and verify.stderr.strip() == "", (unit.name, verify.stderr)
    daemon_unit = (units / "crashbroker.service").read_text()
    for directive in ("Type=dbus", "BusName=org.kde.crashbroker1", "NoNewPrivileges=yes",
                      "ProtectSystem=strict", "StateDirectory=crashbroker"):  # fmt: skip
        assert directive in daemon_unit
    for unit in ("crashbroker-launcher.service", "crashbroker-notifier.service"):
        text = (units / unit).read_text()
        assert "PartOf=graphical-session.target" in text
        assert "WantedBy=graphical-session.target" in text

    # The verifier is not vacuous: a broken unit is reported.
    broken = units.parent / "broken.service"
    broken.write_text(daemon_unit.replace("Type=dbus", "Type=dbus\nBogusKey=1"))
    bad = subprocess.run(
        ["systemd-analyze", "verify", "--user", "--man=no", str(broken)],
        env=home, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "BogusKey" in bad.stderr


async def test_install_is_idempotent_respects_foreign_files_and_uninstalls(
    home: dict[str, str],
):
    assert (await run("install", env=home))[0] == 0
    rc, out, _ = await run("install", env=home)
    assert rc == 0 and "wrote" not in out and out.count("unchanged") == 6
    units = Path(home["HOME"]) / ".config/systemd/user"
    mine = units / "crashbroker-notifier.service"
    mine.write_text("[Service]\nExecStart=/bin/true\n")  # the user's own file now
    rc, _, err = await run("install", env=home)
    assert rc == 1 and "was not written by crashbroker" in err
    assert mine.read_text() == "[Service]\nExecStart=/bin/true\n"
    rc, out, _ = await run("install", "--uninstall", env=home)
    assert rc == 0 and out.count("removed") == 5
    assert mine.exists()  # not ours: left alone
    assert (await run("install", "--force", env=home))[0] == 0
    assert "crashbroker-notifier" in mine.read_text()


# ---- cleanup ------------------------------------------------------------------------------------


def test_stale_files_decision() -> None:
    now = 1_000 * DAY_S
    files = [
        FileInfo("old.ini", now - 8 * DAY_S, True),
        FileInfo("young.ini", now - 6 * DAY_S, True),
        FileInfo("pending.ini", now - 9 * DAY_S, True),
        FileInfo("link.ini", now - 9 * DAY_S, False),
        FileInfo("notes.txt", now - 99 * DAY_S, True),
        FileInfo(".hidden.ini", now - 99 * DAY_S, True),
    ]
    v = stale_files(files, now=now, max_age_s=7 * DAY_S, pending=frozenset({"pending.ini"}))
    assert v.remove == ("old.ini",)
    assert v.keep_pending == ("pending.ini",)
    assert v.skipped == ("link.ini",)


def age(path: Path, days: float) -> Path:
    t = time.time() - days * DAY_S
    os.utime(path, (t, t), follow_symlinks=False)
    return path


async def test_cleanup_removes_only_old_regular_files_inside_its_dirs(
    daemon: Daemon, remote_journal: RemoteJournal, tmp_path: Path
):
    kdir = daemon.kcrash_dir
    outside = tmp_path / "precious.ini"
    outside.write_text("not ours")
    age(outside, 30)
    old = age(write_ini(kdir / "111.ini", "[KCrash]\nexe=/usr/bin/x\n"), 8)
    young = age(write_ini(kdir / "112.ini", "[KCrash]\nexe=/usr/bin/x\n"), 2)
    (kdir / "113.ini").symlink_to(outside)
    os.mkfifo(kdir / "114.ini")
    age(kdir / "114.ini", 30)
    (kdir / "115.ini").mkdir()
    age(kdir / "115.ini", 30)
    # A crash still shown keeps its INI, however old.
    entry = remote_journal.coredump("kronometer-sigsegv.export")
    pid = int(entry["COREDUMP_PID"])
    pending = write_ini(
        kdir / f"{pid}.ini", f"[KCrash]\nexe=/usr/bin/kronometer\nappname=kronometer\npid={pid}\n"
    )
    remote_journal.append(entry)
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    await daemon.client.crash(pid)
    age(pending, 20)
    drkonqi_dir = daemon.cache_home / "drkonqi" / "crashes"
    drkonqi_dir.mkdir(parents=True)
    old_record = drkonqi_dir / "k.b.1.2.ini"
    old_record.write_text("{}")
    age(old_record, 40)

    env = daemon.env()
    rc, out, err = await run("cleanup", "--dry-run", "--json", env=env)
    assert rc == 0, err
    dry = json.loads(out)
    assert dry["removed"] == [str(old), str(old_record)] and old.exists()
    rc, out, err = await run("cleanup", "--json", env=env)
    assert rc == 0, err
    report = json.loads(out)
    assert report["removed"] == [str(old), str(old_record)]
    assert report["kept_pending"] == [str(pending)]
    assert sorted(report["skipped"]) == [str(kdir / n) for n in ("113.ini", "114.ini", "115.ini")]
    assert report["expired"] == 0  # the replayed crash is an hour old
    assert not old.exists() and young.exists() and pending.exists()
    assert outside.read_text() == "not ours" and (kdir / "113.ini").is_symlink()


async def test_cleanup_expires_old_rows_through_the_daemon(
    daemon: Daemon, remote_journal: RemoteJournal
):
    old = remote_journal.coredump()
    old["COREDUMP_TIMESTAMP"] = str(int((time.time() - 40 * DAY_S) * 1_000_000)).encode()
    new = remote_journal.coredump()
    remote_journal.append(old, new)
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    for e in (old, new):
        await daemon.client.crash(int(e["COREDUMP_PID"]))
    rc, out, err = await run("cleanup", "--json", env=daemon.env())
    assert rc == 0, err
    assert json.loads(out)["expired"] == 1
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    assert [c["pid"] for c in listed] == [int(new["COREDUMP_PID"])]


async def test_cleanup_refuses_a_metadata_dir_that_is_a_link(home: dict[str, str], tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    victim = age(write_ini(target / "1.ini", "[KCrash]\n"), 30)
    cache = Path(home["HOME"]) / ".cache"
    cache.mkdir()
    (cache / "kcrash-metadata").symlink_to(target)
    rc, _, err = await run("cleanup", env=home)
    assert rc == 1 and "refused" in err
    assert victim.exists()


# ---- doctor -------------------------------------------------------------------------------------


def facts(**changes: object) -> Facts:
    base = Facts(
        core_pattern="|/lib/systemd/systemd-coredump %P", uid=1000, user="u",
        journal_groups=("systemd-journal",), journal_readable=False, coredumpctl="/usr/bin/c",
        gdb="/usr/bin/gdb", coredump_processor="/p", drkonqi="/d", drkonqi_version="5",
        drkonqi_launcher_enabled=None, bus_error=None, daemon_owner=":1.2",
        daemon_version="0.1.0", state_dir="/s", state_writable=True,
    )  # fmt: skip
    return (
        Facts(**{**base.__dict__, **changes})
        if hasattr(base, "__dict__")
        else _replace(base, changes)
    )


def _replace(base: Facts, changes: dict[str, object]) -> Facts:

    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "name", "status"),
    [
        ({}, "journal", Status.OK),
        ({"journal_groups": ()}, "journal", Status.FAIL),
        ({"journal_groups": (), "uid": 0}, "journal", Status.OK),
        ({"core_pattern": "core"}, "core_pattern", Status.FAIL),
        ({"coredumpctl": None}, "coredumpctl", Status.FAIL),
        ({"gdb": None}, "gdb", Status.WARN),
        ({"coredump_processor": None}, "kcrash-metadata", Status.WARN),
        ({"bus_error": "no bus"}, "session-bus", Status.FAIL),
        ({"daemon_owner": None}, "daemon", Status.WARN),
        ({"state_writable": False}, "state", Status.FAIL),
        ({"drkonqi_launcher_enabled": "/etc/x"}, "double-launch", Status.WARN),
    ],
)
def test_doctor_verdicts(changes: dict[str, object], name: str, status: Status) -> None:
    results = checks(facts(**changes))
    [check] = [c for c in results if c.name == name]
    assert check.status is status
    assert exit_code(results) == (1 if status is Status.FAIL else 0)


async def test_doctor_on_this_machine(
    daemon: Daemon, remote_journal: RemoteJournal, tmp_path: Path
):
    env = daemon.env()
    rc, out, _ = await run("doctor", "--json", env=env)
    by_name = {c["name"]: c for c in json.loads(out)}
    assert by_name["session-bus"]["status"] == "ok"
    assert by_name["daemon"]["status"] == "warn"  # not started yet
    assert rc == 0

    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    rc, out, _ = await run("doctor", "--json", env=env)
    by_name = {c["name"]: c for c in json.loads(out)}
    assert by_name["daemon"]["status"] == "ok" and "0.1.0" in by_name["daemon"]["detail"]

    libexec = tmp_path / "libexec-empty"
    libexec.mkdir()
    no_bus = {k: v for k, v in env.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    no_bus.update(LIBEXEC_PATH=str(libexec), DISPLAY="")
    rc, out, _ = await run("doctor", env=no_bus)
    assert rc == 1 and "FAIL  session-bus" in out


async def test_doctor_explains_missing_journal_access_to_an_ordinary_user():
    prefix = as_user("nobody")
    home = Path(tempfile.mkdtemp(prefix="crashbroker-nobody-"))  # pytest's tmp is root-only
    try:
        home.chmod(0o777)
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
        proc = await asyncio.create_subprocess_exec(
            *prefix, "-m", "crashbroker", "doctor", env=env, cwd=home,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    text = out.decode()
    assert proc.returncode == 1, err.decode()
    assert "FAIL  journal" in text and "usermod -aG systemd-journal nobody" in text
