"""Fleet mode: a journal directory of several machines, each machine followed from its own position.

One ``journal.Reader(path=DIR)`` interleaves the files of all machines by time, and once past a
time it steps over any entry older than that: a machine whose uploads stop and resume later
(``systemd-journal-remote`` with one file per machine) had its late entries never read, live or
after a restart from the one stored cursor (tried: docs/reliability.md). Here the reader holds a
match on one machine (``_MACHINE_ID``) at a time and reads that machine, in its own files' order,
from the last of its coredump entries handled; each machine's position is a cursor of its own,
stored with the crash rows (the broker's :class:`~crashbroker.domain.cursor.CursorTracker`, one
stream per machine). Machines are found with ``query_unique`` at every pass, so a machine or file
that appears (a new uploader, a rotation; ``INVALIDATE``) is read from its first entry.

The single stored cursor holds :data:`FLEET_MARKER` once a directory has been positioned; a
cursor of an older version (one reader for the whole directory) is the time before which every
machine is taken as read, once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from systemd import journal

from crashbroker.adapters.journal import (
    BATCH_BYTES,
    DEFAULT_BATCH,
    REALTIME_PREFIX,
    JournalBatch,
    JournalSource,
)
from crashbroker.domain.cursor import CatchUp
from crashbroker.domain.errors import JournalError
from crashbroker.domain.model import COREDUMP_MESSAGE_ID

logger = logging.getLogger(__name__)

FLEET_MARKER = "fleet"  # the single cursor of a directory followed machine by machine
_MACHINE_HEX = re.compile(rb"[0-9a-f]{32}")


def machine_key(value: bytes) -> str:
    """The name of a machine's position: its id, or ``x`` and the hex of an odd value."""
    return value.decode("ascii") if _MACHINE_HEX.fullmatch(value) else "x" + value.hex()


def _cursor_realtime(cursor: str) -> int | None:
    """The wall-clock time (µs) of a journal cursor (``t=``) or of a ``realtime:`` position."""
    if cursor.startswith(REALTIME_PREFIX):
        text = cursor.removeprefix(REALTIME_PREFIX)
        return int(text) if text.isdigit() else None
    for part in cursor.split(";"):
        if part.startswith("t="):
            try:
                return int(part[2:], 16)
            except ValueError:
                return None
    return None


