"""Journal source: follows systemd-coredump entries with systemd-python, driven by the event loop.

The reader's inotify descriptor is registered with ``loop.add_reader``; the callback only calls
``process()`` and wakes the pump. ``Reader.wait()`` blocks and is never used. Entries come out in
bounded batches so a large catch-up never starves the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from systemd import journal

from crashbroker.adapters.memory import release_free_memory
from crashbroker.domain.cursor import CatchUp
from crashbroker.domain.entry import REPEATED
from crashbroker.domain.errors import JournalError
from crashbroker.domain.model import COREDUMP_MESSAGE_ID

logger = logging.getLogger(__name__)

REALTIME_PREFIX = "realtime:"
DEFAULT_BATCH = 256
STEP_BACK = 1_000  # coredumps from the end: ~25 ms to step over on the bench machine
# After a hint (read_soon, adapters/hints.py): read every HINT_INTERVAL_S until the hinted entry
# is read or HINT_WINDOW_S after the last hint. A real entry is readable ~70 ms after the kill,
# journald's notification comes ~250 ms after that. The core file appears within a few ms of the
# entry, so the read right after the hint usually misses it: every 15 ms left CrashDetected
# ~13 ms behind a 1 ms poller (p50, bench e2e n=100), every 5 ms ~3 ms. An idle loop: ~60 timer
# wake-ups at most per hint (a foreign user's core, whose entry this reader never sees).
HINT_INTERVAL_S = 0.005
HINT_WINDOW_S = 0.3


@dataclass(frozen=True, slots=True)
class JournalBatch:
    """Up to ``batch`` entries, fields as strings; ``at_end`` when the journal had no more."""

    entries: list[dict[str, str]]
    at_end: bool
    position: str | None  # a resumable position even when ``entries`` is empty
    # Whose position ``position`` is: "" for the one reader of a journal, a machine's id in
    # fleet mode (adapters/journal_fleet.py: each machine followed from its own position).
    machine: str = ""


def field_text(value: Any) -> str:
    """A journal field value as text: bytes decoded (invalid UTF-8 replaced), repeats → first."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):  # a field logged more than once: keep the first
        return field_text(value[0]) if value else ""
    if isinstance(value, datetime):
        return str(int(value.timestamp() * 1_000_000))
    if isinstance(value, uuid.UUID):  # _BOOT_ID, MESSAGE_ID…: the journal's 32 hex digits
        return value.hex
    return str(value)


# The fields the daemon reads (domain/entry.py: classify, core_to_check; the broker's log lines).
# Everything else systemd-coredump logs (the process's status, limits, mountinfo, environment,
# open fds, auxv, package notes…) is dropped as soon as it is read: a batch kept every field of
# every entry, and 64 entries with 4 MB maps and mountinfo held 541 MB (docs/reliability.md).
# tests/integration/test_big_fields.py checks that classify reads nothing outside this set.
USED_FIELDS = frozenset(
    {
        "MESSAGE_ID", "_UID", "_EXE", "_SYSTEMD_UNIT", "_BOOT_ID", "_MACHINE_ID", "_HOSTNAME",
        "COREDUMP_PID", "COREDUMP_UID", "COREDUMP_GID", "COREDUMP_SIGNAL", "COREDUMP_SIGNAL_NAME",
        "COREDUMP_TIMESTAMP", "COREDUMP_EXE", "COREDUMP_COMM", "COREDUMP_CMDLINE",
        "COREDUMP_HOSTNAME", "COREDUMP_UNIT", "COREDUMP_USER_UNIT", "COREDUMP_FILENAME",
        "COREDUMP_TRUNCATED", "COREDUMP_PROC_MAPS", "MESSAGE",
    }
)  # fmt: skip
# Read only to find which KCrash library the process had (domain/entry.py, kcrash_lib_from):
# above this size, only the text around each "libKF5Crash.so"/"libKF6Crash.so" is kept.
SCANNED_FIELDS = ("COREDUMP_PROC_MAPS", "MESSAGE")
SCANNED_KEEP = 64 * 1024
_KCRASH_LIB = re.compile(rb"libKF[56]Crash\.so")
_KCRASH_CONTEXT = 16  # bytes kept before each name: the character before it decides its \b
_KCRASH_MAX_HITS = 64
# A batch ends when the fields read for it pass this many bytes, not only at DEFAULT_BATCH
# entries: what a batch holds is bounded, and the loop runs between batches of big entries.
BATCH_BYTES = 8 << 20


