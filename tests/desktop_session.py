"""A real desktop user session, as our users have it (shared rig.md): an ordinary user (uid >=
1000, no groups), a persistent journal, ``systemd --user`` with its ``dbus.socket``, crashbroker
installed by ``crashbroker install`` and its units enabled, a real notification server (dunst on
Xvfb) and the real KCrash/DrKonqi of KF5. Brought up by ``scripts/rig session up``; every
command of the tests runs as that user, in that session.

DrKonqi for the launcher is a recorder on ``LIBEXEC_PATH`` (set in the user manager with
``systemctl --user set-environment``): it writes its argv, environment and process facts to
``~/drkonqi-records/`` and stays alive a while, as a DrKonqi window would.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAME = "cbsession"
DISPLAY = ":87"
UNITS = ("crashbroker", "crashbroker-launcher", "crashbroker-notifier", "crashbroker-cleanup.timer")
BUS = ("org.kde.crashbroker1", "/org/kde/crashbroker1", "org.kde.crashbroker1.Manager")

RECORDER = """#!/bin/sh
# DrKonqi stand-in: what it was started with, and how (cgroup, sandbox), then it stays open.
out="$HOME/drkonqi-records/$(date +%s%N).$$"
{
  printf 'argv:'; for a in "$@"; do printf ' %s' "$a"; done; echo
  env | grep -E '^(DRKONQI_|KCRASH|DISPLAY=|WAYLAND_DISPLAY=)' | sort
  echo "cgroup: $(grep name=systemd /proc/self/cgroup)"
  grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status
  echo "pid: $$"
} > "$out.tmp"
mv "$out.tmp" "$out.txt"
exec sleep 300
"""
NOTIFY_RECORD = """#!/usr/bin/python3
import json, os, time
d = os.path.expanduser("~/notifications")
out = os.path.join(d, f"{time.time_ns()}.json")
with open(out + ".tmp", "w") as f:
    json.dump({k: v for k, v in os.environ.items() if k.startswith("DUNST_")}, f)
os.rename(out + ".tmp", out)
"""
DUNSTRC = """[global]
    idle_threshold = 0
    history_length = 100
[record_all]
    appname = "*"
    script = {home}/.config/dunst/record.py
