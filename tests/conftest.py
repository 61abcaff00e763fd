"""Fixtures on real parts: a private dbus-daemon, journal files written by
systemd-journal-remote, the crashbroker daemon as a subprocess, and the real coredump pipeline.

Where a real part cannot run here, tests skip with the reason — except under ``CI=true``, where a
missing rig is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

sys.path.insert(0, str(Path(__file__).parent))

import export_format
from crashbroker.adapters.dbus_names import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from crashbroker.adapters.dbus_record import unwrap
from crashbroker.domain.crash import signature
from crashbroker.domain.model import CoredumpEntry, Crash, CrashKey, CrashState, KCrashLib
from desktop_session import desktop, installed, watcher  # noqa: F401  (fixtures)
from real_process import crash_sleep, idle_in_event_loop, wait_exec  # noqa: F401  (the tests import them here)

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"


def as_user(user: str) -> list[str]:
    """A command prefix running crashbroker's Python as ``user`` (no groups). The venv's own
    interpreter lives under /root here, so the system Python 3.11 runs our sources and the
    venv's packages."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        missing_rig("running as another user needs root and setpriv")
    import pwd

    site = next((ROOT / ".venv" / "lib").glob("python3.*/site-packages"))
    gid = pwd.getpwnam(user).pw_gid
    return [
        "setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups",
        "env", f"PYTHONPATH={ROOT / 'src'}:{site}", "/usr/bin/python3",
    ]  # fmt: skip