def kcrash_excerpt(value: bytes) -> bytes:
    """The parts of a long maps or stack-trace field that can name a KCrash library.

    Every ``libKF5Crash.so``/``libKF6Crash.so`` (the first :data:`_KCRASH_MAX_HITS`) with
    :data:`_KCRASH_CONTEXT` bytes before it, one per line: ``kcrash_lib_from`` finds in the
    excerpt what it finds in the whole value (a name's word boundary depends only on the
    character just before it, which is kept; a line break is not a word character).
    """
    return b"\n".join(
        value[max(0, m.start() - _KCRASH_CONTEXT) : m.end()]
        for m, _ in zip(_KCRASH_LIB.finditer(value), range(_KCRASH_MAX_HITS), strict=False)
    )


def _next_fields(reader: Any) -> tuple[dict[str, str], int] | None:
    """The next entry's fields as text (:func:`entry_fields` with :data:`USED_FIELDS`), and
    the bytes read for it; None at the end."""
    if not reader._next(1):
        return None
    return entry_fields(reader, USED_FIELDS)


def entry_fields(reader: Any, keep: frozenset[str] | None) -> tuple[dict[str, str], int]:
    """The fields of the entry ``reader`` is on, as text, and the bytes read for it.

    With ``keep``, only those fields are kept (and :data:`SCANNED_FIELDS` cut to what can name a
    KCrash library). ``Reader.get_next()`` runs a Python converter for every field of every
    entry, which was a third of a catch-up's time; the C method beneath it (systemd-python's
    ``_Reader._get_all``, stable since v220) hands out bytes, and only the kept ones are decoded.
    ``_get_all`` still copies every field whole: the reader's ``data_threshold`` (64 KiB by
    default) cut nothing here (libsystemd 252, zstd-compressed journal-remote fields: measured),
    and asking for the used fields one by one (``_get``) walks the entry's fields each time: ten
    times slower (docs/performance.md). ``keep=None`` keeps every field whole (an entry read
    again by its cursor). A core stored in the journal (``COREDUMP``) is binary and never
    shown: only its presence is kept.
    """
    raw = reader._get_all()
    size = 0
    fields: dict[str, str] = {}
    repeated: list[str] = []
    for key, value in raw.items():
        if type(value) is list:
            # A field logged more than once (its first value kept); the trust filter must know,
            # since systemd-coredump never repeats one (domain/entry.py).
            repeated.append(key)
            size += sum(len(v) for v in value if type(v) is bytes)
            value = value[0] if value else b""
        elif type(value) is bytes:
            size += len(value)
        if keep is None:
            if key == "COREDUMP":
                continue  # the core: never decoded, only its presence is kept (below)
        elif key not in keep:
            continue
        if type(value) is bytes:
            if keep is not None and len(value) > SCANNED_KEEP and key in SCANNED_FIELDS:
                value = kcrash_excerpt(value)
            fields[key] = value.decode("utf-8", errors="replace")
        else:
            fields[key] = field_text(value)
    if repeated:
        fields[REPEATED] = ",".join(repeated)
    if "COREDUMP" in raw:
        fields["COREDUMP"] = ""
    fields["__REALTIME_TIMESTAMP"] = str(reader._get_realtime())
    fields["__CURSOR"] = reader._get_cursor()
    return fields, size


