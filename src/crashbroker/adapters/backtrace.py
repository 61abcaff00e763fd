"""Backtraces: ``coredumpctl dump`` extracts the core, ``gdb --batch`` reads it.

Both run as child processes, so the event loop only waits on pipes. The caller (the broker's one
backtrace worker) guarantees one run at a time. A run has a deadline and an output cap; the core
is written into a private temporary directory that is removed whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from crashbroker.adapters.core_file import inspect_core
from crashbroker.domain.entry import core_proves
from crashbroker.domain.errors import BacktraceFailed, CoreTruncated, NoCore
from crashbroker.domain.model import CoredumpEntry

logger = logging.getLogger(__name__)

# The same commands for every crash. debuginfod is off: it would download for minutes and
# phone home with the user's build ids; local debug symbols are used when installed.
_GDB_ARGS = (
    "--batch",
    "-nx",
    "-iex", "set debuginfod enabled off",
    "-iex", "set auto-load local-gdbinit off",
    "-ex", "set pagination off",
    "-ex", "set width 0",
    "-ex", "thread apply all bt",
)  # fmt: skip
_CHILD_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")


@dataclass(frozen=True, slots=True)
class BacktraceLimits:
    """``timeout_s`` for coredumpctl and gdb together; ``max_bytes`` of gdb output kept."""

    timeout_s: float = 120.0
    max_bytes: int = 4 * 1024 * 1024


class GdbBacktracer:
    """Makes backtraces with the system's coredumpctl and gdb.

    Args:
        journal_dir: the journal directory the daemon follows (None: the local journal); the
            core is looked up in the same journal.
        limits: deadline and output cap.
        coredumpctl, gdb: the programs (names on PATH or paths).
    """

    def __init__(
        self,
        *,
        journal_dir: Path | None = None,
        limits: BacktraceLimits | None = None,
        coredumpctl: str = "coredumpctl",
        gdb: str = "gdb",
    ) -> None:
        self._journal_dir = journal_dir
        self._limits = limits or BacktraceLimits()
        self._coredumpctl = coredumpctl
        self._gdb = gdb

    async def backtrace(self, entry: CoredumpEntry) -> str:
        """gdb's ``thread apply all bt`` for the entry's core.

        Raises:
            NoCore: systemd-coredump kept no core, or it is gone (vacuumed, deleted).
            CoreTruncated: the core was cut at the size limit (gdb would print garbage).
            BacktraceFailed: a tool is missing, failed, timed out, or gdb printed no frames.
        """
        self._check_core(entry)
        for tool in (self._coredumpctl, self._gdb):
            if shutil.which(tool) is None:
                raise BacktraceFailed(f"{tool} is not installed")
        try:
            async with asyncio.timeout(self._limits.timeout_s):
                with tempfile.TemporaryDirectory(prefix="crashbroker-core-") as tmp:
                    core = Path(tmp) / "core"
                    await self._dump(entry, core)
                    return await self._gdb_bt(entry, core, Path(tmp))
        except TimeoutError:
            raise BacktraceFailed(
                f"gave up after {self._limits.timeout_s:g} s (coredumpctl + gdb)"
            ) from None

    @staticmethod
    def _check_core(entry: CoredumpEntry) -> None:
        if entry.truncated:
            raise CoreTruncated(
                "systemd-coredump cut this core at its size limit (ProcessSizeMax/ExternalSizeMax)"
            )
        if not entry.core_filename and not entry.core_in_journal:
            raise NoCore("systemd-coredump kept no core for this crash (Storage=none or too big)")
        if entry.core_filename and not os.path.lexists(entry.core_filename):
            raise NoCore(f"the core {entry.core_filename} is gone (removed by systemd-coredump?)")
        if entry.core_filename and not os.access(entry.core_filename, os.R_OK):
            raise NoCore(f"the core of this crash is not readable by uid {os.getuid()}")
        if entry.core_filename:
            # gdb parses whatever file it is given: only a core that systemd-coredump stored
            # for exactly this crash, whoever logged the entry that names it.
            core = inspect_core(entry.core_filename)
            if core is None or not core_proves(
                core,
                uid=str(entry.uid),
                boot_id=entry.boot_id,
                pid=str(entry.pid),
                timestamp=str(entry.timestamp),
                exe=entry.exe or None,
            ):
                raise NoCore(
                    f"{entry.core_filename} is not a core systemd-coredump stored for this crash"
                )

    def _child_env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in _CHILD_ENV_KEYS if k in os.environ}
        env.setdefault("PATH", "/usr/bin:/bin")
        env["SYSTEMD_PAGER"] = "cat"
        return env

    async def _dump(self, entry: CoredumpEntry, core: Path) -> None:
        args = [self._coredumpctl, "--no-pager", "--quiet"]
        if self._journal_dir is not None:
            args.append(f"--directory={self._journal_dir}")
        args += [
            f"--output={core}",
            "dump",
            f"COREDUMP_PID={entry.pid}",
            f"COREDUMP_TIMESTAMP={entry.timestamp}",
            f"_BOOT_ID={entry.boot_id}",
        ]
        if entry.core_filename:
            # coredumpctl takes the newest entry that matches, and a forged one can match the
            # fields above: this one makes it read the core checked in _check_core.
            args.append(f"COREDUMP_FILENAME={entry.core_filename}")
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self._child_env(),
        )
        try:
            _, err = await proc.communicate()
        finally:
            await _reap(proc)
        if proc.returncode != 0 or not _nonempty_file(core):
            detail = err.decode(errors="replace").strip().splitlines()
            reason = detail[-1] if detail else f"exit status {proc.returncode}"
            if "No coredump" in reason or "not found" in reason.lower():
                raise NoCore(f"coredumpctl found no core: {reason}")
            raise BacktraceFailed(f"coredumpctl dump failed: {reason}")

    async def _gdb_bt(self, entry: CoredumpEntry, core: Path, cwd: Path) -> str:
        exe = entry.exe.removesuffix(" (deleted)")
        # Without a readable executable gdb still reads the core (and finds the libraries).
        target = [exe] if exe and os.access(exe, os.R_OK) else []
        proc = await asyncio.create_subprocess_exec(
            self._gdb,
            *_GDB_ARGS,
            *target,
            str(core),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=cwd,
            env=self._child_env(),
        )
        try:
            assert proc.stdout is not None
            out = await _read_capped(proc.stdout, self._limits.max_bytes + 1)
            cut = len(out) > self._limits.max_bytes
            if cut:
                # A runaway trace (deep recursion): keep the head, which has the crash site.
                proc.kill()
                out = out[: self._limits.max_bytes]
            await proc.wait()
        finally:
            await _reap(proc)
        text = out.decode(errors="replace")
        if "#0 " not in text and not cut:
            raise BacktraceFailed(f"gdb printed no stack frames (exit status {proc.returncode})")
        if cut:
            text += f"\n[crashbroker: output cut at {self._limits.max_bytes} bytes]\n"
        return text


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Read until EOF or ``limit`` bytes (``read(n)`` alone returns whatever is buffered)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _nonempty_file(path: Path) -> bool:
    # One stat of our own fresh temporary file (local disk): not worth a thread.
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill the child if it still runs (timeout, cancellation) and wait for it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
