"""Which journal cursor is safe to persist while some crashes are still being correlated, and
where a first start begins."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # CLI start-up: its parser needs CatchUp, not the domain model
    from crashbroker.domain.model import CrashKey


class CatchUp(enum.StrEnum):
    """Where a first start (no stored cursor) begins."""

    BOOT = "boot"  # every coredump of the current boot
    ALL = "all"  # every coredump the journal holds
    NONE = "none"  # only crashes from now on


class CursorTracker:
    """Tracks the newest journal position before which every entry is fully handled.

    A crash waiting for its metadata must not be skipped after a restart, so the persisted
    cursor stops just before the oldest pending entry. Entries after it that were already
    published are read again after a restart and recognised by their stable id.

    Positions are kept per stream: ``""`` for the one reader of a journal, a machine's id for
    a fleet directory followed machine by machine (each machine has a position of its own and
    a pending crash holds back only its own machine's).
    """

    def __init__(self, start: str | None = None, streams: Mapping[str, str] | None = None) -> None:
        self._latest: dict[str, str | None] = {**(streams or {}), "": start}
        # insertion order = journal order (within a stream)
        self._pending: dict[CrashKey, tuple[str, str | None]] = {}

    def seen(self, cursor: str, pending: CrashKey | None = None, stream: str = "") -> None:
        """An entry at ``cursor`` was read; ``pending`` names the crash still unsettled there."""
        if pending is not None and pending not in self._pending:
            self._pending[pending] = (stream, self._latest.get(stream))
        self._latest[stream] = cursor

    def settled(self, key: CrashKey) -> None:
        self._pending.pop(key, None)

    def safe(self, stream: str = "") -> str | None:
        """The cursor to persist: every entry up to and including it is handled."""
        for of, before in self._pending.values():
            if of == stream:
                return before
        return self._latest.get(stream)

    def streams(self) -> dict[str, str]:
        """The position to persist of each machine stream that has one (``""`` not included)."""
        safe = {s: self.safe(s) for s in self._latest if s}
        return {s: c for s, c in safe.items() if c is not None}
