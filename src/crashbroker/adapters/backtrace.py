"""Backtraces: the daemon takes the core of exactly the trusted entry; ``gdb --batch`` reads it.

No ``coredumpctl dump``: it picks its entry by matches a forged entry can also satisfy. The
entry is read again by its cursor and judged again (adapters/journal_core.py); a core stored in
the journal is written from that entry's ``COREDUMP`` field, an external one is opened without
following links or waiting on FIFOs, proven again from its descriptor (domain/entry.py
``core_proves``) and decompressed by ``zstd``/``xz``/``lz4`` reading that descriptor. gdb gets a
private copy through ``/proc/self/fd``. When the daemon runs as root for another user's crash
(``--all-users``), the decompressor and gdb run as that user (``setpriv``: its uid/gid, no other
groups, no capabilities, no new privileges), never as root on a file the user controls.

Child processes only make the event loop wait on pipes. The caller (the broker's one backtrace
worker) guarantees one run at a time. A run has a deadline and an output cap; the copy lives in
a private temporary directory that is removed whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crashbroker.adapters.core_file import inspect_core as _inspect_core
from crashbroker.adapters.core_file import open_core
from crashbroker.adapters.journal_core import EntryAgain, reread_entry
from crashbroker.domain.entry import CoreFile, TrustPolicy, core_proves
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
# systemd-coredump's suffixes (coredump.c) and the programs that undo them, reading stdin.
DECOMPRESSORS = {".zst": "zstd", ".xz": "xz", ".lz4": "lz4"}
# The group a foreign crash runs under when its entry names root's group (or none).
NOGROUP = 65534
# A machine's uid means nothing here: cores from a fleet's other machines are read as nobody.
NOBODY = 65534
_ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True, slots=True)
class BacktraceLimits:
    """``timeout_s`` for reading the core and gdb together; ``max_bytes`` of gdb output kept."""

    timeout_s: float = 120.0
    max_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RunAs:
    """The credentials the child processes get instead of the daemon's (root's)."""

    uid: int
    gid: int


class GdbBacktracer:
    """Makes backtraces with the system's gdb, from the core of exactly the trusted entry.

    Args:
        policy: the daemon's trust rule; the entry is judged again by it.
        journal_dir: the journal directory the daemon follows (None: the local journal); the
            entry is read again from the same journal.
        limits: deadline and output cap.
        gdb: the program (a name on PATH or a path).
        inspect_core: the core-file facts the trust rule asks for (adapters/core_file.py).
        euid: the daemon's effective uid (None: ``os.geteuid()``); root runs children as the
            crashed user.
    """

    def __init__(
        self,
        *,
        policy: TrustPolicy,
        journal_dir: Path | None = None,
        limits: BacktraceLimits | None = None,
        gdb: str = "gdb",
        inspect_core: Callable[[str], CoreFile | None] = _inspect_core,
        euid: int | None = None,
    ) -> None:
        self._policy = policy
        self._journal_dir = journal_dir
        self._limits = limits or BacktraceLimits()
        self._gdb = gdb
        self._inspect_core = inspect_core
        self._euid = os.geteuid() if euid is None else euid

    async def backtrace(self, entry: CoredumpEntry) -> str:
        """gdb's ``thread apply all bt`` for the entry's core.

        Raises:
            NoCore: systemd-coredump kept no core, or it is gone (vacuumed, deleted), or the
                entry or core no longer prove themselves.
            CoreTruncated: the core was cut at the size limit (gdb would print garbage).
            BacktraceFailed: a tool is missing, failed, timed out, or gdb printed no frames.
        """
        self._check_core(entry)
        gdb = shutil.which(self._gdb)
        if gdb is None:
            raise BacktraceFailed(f"{self._gdb} is not installed")
        run_as = self._run_as(entry)
        try:
            async with asyncio.timeout(self._limits.timeout_s):
                with tempfile.TemporaryDirectory(prefix="crashbroker-core-") as tmp:
                    # The directory stays the daemon's (0700): gdb reaches the copy only
                    # through the descriptor it inherits.
                    fd = os.open(
                        os.path.join(tmp, "core"),
                        os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600,
                    )
                    try:
                        await self._extract(entry, fd, run_as)
                        return await self._gdb_bt(gdb, entry, fd, run_as)
                    finally:
                        os.close(fd)
        except TimeoutError:
            raise BacktraceFailed(
                f"gave up after {self._limits.timeout_s:g} s (reading the core + gdb)"
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

    def _run_as(self, entry: CoredumpEntry) -> RunAs | None:
        """Whom the children run as: None (the daemon itself) unless the daemon is root and
        the crash is not root's own crash on this machine."""
        if self._euid != 0:
            return None  # an ordinary daemon cannot switch, and holds no privilege to lose
        local = entry.machine_id in ("", self._policy.machine_id)
        if not local:
            return RunAs(NOBODY, NOGROUP)
        if entry.uid == 0:
            return None
        return RunAs(entry.uid, entry.gid or NOGROUP)

    async def _extract(self, entry: CoredumpEntry, fd: int, run_as: RunAs | None) -> None:
        """Write the core of exactly the trusted entry to ``fd`` (uncompressed)."""
        again: EntryAgain = await asyncio.to_thread(
            reread_entry,
            directory=self._journal_dir,
            cursor=entry.cursor,
            key=entry.key,
            policy=self._policy,
            inspect_core=self._inspect_core,
            core_fd=os.dup(fd),  # closed by reread_entry, whenever its thread ends
        )
        trusted = again.entry
        if run_as is not None and trusted.uid == run_as.uid and not again.own_credentials:
            # A setuid program's core holds memory its user may not read, and systemd-coredump
            # gives that user no access to it: neither may we.
            raise NoCore(
                "the crashed process ran with other credentials (setuid, capabilities): its "
                "core is not given to its user"
            )
        if trusted.core_filename:
            await self._decompress(trusted, fd, run_as)
        elif not again.core_bytes:
            raise NoCore("the crash's journal entry holds no core")
        if os.pread(fd, len(_ELF_MAGIC), 0) != _ELF_MAGIC:
            raise BacktraceFailed("the core is not an ELF file")
        if run_as is not None:
            os.fchown(fd, run_as.uid, run_as.gid)
            os.fchmod(fd, stat.S_IRUSR)

    async def _decompress(self, entry: CoredumpEntry, out_fd: int, run_as: RunAs | None) -> None:
        path = entry.core_filename
        opened = open_core(path)
        if opened is None:
            raise NoCore(f"{path} is not a regular file that can be read")
        in_fd, facts = opened
        try:
            # gdb parses whatever file it is given: only a core that systemd-coredump stored
            # for exactly this crash, checked on the descriptor that is read.
            if not core_proves(
                facts,
                uid=str(entry.uid),
                boot_id=entry.boot_id,
                pid=str(entry.pid),
                timestamp=str(entry.timestamp),
                exe=entry.exe or None,
                core_dir=self._policy.core_dir,
            ):
                raise NoCore(f"{path} is not a core systemd-coredump stored for this crash")
            suffix = next((s for s in DECOMPRESSORS if path.endswith(s)), "")
            if not suffix:
                await asyncio.to_thread(_copy, in_fd, out_fd)
                return
            tool = shutil.which(DECOMPRESSORS[suffix])
            if tool is None:
                raise BacktraceFailed(f"{DECOMPRESSORS[suffix]} is not installed ({suffix} core)")
            proc = await asyncio.create_subprocess_exec(
                *_as_user(run_as),
                tool, "-d", "-c", "-q",
                stdin=in_fd, stdout=out_fd, stderr=asyncio.subprocess.PIPE,
                env=self._child_env(run_as), cwd="/",
            )  # fmt: skip
            try:
                _, err = await proc.communicate()
            finally:
                await _reap(proc)
            if proc.returncode != 0:
                detail = err.decode(errors="replace").strip().splitlines()
                reason = detail[-1] if detail else f"exit status {proc.returncode}"
                raise BacktraceFailed(f"{DECOMPRESSORS[suffix]} could not read the core: {reason}")
        finally:
            os.close(in_fd)

    @staticmethod
    def _child_env(run_as: RunAs | None) -> dict[str, str]:
        env = {k: os.environ[k] for k in _CHILD_ENV_KEYS if k in os.environ}
        env.setdefault("PATH", "/usr/bin:/bin")
        if run_as is not None:
            env.pop("TMPDIR", None)  # the daemon's, not the user's
            env["HOME"] = "/"
        return env

    async def _gdb_bt(self, gdb: str, entry: CoredumpEntry, fd: int, run_as: RunAs | None) -> str:
        exe = entry.exe.removesuffix(" (deleted)")
        # Every path gdb gets is absolute and attached to its option (--se=/…, --core=/…):
        # nothing from an entry can be read as an option. Without a usable executable gdb
        # still reads the core (and finds the libraries); a FIFO or device is never named.
        target = [f"--se={exe}"] if _usable_exe(exe, run_as) else []
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            proc = await asyncio.create_subprocess_exec(
                *_as_user(run_as),
                gdb,
                *_GDB_ARGS,
                *target,
                f"--core=/proc/self/fd/{reader}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                cwd="/",
                env=self._child_env(run_as),
                pass_fds=(reader,),
            )
        finally:
            os.close(reader)
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


def _as_user(run_as: RunAs | None) -> list[str]:
    """The ``setpriv`` prefix that drops root for ``run_as`` (nothing when None). setpriv, not
    ``subprocess``'s ``user=``/``preexec_fn``: it also clears the capability sets and sets
    no-new-privileges, and a ``preexec_fn`` is unsafe in a process with threads."""
    if run_as is None:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise BacktraceFailed("setpriv (util-linux) is needed to run gdb as the crashed user")
    return [
        setpriv, f"--reuid={run_as.uid}", f"--regid={run_as.gid}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
    ]  # fmt: skip


def _usable_exe(exe: str, run_as: RunAs | None) -> bool:
    if not exe.startswith("/"):
        return False
    try:
        st = os.stat(exe)  # the daemon only looks; gdb opens it, as the crashed user
    except (OSError, ValueError):
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    return run_as is not None or os.access(exe, os.R_OK)


def _copy(in_fd: int, out_fd: int) -> None:
    """An uncompressed core, copied in the kernel."""
    offset = 0
    while True:
        sent = os.sendfile(out_fd, in_fd, offset, 1 << 30)
        if sent == 0:
            return
        offset += sent


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


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill the child if it still runs (timeout, cancellation) and wait for it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
