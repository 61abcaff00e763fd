"""The ports between the broker and its adapters (typing.Protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from crashbroker.domain.errors import RequestError
from crashbroker.domain.model import CoredumpEntry, Crash, KCrashMetadata


class Listed(NamedTuple):
    """A crash as the store lists it: ordering keys and its pre-rendered list record."""

    id: str
    timestamp: int
    realtime: int
    record: bytes  # as the renderer made it


class Expired(NamedTuple):
    """A crash the store deleted for its age."""

    id: str
    key: str  # its grouping key
    dismissed: bool


class Publisher(Protocol):
    """Announces crash events to subscribers (the D-Bus service in production)."""

    def crash_detected(self, crash: Crash) -> None: ...

    def crash_updated(self, crash: Crash, changed: Sequence[str]) -> None: ...

    def crash_removed(self, crash_id: str) -> None: ...

    def backtrace_failed(self, crash_id: str, error: RequestError) -> None:
        """A requested backtrace could not be made: ``error`` says why."""
        ...

    def properties_changed(self, names: Sequence[str]) -> None: ...

    async def drain(self) -> None:
        """Returns once the signal just published is written (pacing a burst)."""
        ...

    async def barrier(self) -> None:
        """Returns once everything published so far has reached the bus."""
        ...


class MetadataReader(Protocol):
    """Finds the KCrash metadata of a coredump, and removes KCrash INIs."""

    async def lookup(self, entry: CoredumpEntry) -> KCrashMetadata | None: ...

    def remove_ini(self, path: str, dev: int, ino: int) -> bool:
        """Remove the INI at ``path`` if it is still the file (device, inode) matched."""
        ...


class NullPublisher:
    """Publishes nowhere; used until the bus is connected."""

    def crash_detected(self, crash: Crash) -> None:
        pass

    def crash_updated(self, crash: Crash, changed: Sequence[str]) -> None:
        pass

    def crash_removed(self, crash_id: str) -> None:
        pass

    def backtrace_failed(self, crash_id: str, error: RequestError) -> None:
        pass

    def properties_changed(self, names: Sequence[str]) -> None:
        pass

    async def drain(self) -> None:
        pass

    async def barrier(self) -> None:
        pass
