"""End to end as an ordinary user in a real desktop session, through the installed units.

Everything here runs as the user ``cbsession`` (uid >= 1000, no groups) of a session brought up
by ``scripts/rig session up``: its crashes are real SIGSEGVs of real programs, dumped by the
kernel through systemd-coredump into the persistent journal's ``user-UID.journal``; the daemon,
launcher and notifier are the user's own enabled units, sandboxed as units/ says; D-Bus is the
user manager's ``dbus.socket``. A trust rule that rejects ordinary users' crashes fails
``test_a_plain_programs_crash_reaches_busctl_and_the_cli`` and everything after it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import COREDUMP_MESSAGE_ID, boot_id
from desktop_session import DISPLAY, ROOT, Session, Watcher, proc_state, wait_until
from real_process import idle_in_event_loop

pytestmark = [pytest.mark.rig, pytest.mark.timeout(600)]


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_the_user_is_ordinary_and_reads_its_own_journal(installed: Session):
    s = installed
    assert s.uid >= 1000
    assert os.getgrouplist(s.name, s.gid) == [s.gid]  # no systemd-journal, no adm
    machine = Path("/etc/machine-id").read_text().strip()
    assert Path(f"/var/log/journal/{machine}/system.journal").exists()  # persistent
    # journald gives the user its own file (and an ACL on it); no group needed.
    assert Path(f"/var/log/journal/{machine}/user-{s.uid}.journal").exists()


def test_units_are_enabled_active_and_sandboxed(installed: Session):
    s = installed
    for unit in ("crashbroker.service", "crashbroker-launcher.service",
                 "crashbroker-notifier.service", "crashbroker-cleanup.timer"):  # fmt: skip
        props = s.unit(unit, "LoadState", "ActiveState", "UnitFileState", "FragmentPath")
        assert props["LoadState"] == "loaded", (unit, props)
        assert props["ActiveState"] == "active", (unit, props)
        assert props["UnitFileState"] == "enabled", (unit, props)
        assert props["FragmentPath"].startswith(f"{s.home}/.config/systemd/user/"), props
    # doctor tells the truth here: the journal needs no group, every unit is up.
    doctor = s.run("crashbroker", "doctor", check=False).stdout.splitlines()
    journal = next(line for line in doctor if line.split()[1:2] == ["journal"])
    assert journal.startswith("  ok") and "no group needed" in journal, journal
    for unit in ("crashbroker.service", "crashbroker-launcher.service",
                 "crashbroker-notifier.service", "crashbroker-cleanup.timer"):  # fmt: skip
        line = next(line for line in doctor if line.split()[1:2] == [unit])
        assert line.startswith("  ok") and "active (enabled)" in line, line
    daemon = status_of(s.main_pid())
    assert daemon["Uid"].split()[0] == str(s.uid)
    assert daemon["NoNewPrivs"] == "1"
    assert daemon["Seccomp"] == "2"  # SystemCallFilter= is in force


def test_dbus_activation_starts_the_stopped_daemon(installed: Session):
    s = installed
    s.systemctl("stop", "crashbroker.service")
    assert s.unit("crashbroker.service", "ActiveState")["ActiveState"] != "active"
    # The call itself starts it: the bus asks the user manager for crashbroker.service.
    version = s.run(
        "busctl", "--user", "get-property", "org.kde.crashbroker1", "/org/kde/crashbroker1",
        "org.kde.crashbroker1.Manager", "Version",
    ).stdout  # fmt: skip
    assert version.startswith('s "')
    assert s.unit("crashbroker.service", "ActiveState")["ActiveState"] == "active"


def test_a_plain_programs_crash_reaches_busctl_and_the_cli(installed: Session, watcher: Watcher):
    s = installed
    before = s.stats()
    pid = s.crash_sleep()
    crash = watcher.detected(pid)
    # The sandboxed unit watches systemd-coredump's directory: the core's arrival woke it
    # (issue 16's hints), not only journald's notification ~250 ms later.
    assert s.stats()["hints"] > before["hints"]
    assert crash["exe"].startswith(f"{s.home}/bin/crasher-")
    assert (crash["uid"], crash["signal_name"]) == (s.uid, "SIGSEGV")
    assert crash["past"] is False
    assert crash["core_available"] is True
    listed = s.crash_of(pid)
    assert listed is not None and listed["id"] == crash["id"]
    cli = json.loads(s.run("crashbroker", "list", "--json").stdout)
    assert [c["pid"] for c in cli].count(pid) == 1
    assert s.stats()["forged"] == before["forged"]


def test_backtrace_runs_gdb_inside_the_sandboxed_unit(installed: Session, watcher: Watcher):
    s = installed
    pid = s.crash_sleep()
    crash = watcher.detected(pid)
    bt = s.run("crashbroker", "backtrace", crash["id"], timeout=180).stdout
    assert "#0 " in bt
    assert "nanosleep" in bt  # sleep's own frames: gdb read this crash's core
    # It was the daemon (in its unit) that ran gdb: the cached trace is on the record now.
    assert s.busctl("GetCrash", "s", crash["id"])[0]["backtrace_available"] is True


def test_notifications_reach_a_real_server_in_the_session(installed: Session, watcher: Watcher):
    s = installed
    before = len(s.notifications())
    pid = s.crash_sleep()
    watcher.detected(pid)
    got = wait_until("dunst to show the crash", lambda: s.notifications()[before:], 30)
    crash = s.crash_of(pid)
    assert crash is not None
    name = Path(crash["exe"]).name
    assert any(name in n.get("DUNST_SUMMARY", "") for n in got), got


def test_forgeries_of_the_same_user_are_dropped(installed: Session, watcher: Watcher):
    """Everything a process of the user can write to the journal, then one real crash: when
    that arrives, the daemon has read every forgery before it (journal order)."""
    s = installed
    real_pid = s.crash_sleep()
    real = watcher.detected(real_pid)
    core = real["core_filename"]
    assert core.startswith("/var/lib/systemd/coredump/")
    forged_before = s.stats()["forged"]
    records_before = len(s.records())
    mid = "fc2e22bc6ee647b6b90729ab34a250b1"
    fake_pid = 4_000_000 - 7  # no process of this machine has it
    cache = s.home / ".cache" / "kcrash-metadata"
    # A KCrash INI for the fake pid: a forged crash must not get DrKonqi launched either.
    s.run("mkdir", "-p", str(cache))
    s.run("sh", "-c", f"printf '[KCrash]\\nexe=/usr/bin/sleep\\nappname=sleep\\n"
          f"[KCrashComplete]\\n' > {cache}/{fake_pid}.ini")  # fmt: skip
    fields = (
        f"MESSAGE_ID={mid}", f"COREDUMP_PID={fake_pid}", f"COREDUMP_UID={s.uid}",
        f"COREDUMP_GID={s.gid}", "COREDUMP_SIGNAL=11", "COREDUMP_EXE=/usr/bin/sleep",
        "COREDUMP_TIMESTAMP=1796000000000000", "COREDUMP_COMM=sleep",
    )  # fmt: skip
    py = str(s.venv / "bin" / "python")
    send = (
        "import sys; from systemd import journal; "
        "journal.send('forged', **dict(a.split('=', 1) for a in sys.argv[1:]))"
    )
    own = ("COREDUMP_PID", "COREDUMP_TIMESTAMP", "COREDUMP_EXE")
    others_numbers = [f for f in fields if not f.startswith(own)]
    forgeries = [
        # logger: user fields through the native protocol (read from stdin below).
        ["logger", "--journald"],
        # systemd-cat names itself systemd-coredump, but a stream sets no fields: no entry of
        # a crash at all (not counted below), and nothing published.
        ["systemd-cat", "--identifier=systemd-coredump", "sh", "-c", f"echo forged {mid}"],
        [py, "-c", send, *fields],
        # A sender that exits at once: journald often records no _EXE for it.
        [py, "-c", f"{send}; import os; os._exit(0)", *fields,
         "SYSLOG_IDENTIFIER=systemd-coredump"],
        # Naming the real core of another crash, with that crash's numbers but another program.
        [py, "-c", send, *others_numbers, f"COREDUMP_PID={real_pid}",
         f"COREDUMP_TIMESTAMP={real['timestamp']}", "COREDUMP_EXE=/usr/bin/firefox",
         f"COREDUMP_FILENAME={core}"],
        # ... and with another crash's core under a pid of its own.
        [py, "-c", send, *fields, f"COREDUMP_FILENAME={core}"],
    ]  # fmt: skip
    logger_input = "\n".join([*fields, "MESSAGE=forged", ""])
    for argv in forgeries:
        proc = subprocess.run(
            s.argv(*argv), input=logger_input if argv[0] == "logger" else None,
            capture_output=True, text=True, timeout=30, cwd="/",
        )  # fmt: skip
        assert proc.returncode == 0, (argv, proc.stderr)
    # systemd-coredump's own --backtrace mode, which any user may run: it appends what it reads
    # on stdin, so a MESSAGE_ID of a crash rides on systemd-coredump's _EXE.
    holder = s.spawn("sleep", "60")
    try:
        wait_until("sleep to exec", lambda: os.path.exists(f"/proc/{holder.pid}/exe"))
        stdin = "\n".join([*fields, f"COREDUMP_FILENAME={core}", "MESSAGE=forged", "", ""])
        proc = subprocess.run(
            s.argv("/lib/systemd/systemd-coredump", "--backtrace", str(holder.pid), str(s.uid),
                   str(s.gid), "11", "1796000000000000", "0", "vm"),
            input=stdin, capture_output=True, text=True, timeout=30, cwd="/",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    finally:
        holder.kill()
        holder.wait()

    sentinel = s.crash_sleep()
    watcher.detected(sentinel)
    stats = s.stats()
    # logger, journal.send, the quick exit, two named cores, --backtrace mode (not systemd-cat).
    assert stats["forged"] - forged_before == 6
    listed = {c["pid"]: c for c in s.crashes()}
    assert fake_pid not in listed
    assert listed[real_pid]["exe"] == real["exe"]  # not renamed firefox
    detected = [e for e in watcher.events if e["signal"] == "CrashDetected"]
    assert {e["crash"]["pid"] for e in detected} == {real_pid, sentinel}
    assert not any(f"--pid {fake_pid}" in r for r in s.records()[records_before:])
    bt = s.run("crashbroker", "backtrace", real["id"], timeout=180).stdout
    assert "nanosleep" in bt
    # The daemon's warnings reach the user's journal with their priority (issue 15: `<N>`
    # prefixes on the unit's stderr stream): `journalctl --user -p warning` finds them.
    warnings = s.run("journalctl", "--user", "-p", "warning", "-o", "json", "--no-pager").stdout
    dropped = [
        e for e in map(json.loads, warnings.splitlines())
        if "dropped forged coredump entry" in str(e.get("MESSAGE", ""))
    ]  # fmt: skip
    assert dropped, "no forged-entry warning in the user's journal at priority <= 4"
    assert all(e["PRIORITY"] == "4" for e in dropped)
    assert not any(str(e["MESSAGE"]).startswith("<4>") for e in dropped)


def test_kill_9_restart_catches_up_with_nothing_lost_or_repeated(
    installed: Session, watcher: Watcher
):
    s = installed
    earlier = s.crash_sleep()
    watcher.detected(earlier)
    old = s.main_pid()
    os.kill(old, signal.SIGKILL)
    wait_until("the daemon to die", lambda: not Path(f"/proc/{old}").exists(), 10)
    # A crash while no daemon runs: Restart= brings it back and the catch-up finds it.
    during = s.crash_sleep()
    wait_until(
        "Restart= to start a new daemon",
        lambda: (
            s.main_pid() not in (0, old)
            and s.unit("crashbroker.service", "ActiveState")["ActiveState"] == "active"
        ),
        30,
    )
    crash = watcher.detected(during)
    assert crash["past"] is True  # found by the catch-up, not live
    after = s.crash_sleep()
    watcher.detected(after)
    detected = [e["crash"]["pid"] for e in watcher.events if e["signal"] == "CrashDetected"]
    assert detected == [earlier, during, after]  # each once, nothing older again
    pids = [c["pid"] for c in s.crashes()]
    assert all(pids.count(p) == 1 for p in (earlier, during, after))
    assert int(s.unit("crashbroker.service", "NRestarts")["NRestarts"]) >= 1


def test_the_cleanup_timer_is_armed_and_its_service_runs(installed: Session):
    s = installed
    timers = s.systemctl("list-timers", "--all").stdout
    assert "crashbroker-cleanup.timer" in timers
    s.systemctl("start", "crashbroker-cleanup.service")  # oneshot: returns when it ended
    props = s.unit(
        "crashbroker-cleanup.service", "Result", "ExecMainStatus", "ExecMainStartTimestamp"
    )
    assert props["Result"] == "success", props
    assert props["ExecMainStatus"] == "0", props
    assert props["ExecMainStartTimestamp"], props


# ---- KDE: KCrash, DrKonqi and crashbroker-launcher -------------------------------------------


def handler_installed(pid: int, sig: int) -> bool:
    """KCrash's handler is in place (``SigCgt``), and the main window exists (the icon cache is
    mapped after KAboutData is set: a crash before gives an INI without the program's name)."""
    try:
        status = status_of(pid)
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return (
        bool(int(status["SigCgt"], 16) & (1 << (sig - 1)))
        and "icon-cache.kcache" in maps
        and idle_in_event_loop(pid)  # a signal mid-malloc deadlocks KCrash's handler
    )


