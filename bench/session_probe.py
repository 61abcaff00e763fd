"""Run as an ordinary user inside a desktop session (``scripts/rig session run NAME -- …``, by
the bench's ``session`` figure): real crashes of the user's own programs, one at a time, and the
time from ``kill -SEGV`` to the installed daemon's ``CrashDetected`` on the user's session bus.

Prints one JSON line: ``{"samples_ms": [...], "missed": [pids]}``. Standard library and dbus-fast
only (the user's venv has crashbroker's dependencies, not the bench's).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

MANAGER = "org.kde.crashbroker1.Manager"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


async def _until(ok: object, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not ok():  # type: ignore[operator]  # noqa: ASYNC110  (polling /proc)
            await asyncio.sleep(0.001)


async def main(n: int) -> None:
    bus = await MessageBus().connect()
    detected: dict[int, float] = {}

    def on(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "CrashDetected":
            detected[int(msg.body[1]["pid"].value)] = time.monotonic()

    bus.add_message_handler(on)
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[f"type='signal',interface='{MANAGER}'"],
        )
    )
    bindir = Path.home() / "bin"
    bindir.mkdir(exist_ok=True)
    samples: list[float] = []
    missed: list[int] = []
    for i in range(n):
        # A program of its own name each time: one program crashing three times a minute is a
        # crash loop, announced once (docs/dbus.md).
        exe = bindir / f"probe-{os.getpid()}-{i}"
        shutil.copy2("/usr/bin/sleep", exe)
        proc = await asyncio.create_subprocess_exec(str(exe), "60")
        await _until(lambda p=proc.pid, e=str(exe): _exe(p) == e, 10)
        await _until(lambda p=proc.pid: _state(p) == "S", 10)
        t_kill = time.monotonic()
        proc.send_signal(signal.SIGSEGV)
        await proc.wait()
        try:
            await _until(lambda p=proc.pid: p in detected, 30)
            samples.append((detected[proc.pid] - t_kill) * 1000)
        except TimeoutError:
            missed.append(proc.pid)
        exe.unlink()
        await asyncio.sleep(0.05)
    bus.disconnect()
    print(json.dumps({"samples_ms": samples, "missed": missed}))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
