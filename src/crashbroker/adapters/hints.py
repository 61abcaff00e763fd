"""Hints that a coredump entry is imminent: a core file or a KCrash metadata file arrives.

journald coalesces the change notifications of its journal files (~250 ms), so a reader woken by
them sees an entry 300 to 500 ms after the crash, while the entry itself can be read ~70 ms after
it. Two files appear before the entry: systemd-coredump's core in ``/var/lib/systemd/coredump``
(world-readable, only systemd-coredump writes there; the entry is logged after the core is
written) and KCrash's metadata file (~130 ms before the entry). Their arrival only tells the
journal source to read at once and briefly after (:meth:`JournalSource.read_soon`); a crash is
still published only from its trusted journal entry, so a forged hint costs a few reads.

inotify comes from three libc calls through ctypes (already loaded for ``mallopt``): no new
dependency for ``inotify_init1``/``inotify_add_watch``, and the fd is driven by
``loop.add_reader`` like the journal's: no thread, no timer, no wake-up while nothing arrives.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crashbroker.domain.entry import CORE_DIR

logger = logging.getLogger(__name__)

# <sys/inotify.h>
IN_CLOSE_WRITE = 0x0000_0008
IN_MOVED_TO = 0x0000_0080
IN_CREATE = 0x0000_0100
IN_Q_OVERFLOW = 0x0000_4000
IN_IGNORED = 0x0000_8000
IN_ONLYDIR = 0x0100_0000
IN_ISDIR = 0x4000_0000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

FILE_EVENTS = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded
_READ_SIZE = 64 * 1024

# systemd-coredump's final name: core.<comm>.<uid>.<boot id>.<pid>.<usec>[.zst|.xz|.lz4]; comm has
# "." escaped, so the pid is the fifth dot-separated part from "core.". Written to ".#core…"
# first (or an unnamed O_TMPFILE), then renamed (IN_MOVED_TO) or linked (IN_CREATE).
_CORE_NAME = re.compile(r"core\.[^.]*\.\d+\.[0-9a-f]{32}\.(\d+)\.\d+(?:\.[a-z0-9]+)?")
# KCrash: <exe>.<boot id>.<pid>.ini (KF6) or <pid>.ini (KF5).
_INI_NAME = re.compile(r"(?:.*\.[0-9a-f]{32}\.)?(\d+)\.ini")


def core_hint(name: str) -> int | None:
    """The pid a final core file name in systemd-coredump's directory names, else None."""
    m = _CORE_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def kcrash_hint(name: str) -> int | None:
    """The pid a KCrash metadata file name names, else None (temporary and other files)."""
    if name.startswith("."):
        return None
    m = _INI_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    return libc


def _events(data: bytes) -> Iterator[tuple[int, int, str]]:
    """(wd, mask, name) of each event in one read of an inotify fd."""
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        name = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        yield wd, mask, os.fsdecode(name)


class HintWatcher:
    """Calls ``on_hint(pid)`` when a core file or a KCrash metadata file arrives.

    Args:
        on_hint: called with the crash's pid (from the file name), or None when the name does
            not tell it; called on the loop, must not block.
        core_dir: systemd-coredump's directory (a test passes its own).
        kcrash_dir: KCrash's metadata directory. It is made by KCrash at the first crash, so
            while it is missing its parent is watched for it (and its creation is a hint too).
    """

    def __init__(
        self,
        on_hint: Callable[[int | None], None],
        *,
        core_dir: Path = Path(CORE_DIR),
        kcrash_dir: Path | None = None,
    ) -> None:
        self._on_hint = on_hint
        self._core_dir = core_dir
        self._kcrash_dir = kcrash_dir
        self._fd = -1
        self._wds: dict[int, Callable[[int, str], None]] = {}
        self.hints = 0

    def open(self) -> None:
        """Start watching (what cannot be watched is logged and left out; never raises)."""
        try:
            fd = _libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError) as exc:
            logger.info("no inotify (%s): crashes wait for journald's notification", exc)
            return
        if fd < 0:
            logger.info("inotify_init1: %s", os.strerror(ctypes.get_errno()))
            return
        self._fd = fd
        self._watch(self._core_dir, FILE_EVENTS, self._core_event)
        if self._kcrash_dir is not None and not self._watch(
            self._kcrash_dir, FILE_EVENTS, self._kcrash_event, quiet=True
        ):
            self._watch(
                self._kcrash_dir.parent, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR, self._parent_event
            )

    def _watch(
        self,
        directory: Path,
        mask: int,
        handler: Callable[[int, str], None],
        *,
        quiet: bool = False,
    ) -> int:
        """Add a watch; its descriptor, or 0 (falsy) when it cannot be added."""
        wd = _libc().inotify_add_watch(self._fd, os.fsencode(directory), mask | IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            if not quiet:
                logger.info(
                    "not watching %s for crash hints: %s", directory, os.strerror(err or errno.EIO)
                )
            return 0
        self._wds[wd] = handler
        return int(wd)

    def _core_event(self, mask: int, name: str) -> None:
        if name.startswith("core."):  # not ".#core…", the temporary name
            self._hint(core_hint(name))

    def _kcrash_event(self, mask: int, name: str) -> None:
        if name.endswith(".ini") and not name.startswith("."):
            self._hint(kcrash_hint(name))

    def _parent_event(self, mask: int, name: str) -> None:
        assert self._kcrash_dir is not None
        if not (mask & IN_ISDIR and name == self._kcrash_dir.name):
            return
        # Watched before reading what it holds: a file made meanwhile is not missed.
        if self._watch(self._kcrash_dir, FILE_EVENTS, self._kcrash_event):
            self._hint(None)
            with os.scandir(self._kcrash_dir) as it:
                for entry in it:
                    self._kcrash_event(IN_CREATE, entry.name)

    def _hint(self, pid: int | None) -> None:
        self.hints += 1
        self._on_hint(pid)

    def _on_readable(self) -> None:
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            for wd, mask, name in _events(data):
                if mask & IN_Q_OVERFLOW:
                    self._hint(None)  # events lost: something arrived
                    continue
                if mask & IN_IGNORED:
                    self._wds.pop(wd, None)  # the directory went away
                    continue
                handler = self._wds.get(wd)
                if handler is not None and name:
                    try:
                        handler(mask, name)
                    except OSError as exc:
                        logger.info("crash hint: %s", exc)

    async def run(self) -> None:
        """Deliver hints until cancelled (returns at once if nothing could be watched)."""
        if self._fd < 0 or not self._wds:
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._on_readable)
        try:
            await loop.create_future()  # wakes only when the fd is readable
        finally:
            loop.remove_reader(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._wds.clear()
