"""The one exception root of crashbroker.

Tree::

    CrashBrokerError
    ├── MetadataError           a KCrash/DrKonqi metadata file was refused or could not be parsed
    │                           (``path``, ``reason``)
    ├── JournalError            the journal could not be opened or positioned
    ├── StoreError              the crash store failed (disk full, corrupt database, ...)
    └── RequestError            a caller asked for something that cannot be done; each subclass
        │                       maps to one named D-Bus error
        ├── NoSuchCrash         (``crash_id``)
        ├── InvalidArgs         (``detail``)
        ├── AccessDenied        (``detail``)
        ├── NotSupported        (``detail``)
        ├── NotReady            no backtrace cached yet (RequestBacktrace makes it)
        ├── NoCore              the crash has no core to debug (none kept, or removed since)
        ├── CoreTruncated       the core was cut short (size limit); gdb would mislead
        ├── BacktraceFailed     reading the core or gdb failed, timed out or said nothing useful
        └── TooLarge            the answer would not fit in one D-Bus message (``count``,
                                ``size``, ``maximum``): ask for pages

Exceptions carry structured attributes; callers never parse message text.
"""

from __future__ import annotations

import enum


class CrashBrokerError(Exception):
    """Root of every error crashbroker raises on purpose."""


class MetadataReason(enum.Enum):
    """Why a metadata file was not used."""

    NOT_FOUND = "not-found"
    NOT_REGULAR = "not-a-regular-file"
    SYMLINK = "symlink"
    TOO_LARGE = "too-large"
    UNREADABLE = "unreadable"
    MALFORMED = "malformed"
    EXE_MISMATCH = "exe-mismatch"
    NOT_PRIVATE = "not-private"  # the file or its directory: another owner, or g/o-writable
    STALE = "stale"  # a KF5 <pid>.ini not written at the time of this crash
    CHANGED = "changed"  # not the file the daemon matched to the crash (device/inode)


class MetadataError(CrashBrokerError):
    """A metadata file was refused or could not be parsed."""

    def __init__(self, path: str, reason: MetadataReason, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason.value}{': ' + detail if detail else ''}")


class JournalError(CrashBrokerError):
    """The journal could not be opened, positioned or read."""


class StoreError(CrashBrokerError):
    """The persistent crash store failed."""


class RequestError(CrashBrokerError):
    """A request from a client cannot be served; ``name`` is the D-Bus error suffix."""

    name = "Failed"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class NoSuchCrash(RequestError):
    name = "NoSuchCrash"

    def __init__(self, crash_id: str) -> None:
        self.crash_id = crash_id
        super().__init__(f"no crash with id {crash_id!r}")


class InvalidArgs(RequestError):
    name = "InvalidArgs"


class AccessDenied(RequestError):
    name = "AccessDenied"


class NotSupported(RequestError):
    name = "NotSupported"


class NotReady(RequestError):
    name = "NotReady"


class NoCore(RequestError):
    name = "NoCore"


class CoreTruncated(RequestError):
    name = "CoreTruncated"


class BacktraceFailed(RequestError):
    name = "BacktraceFailed"


class TooLarge(RequestError):
    """A reply of ``count`` crashes (the filter's matches after ``limit`` and ``offset``) would
    take ``size`` bytes, more than one D-Bus reply may hold (``maximum``): the caller asks for
    pages (``limit`` and ``offset``) instead."""

    name = "TooLarge"

    def __init__(self, count: int, size: int, maximum: int) -> None:
        self.count = count
        self.size = size
        self.maximum = maximum
        super().__init__(
            f"a reply of {count} crashes would take {size} bytes, more than one D-Bus reply "
            f"may hold ({maximum} bytes); ask for pages with the filter keys 'limit' and 'offset'"
        )
