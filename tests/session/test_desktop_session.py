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
import signal
import subprocess
from pathlib import Path

import pytest

from desktop_session import Session, Watcher, wait_until

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
    forged_before = s.stats()["forged"]
    pid = s.crash_sleep()
    crash = watcher.detected(pid)
    assert crash["exe"].startswith(f"{s.home}/bin/crasher-")
    assert (crash["uid"], crash["signal_name"]) == (s.uid, "SIGSEGV")
    assert crash["past"] is False
    assert crash["core_available"] is True
    listed = s.crash_of(pid)
    assert listed is not None and listed["id"] == crash["id"]
    cli = json.loads(s.run("crashbroker", "list", "--json").stdout)
    assert [c["pid"] for c in cli].count(pid) == 1
    assert s.stats()["forged"] == forged_before


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
