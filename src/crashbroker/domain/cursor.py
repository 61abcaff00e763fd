"""Which journal cursor is safe to persist while some crashes are still being correlated, and
where a first start begins."""

from __future__ import annotations

import enum

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
    """

    def __init__(self, start: str | None = None) -> None:
        self._latest = start
        self._pending: dict[CrashKey, str | None] = {}  # insertion order = journal order

    def seen(self, cursor: str, pending: CrashKey | None = None) -> None:
        """An entry at ``cursor`` was read; ``pending`` names the crash still unsettled there."""
        if pending is not None and pending not in self._pending:
            self._pending[pending] = self._latest
        self._latest = cursor

    def settled(self, key: CrashKey) -> None:
        self._pending.pop(key, None)

    def safe(self) -> str | None:
        """The cursor to persist: every entry up to and including it is handled."""
        for before in self._pending.values():
            return before
        return self._latest