class JournalSource:
    """Follows coredump entries in the local journal or in a directory of journal files.

    Args:
        directory: read journal files from here (e.g. written by systemd-journal-remote)
            instead of the local journal.
        cursor: a position stored by a previous run; reading resumes right after it.
        catch_up: where to begin when ``cursor`` is None.
        batch: most entries per :class:`JournalBatch`.
        batch_bytes: a batch ends once the fields read for it pass this many bytes.
    """

    def __init__(
        self,
        *,
        directory: Path | None = None,
        cursor: str | None = None,
        catch_up: CatchUp = CatchUp.BOOT,
        batch: int = DEFAULT_BATCH,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self._directory = directory
        self._cursor = cursor
        self._catch_up = catch_up
        self._batch = batch
        self._batch_bytes = batch_bytes
        self._reader: Any = None
        self._skip_cursor: str | None = None
        self._position: str | None = cursor
        # The position is the cursor of a coredump this source read (not a start's tail).
        self._position_read = False
        self.invalidations = 0
        self.hint_reads = 0  # reads made because a hint was due, not on the journal's notification
        # Reopens because a hinted crash's entry was not read by the end of its window (see
        # _unread_after_hints).
        self.hint_reopens = 0
        self.hint_window_s = HINT_WINDOW_S  # re-reads last this long after the last hint
        self._wake: asyncio.Event | None = None
        self._hint_until = 0.0
        # COREDUMP_PID of hinted crashes not read yet -> the end of each one's window.
        self._hinted: dict[str, float] = {}
        self._hinted_blind = False  # a hint without a pid: re-read until the window ends

    def _new_reader(self) -> Any:
        """An unpositioned reader of our journal.

        Raises:
            JournalError: the journal (or directory) cannot be opened.
        """
        try:
            reader = (
                journal.Reader(path=str(self._directory))
                if self._directory is not None
                else journal.Reader()
            )
        except OSError as exc:
            where = self._directory or "the local journal"
            raise JournalError(f"cannot open {where}: {exc}") from exc
        # Entries are read by _next_fields; get_previous() (positioning only) keeps these: no
        # typed conversion (UUIDs, datetimes), and field_text makes everything text.
        reader.converters = {
            "__REALTIME_TIMESTAMP": str,
            "__MONOTONIC_TIMESTAMP": str,
            "__CURSOR": str,
        }
        return reader

    def open(self) -> None:
        """Open and position the reader.

        Raises:
            JournalError: the journal (or directory) cannot be opened.
        """
        reader = self._new_reader()
        try:
            self._position_at(reader)
        except BaseException:
            reader.close()  # a reopen can fail at any window's end: no reader left behind
            raise
        self._reader = reader

    def _position_at(self, reader: Any) -> None:
        """Put a new ``reader`` where :meth:`open` says."""
        cursor = self._cursor
        if cursor is not None and cursor.startswith(REALTIME_PREFIX):
            reader.add_match(MESSAGE_ID=COREDUMP_MESSAGE_ID)
            usec = int(cursor.removeprefix(REALTIME_PREFIX))
            reader.seek_realtime(datetime.fromtimestamp(usec / 1_000_000, tz=UTC))
        elif cursor is not None:
            reader.add_match(MESSAGE_ID=COREDUMP_MESSAGE_ID)
            if not self._step_back_to(reader, cursor):  # far from the end: seek, skip it
                try:
                    reader.seek_cursor(cursor)
                except OSError as exc:
                    raise JournalError(f"stored cursor is not valid: {exc}") from exc
                self._skip_cursor = cursor
        elif self._catch_up is CatchUp.NONE:
            # rig.md pitfall: add_match() before seek_tail() loses entries; position first.
            reader.seek_tail()
            last = reader.get_previous()
            self._position = (
                field_text(last["__CURSOR"])
                if last
                else REALTIME_PREFIX + str(int(datetime.now(tz=UTC).timestamp() * 1_000_000))
            )
            reader.add_match(MESSAGE_ID=COREDUMP_MESSAGE_ID)
        else:
            reader.add_match(MESSAGE_ID=COREDUMP_MESSAGE_ID)
            if self._catch_up is CatchUp.BOOT:
                reader.this_boot()
            reader.seek_head()

    @staticmethod
    def _step_back_to(reader: Any, cursor: str) -> bool:
        """Put ``reader`` (matching coredumps) on the entry ``cursor`` by stepping back from the
        end; False if it is not within :data:`STEP_BACK` coredumps of it.

        Preferred to ``seek_cursor``: in a directory of several files whose entries share a boot
        id and monotonic time (journal-remote output), sd-journal placed a cursor of one file at
        the head of the others, and the whole journal was read again at every start and after
        every catch-up (found by the restart benchmark: 10,000 known crashes each time).
        Stepping with ``_previous`` compares each file's entries with the exact location. A
        match first, then the tail: the rig.md pitfall is about a match nothing satisfies yet;
        here the cursor's own entry does.
        """
        reader.seek_tail()
        for _ in range(STEP_BACK):
            if not reader._previous():
                return False
            if reader.test_cursor(cursor):
                return True
        return False

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _read_batch(self) -> JournalBatch:
        entries, at_end = self._read_entries()
        return JournalBatch(entries, at_end=at_end, position=self._position)

    def _read_entries(self) -> tuple[list[dict[str, str]], bool]:
        """The next entries from where the reader is (up to the batch's count and bytes, the
        entry at a seeked cursor skipped), the position moved to the last; True at the end."""
        reader = self._reader
        entries: list[dict[str, str]] = []
        size = 0
        while len(entries) < self._batch and size < self._batch_bytes:
            read = _next_fields(reader)
            if read is None:
                return entries, True
            raw, entry_bytes = read
            size += entry_bytes
            if self._skip_cursor is not None:
                skip, self._skip_cursor = self._skip_cursor, None
                if reader.test_cursor(skip):
                    continue
            self._position = raw["__CURSOR"]
            self._position_read = True
            entries.append(raw)
        return entries, False

    def read_soon(self, pid: int | None = None) -> None:
        """An entry is imminent (a core or KCrash file arrived): read now and shortly after.

        journald notifies readers of an append ~250 ms late, while the entry can be read much
        sooner. The pump reads at once, then every :data:`HINT_INTERVAL_S` until an entry of
        ``pid`` was read (any entry with that pid: what is published is decided later, as
        always) or ``hint_window_s`` after the last hint. Call on the loop of :meth:`batches`.
        """
        until = asyncio.get_running_loop().time() + self.hint_window_s
        self._hint_until = max(self._hint_until, until)
        if pid is None:
            self._hinted_blind = True
        else:
            self._hinted[str(pid)] = until
        if self._wake is not None:
            self._wake.set()

    def _hint_delay(self, now: float) -> float | None:
        """How long until the next read a hint asks for; None when none is due (and the
        window's blind hints are forgotten)."""
        if now >= self._hint_until or not (self._hinted or self._hinted_blind):
            self._hinted_blind = False
            return None
        return min(HINT_INTERVAL_S, self._hint_until - now)

    def _at_cursor(self) -> bool:
        """Whether the position is a read coredump's cursor, which a reopened reader resumes
        at by stepping back a few coredumps (a start's tail cursor would cost a step back over
        :data:`STEP_BACK` coredumps, then a seek)."""
        return self._position_read and self._resumable()

    def _resumable(self) -> bool:
        """Whether the position is a cursor (not a start's wall-clock time) to reopen at."""
        return bool(self._position) and not str(self._position).startswith(REALTIME_PREFIX)

    def _reopen(self, fd: int, on_readable: Callable[[], None]) -> int:
        """A new reader at the position, watched by the loop instead of the old one; its fd."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        self.close()
        self._cursor = self._position
        self.open()
        fd = self._reader.fileno()
        loop.add_reader(fd, on_readable)
        return fd

    def _unread_after_hints(self, now: float) -> bool:
        """Forget the hinted crashes whose window ended; True if one of them was not read
        (then the pump reads once more from a reopened reader), each on its own deadline:
        hints that keep coming for other crashes do not hold it back.

        libsystemd 252 following a file journald is appending to, with a match, can report the
        end while a new entry is there, and go on doing so after journald's notification: the
        stress test (one real crash at a time, 6,000 cores in the directory) saw 1 crash in
        400 announced only seconds later. A reader opened anew reads it. A hint for another
        user's crash (a core this reader never gets the entry of) costs one reopen at the end
        of its window (~1 ms).
        """
        expired = [pid for pid, until in self._hinted.items() if until <= now]
        for pid in expired:
            del self._hinted[pid]
        if expired:
            logger.debug("hinted crashes not read, reading again: pids %s", sorted(expired))
        return bool(expired)

    async def batches(self) -> AsyncIterator[JournalBatch]:
        """Yield batches forever: the backlog first, then live entries as journald appends them."""
        if self._reader is None:
            self.open()
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()

        def on_readable() -> None:
            try:
                if self._reader.process() == journal.INVALIDATE:
                    # Files were added or removed (rotation, vacuum); sd-journal re-reads them.
                    self.invalidations += 1
            finally:
                wake.set()

        fd = self._reader.fileno()
        loop.add_reader(fd, on_readable)
        # Some file systems cannot notify; then sd-journal asks to be polled.
        timeout_us = None if self._reader.reliable_fd() else self._reader.get_timeout()
        caught_up = False
        read = 0  # entries the catch-up read
        try:
            while True:
                wake.clear()
                batch = self._read_batch()
                read += len(batch.entries)
                if self._hinted:
                    for e in batch.entries:
                        self._hinted.pop(e.get("COREDUMP_PID", ""), None)
                yield batch
                if not batch.at_end:
                    continue
                if not caught_up:
                    caught_up = True
                    # Once, at the end of the catch-up, and only if it read anything: a reopen
                    # later would hold a live crash back (the journal-remote latency
                    # benchmark's second crash waited 10 ms for it).
                    if read and self._resumable():
                        # The catch-up mapped windows of every journal file it read (hundreds
                        # of MB of page cache counted in our RSS for a long journal). A reader
                        # reopened at the position maps only what following needs. Entries
                        # appended meanwhile are read right after, from the cursor.
                        fd = self._reopen(fd, on_readable)
                        release_free_memory()  # what the catch-up's objects occupied
                        continue
                if self._unread_after_hints(loop.time()) and self._at_cursor():
                    self.hint_reopens += 1
                    fd = self._reopen(fd, on_readable)
                    continue
                delay = self._hint_delay(loop.time())
                if delay is not None:
                    try:
                        async with asyncio.timeout(delay):
                            await wake.wait()
                    except TimeoutError:
                        self.hint_reads += 1
                    continue
                if timeout_us is None:
                    await wake.wait()
                else:
                    try:
                        async with asyncio.timeout(max(timeout_us, 100_000) / 1_000_000):
                            await wake.wait()
                    except TimeoutError:
                        self._reader.process()
        finally:
            self._wake = None
            loop.remove_reader(fd)