def missing_rig(reason: str) -> None:
    """Skip locally; fail under CI=true, where every rig must come up."""
    if IN_CI:
        pytest.fail(f"rig unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


# ---- a private session bus ---------------------------------------------------------------------

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
</busconfig>
"""


@pytest.fixture
def bus_address(tmp_path: Path) -> Iterator[str]:
    """A private dbus-daemon with no service directories (nothing gets auto-activated)."""
    if shutil.which("dbus-daemon") is None:
        missing_rig("dbus-daemon is not installed (scripts/setup installs it)")
    conf = tmp_path / "bus.conf"
    sockdir = tmp_path / "bus"
    sockdir.mkdir()
    conf.write_text(_BUS_CONFIG.format(dir=sockdir))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    try:
        if not address:
            missing_rig("dbus-daemon did not start")
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


async def bus_call(
    bus: MessageBus,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    *,
    destination: str = BUS_NAME,
    path: str = OBJECT_PATH,
    interface: str = MANAGER_INTERFACE,
) -> Message:
    reply = await bus.call(
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    assert reply is not None
    return reply


async def call_ok(bus: MessageBus, member: str, signature: str = "", *body: Any) -> Any:
    reply = await bus_call(bus, member, signature, list(body))
    assert reply.message_type == MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return unwrap(reply.body[0]) if reply.body else None


async def dbus_daemon_call(bus: MessageBus, member: str, signature: str, *body: Any) -> Any:
    reply = await bus_call(
        bus,
        member,
        signature,
        list(body),
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
    )
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    return reply.body[0] if reply.body else None


@dataclass
class Recorder:
    """Collects crashbroker's signals (and name owner changes) seen by one client connection."""

    bus: MessageBus
    signals: list[tuple[str, list[Any]]] = field(default_factory=list)
    owner: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "NameOwnerChanged" and msg.body[0] == BUS_NAME:
            self.owner = msg.body[2]
        elif msg.member == "PropertiesChanged" and msg.body[0] == MANAGER_INTERFACE:
            self.properties.update(unwrap(msg.body[1]))
        elif msg.interface == MANAGER_INTERFACE:
            self.signals.append((msg.member or "", unwrap(msg.body)))
        self._changed.set()

    def detected(self) -> list[dict[str, Any]]:
        return [body[1] for name, body in self.signals if name == "CrashDetected"]

    def backtrace_outcomes(self, crash_id: str) -> list[dict[str, Any]]:
        """The CrashUpdated signals of ``crash_id`` that ended a backtrace run."""
        return [
            body[1]
            for name, body in self.signals
            if name == "CrashUpdated"
            and body[0] == crash_id
            and (body[1].get("backtrace_available") is True or "backtrace_error" in body[1])
        ]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Await a condition over what has been received; no polling of the daemon."""
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                self._changed.clear()
                await self._changed.wait()

    async def crash(self, pid: int, timeout: float = 20.0) -> dict[str, Any]:
        """The CrashDetected record of ``pid``. A crash found while catching up is announced
        with its list record only: the rest of the keys come from GetCrash (the signal's
        values, as they were when announced, win)."""
        found = await self.wait_for(
            lambda: [c for c in self.detected() if c["pid"] == pid], timeout
        )
        record: dict[str, Any] = found[0]
        if record.get("past"):
            reply = await self.bus.call(
                Message(
                    destination=BUS_NAME, path=OBJECT_PATH, interface=MANAGER_INTERFACE,
                    member="GetCrash", signature="s", body=[record["id"]],
                )
            )  # fmt: skip
            assert reply is not None
            assert reply.message_type == MessageType.METHOD_RETURN, reply.body
            record = {**unwrap(reply.body[0]), **record}
        return record


@pytest.fixture
async def client(bus_address: str) -> AsyncIterator[Recorder]:
    """A dbus-fast connection subscribed to crashbroker's signals before anything starts."""
    bus = await MessageBus(bus_address=bus_address).connect()
    rec = Recorder(bus)
    bus.add_message_handler(rec.on_message)
    await dbus_daemon_call(bus, "AddMatch", "s", f"type='signal',interface='{MANAGER_INTERFACE}'")
    await dbus_daemon_call(
        bus,
        "AddMatch",
        "s",
        f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{BUS_NAME}'",
    )
    await dbus_daemon_call(
        bus,
        "AddMatch",
        "s",
        f"type='signal',interface='org.freedesktop.DBus.Properties',path='{OBJECT_PATH}'",
    )
    try:
        yield rec
    finally:
        bus.disconnect()


# ---- the daemon --------------------------------------------------------------------------------


@dataclass
class Daemon:
    """``crashbroker daemon`` as a subprocess on the private bus."""

    tmp: Path
    bus_address: str
    client: Recorder
    args: list[str] = field(default_factory=list)
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    runs: int = 0

    @property
    def cache_home(self) -> Path:
        return self.tmp / "cache"

    @property
    def kcrash_dir(self) -> Path:
        return self.cache_home / "kcrash-metadata"

    @property
    def tmpdir(self) -> Path:
        path = self.tmp / "daemon-tmp"
        path.mkdir(exist_ok=True)
        return path

    @property
    def log(self) -> Path:
        return self.tmp / "daemon.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("XDG_STATE_HOME", "XDG_CACHE_HOME")}
        env.update(
            DBUS_SESSION_BUS_ADDRESS=self.bus_address,
            XDG_STATE_HOME=str(self.tmp / "state"),
            XDG_CACHE_HOME=str(self.cache_home),
            PYTHONUNBUFFERED="1",
            TMPDIR=str(self.tmpdir),  # backtraces extract cores here: per test, checkable
        )
        env.update(self.env_extra)
        return env

    async def start(self, *extra: str) -> None:
        """Start and wait until the daemon owns its bus name (its readiness)."""
        assert self.proc is None or self.proc.returncode is not None
        self.client.owner = ""
        self.client.properties.clear()
        self.runs += 1
        with self.log.open("a") as log:
            log.write(f"---- run {self.runs}: {' '.join([*self.args, *extra])}\n")
        with self.log.open("a") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "crashbroker",
                "daemon",
                "--log-level=DEBUG",
                # Every crash its own event unless a test is about loops (it passes
                # --loop-window): concurrent tests crash `sleep` on the shared rig too.
                "--loop-window=0",
                *self.args,
                *extra,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            owned = asyncio.ensure_future(self.client.wait_for(lambda: self.client.owner, 30))
            has = await dbus_daemon_call(self.client.bus, "NameHasOwner", "s", BUS_NAME)
            if not has:
                await asyncio.wait([exited, owned], return_when=asyncio.FIRST_COMPLETED)
            owned.cancel()
            if exited.done():
                raise AssertionError(f"daemon exited with {exited.result()}:\n{self.log_text()}")
        finally:
            if not exited.done():
                exited.cancel()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(20):
            return await self.proc.wait()

    async def call(self, member: str, signature: str = "", *body: Any) -> Any:
        return await call_ok(self.client.bus, member, signature, *body)

    async def caught_up(self, timeout: float = 30.0) -> None:
        """Wait for CaughtUp=true: already true, or announced by PropertiesChanged."""
        reply = await bus_call(
            self.client.bus,
            "Get",
            "ss",
            [MANAGER_INTERFACE, "CaughtUp"],
            interface="org.freedesktop.DBus.Properties",
        )
        if reply.message_type == MessageType.METHOD_RETURN and reply.body[0].value:
            return
        await self.client.wait_for(lambda: self.client.properties.get("CaughtUp"), timeout)

    async def stats(self) -> dict[str, int]:
        return await self.call("GetStats")  # type: ignore[no-any-return]

    async def request_backtrace(self, crash_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """RequestBacktrace, then the CrashUpdated that ends the run ({} when it was cached).
        The client listens from before the daemon starts, so no outcome is missed."""
        seen = len(self.client.backtrace_outcomes(crash_id))
        if await self.call("RequestBacktrace", "s", crash_id):
            return {}
        outcomes = await self.client.wait_for(
            lambda: self.client.backtrace_outcomes(crash_id)[seen:], timeout
        )
        return outcomes[0]  # type: ignore[no-any-return]

    async def backtrace(self, crash_id: str, timeout: float = 60.0) -> str:
        """The backtrace as a client gets it: requested, announced, then GetBacktrace."""
        outcome = await self.request_backtrace(crash_id, timeout)
        assert "backtrace_error" not in outcome, outcome
        return await self.call("GetBacktrace", "s", crash_id)  # type: ignore[no-any-return]

    async def get_property(self, name: str) -> Any:
        reply = await bus_call(
            self.client.bus,
            "Get",
            "ss",
            [MANAGER_INTERFACE, name],
            interface="org.freedesktop.DBus.Properties",
        )
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        return reply.body[0].value


@pytest.fixture
async def daemon(tmp_path: Path, bus_address: str, client: Recorder) -> AsyncIterator[Daemon]:
    d = Daemon(tmp_path, bus_address, client)
    d.kcrash_dir.mkdir(parents=True)
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()


# ---- journal files written by systemd-journal-remote -------------------------------------------


class RemoteJournal:
    """A journal directory fed through ``systemd-journal-remote`` from export-format entries."""

    def __init__(self, directory: Path, name: str = "remote") -> None:
        self.directory = directory
        directory.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [JOURNAL_REMOTE, f"--output={directory}/{name}.journal", "--split-mode=none", "-"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.boot_id = boot_id()
        self._pid = 900_000
        self._ts = time.time_ns() // 1000 - 3_600_000_000

    def append(self, *entries: export_format.Entry) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(export_format.serialize(entries))
        self.proc.stdin.flush()

    def wait_written(self, count: int, timeout: float = 10.0) -> None:
        """Block until ``journalctl --directory`` sees ``count`` entries (for offline checks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["journalctl", f"--directory={self.directory}", "-q", "-o", "cat", "--no-pager"],
                capture_output=True,
                check=False,
            )
            if out.stdout.count(b"dumped core") >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"journal-remote did not write {count} entries")

    def coredump(
        self,
        template: str = "sleep-sigsegv.export",
        *,
        pid: int | None = None,
        **overrides: str | bytes,
    ) -> export_format.Entry:
        """A recorded real entry made new: fresh pid, timestamps and this boot's id."""
        entry = export_format.load(template)
        for key in [k for k in entry if k.startswith("__") and k != "__REALTIME_TIMESTAMP"]:
            del entry[key]
        self._pid += 1
        self._ts += 1_000_000
        pid = pid if pid is not None else self._pid
        entry.update(
            COREDUMP_PID=str(pid).encode(),
            COREDUMP_TIMESTAMP=str(self._ts).encode(),
            __REALTIME_TIMESTAMP=str(self._ts + 400_000).encode(),
            _BOOT_ID=self.boot_id.encode(),
            COREDUMP_UID=str(os.getuid()).encode(),
            MESSAGE=f"Process {pid} ({entry['COREDUMP_COMM'].decode()}) dumped core.".encode(),
        )
        entry.pop("COREDUMP_FILENAME", None)
        for key, value in overrides.items():
            entry[key] = value.encode() if isinstance(value, str) else value
        return entry

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def remote_journal(tmp_path: Path) -> Iterator[RemoteJournal]:
    if not os.access(JOURNAL_REMOTE, os.X_OK):
        missing_rig(f"{JOURNAL_REMOTE} missing (package systemd-journal-remote)")
    rj = RemoteJournal(tmp_path / "journal")
    try:
        yield rj
    finally:
        rj.close()


# ---- the real coredump pipeline ----------------------------------------------------------------


@pytest.fixture(scope="session")
def rig() -> Iterator[None]:
    """journald + systemd-coredump socket + core_pattern, brought up by scripts/rig."""
    if os.geteuid() != 0:
        missing_rig("the real crash pipeline needs root (journald, core_pattern)")
    up = subprocess.run([ROOT / "scripts" / "rig", "up"], capture_output=True, text=True)
    if up.returncode != 0:
        missing_rig(f"scripts/rig up failed: {up.stdout}{up.stderr}")
    # Tear down only if this session started something; a rig brought up by hand (or by the
    # demo) stays as it was.
    started = any(w in up.stdout for w in (": started", ": set"))
    try:
        yield
    finally:
        if started:
            subprocess.run([ROOT / "scripts" / "rig", "down"], capture_output=True, check=False)


async def wait_handler(pid: int, sig: int, timeout: float = 20.0) -> None:
    """Wait until ``pid`` catches ``sig`` (``SigCgt`` in /proc): KCrash's handler is installed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("SigCgt:") and int(line.split()[1], 16) & (1 << (sig - 1)):
                    return
        await asyncio.sleep(0.01)
    raise AssertionError(f"pid {pid} never installed a handler for signal {sig}")


async def wait_mapped(pid: int, needle: str, timeout: float = 30.0) -> None:
    """Wait until a path containing ``needle`` is mapped into ``pid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{pid}/maps").read_text():
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"pid {pid} never mapped {needle}")


async def crash_kronometer(env: dict[str, str], sig: int = signal.SIGSEGV) -> int:
    """Start kronometer headless, wait until it is fully up, kill it with ``sig``; its pid.

    KF5 installs KCrash's handler before ``main()`` sets KAboutData, so a signal sent as soon as
    the handler exists gives an INI without programname/bugaddress/appversion (seen under load).
    The icon cache is mapped once the main window exists, which is after KAboutData.
    """
    proc = await asyncio.create_subprocess_exec(
        "kronometer", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_exec(proc.pid, "/usr/bin/kronometer")
        await wait_handler(proc.pid, sig)
        await wait_mapped(proc.pid, "icon-cache.kcache")
        async with asyncio.timeout(10):
            while not idle_in_event_loop(proc.pid):  # noqa: ASYNC110 (no event for it)
                await asyncio.sleep(0.01)
        proc.send_signal(sig)
        await proc.wait()
        # KCrash re-raises the signal for the core dump: any other end means no crash to find.
        assert proc.returncode == -sig, f"kronometer {proc.pid} ended with {proc.returncode}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.pid


@pytest.fixture
def kcrash_env(tmp_path: Path) -> dict[str, str]:
    """Environment under which KF5's KCrash writes metadata headless (rig.md, KCrash facts)."""
    home = tmp_path / "apphome"
    libexec = tmp_path / "libexec"
    run = tmp_path / "run"
    for d in (home, libexec, run):
        d.mkdir()
    run.chmod(0o700)
    stub = libexec / "drkonqi-coredump-processor"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "XDG_RUNTIME_DIR": str(run),
        "QT_QPA_PLATFORM": "offscreen",
        "KCRASH_DUMP_ONLY": "1",
        "LIBEXEC_PATH": str(libexec),
    }


def write_ini(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def written_at_crash(path: Path, entry: export_format.Entry) -> Path:
    """Give a KCrash INI the mtime KCrash's would have: the crash's COREDUMP_TIMESTAMP (it is
    written in the signal handler, just before the dump). A KF5 ``<pid>.ini`` from any other
    time is refused as another crash's."""
    ns = int(entry["COREDUMP_TIMESTAMP"]) * 1000
    os.utime(path, ns=(ns, ns), follow_symlinks=False)
    return path


async def cli(address: str | None, *args: str) -> tuple[int, str, str]:
    """``crashbroker ARGS`` on the bus at ``address`` (None: no session bus at all); its exit
    status, stdout and stderr."""
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


def variant_filter(**kw: Any) -> dict[str, Variant]:
    sigs = {bool: "b", str: "s", int: "t"}
    out = {}
    for k, v in kw.items():
        sig = "u" if k in ("limit", "offset") else sigs[type(v)]
        out[k] = Variant(sig, v)
    return out


# ---- DrKonqi stand-in and the launcher (tests/launcher, tests/notifier) -----------------------

# Started as `drkonqi` (found through LIBEXEC_PATH, as KCrash and DrKonqi's launcher look it up):
# writes its argv, environment and the metadata file it was given, then exits.
RECORDER = """#!{python}
import json, os, sys
meta = os.environ.get("DRKONQI_METADATA_FILE", "")
try:
    text = open(meta, encoding="utf-8", errors="replace").read() if meta else None
except OSError as exc:
    text = f"unreadable: {{exc}}"
out = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), f"launch-{{os.getpid()}}.json")
with open(out + ".tmp", "w") as f:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ), "metadata": text}}, f)
os.rename(out + ".tmp", out)
"""


class DrKonqiRecorder:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        exe = directory / "drkonqi"
        exe.write_text(RECORDER.format(python=sys.executable))
        exe.chmod(0o755)

    def launches(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.dir.glob("launch-*.json"))]

    async def wait(self, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(found := self.launches()) < count:  # noqa: ASYNC110 (files of another process)
                await asyncio.sleep(0.05)
        return found


@pytest.fixture
def recorder(tmp_path: Path) -> DrKonqiRecorder:
    return DrKonqiRecorder(tmp_path / "libexec-recorder")


class LauncherProc:
    def __init__(self, daemon: Daemon, log: Path) -> None:
        self.daemon = daemon
        self.log = log
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(
        self, libexec: Path, *args: str, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        environ = self.daemon.env()
        environ["LIBEXEC_PATH"] = str(libexec)
        # As if started by the service manager: DrKonqi must not inherit these.
        environ.update(INVOCATION_ID="0123456789abcdef", JOURNAL_STREAM="8:1234", LISTEN_PID="1")
        environ.update(env or {})
        with self.log.open("a") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "crashbroker.launcher", "--log-level=DEBUG", *args,
                env=environ, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        await self.wait_log("for KCrash crashes", len(self.procs))
        return proc

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_log(self, needle: str, count: int = 1, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while self.text().count(needle) < count:  # noqa: ASYNC110 (a file another process writes)
                await asyncio.sleep(0.05)


@pytest.fixture
async def launcher(daemon: Daemon, tmp_path: Path) -> AsyncIterator[LauncherProc]:
    lp = LauncherProc(daemon, tmp_path / "launcher.log")
    try:
        yield lp
    finally:
        for proc in lp.procs:
            if proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(10):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


FACTORY_BOOT = "e04ff1c3b3f8438a9752aa220502ee22"
FACTORY_T0 = 1_700_000_000_000_000


def make_entry(
    pid: int = 100,
    timestamp: int = FACTORY_T0,
    exe: str = "/usr/bin/kate",
    realtime: int | None = None,
    kcrash_lib: KCrashLib = KCrashLib.NONE,
    **fields: Any,
) -> CoredumpEntry:
    """A trusted coredump entry for pure and store tests; ``fields`` replace any other field."""
    entry = CoredumpEntry(
        cursor=f"s=x;i={pid:x}",
        realtime=timestamp + 300_000 if realtime is None else realtime,
        boot_id=FACTORY_BOOT,
        machine_id="3d1219c7c4c5404aaa1f6d2a48adfda4",
        hostname="vm",
        pid=pid,
        uid=1000,
        gid=1000,
        signal=11,
        signal_name="SIGSEGV",
        timestamp=timestamp,
        exe=exe,
        comm=exe.rsplit("/", 1)[-1][:15],
        cmdline=exe,
        unit="",
        user_unit="",
        core_filename="",
        core_in_journal=False,
        truncated=False,
        kcrash_lib=kcrash_lib,
    )
    return dataclasses.replace(entry, **fields) if fields else entry


def make_crash(  # a crash as the broker would have built it, for store and wire tests
    pid: int, ts: int, realtime: int, exe: str, state: CrashState, head: str = ""
) -> Crash:
    entry = make_entry(pid, ts, exe, realtime)
    return Crash(
        id=CrashKey(FACTORY_BOOT, pid, ts).crash_id,
        entry=entry,
        kcrash={"programname": "Kate"},
        kcrash_complete=False,
        kcrash_source="",
        kcrash_filled=(),
        metadata_path="",
        past=False,
        detected=ts,
        state=state,
        signature=signature(entry),
        loop_head=head,
    )
