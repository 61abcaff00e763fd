"""The parts the benchmarks run on: a private bus, journal files written by
systemd-journal-remote, the daemon as a subprocess, a D-Bus client that timestamps signals, and a
plain journal reader (the "entry is visible" reference)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import export_format  # noqa: E402  (the tests' reader/writer of the export format)
from crashbroker.adapters.dbus_names import MANAGER_INTERFACE, OBJECT_PATH  # noqa: E402
from crashbroker.adapters.dbus_record import unwrap  # noqa: E402
from crashbroker.client import BrokerClient, ClientError, connect_bus  # noqa: E402
from real_process import crash_sleep, wait_asleep, wait_exec  # noqa: E402,F401  (as the tests do)

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
# The memory limits are the session bus's (/usr/share/dbus-1/session.conf): dbus-daemon's own
# defaults (a 32 MB message) would refuse a ListCrashes reply that a user's session bus carries.
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:dir={dir}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>
<allow own="*"/><allow user="*"/></policy>
<limit name="max_incoming_bytes">1000000000</limit>
<limit name="max_outgoing_bytes">1000000000</limit>
<limit name="max_message_size">1000000000</limit></busconfig>
"""


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")


class Work:
    """A temporary directory removed at the end."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="crashbroker-bench-"))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Bus:
    def __init__(self, work: Path) -> None:
        (work / "bus").mkdir(exist_ok=True)
        (work / "bus.conf").write_text(BUS_CONF.format(dir=work / "bus"))
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={work / 'bus.conf'}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


class Entries:
    """Fresh coredump entries made from the recorded real ones (distinct pids, timestamps)."""

    def __init__(self, pid: int = 2_000_000, ts: int | None = None) -> None:
        self.boot = boot_id()
        self.pid = pid
        self.ts = ts if ts is not None else time.time_ns() // 1000 - 86_400_000_000
        self.template = export_format.load("sleep-sigsegv.export")
        for key in [k for k in self.template if k.startswith("__")]:
            del self.template[key]
        self.template.pop("COREDUMP_FILENAME", None)

    def coredump(self) -> export_format.Entry:
        self.pid += 1
        self.ts += 1000
        e = dict(self.template)
        e.update(
            COREDUMP_PID=str(self.pid).encode(),
            COREDUMP_TIMESTAMP=str(self.ts).encode(),
            __REALTIME_TIMESTAMP=str(self.ts + 100).encode(),
            _BOOT_ID=self.boot.encode(),
            COREDUMP_UID=str(os.getuid()).encode(),
            MESSAGE=f"Process {self.pid} (sleep) of user {os.getuid()} dumped core.".encode(),
        )
        return e

    def noise(self, i: int) -> export_format.Entry:
        """An ordinary log line (what fills a real journal between crashes)."""
        self.ts += 10
        return {
            "MESSAGE": f"bench log line {i}".encode(),
            "PRIORITY": b"6",
            "SYSLOG_IDENTIFIER": b"bench",
            "_BOOT_ID": self.boot.encode(),
            "_UID": b"1000",
            "_PID": b"4242",
            "__REALTIME_TIMESTAMP": str(self.ts).encode(),
        }


class Remote:
    """A journal file fed through systemd-journal-remote from stdin."""

    def __init__(self, directory: Path, name: str = "remote") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.proc = subprocess.Popen(
            [JOURNAL_REMOTE, f"--output={directory}/{name}.journal", "--split-mode=none", "-"],
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def append(self, entries: Iterable[export_format.Entry]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(export_format.serialize(entries))
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait()


class Daemon:
    def __init__(self, work: Path, bus: Bus, *args: str) -> None:
        self.work = work
        self.bus = bus
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DBUS_SESSION_BUS_ADDRESS=self.bus.address,
            XDG_STATE_HOME=str(self.work / "state"),
            XDG_CACHE_HOME=str(self.work / "cache"),
        )
        return env

    def start(self, *extra: str) -> float:
        """Start; returns time.monotonic() at the start."""
        t0 = time.monotonic()
        with (self.work / "daemon.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "crashbroker",
                    "daemon",
                    "--log-level=WARNING",
                    *self.args,
                    *extra,
                ],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return t0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()

    def status(self) -> dict[str, int]:
        """VmRSS/VmHWM/RssAnon/RssFile (KiB) and CPU ticks, context switches of all threads."""
        assert self.proc is not None
        pid = self.proc.pid
        out: dict[str, int] = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_ticks"] = int(stat[11]) + int(stat[12])
        switches = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        out["switches"] = switches
        return out


class Client(BrokerClient):
    """The CLI's client, also recording when each CrashDetected arrives (time.monotonic), by pid."""

    def __init__(self, bus: MessageBus) -> None:
        super().__init__(bus)
        self.detected: dict[int, float] = {}
        self.ids: list[str] = []
        self.caught_up = asyncio.Event()
        self.changed = asyncio.Event()
        bus.add_message_handler(self._on)

    @classmethod
    async def connect(cls, address: str) -> Client:
        client = cls(await connect_bus(address))
        for rule in (
            f"type='signal',interface='{MANAGER_INTERFACE}'",
            f"type='signal',interface='org.freedesktop.DBus.Properties',path='{OBJECT_PATH}'",
        ):
            await client._bus_call("AddMatch", "s", rule)
        return client

    def _on(self, msg: Message) -> None:
        now = time.monotonic()
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "CrashDetected":
            self.detected[int(unwrap(msg.body[1])["pid"])] = now
            self.ids.append(str(msg.body[0]))
            self.changed.set()
        elif msg.member == "PropertiesChanged" and msg.body[0] == MANAGER_INTERFACE:
            value = msg.body[1].get("CaughtUp")
            if value is not None and value.value:
                self.caught_up.set()

    async def wait_owner(self, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while not await self.daemon_running():  # noqa: ASYNC110
                await asyncio.sleep(0.005)

    async def wait_caught_up(self, timeout: float = 600) -> None:
        async with asyncio.timeout(timeout):
            while True:
                # Cleared before asking: a CaughtUp signal arriving after the reply must wake
                # the wait below (cleared after, it was lost, and the figure took 50 ms more).
                self.caught_up.clear()
                with contextlib.suppress(ClientError):
                    if await self.call(
                        "Get",
                        "ss",
                        [MANAGER_INTERFACE, "CaughtUp"],
                        interface="org.freedesktop.DBus.Properties",
                    ):
                        return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self.caught_up.wait()

    async def wait_count(self, n: int, timeout: float = 120) -> None:
        async with asyncio.timeout(timeout):
            while len(self.detected) < n:
                self.changed.clear()
                await self.changed.wait()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, bytes]:
    t0 = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, check=False)
    return time.monotonic() - t0, out.stdout