"""


def wait_until(what: str, cond: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``cond`` (a fact another process makes true: a file, a unit's state) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Session:
    """The ordinary user's desktop session; every method runs as that user, in it."""

    name: str
    uid: int
    gid: int
    home: Path
    venv: Path
    rig_output: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    _crashes: int = 0

    @property
    def runtime_dir(self) -> Path:
        return Path(f"/run/user/{self.uid}")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a program the user starts in this session."""
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.runtime_dir}/bus",
            "PATH": f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }
        return {**env, **self.extra_env, **extra}

    def argv(self, *cmd: str, env: dict[str, str] | None = None) -> list[str]:
        """``cmd`` as the user: its uid/gid, no supplementary groups, the session environment.
        setpriv and env exec, so the command keeps the pid of the process started."""
        pairs = [f"{k}={v}" for k, v in (env or self.env()).items()]
        return [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
            "env", "-i", *pairs, *cmd,
        ]  # fmt: skip

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*cmd, env=env), capture_output=True, text=True, timeout=timeout, cwd="/"
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def spawn(
        self, *cmd: str, env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*cmd, env=env), text=True, cwd="/", **kw)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--user", "--no-pager", *args, check=check)

    def unit(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str = "crashbroker.service") -> int:
        return int(self.unit(unit, "MainPID")["MainPID"])

    def busctl(self, member: str, *args: str) -> Any:
        out = self.run("busctl", "--user", "--json=short", "call", *BUS, member, *args).stdout
        return unwrap(json.loads(out)["data"])

    def crashes(self) -> list[dict[str, Any]]:
        """ListCrashes through busctl, every crash (dismissed included)."""
        flt = ["a{sv}", "1", "include_dismissed", "b", "true"]
        return list(self.busctl("ListCrashes", *flt)[0])

    def crash_of(self, pid: int) -> dict[str, Any] | None:
        found = [c for c in self.crashes() if c["pid"] == pid]
        assert len(found) <= 1, f"pid {pid} listed {len(found)} times"
        return found[0] if found else None

    def stats(self) -> dict[str, int]:
        out = self.run("crashbroker", "stats").stdout
        return {k: int(v) for k, v in (line.split(": ", 1) for line in out.splitlines())}

    def crash_sleep(self, sig: int = signal.SIGSEGV) -> int:
        """A real program of the user, killed by ``sig`` once it sleeps; its pid.

        Each call runs a copy of ``sleep`` of its own name (``~/bin/crasher-N``): crashes of
        one program and signal three times a minute are a crash loop, which subscribers get as
        one evolving event, not as a CrashDetected each.
        """
        self._crashes += 1
        exe = self.home / "bin" / f"crasher-{os.getpid()}-{self._crashes}"
        exe.parent.mkdir(exist_ok=True)
        os.chown(exe.parent, self.uid, self.gid)
        shutil.copy2("/usr/bin/sleep", exe)
        proc = self.spawn(str(exe), "60", stdout=subprocess.DEVNULL)
        try:
            wait_until("the program to exec", lambda: _exe(proc.pid) == str(exe), 10)
            wait_until("the program to sleep", lambda: proc_state(proc.pid) == "S", 10)
            proc.send_signal(sig)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.pid

    def records(self) -> list[str]:
        """What the DrKonqi recorder wrote, oldest first."""
        d = self.home / "drkonqi-records"
        return [p.read_text() for p in sorted(d.glob("*.txt"))] if d.is_dir() else []

    def records_for(self, pid: int) -> list[str]:
        return [r for r in self.records() if f"--pid {pid}\n" in r or f"--pid {pid} " in r]

    def notifications(self) -> list[dict[str, str]]:
        d = self.home / "notifications"
        return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []


def unwrap(value: Any) -> Any:
    """busctl's JSON (``{"type": …, "data": …}`` for variants) as plain values."""
    if isinstance(value, dict):
        if set(value) == {"type", "data"}:
            return unwrap(value["data"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Watcher:
    """``crashbroker watch`` as the user: the signals a subscriber in the session receives."""

    def __init__(self, session: Session) -> None:
        # The pipes are read with os.read on their fds, never through the file objects:
        # select() on a buffered reader misses the lines its buffer already holds, and a burst
        # of signals (a claim undone and taken again) then looked like 30 s of silence.
        self.proc = session.spawn(
            "crashbroker", "watch", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.events: list[dict[str, Any]] = []
        self._pending: dict[int, bytes] = {}
        assert self.proc.stderr is not None
        # Printed once its match rule is in place: from then on no signal is missed.
        line = self._readline(self.proc.stderr, 30)
        assert "watching" in line, line

    def _readline(self, stream: Any, timeout: float) -> str:
        """The next line of ``stream`` ("" at its end), waiting at most ``timeout`` s."""
        fd = stream.fileno()
        buf = self._pending.get(fd, b"")
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self._pending[fd] = buf
                raise AssertionError(
                    f"crashbroker watch printed nothing in {timeout:g} s (exit status "
                    f"{self.proc.poll()})"
                )
            chunk = os.read(fd, 65536)
            if not chunk:
                self._pending[fd] = b""
                return buf.decode()
            buf += chunk
        line, _, rest = buf.partition(b"\n")
        self._pending[fd] = rest
        return line.decode() + "\n"

    def wait(
        self, what: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        for ev in self.events:
            if pred(ev):
                return ev
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while (left := deadline - time.monotonic()) > 0:
            line = self._readline(self.proc.stdout, left)
            if not line:
                raise AssertionError(f"crashbroker watch ended before {what}")
            ev = json.loads(line)
            self.events.append(ev)
            if pred(ev):
                return ev
        raise AssertionError(f"timed out waiting for {what}; got {self.events}")

    def detected(self, pid: int, timeout: float = 30) -> dict[str, Any]:
        ev = self.wait(
            f"CrashDetected of pid {pid}",
            lambda e: e["signal"] == "CrashDetected" and e["crash"]["pid"] == pid,
            timeout,
        )
        return dict(ev["crash"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="session")
def desktop() -> Iterator[Session]:
    """The user session, brought up by the project's own rig and torn down after."""
    from conftest import missing_rig

    if os.geteuid() != 0:
        missing_rig("a user session needs root to set up (useradd, cgroups, journald)")
    for tool in ("setpriv", "useradd", "/lib/systemd/systemd", "busctl"):
        if shutil.which(tool) is None and not Path(tool).exists():
            missing_rig(f"{tool} is missing (scripts/setup installs it)")
    rig = str(ROOT / "scripts" / "rig")
    up = subprocess.run([rig, "session", "up", NAME], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        missing_rig(f"scripts/rig session up failed:\n{up.stdout}\n{up.stderr}")
    brought_up = any(w in up.stdout for w in ("created", "started"))
    pipeline_started = "journald: started" in up.stdout or "socket: started" in up.stdout
    pw = pwd.getpwnam(NAME)
    session = Session(
        name=NAME,
        uid=pw.pw_uid,
        gid=pw.pw_gid,
        home=Path(pw.pw_dir),
        venv=Path(pw.pw_dir) / ".local" / "crashbroker",
        rig_output=up.stdout,
    )
    try:
        yield session
    finally:
        if brought_up:
            subprocess.run([rig, "session", "down", NAME], capture_output=True, timeout=120)
        if pipeline_started:
            subprocess.run([rig, "down"], capture_output=True, timeout=60)


def _write_user_file(session: Session, path: Path, text: str, mode: int = 0o644) -> None:
    """A file of the user's own (and the directories up to its home)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    while path != session.home:
        os.chown(path, session.uid, session.gid)
        path = path.parent


@pytest.fixture(scope="session")
def installed(desktop: Session) -> Session:
    """crashbroker installed and enabled as the user would (README, docs/operations.md), with
    a real notification server in the session and the DrKonqi recorder on LIBEXEC_PATH."""
    s = desktop
    for d in ("drkonqi-records", "notifications", "libexec-recorder"):
        (s.home / d).mkdir(exist_ok=True)
        os.chown(s.home / d, s.uid, s.gid)
    _write_user_file(s, s.home / "libexec-recorder" / "drkonqi", RECORDER, 0o755)
    _write_user_file(s, s.home / ".config" / "dunst" / "record.py", NOTIFY_RECORD, 0o755)
    _write_user_file(s, s.home / ".config" / "dunst" / "dunstrc", DUNSTRC.format(home=s.home))

    # The display and the notification server of the session: Xvfb, then Debian's dunst.service
    # (Type=dbus, org.freedesktop.Notifications), both under the user manager.
    s.systemctl("set-environment", f"DISPLAY={DISPLAY}", f"LIBEXEC_PATH={s.home}/libexec-recorder")
    if s.unit("cb-xvfb.service", "ActiveState")["ActiveState"] != "active":
        s.systemctl("reset-failed", "cb-xvfb.service", check=False)
        s.run(
            "systemd-run", "--user", "--unit=cb-xvfb", "--collect", "--quiet",
            "Xvfb", DISPLAY, "-nolisten", "tcp", "-screen", "0", "1024x768x24",
        )  # fmt: skip
    wait_until("Xvfb's socket", lambda: Path(f"/tmp/.X11-unix/X{DISPLAY[1:]}").exists())
    s.systemctl("restart", "dunst.service")

    s.run("crashbroker", "install")
    s.systemctl("daemon-reload")
    s.systemctl("enable", "--now", *UNITS)
    for unit in UNITS:
        wait_until(
            f"{unit} active",
            lambda u=unit: s.unit(u, "ActiveState")["ActiveState"] == "active",  # type: ignore[misc]
        )
    return s


@pytest.fixture
def watcher(installed: Session) -> Iterator[Watcher]:
    w = Watcher(installed)
    try:
        yield w
    finally:
        w.close()
