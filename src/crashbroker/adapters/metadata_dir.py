"""Reading (and removing) KCrash metadata files, treating them as hostile input.

Files are opened relative to their directory with ``O_NOFOLLOW|O_NONBLOCK`` (a symlink is refused,
a FIFO cannot block the open), must be regular files, and are read through aiofiles, off the event
loop, up to a size cap. The file and its directory must be the user's own and not group- or
world-writable (``fstat`` of what was opened). A KF5 ``<pid>.ini`` must have been written at the
time of the crash. Nothing outside ``kcrash-metadata/`` and ``drkonqi/crashes/`` is opened,
and only the regular file inside ``kcrash-metadata/`` that was matched to the crash (same device
and inode) is ever unlinked.
"""

from __future__ import annotations

import errno
import functools
import grp
import logging
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import aiofiles

from crashbroker.domain.errors import MetadataError, MetadataReason
from crashbroker.domain.metadata import (
    MAX_FILE_BYTES,
    check_belongs,
    drkonqi_name,
    parse_drkonqi_json,
    parse_ini,
    private_file,
    safe_name,
    v1_name,
    v1_written_for,
    v2_name,
)
from crashbroker.domain.model import CoredumpEntry, KCrashMetadata, MetadataSource

logger = logging.getLogger(__name__)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class _Refused(OSError):
    """Raised inside the opener for a path that is not a regular file."""


class _NotPrivate(OSError):
    """Raised inside the opener for a file or directory someone else could have written."""


@functools.cache
def private_groups(uid: int) -> frozenset[int]:
    """``uid``'s private group, when it has one: its primary group, named after it and with no
    other member (Debian's user private groups). Files of that group may be group-writable."""
    try:
        user = pwd.getpwuid(uid)
        group = grp.getgrgid(user.pw_gid)
    except KeyError:
        return frozenset()
    if group.gr_name != user.pw_name or set(group.gr_mem) - {user.pw_name}:
        return frozenset()
    return frozenset({user.pw_gid})


def is_private(st: os.stat_result, uid: int) -> bool:
    """:func:`private_file` for a ``stat`` result, with ``uid``'s private group."""
    return private_file(st.st_uid, st.st_mode, uid, gid=st.st_gid, private_gids=private_groups(uid))


def _opener(facts: list[os.stat_result], uid: int) -> Callable[[str, int], int]:
    """``opener`` for :func:`aiofiles.open`: a regular file inside its directory, no links,
    the file and its directory ``uid``'s own and not group/world-writable (checked with
    ``fstat`` on what was opened, so a swap of the name after the check changes nothing).
    The file's ``fstat`` is appended to ``facts``."""

    def open_private(path: str, flags: int) -> int:
        del flags  # ours are fixed: read-only, no follow, no blocking
        directory, name = os.path.split(path)
        dfd = os.open(directory, _DIR_FLAGS)
        try:
            dst = os.fstat(dfd)
            if not is_private(dst, uid):
                raise _NotPrivate(errno.EPERM, "directory not private", directory)
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dfd)
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise _Refused(errno.EINVAL, "not a regular file", path)
        if not is_private(st, uid):
            os.close(fd)
            raise _NotPrivate(errno.EPERM, "file not private", path)
        facts.append(st)
        return fd

    return open_private


async def read_file(
    path: Path, cap: int = MAX_FILE_BYTES, uid: int | None = None
) -> tuple[bytes, os.stat_result]:
    """Read at most ``cap`` + 1 bytes of a regular, non-symlinked file that is ``uid``'s own
    (default: ours), in a directory that is ``uid``'s own, neither of them group- or
    world-writable; with the ``fstat`` of the file that was read.

    Raises:
        MetadataError: missing, a symlink, not a regular file, not private, unreadable, or
            larger than ``cap``.
    """
    facts: list[os.stat_result] = []
    opener = _opener(facts, os.getuid() if uid is None else uid)
    try:
        async with aiofiles.open(path, "rb", opener=opener) as f:
            data = await f.read(cap + 1)
    except _Refused as exc:
        raise MetadataError(str(path), MetadataReason.NOT_REGULAR) from exc
    except _NotPrivate as exc:
        raise MetadataError(str(path), MetadataReason.NOT_PRIVATE, exc.strerror or "") from exc
    except FileNotFoundError as exc:
        raise MetadataError(str(path), MetadataReason.NOT_FOUND) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MetadataError(str(path), MetadataReason.SYMLINK) from exc
        raise MetadataError(str(path), MetadataReason.UNREADABLE, exc.strerror or "") from exc
    if len(data) > cap:
        raise MetadataError(str(path), MetadataReason.TOO_LARGE, f"more than {cap} bytes")
    return data, facts[0]