class FleetSource(JournalSource):
    """Follows coredump entries of a journal directory machine by machine.

    Args:
        directory: the journal directory (e.g. ``systemd-journal-remote``'s output).
        cursor: the single stored cursor: :data:`FLEET_MARKER`, an older version's cursor, or
            None on a first start.
        positions: each machine's stored position (:func:`machine_key` → cursor).
        catch_up: where a first start begins: every machine's head (``all``), its tail
            (``none``), or this boot's entries (``boot``; for other machines, their tail).
    """

    def __init__(
        self,
        *,
        directory: Path,
        cursor: str | None = None,
        positions: Mapping[str, str] | None = None,
        catch_up: CatchUp = CatchUp.ALL,
        batch: int = DEFAULT_BATCH,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        super().__init__(
            directory=directory,
            cursor=cursor,
            catch_up=catch_up,
            batch=batch,
            batch_bytes=batch_bytes,
        )
        self._positions: dict[str, str] = dict(positions or {})
        # First start: where an unknown machine begins is the catch-up rule's, or an older
        # version's cursor's time. Afterwards (and once the first pass is done) its head.
        self._first = cursor is None and not self._positions
        self._floor = (
            _cursor_realtime(cursor) if cursor is not None and cursor != FLEET_MARKER else None
        )
        self._current: str | None = None  # the machine whose match the reader holds, in place
        self._queue: list[tuple[str, bytes]] = []  # machines still to read in this pass
        self._in_pass = False
        self._pass_gave = False  # this pass returned a batch
        self._boot_tail: dict[str, str | None] = {}  # catch-up "boot": position after the pass
        self._marked = cursor == FLEET_MARKER

    def open(self) -> None:
        """Open the reader; each machine is placed when it is read."""
        self._reader = self._new_reader()
        self._current = None
        self._skip_cursor = None

    def positions(self) -> dict[str, str]:
        """Each machine's position: the cursor of its last coredump entry read."""
        return dict(self._positions)

    def _machines(self) -> list[tuple[str, bytes]]:
        """The machines of the directory's files now (entries without ``_MACHINE_ID`` are
        never read)."""
        values = journal._Reader.query_unique(self._reader, "_MACHINE_ID")
        return sorted((machine_key(v), v) for v in values if isinstance(v, bytes))

    def _unread_after_hints(self, now: float) -> bool:
        """Never a reopen for an unread hinted crash here: hints name this machine's crashes,
        whose entries reach the directory by upload (or never), and a reopen re-places every
        machine's reader; the race it works around (JournalSource) is the local journal's."""
        super()._unread_after_hints(now)
        return False

    def _read_batch(self) -> JournalBatch:
        """The next batch of the pass over the machines; ``at_end`` after a pass that found
        nothing.

        A pass that gave batches is followed by another: the pump forgets a wake-up between
        two batches (it reads again anyway), and an upload of a machine already passed over
        may have come meanwhile (seen in the fleet test: a late upload waited for the next
        write of any machine). A pass that gives nothing is one call: a wake-up during it stays.
        """
        while True:
            if not self._queue:
                if self._in_pass and not self._pass_gave:
                    return self._end_of_pass()
                self._in_pass = True
                self._pass_gave = False
                self._queue = self._machines()
                if not self._queue:
                    continue
            key, value = self._queue[0]
            batch = self._read_machine(key, value)
            if batch is not None:
                self._pass_gave = True
                return batch
            self._queue.pop(0)

    def _end_of_pass(self) -> JournalBatch:
        """Every machine read to its end. The first pass also stores the marker."""
        self._in_pass = False
        self._first = False
        self._floor = None
        if not self._marked:
            self._marked = True
            return JournalBatch([], at_end=True, position=FLEET_MARKER)
        return JournalBatch([], at_end=True, position=None)

    def _read_machine(self, key: str, value: bytes) -> JournalBatch | None:
        """The next entries of one machine; a position to store; None when it has no more."""
        if self._current != key:
            placed = self._place(key, value)
            self._current = key
            if placed is not None:
                return JournalBatch([], at_end=False, position=placed, machine=key)
        entries, _ = self._read_entries()
        if entries:
            self._positions[key] = str(self._position)
            return JournalBatch(entries, at_end=False, position=self._position, machine=key)
        if key in self._boot_tail:  # the first pass of this boot's entries is done
            tail = self._boot_tail.pop(key)
            self._current = None  # the boot match goes
            if tail is not None and key not in self._positions:
                self._positions[key] = tail
                return JournalBatch([], at_end=False, position=tail, machine=key)
        return None

    def _place(self, key: str, value: bytes) -> str | None:
        """Match one machine and put the reader before its next entry to read.

        Returns a position to store (the machine's last entry before where a first start
        begins), or None.
        """
        reader = self._reader
        reader.flush_matches()
        reader.add_match(MESSAGE_ID=COREDUMP_MESSAGE_ID, _MACHINE_ID=value)
        self._skip_cursor = None
        position = self._positions.get(key)
        if position is not None:
            if not self._step_back_to(reader, position):
                try:
                    reader.seek_cursor(position)
                except OSError as exc:
                    raise JournalError(
                        f"stored cursor of machine {key} is not valid: {exc}"
                    ) from exc
                self._skip_cursor = position
            return None
        if self._floor is not None:  # an older version's single cursor: read up to its time
            reader.seek_realtime(datetime.fromtimestamp((self._floor + 1) / 1e6, tz=UTC))
            return self._here_or_head(key)
        if self._first and self._catch_up is CatchUp.NONE:
            reader.seek_tail()
            return self._here_or_head(key)
        if self._first and self._catch_up is CatchUp.BOOT:
            reader.seek_tail()
            self._boot_tail[key] = reader._get_cursor() if reader._previous() else None
            reader.this_boot()
        reader.seek_head()
        return None

    def _here_or_head(self, key: str) -> str | None:
        """The machine's entry before the reader's place becomes its position (the reader stays
        on it); with none, the reader goes to its head."""
        reader = self._reader
        if reader._previous():
            cursor: str = reader._get_cursor()
            self._positions[key] = cursor
            return cursor
        reader.seek_head()
        return None
