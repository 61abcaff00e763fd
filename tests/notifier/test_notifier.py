"""crashbroker-notifier against a real notification server: dunst under Xvfb on the test's
private bus. What dunst received is read back through its script hook (one JSON file per
notification shown, replacements included); actions are chosen through dunst's own context
menu (its `dmenu` command is a script that picks the entry the test wants)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    Daemon,
    DrKonqiRecorder,
    LauncherProc,
    RemoteJournal,
    missing_rig,
    write_ini,
    written_at_crash,
)

RECORD = """#!/usr/bin/python3
import json, os, time
out = os.path.join({dir!r}, f"{{time.time_ns()}}.json")
with open(out + ".tmp", "w") as f:
    json.dump({{k: v for k, v in os.environ.items() if k.startswith("DUNST_")}}, f)
os.rename(out + ".tmp", out)
"""
CHOOSE = """#!/bin/sh
cat > {dir}/menu.txt
grep -m1 -F "$(cat {dir}/choice)" {dir}/menu.txt
"""
DUNSTRC = """[global]
    idle_threshold = 0
    history_length = 100
    markup = full
    icon_path = /usr/share/icons/hicolor/48x48/apps
    dmenu = {dir}/choose.sh
[record_all]
    appname = "*"
    script = {dir}/record.py
