"""The facts about a core file that decide whether an entry is trusted (see domain/entry.py).

One ``lstat`` and a few ``getxattr`` calls, without following links, on a local file: cheap
enough for the event loop (about 10 µs), and done only for regular users' entries.
:func:`open_core` gives the same facts about an open descriptor, for the reader of the core.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable

from crashbroker.domain.entry import CoreFile, JournalFields, TrustPolicy, core_to_check

# systemd-coredump's attributes (coredump.c, fix_xattr); root-owned files keep them out of
# reach of the crashed user.
_XATTRS = ("pid", "uid", "timestamp", "exe")
_PREFIX = "user.coredump."
# Never follow a link, never wait for a FIFO's writer, never make a terminal ours.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _facts(path: str, st: os.stat_result, getxattr: Callable[[str], bytes]) -> CoreFile:
    xattrs: dict[str, str] = {}
    if stat.S_ISREG(st.st_mode):
        for name in _XATTRS:
            try:
                raw = getxattr(_PREFIX + name)
            except OSError:
                continue  # no such attribute, or a file system without user xattrs
            xattrs[name] = raw.decode("utf-8", errors="replace")
    return CoreFile(
        path=path,
        owner_uid=st.st_uid,
        regular=stat.S_ISREG(st.st_mode),
        others_write=bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)),
        links=st.st_nlink,
        xattrs=xattrs,
    )


def inspect_core(path: str) -> CoreFile | None:
    """What the file system says about ``path``; None when it cannot be looked at."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    return _facts(path, st, lambda name: os.getxattr(path, name, follow_symlinks=False))


def open_core(path: str) -> tuple[int, CoreFile] | None:
    """Open ``path`` for reading, and the facts about the file the descriptor refers to.

    Only a regular file is opened (``lstat`` first: opening a device can have effects of its
    own), with ``O_NOFOLLOW|O_NONBLOCK`` (a link or a FIFO swapped in meanwhile neither leads
    elsewhere nor blocks), and the facts come from the descriptor (``fstat``, ``fgetxattr``), so
    they describe exactly what will be read. The caller closes the descriptor.

    Returns:
        ``(fd, facts)``, or None when the path is not a regular file or cannot be opened.
    """
    try:
        before = os.lstat(path)
        if not stat.S_ISREG(before.st_mode):
            return None
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            os.close(fd)
            return None
        return fd, _facts(path, st, lambda name: os.getxattr(fd, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def core_facts(
    fields: JournalFields,
    policy: TrustPolicy,
    inspect: Callable[[str], CoreFile | None] = inspect_core,
) -> CoreFile | None:
    """What ``classify`` needs to know about the core an entry names: the facts of the file
    :func:`~crashbroker.domain.entry.core_to_check` asks for, or None when it asks for none."""
    path = core_to_check(fields, policy)
    return inspect(path) if path else None
