"""The facts about a core file that decide whether an entry is trusted (see domain/entry.py).

One ``lstat`` and a few ``getxattr`` calls, without following links, on a local file: cheap
enough for the event loop (about 10 µs), and done only for regular users' entries.
"""

from __future__ import annotations

import os
import stat

from crashbroker.domain.entry import CoreFile

# systemd-coredump's attributes (coredump.c, fix_xattr); root-owned files keep them out of
# reach of the crashed user.
_XATTRS = ("pid", "uid", "timestamp", "exe")
_PREFIX = "user.coredump."


def inspect_core(path: str) -> CoreFile | None:
    """What the file system says about ``path``; None when it cannot be looked at."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    xattrs: dict[str, str] = {}
    if stat.S_ISREG(st.st_mode):
        for name in _XATTRS:
            try:
                raw = os.getxattr(path, _PREFIX + name, follow_symlinks=False)
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
