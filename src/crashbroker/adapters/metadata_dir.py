"""Reading (and removing) KCrash metadata files, treating them as hostile input.

Files are opened relative to their directory with ``O_NOFOLLOW|O_NONBLOCK`` (a symlink is refused,
a FIFO cannot block the open), must be regular files, and are read through aiofiles, off the event
loop, up to a size cap. Nothing outside ``kcrash-metadata/`` and ``drkonqi/crashes/`` is opened,
and only a regular file inside ``kcrash-metadata/`` is ever unlinked.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import aiofiles

from crashbroker.domain.errors import MetadataError, MetadataReason
from crashbroker.domain.metadata import (
    MAX_FILE_BYTES,
    check_belongs,
    drkonqi_name,
    parse_drkonqi_json,
    parse_ini,
    safe_name,
    v1_name,
    v2_name,
)
from crashbroker.domain.model import CoredumpEntry, KCrashMetadata, MetadataSource

logger = logging.getLogger(__name__)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class _Refused(OSError):
    """Raised inside the opener for a path that is not a regular file."""


def _open_regular(path: str, flags: int) -> int:
    """``opener`` for :func:`aiofiles.open`: a regular file inside its directory, no links."""
    del flags  # ours are fixed: read-only, no follow, no blocking
    directory, name = os.path.split(path)
    dfd = os.open(directory, _DIR_FLAGS)
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dfd)
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Refused(errno.EINVAL, "not a regular file", path)
    return fd


async def read_capped(path: Path, cap: int = MAX_FILE_BYTES) -> bytes:
    """Read at most ``cap`` + 1 bytes of a regular, non-symlinked file.

    Raises:
        MetadataError: missing, a symlink, not a regular file, unreadable, or larger than ``cap``.
    """
    try:
        async with aiofiles.open(path, "rb", opener=_open_regular) as f:
            data = await f.read(cap + 1)
    except _Refused as exc:
        raise MetadataError(str(path), MetadataReason.NOT_REGULAR) from exc
    except FileNotFoundError as exc:
        raise MetadataError(str(path), MetadataReason.NOT_FOUND) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MetadataError(str(path), MetadataReason.SYMLINK) from exc
        raise MetadataError(str(path), MetadataReason.UNREADABLE, exc.strerror or "") from exc
    if len(data) > cap:
        raise MetadataError(str(path), MetadataReason.TOO_LARGE, f"more than {cap} bytes")
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
                data = await read_capped(path)
                meta = (
                    parse_drkonqi_json(data, str(path))
                    if source is MetadataSource.DRKONQI
                    else parse_ini(data, str(path), source)
                )
                check_belongs(meta, entry)
            except MetadataError as exc:
                if exc.reason is not MetadataReason.NOT_FOUND:
                    logger.warning("metadata refused for pid %d: %s", entry.pid, exc)
                continue
            return meta
        return None

    def remove_ini(self, path: str) -> bool:
        """Unlink a KCrash INI, only if it is a regular file directly inside ``kcrash_dir``.

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
            st = os.lstat(candidate.name, dir_fd=dfd)
            if not stat.S_ISREG(st.st_mode):
                logger.warning("not removing %s: not a regular file", path)
                return False
            # unlink never follows a link; a swap after lstat removes only the directory entry.
            os.unlink(candidate.name, dir_fd=dfd)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("cannot remove %s: %s", path, exc)
            return False
        finally:
            os.close(dfd)