def drkonqi_for(pid: int) -> int | None:
    """The DrKonqi that KCrash started for ``pid`` (its child, from the crash handler)."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[0].endswith(b"/drkonqi") and str(pid).encode() in cmdline:
            return int(child)
    return None


def test_kf5_without_kcrash_dump_only_holds_the_crash_back_behind_drkonqi(
    installed: Session, watcher: Watcher
):
    """KF5's default on a desktop with DrKonqi installed, seen for real: KCrash starts the
    system's DrKonqi itself, from the crash handler, and holds the app stopped meanwhile. No core
    is dumped while it waits, so the crash is nowhere: not in the journal, not in the feed, and
    crashbroker-launcher cannot start the one DrKonqi. doctor says so.

    What ends the wait is the user: closing DrKonqi's dialog made the app dump (seen by hand,
    with the KCrash INI removed by then, so the crash arrived late and without its metadata);
    DrKonqi 5.27 shows that dialog only from its tray entry, which this session has no tray to
    show, so here the app is ended as a logout ends it, and its crash never arrives."""
    s = installed
    assert "KCRASH_DUMP_ONLY" not in s.systemctl("show-environment").stdout
    doctor = s.run("crashbroker", "doctor", check=False).stdout
    assert any(
        line.startswith("warn  kcrash-dump-only") and "bypass" in line
        for line in doctor.splitlines()
    ), doctor
    # As an app of a desktop session starts: on the display, with the system's DrKonqi.
    app = s.spawn(
        "kronometer", env=s.env(DISPLAY=DISPLAY),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until("kronometer's KCrash handler", lambda: handler_installed(app.pid, 11), 60)
        app.send_signal(signal.SIGSEGV)
        drkonqi = wait_until("KCrash to start DrKonqi", lambda: drkonqi_for(app.pid), 30)
        assert Path(f"/proc/{drkonqi}/exe").resolve() == Path(
            "/usr/lib/x86_64-linux-gnu/libexec/drkonqi"
        )
        assert wait_until("the app to be held", lambda: proc_state(app.pid) == "T", 10)
        ini = s.home / ".cache" / "kcrash-metadata" / f"{app.pid}.ini"
        assert ini.exists()
        # While DrKonqi waits the crash is nowhere: later crashes overtake it.
        overtaking = s.crash_sleep()
        watcher.detected(overtaking)
        assert s.crash_of(app.pid) is None
        assert not s.records_for(app.pid)  # our launcher was never asked
        os.kill(drkonqi, signal.SIGTERM)
        app.kill()
        app.wait(30)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    after = s.crash_sleep()
    watcher.detected(after)
    detected = [e["crash"]["pid"] for e in watcher.events if e["signal"] == "CrashDetected"]
    assert detected == [overtaking, after]
    assert s.crash_of(app.pid) is None
    entries = subprocess.run(
        ["journalctl", "-q", "-o", "cat", f"MESSAGE_ID={COREDUMP_MESSAGE_ID}",
         f"COREDUMP_PID={app.pid}", f"_BOOT_ID={boot_id()}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert entries == ""  # systemd-coredump never saw it
    assert ini.exists()  # left behind, for crashbroker cleanup


def test_kcrash_dump_only_drop_in_gives_one_drkonqi_from_our_launcher_outside_its_sandbox(
    installed: Session, watcher: Watcher
):
    """``crashbroker install --kcrash-dump-only``: the session's apps dump at once, the crash
    arrives with its KCrash metadata, and crashbroker-launcher starts DrKonqi once, as a
    transient service of the user manager (not in the launcher's cgroup or sandbox), which a
    restart of the launcher does not stop."""
    s = installed
    s.run("crashbroker", "install", "--kcrash-dump-only")
    dropin = s.home / ".config" / "environment.d" / "60-crashbroker-kcrash.conf"
    assert "KCRASH_DUMP_ONLY=1" in dropin.read_text()
    s.systemctl("daemon-reload")  # the manager runs environment.d's generator again
    try:
        assert "KCRASH_DUMP_ONLY=1" in s.systemctl("show-environment").stdout
        doctor = s.run("crashbroker", "doctor", check=False).stdout
        assert any(line.startswith("  ok  kcrash-dump-only") for line in doctor.splitlines()), (
            doctor
        )
        # An app started by the session (the user manager), with the session's environment.
        unit = f"cb-kronometer-{os.getpid()}"
        s.run(
            "systemd-run", "--user", "--quiet", "--collect", f"--unit={unit}",
            "--setenv=QT_QPA_PLATFORM=offscreen", "kronometer",
        )  # fmt: skip
        pid = wait_until("kronometer's pid", lambda: s.main_pid(f"{unit}.service"), 30)
        wait_until("kronometer's KCrash handler", lambda: handler_installed(pid, 11), 60)
        os.kill(pid, signal.SIGSEGV)
        crash = watcher.detected(pid, 60)
        assert crash["kcrash"]["programname"] == "Kronometer"
        [record] = wait_until("DrKonqi's start", lambda: s.records_for(pid), 30)
        assert "DRKONQI_BACKEND=COREDUMPD" in record
        assert f"--pid {pid}" in record
        assert "app-crashbroker-org.kde.drkonqi@" in record  # its own unit's cgroup
        assert "crashbroker-launcher" not in record.split("cgroup:")[1].splitlines()[0]
        assert "NoNewPrivs:\t0" in record  # not the launcher's sandbox
        assert "Seccomp:\t0" in record
        drkonqi = int(record.split("pid: ")[1].split()[0])

        old = s.main_pid("crashbroker-launcher.service")
        s.systemctl("restart", "crashbroker-launcher.service")
        assert s.main_pid("crashbroker-launcher.service") not in (0, old)
        assert proc_state(drkonqi) is not None  # the DrKonqi window is still open
        # The claim ended with the old launcher's connection; the new one finds the DrKonqi
        # unit still running and claims the crash again (no second DrKonqi on "Report…").
        wait_until(
            "the restarted launcher to claim again",
            lambda: (s.crash_of(pid) or {}).get("state") == "claimed",
            30,
        )
        # Once: a later crash settles the launcher's work; still one DrKonqi for this crash.
        later = s.crash_sleep()
        watcher.detected(later)
        assert len(s.records_for(pid)) == 1
    finally:
        s.run("rm", "-f", str(dropin))
        s.systemctl("daemon-reload")
        s.systemctl("unset-environment", "KCRASH_DUMP_ONLY")


def test_the_built_wheel_installs_and_runs_in_the_session(
    installed: Session, watcher: Watcher, tmp_path: Path
):
    """Issue 15: pip's wheel (not the checkout) carries the units, D-Bus and desktop files;
    installed into a venv of the user's, its `crashbroker install` runs the session's units."""
    s = installed
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md",
                 "units", "dbus", "desktop", "src"):  # fmt: skip
        src = ROOT / name
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=ignore)
        else:
            shutil.copy2(src, tree / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=tree, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [built] = tmp_path.glob("crashbroker-*.whl")
    wheel = s.home / "wheel" / built.name
    wheel.parent.mkdir(exist_ok=True)
    shutil.copy2(built, wheel)
    for p in (wheel, wheel.parent):
        os.chown(p, s.uid, s.gid)
    venv = s.home / ".local" / "crashbroker-wheel"
    s.run("/usr/bin/python3", "-m", "venv", "--clear", str(venv))
    s.run(f"{venv}/bin/python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel))
    # Its dependencies: the user's own venv's (no index in the session).
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    deps = s.run(f"{s.venv}/bin/python", "-c", where).stdout.strip()
    site = s.run(f"{venv}/bin/python", "-c", where).stdout.strip()
    s.run("sh", "-c", f"echo {deps} > {site}/zz-deps.pth")
    services = ("crashbroker.service", "crashbroker-launcher.service",
                "crashbroker-notifier.service")  # fmt: skip
    try:
        since = f"@{int(time.time())}"
        s.run(f"{venv}/bin/crashbroker", "install")
        s.systemctl("daemon-reload")
        s.systemctl("restart", *services)
        for unit in services:
            assert f"{venv}/bin/" in s.unit(unit, "ExecStart")["ExecStart"], unit

            def active(u: str = unit) -> bool:
                return s.unit(u, "ActiveState")["ActiveState"] == "active"

            wait_until(f"{unit} active", active)
        assert str(venv) in Path(f"/proc/{s.main_pid()}/cmdline").read_text()
        assert (s.home / ".local/share/applications/org.kde.crashbroker.desktop").exists()
        assert (s.home / ".local/share/knotifications5/crashbroker.notifyrc").exists()
        # Its log line says it subscribed (by _PID: `journalctl --user -u` finds nothing for
        # units of this rig's manager, whose cgroup is not under user@UID.service).
        notifier = s.main_pid("crashbroker-notifier.service")
        wait_until("the wheel's notifier subscribed", lambda: "notifying crashes" in s.run(
            "journalctl", "--user", f"_PID={notifier}", "-o", "cat",
            f"--since={since}", check=False,
        ).stdout)  # fmt: skip
        before = len(s.notifications())
        pid = s.crash_sleep()
        watcher.detected(pid)
        got = wait_until("dunst to show the crash", lambda: s.notifications()[before:], 30)
        assert any(n.get("DUNST_DESKTOP_ENTRY") == "org.kde.crashbroker" for n in got), got
    finally:
        s.run("crashbroker", "install")  # back to the session's own venv
        s.systemctl("daemon-reload")
        s.systemctl("restart", *services)