async def read_capped(path: Path, cap: int = MAX_FILE_BYTES) -> bytes:
    """:func:`read_file` without the file's facts.

    Raises:
        MetadataError: as :func:`read_file`.
    """
    data, _ = await read_file(path, cap)
    return data


class MetadataDir:
    """The user's KCrash and DrKonqi metadata directories under ``cache_home``."""

    def __init__(self, cache_home: Path) -> None:
        self.kcrash_dir = cache_home / "kcrash-metadata"
        self.drkonqi_dir = cache_home / "drkonqi" / "crashes"
        self._kcrash_prefix = f"{self.kcrash_dir}/"
        self._drkonqi_prefix = f"{self.drkonqi_dir}/"

    async def lookup(self, entry: CoredumpEntry) -> KCrashMetadata | None:
        """The metadata for ``entry``: the v2 INI, else the v1 INI, else DrKonqi's JSON record.

        Refused or foreign files are logged and skipped; never raises for file problems.
        """
        candidates = [
            (self._kcrash_prefix, v2_name(entry), MetadataSource.KCRASH_V2),
            (self._kcrash_prefix, v1_name(entry), MetadataSource.KCRASH_V1),
            (self._drkonqi_prefix, drkonqi_name(entry), MetadataSource.DRKONQI),
        ]
        for prefix, name, source in candidates:
            if not safe_name(name):
                continue
            # Most crashes have no metadata (any non-KDE program; a past crash whose INI is
            # gone): one lstat on the loop — a name lookup in the user's cache directory —
            # answers that, instead of a round trip through the file thread pool per name.
            # Plain strings: building Paths was a tenth of a 10,000-crash catch-up.
            if not os.path.lexists(prefix + name):  # noqa: ASYNC240 (deliberate, see above)
                continue
            path = Path(prefix + name)
            try:
                data, st = await read_file(path)
                if source is MetadataSource.KCRASH_V1 and not v1_written_for(
                    st.st_mtime_ns // 1000, entry.timestamp
                ):
                    # <pid>.ini names no boot: one of an earlier boot (or an earlier crash
                    # of a reused pid) must not decorate this crash.
                    raise MetadataError(
                        str(path), MetadataReason.STALE, "not written at the time of the crash"
                    )
                meta = (
                    parse_drkonqi_json(data, str(path))
                    if source is MetadataSource.DRKONQI
                    else parse_ini(data, str(path), source)
                )
                check_belongs(meta, entry)
                meta = replace(meta, dev=st.st_dev, ino=st.st_ino)
            except MetadataError as exc:
                if exc.reason is not MetadataReason.NOT_FOUND:
                    logger.warning("metadata refused for pid %d: %s", entry.pid, exc)
                continue
            return meta
        return None

    def remove_ini(self, path: str, dev: int, ino: int) -> bool:
        """Unlink a KCrash INI, only if it is a regular file directly inside ``kcrash_dir`` and
        still the file that was matched to the crash (``dev``, ``ino``: its ``st_dev``,
        ``st_ino`` when read; 0, 0 — unknown — removes nothing).

        Returns:
            True when a file was removed.
        """
        candidate = Path(path)
        if candidate.parent != self.kcrash_dir or not safe_name(candidate.name):
            logger.warning("not removing %s: outside %s", path, self.kcrash_dir)
            return False
        try:
            dfd = os.open(self.kcrash_dir, _DIR_FLAGS | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            dst = os.fstat(dfd)
            if not is_private(dst, os.getuid()):
                logger.warning("not removing %s: its directory is not private", path)
                return False
            st = os.lstat(candidate.name, dir_fd=dfd)
            if not stat.S_ISREG(st.st_mode):
                logger.warning("not removing %s: not a regular file", path)
                return False
            if (st.st_dev, st.st_ino) != (dev, ino) or not ino:
                # A <pid>.ini binds by pid only: the file there now may be another crash's.
                logger.warning("not removing %s: not the file matched to the crash", path)
                return False
            # unlink never follows a link; a swap after lstat removes only the directory entry
            # (only a process of our own uid can make one: the directory is checked private).
            os.unlink(candidate.name, dir_fd=dfd)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("cannot remove %s: %s", path, exc)
            return False
        finally:
            os.close(dfd)
