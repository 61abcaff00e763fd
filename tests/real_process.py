"""Real processes for the real crash pipeline, shared by the tests (through conftest) and bench/.

Nothing here needs pytest: the benchmarks crash processes the same way the tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path


async def wait_exec(pid: int, exe: str, timeout: float = 10.0) -> None:
    """Wait until ``pid`` runs ``exe``: killing earlier dumps the forking parent instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe") == exe:
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"pid {pid} never ran {exe}")


async def wait_asleep(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` sleeps (state S): after exec, the dynamic loader runs first, and a
    core dumped then has no libc mapped yet (gdb printed a three-frame ``?? ()`` trace, in
    0.05 s instead of the 0.15 s of a full one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S":
                return
        await asyncio.sleep(0.005)
    raise AssertionError(f"pid {pid} never went to sleep")


def idle_in_event_loop(pid: int) -> bool:
    """True when ``pid``'s main thread sleeps in poll(): its event loop waits, holding no lock.

    Killed at an arbitrary moment after start-up, kronometer died of SIGALRM 1 time in 25, with
    KCrash's INI cut after ``exe=`` and no core: KF5's KCrash handler does not finish and its
    own alarm ends the app. Our guess at the cause is a lock the interrupted code held (the
    handler allocates); signalled while idle in poll(), it never happened in 40 runs."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state == "S" and "poll" in wchan


async def crash_sleep(sig: int = signal.SIGSEGV) -> int:
    """A real process killed by ``sig``: the kernel hands its core to systemd-coredump."""
    proc = await asyncio.create_subprocess_exec(
        "sleep", "60", env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    )
    await wait_exec(proc.pid, "/usr/bin/sleep")
    await wait_asleep(proc.pid)
    proc.send_signal(sig)
    await proc.wait()
    return proc.pid