"""


class Dunst:
    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.dir = directory
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def received(self) -> list[dict[str, str]]:
        return [json.loads(p.read_text()) for p in sorted((self.dir / "rec").glob("*.json"))]

    async def wait(self, predicate: Any, timeout: float = 20.0) -> list[dict[str, str]]:
        async with asyncio.timeout(timeout):
            while not predicate(got := self.received()):  # noqa: ASYNC110 (files dunst's hook writes)
                await asyncio.sleep(0.05)
        return got

    async def choose(self, entry: str) -> str:
        """Open dunst's context menu and pick the entry containing ``entry``."""
        menu = self.dir / "menu.txt"
        menu.unlink(missing_ok=True)
        (self.dir / "choice").write_text(entry)
        proc = await asyncio.create_subprocess_exec("dunstctl", "context", env=self.env)
        await proc.wait()
        async with asyncio.timeout(10):  # dunst runs its menu command asynchronously
            while not menu.exists():  # noqa: ASYNC110 (a file dunst's menu command writes)
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # let the menu command finish writing
        return menu.read_text()

    async def displayed(self) -> int:
        proc = await asyncio.create_subprocess_exec(
            "dunstctl", "count", "displayed", env=self.env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return int(out)


@pytest.fixture
def dunst(bus_address: str, tmp_path: Path) -> Any:
    for tool in ("Xvfb", "dunst", "dunstctl"):
        if shutil.which(tool) is None:
            missing_rig(f"{tool} is not installed (scripts/setup installs dunst and xvfb)")
    d = tmp_path / "dunst"
    (d / "rec").mkdir(parents=True)
    (d / "record.py").write_text(RECORD.format(dir=str(d / "rec")))
    (d / "choose.sh").write_text(CHOOSE.format(dir=d))
    for script in ("record.py", "choose.sh"):
        (d / script).chmod(0o755)
    (d / "choice").write_text("")
    (d / "dunstrc").write_text(DUNSTRC.format(dir=d))
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=[write],
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as f:
        display = f.readline().strip()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DISPLAY": f":{display}",
        "DBUS_SESSION_BUS_ADDRESS": bus_address,
    }
    with (d / "dunst.log").open("wb") as log:
        server = subprocess.Popen(
            ["dunst", "-config", str(d / "dunstrc")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    dn = Dunst(d, env)
    dn.procs = [server, xvfb]
    try:
        for _ in range(100):
            if (
                subprocess.run(["dunstctl", "is-paused"], env=env, capture_output=True).returncode
                == 0
            ):
                break
            subprocess.run(["sleep", "0.05"], check=False)
        else:
            missing_rig("dunst did not come up on the test bus")
        yield dn
    finally:
        for p in dn.procs:
            p.terminate()
            p.wait(timeout=10)


class Monitor:
    """dbus-monitor on the test's bus: the Notify calls as sent, hints included (dunst's
    script hook does not show hints like ``x-kde-eventId``)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def hints(self) -> list[dict[str, str]]:
        """Per Notify call: each string/byte hint's value."""
        calls = self.log.read_text(errors="replace").split("method call ")[1:]
        return [
            dict(re.findall(r'string "([^"]+)"\s+variant\s+(?:string "([^"]*)"|byte \d+)', c))
            for c in calls
            if "member=Notify" in c.splitlines()[0]
        ]

    async def wait(self, count: int, timeout: float = 20.0) -> list[dict[str, str]]:
        async with asyncio.timeout(timeout):
            while len(got := self.hints()) < count:  # noqa: ASYNC110 (dbus-monitor's output)
                await asyncio.sleep(0.05)
        return got


@pytest.fixture
async def monitor(bus_address: str, tmp_path: Path) -> AsyncIterator[Monitor]:
    if shutil.which("dbus-monitor") is None:
        missing_rig("dbus-monitor is not installed (package dbus-bin)")
    log = tmp_path / "monitor.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            "dbus-monitor", "--address", bus_address,
            "type='method_call',interface='org.freedesktop.Notifications',member='Notify'",
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with asyncio.timeout(10):
            while "NameAcquired" not in log.read_text(errors="replace"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        yield Monitor(log)
    finally:
        proc.terminate()
        await proc.wait()


class NotifierProc:
    def __init__(self, daemon: Daemon, log: Path) -> None:
        self.daemon = daemon
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.env_extra: dict[str, str] = {}

    async def start(self) -> None:
        env = self.daemon.env()
        env["XDG_DATA_DIRS"] = "/usr/share"
        env.update(self.env_extra)
        with self.log.open("a") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "crashbroker.notifier", "--log-level=DEBUG",
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        await self.wait_log("notifying crashes")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_log(self, needle: str, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while needle not in self.text():  # noqa: ASYNC110 (a file another process writes)
                await asyncio.sleep(0.05)


@pytest.fixture
async def notifier(daemon: Daemon, tmp_path: Path) -> AsyncIterator[NotifierProc]:
    np = NotifierProc(daemon, tmp_path / "notifier.log")
    try:
        yield np
    finally:
        if np.proc is not None and np.proc.returncode is None:
            np.proc.terminate()
            await np.proc.wait()


def kronometer(daemon: Daemon, rj: RemoteJournal, **overrides: str) -> Any:
    entry = rj.coredump("kronometer-sigsegv.export", **overrides)
    pid = int(entry["COREDUMP_PID"])
    ini = write_ini(
        daemon.kcrash_dir / f"{pid}.ini",
        f"[KCrash]\nexe={entry['COREDUMP_EXE'].decode()}\nappname=kronometer\n"
        f"programname=Kronometer\npid={pid}\nsignal=11\n",
    )
    written_at_crash(ini, entry)
    return entry


async def start(daemon: Daemon, rj: RemoteJournal, *extra: str) -> None:
    daemon.args = [f"--journal-dir={rj.directory}", "--grace-ms=300"]
    await daemon.start(*extra)
    await daemon.caught_up()


async def test_a_crash_is_notified_with_app_name_icon_and_actions_and_dismiss_works(
    daemon: Daemon, remote_journal: RemoteJournal, dunst: Dunst, notifier: NotifierProc,
    monitor: Monitor,
):  # fmt: skip
    await start(daemon, remote_journal)
    await notifier.start()
    entry = kronometer(daemon, remote_journal)
    remote_journal.append(entry)
    crash = await daemon.client.crash(int(entry["COREDUMP_PID"]))
    [shown] = await dunst.wait(lambda got: len(got) == 1)
    assert shown["DUNST_APP_NAME"] == "crashbroker"
    assert shown["DUNST_SUMMARY"] == "Kronometer crashed"
    # crashbroker is the sender (its own desktop entry, as KNotification sends it); the crashed
    # program is the image: image-path from its desktop entry's Icon=, resolved by dunst.
    assert shown["DUNST_DESKTOP_ENTRY"] == "org.kde.crashbroker"
    assert shown["DUNST_ICON_PATH"].endswith("/kronometer.png")
    assert f"(pid {crash['pid']}) received SIGSEGV" in shown["DUNST_BODY"]
    [hints] = await monitor.wait(1)
    assert hints["desktop-entry"] == "org.kde.crashbroker"
    assert (hints["x-kde-appname"], hints["x-kde-eventId"]) == ("crashbroker", "crashed")
    assert hints["image-path"] == "kronometer"

    menu = await dunst.choose(f"[{shown['DUNST_ID']},dismiss]")
    assert f"[{shown['DUNST_ID']},details]" in menu and "Report" not in menu  # no launcher running
    await daemon.client.wait_for(lambda: ("CrashRemoved", [crash["id"]]) in daemon.client.signals)
    assert (await daemon.call("GetCrash", "s", crash["id"]))["state"] == "dismissed"
    async with asyncio.timeout(10):
        while await dunst.displayed():  # CrashRemoved closed it  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_the_crashed_app_is_found_by_its_user_unit_with_its_localized_name(
    daemon: Daemon, remote_journal: RemoteJournal, dunst: Dunst, notifier: NotifierProc,
    monitor: Monitor, tmp_path: Path,
):  # fmt: skip
    apps = tmp_path / "data" / "applications"
    apps.mkdir(parents=True)
    (apps / "org.example.Crashy.desktop").write_text(
        "[Desktop Entry]\nType=Application\nName=Crashy\nName[de]=Absturzprogramm\n"
        "Icon=/usr/share/icons/hicolor/48x48/apps/kronometer.png\nExec=crashy\n"
    )
    notifier.env_extra = {"XDG_DATA_HOME": str(apps.parent), "LANG": "de_DE.UTF-8"}
    notifier.env_extra |= {"LC_ALL": "", "LC_MESSAGES": ""}
    await start(daemon, remote_journal)
    await notifier.start()
    # How Plasma starts an application: a transient unit named after its desktop file id.
    entry = remote_journal.coredump(COREDUMP_USER_UNIT=r"app-org.example.Crashy@1a2b.service")
    remote_journal.append(entry)
    [shown] = await dunst.wait(lambda got: len(got) == 1)
    assert shown["DUNST_SUMMARY"] == "Absturzprogramm crashed"
    assert shown["DUNST_ICON_PATH"] == "/usr/share/icons/hicolor/48x48/apps/kronometer.png"
    [hints] = await monitor.wait(1)
    assert hints["image-path"] == "file:///usr/share/icons/hicolor/48x48/apps/kronometer.png"
    assert hints["desktop-entry"] == "org.kde.crashbroker"


async def test_hostile_names_are_escaped_for_markup(
    daemon: Daemon, remote_journal: RemoteJournal, dunst: Dunst, notifier: NotifierProc
):
    await start(daemon, remote_journal)
    await notifier.start()
    entry = remote_journal.coredump(COREDUMP_EXE='/tmp/<b>x</b>&"y', COREDUMP_COMM="<i>evil</i>")
    remote_journal.append(entry)
    await daemon.client.crash(int(entry["COREDUMP_PID"]))
    [shown] = await dunst.wait(lambda got: len(got) == 1)
    assert "&lt;b&gt;x&lt;/b&gt;&amp;&quot;y" in shown["DUNST_BODY"]
    assert "<b>" not in shown["DUNST_BODY"] and "<i>" not in shown["DUNST_BODY"]


async def test_a_crash_loop_is_one_notification_replaced_in_place(
    daemon: Daemon, remote_journal: RemoteJournal, dunst: Dunst, notifier: NotifierProc
):
    await start(daemon, remote_journal, "--loop-window=60", "--loop-threshold=3")
    await notifier.start()
    entries = [kronometer(daemon, remote_journal) for _ in range(5)]
    remote_journal.append(*entries)
    head = await daemon.client.crash(int(entries[0]["COREDUMP_PID"]))
    got = await dunst.wait(
        lambda got: got and got[-1]["DUNST_SUMMARY"] == "Kronometer crashed 5 times"
    )
    assert {g["DUNST_ID"] for g in got} == {got[0]["DUNST_ID"]}  # always the same notification
    assert got[-1]["DUNST_URGENCY"] == "CRITICAL" and "keeps crashing" in got[-1]["DUNST_BODY"]
    assert got[-1]["DUNST_DESKTOP_ENTRY"] == "org.kde.crashbroker"
    assert await dunst.displayed() == 1
    # Details (the default action: a click) replaces it with what a user needs.
    await dunst.choose(f"[{got[0]['DUNST_ID']},default]")
    details = await dunst.wait(lambda g: "crashbroker show" in g[-1]["DUNST_BODY"])
    assert f"crashbroker show {head['id']}" in details[-1]["DUNST_BODY"]
    assert "No backtrace: NoCore" in details[-1]["DUNST_BODY"]  # replayed entries have no core


async def test_crashes_found_at_login_get_one_summary(
    daemon: Daemon, remote_journal: RemoteJournal, dunst: Dunst, notifier: NotifierProc
):
    past = [remote_journal.coredump() for _ in range(3)]
    past.append(kronometer(daemon, remote_journal))
    remote_journal.append(*past)
    await notifier.start()  # before the daemon: it waits for it
    daemon.args = [f"--journal-dir={remote_journal.directory}", "--grace-ms=300"]
    await daemon.start()
    await daemon.caught_up()
    [summary] = await dunst.wait(lambda got: len(got) >= 1)
    await asyncio.sleep(1.0)  # a wrong notification per past crash would show by now
    assert len(dunst.received()) == 1
    assert summary["DUNST_SUMMARY"] == "4 crashes while you were away"
    assert "sleep" in summary["DUNST_BODY"] and "Kronometer" in summary["DUNST_BODY"]
    await dunst.choose(f"[{summary['DUNST_ID']},dismiss-all]")
    await daemon.client.wait_for(
        lambda: len([n for n, _ in daemon.client.signals if n == "CrashRemoved"]) == 4
    )


async def test_report_asks_the_launcher(
    daemon: Daemon, remote_journal: RemoteJournal, dunst: Dunst, notifier: NotifierProc,
    tmp_path: Path,
):  # fmt: skip
    await start(daemon, remote_journal)
    rec = DrKonqiRecorder(tmp_path / "rec")
    launcher = LauncherProc(daemon, tmp_path / "launcher.log")
    core = tmp_path / "core.zst"
    core.write_bytes(b"a file that exists")
    try:
        await launcher.start(
            rec.dir, f"--journal-dir={remote_journal.directory}", "--drkonqi-version=5",
            "--on-request-only",
        )  # fmt: skip
        await notifier.start()
        # The launcher only starts DrKonqi when asked: the user asks with "Report…".
        entry = kronometer(daemon, remote_journal, COREDUMP_FILENAME=str(core))
        remote_journal.append(entry)
        crash = await daemon.client.crash(int(entry["COREDUMP_PID"]))
        [shown] = await dunst.wait(lambda got: len(got) == 1)
        assert rec.launches() == []
        menu = await dunst.choose(f"[{shown['DUNST_ID']},report]")
        assert "Report" in menu
        [run] = await rec.wait()
        assert "--programname" in run["argv"]
        assert run["argv"][-1] == "--dialog"  # the user asked: the dialog, not a notification
        assert (await daemon.call("GetCrash", "s", crash["id"]))["claimed_by"] == (
            "crashbroker-launcher"
        )
    finally:
        for p in launcher.procs:
            p.terminate()
            await p.wait()
