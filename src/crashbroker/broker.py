"""The broker: journal batches in, correlated crashes out to the store and the publisher.

This is the only place that turns the correlator's effects into port calls. The store is the
crash index: queries read its rows (indexed SQLite, so a list of thousands is a few ms), and the
broker keeps in memory only what correlation needs — the known ids, counts per grouping key, the
open bursts — plus the crashes whose newest version the store does not have yet. So a restart reads
no crash record, and memory does not grow with the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Protocol, TypeVar

from crashbroker.adapters.core_file import core_facts
from crashbroker.adapters.journal import JournalBatch
from crashbroker.domain.backtrace import refined_signature
from crashbroker.domain.claims import Claim, ClaimBook, undo
from crashbroker.domain.correlator import Correlator, Effect, LookupMetadata, PublishCrash
from crashbroker.domain.crash import build_crash, grouping
from crashbroker.domain.cursor import CursorTracker
from crashbroker.domain.entry import CoreFile, TrustPolicy, Verdict, classify
from crashbroker.domain.errors import (
    BacktraceFailed,
    NoSuchCrash,
    NotReady,
    NotSupported,
    RequestError,
    StoreError,
)
from crashbroker.domain.loops import BurstMember, LoopPolicy, LoopTracker
from crashbroker.domain.model import CoredumpEntry, Crash, CrashState, MetadataSource
from crashbroker.domain.query import CrashFilter
from crashbroker.ports import Expired, Listed, MetadataReader, NullPublisher, Publisher

logger = logging.getLogger(__name__)

Clock = Callable[[], int]
# A burst of signals (a first catch-up announces thousands) waits for the socket every this
# many: the writer never queues more than ~40 KB, and the loop is not entered once per signal
# (waiting after each signal made announcing a 10,000-crash catch-up take 0.48 s, not 0.30).
DRAIN_EVERY = 64
T = TypeVar("T")


class Store(Protocol):
    def get(self, crash_id: str) -> Crash | None: ...

    def groups(self) -> dict[str, tuple[int, int]]: ...

    def ids(self) -> set[str]: ...

    def latest_bursts(self) -> list[BurstMember]: ...

    def count_shown(self) -> int: ...

    def shown_ids(self, loop_head: str | None = None) -> list[str]: ...

    def crashes(self, flt: CrashFilter) -> list[Crash]: ...

    def listing(self, flt: CrashFilter) -> list[Listed]: ...

    def cursor(self) -> str | None: ...

    def positions(self) -> dict[str, str]: ...

    def update(self, crash: Crash) -> None: ...

    def upsert(
        self,
        crashes: list[Crash],
        cursor: str | None,
        announced: bool = True,
        positions: Mapping[str, str] | None = None,
    ) -> None: ...

    def mark_announced(self, ids: list[str]) -> None: ...

    def unannounced(self) -> list[str]: ...

    def save_cursor(
        self, cursor: str | None, positions: Mapping[str, str] | None = None
    ) -> None: ...

    def expire(self, before_us: int) -> list[Expired]: ...

    def backtrace(self, crash_id: str) -> str | None: ...

    def save_backtrace(self, crash_id: str, text: str) -> None: ...

    def when_log_grows(self, wake: Callable[[], None]) -> None: ...

    def checkpoint(self) -> int:
        """Thread-safe: called from a worker thread. Returns the log frames now copied."""


class Backtracer(Protocol):
    """Produces the ``thread apply all bt`` text of a crash's core.

    Raises:
        NoCore, CoreTruncated, BacktraceFailed: named reasons the caller sees.
    """

    async def backtrace(self, entry: CoredumpEntry) -> str: ...


@dataclass(slots=True)
class Stats:
    """Counters since start (exposed by GetStats)."""

    entries: int = 0
    accepted: int = 0
    forged: int = 0
    other_user: int = 0
    malformed: int = 0
    invalid: int = 0  # entries or crashes that failed in handling, or could not be sent: skipped
    already_known: int = 0
    published: int = 0
    with_metadata: int = 0
    lookups: int = 0
    store_errors: int = 0
    folded: int = 0
    loops: int = 0
    backtraces: int = 0
    backtrace_errors: int = 0
    store_rebuilt: int = 0
    states_salvaged: int = 0
    catch_up_us: int = 0  # from the daemon's start to CaughtUp
    checkpoints: int = 0  # write-ahead log checkpoints by the worker thread that copied frames
    hints: int = 0  # core or KCrash files that made the journal be read before it notified

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


STORE_RETRY_US = 5_000_000
MAX_FAILURES_KEPT = 256  # backtrace failures GetBacktrace can still name

_BURST_KEYS = ("occurrences", "burst", "loop", "last_id", "last_seen")

_VERDICT_COUNTER = {
    Verdict.FORGED: "forged",
    Verdict.OTHER_USER: "other_user",
    Verdict.MALFORMED: "malformed",
}


class Broker:
    """Correlates journal entries into crashes and serves the crash index.

    Args:
        store: persistence for crashes and the journal cursor.
        metadata: where KCrash metadata is looked up.
        policy: the trust filter's parameters.
        inspect_core: the facts about a core file the trust filter asks for (a regular user's
            crash proves itself by its core); the default finds none, so such entries count as
            forged.
        correlator: the correlation state machine.
        loops: the loop policy (bursts fold into one event).
        backtracer: reads the core and runs gdb; None answers GetBacktrace with NotSupported.
        restored_states: states salvaged from a damaged store, applied when the rebuild from
            the journal meets those crashes again (a dismissed crash stays dismissed, quietly).
        monotonic: µs clock for deadlines.
        wall: µs wall clock for ``detected`` stamps.
        started: ``monotonic`` when the daemon started (default: now), for ``catch_up_us``.
        unsendable: the first record key of a crash that could not be sent (nor stored), or
            None; such a crash is skipped and counted as ``invalid``. Entries are validated in
            the domain, so this is the last check before the store (the D-Bus record's).
    """

    def __init__(
        self,
        *,
        store: Store,
        metadata: MetadataReader,
        policy: TrustPolicy,
        correlator: Correlator,
        inspect_core: Callable[[str], CoreFile | None] = lambda _path: None,
        monotonic: Clock,
        wall: Clock,
        loops: LoopPolicy | None = None,
        backtracer: Backtracer | None = None,
        restored_states: Mapping[str, CrashState] | None = None,
        started: int | None = None,
        unsendable: Callable[[Crash], str | None] = lambda _crash: None,
    ) -> None:
        self._store = store
        self._unsendable = unsendable
        self._metadata = metadata
        self._policy = policy
        self._inspect_core = inspect_core
        self._correlator = correlator
        self._monotonic = monotonic
        self._started = monotonic() if started is None else started
        self._wall = wall
        self.publisher: Publisher = NullPublisher()
        self.stats = Stats()
        self.caught_up = False
        self._ids = store.ids()  # every crash indexed (stored or in _mem)
        # The newest version of crashes the store may lack: found in a batch not committed yet,
        # or not stored because the store fails (then also in _unsaved). Queries merge them.
        self._mem: dict[str, Crash] = {}
        self._shown = store.count_shown()  # indexed and not dismissed
        # Counted and grouped by exe+signal: the refined signature is only known later, and
        # grouping must not change under a crash when its backtrace arrives.
        groups = store.groups()
        self._signatures: Counter[str] = Counter({k: n for k, (n, _) in groups.items()})
        self._first_seen: dict[str, int] = {k: first for k, (_, first) in groups.items()}
        self._loops = LoopTracker(loops or LoopPolicy())
        self._loops.restore(store.latest_bursts())
        self._backtracer = backtracer
        self._restored = dict(restored_states or {})
        self._bt_queue: asyncio.Queue[str] = asyncio.Queue()
        self._bt_pending: set[str] = set()  # requested: queued or running
        # Why the last run of a crash failed (bounded; memory only): GetBacktrace answers it.
        self._bt_failed: dict[str, RequestError] = {}
        self._claims = ClaimBook()
        cursor = store.cursor()
        positions = store.positions()  # fleet mode: each machine's (adapters/journal_fleet.py)
        self._tracker = CursorTracker(cursor, positions)
        self._saved_cursor = cursor
        self._saved_positions = positions
        self._stream = ""  # whose positions the entries of the batch being ingested move
        self._timer_wake = asyncio.Event()
        self._checkpoint_wake = asyncio.Event()
        # Any write can grow the log (a crash, a dismissal, a backtrace, re-rendered records).
        store.when_log_grows(self._checkpoint_wake.set)
        # Crashes whose in-memory version the store lacks (disk full, I/O error): retried until
        # stored, and the cursor is not saved past them meanwhile.
        self._unsaved: set[str] = set()
        self._staged: dict[str, None] = {}  # found in this batch, not yet stored
        self._commit_lock = asyncio.Lock()
        # What this batch announces, in order: (new crash?, snapshot).
        self._outbox: list[tuple[bool, Crash]] = []
        self._retry_at: int | None = None

    # ---- ingestion -------------------------------------------------------------------------

    async def run_journal(self, batches: AsyncIterator[JournalBatch]) -> None:
        """Consume a :meth:`JournalSource.batches` iterator until cancelled."""
        async for batch in batches:
            await self.ingest(batch)

    async def ingest(self, batch: JournalBatch) -> None:
        """Handle one batch: filter, correlate, look metadata up, publish what settled."""
        now = self._monotonic()
        effects: list[Effect] = []
        self._stream = batch.machine
        for fields_ in batch.entries:
            self.stats.entries += 1
            try:
                effects.extend(self._take(fields_, now))
            except Exception:
                # Last resort: classify() validates every field, so this is a bug. One entry
                # must not stop the pump, which would meet it again after every restart.
                cursor = fields_.get("__CURSOR", "")
                self._skip(fields_.get("COREDUMP_PID"), cursor)
                if cursor:
                    self._tracker.seen(cursor, stream=self._stream)
        if not batch.entries and batch.position:
            self._tracker.seen(batch.position, stream=self._stream)
        await self._carry_out(effects)
        await self._commit_staged()
        self._persist_cursor()
        if batch.at_end and not self.caught_up:
            self.caught_up = True
            self.stats.catch_up_us = self._monotonic() - self._started
            logger.info(
                "caught up in %.3f s: %d crashes indexed",
                self.stats.catch_up_us / 1e6,
                len(self._ids),
            )
            self.publisher.properties_changed(["CaughtUp"])
        self._timer_wake.set()

    def _take(self, fields_: Mapping[str, str], now: int) -> list[Effect]:
        """Filter and correlate one entry; the effects it brings."""
        core = core_facts(fields_, self._policy, self._inspect_core)
        verdict, entry = classify(fields_, self._policy, core)
        cursor = fields_.get("__CURSOR", "")
        if entry is None:
            counter = _VERDICT_COUNTER[verdict]
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            if verdict is Verdict.FORGED:
                logger.warning(
                    "dropped forged coredump entry (pid field %r, _UID=%r, _EXE=%r)",
                    fields_.get("COREDUMP_PID"),
                    fields_.get("_UID"),
                    fields_.get("_EXE"),
                )
            elif verdict is Verdict.MALFORMED:
                logger.warning(
                    "dropped malformed coredump entry (pid field %r, cursor %r)",
                    fields_.get("COREDUMP_PID", "")[:40],
                    cursor[:200],
                )
            if cursor:
                self._tracker.seen(cursor, stream=self._stream)
            return []
        self.stats.accepted += 1
        if entry.key.crash_id in self._ids:
            self.stats.already_known += 1
            self._tracker.seen(cursor, stream=self._stream)
            return []
        new = self._correlator.coredump(entry, past=not self.caught_up, now=now)
        self._tracker.seen(cursor, pending=entry.key if new else None, stream=self._stream)
        return new

    def _skip(self, pid: object, cursor: str, reason: str = "") -> None:
        """Count and log an entry or crash that could not be handled (with the exception being
        handled, when no ``reason`` is given)."""
        self.stats.invalid += 1
        if reason:
            logger.error("skipped coredump entry (pid %r, cursor %r): %s", pid, cursor, reason)
        else:
            logger.exception("skipped coredump entry (pid %r, cursor %r)", pid, cursor)

    async def run_timers(self) -> None:
        """Retry metadata lookups when the correlator asks, and failed store writes every
        :data:`STORE_RETRY_US`; sleeps while nothing is pending."""
        while True:
            self._timer_wake.clear()
            deadlines = [d for d in (self._correlator.next_deadline(), self._retry_at) if d]
            if not deadlines:
                await self._timer_wake.wait()
                continue
            delay = (min(deadlines) - self._monotonic()) / 1_000_000
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._timer_wake.wait()
                    continue
                except TimeoutError:
                    pass
            await self._carry_out(self._correlator.tick(self._monotonic()))
            await self._commit_staged()
            self._persist_cursor()

    async def _carry_out(self, effects: list[Effect]) -> None:
        while effects:
            lookups = [e for e in effects if isinstance(e, LookupMetadata)]
            for e in effects:
                if isinstance(e, PublishCrash):
                    try:
                        self._publish(e)
                    except Exception:  # last resort, as in ingest(): this crash only
                        self._skip(e.entry.pid, e.entry.cursor)
                        self._tracker.settled(e.entry.key)
            effects = []
            if not lookups:
                return
            self.stats.lookups += len(lookups)
            found = await asyncio.gather(*(self._metadata.lookup(e.entry) for e in lookups))
            now = self._monotonic()
            for lookup, meta in zip(lookups, found, strict=True):
                effects.extend(self._correlator.metadata(lookup.entry.key, meta, now))

    def _publish(self, effect: PublishCrash) -> None:
        entry = effect.entry
        self._tracker.settled(entry.key)
        if entry.key.crash_id in self._ids:
            return
        key = grouping(entry)  # exe+signal, per machine in a fleet
        first_seen = min(self._first_seen.get(key, entry.timestamp), entry.timestamp)
        crash = build_crash(
            entry,
            effect.metadata,
            effect.past,
            now=self._wall(),
            occurrences=self._signatures[key] + 1,
        )
        if entry.core_filename and not os.access(entry.core_filename, os.R_OK):
            crash = replace(crash, core_readable=False)
        # Never store what cannot be sent: it would fail every announce and every list after.
        problem = self._unsendable(crash)
        if problem is not None:
            self._skip(entry.pid, entry.cursor, f"its {problem} cannot be sent over D-Bus")
            return
        restored = self._restored.pop(crash.id, None)
        if restored is not None:
            crash = replace(crash, state=restored)
            if restored is CrashState.DISMISSED:
                self._publish_quietly(crash, key, first_seen)
                return
        place = self._loops.place(key, crash.id, entry.timestamp)
        head: Crash | None = None
        was_loop = False
        if place.folded and place.burst.head_id not in self._ids:
            # Defensive: a burst whose head left the index cannot take members.
            self._loops.close(place.burst.head_id)
            place = self._loops.place(key, crash.id, entry.timestamp)
        if place.folded:
            crash = replace(
                crash,
                loop_head=place.burst.head_id,
                first_seen=first_seen,
                last_seen=entry.timestamp,
            )
            head = self._head(place.burst.head_id)
        else:
            crash = replace(
                crash, first_seen=first_seen, last_seen=entry.timestamp, last_id=crash.id
            )
        if head is not None:
            was_loop = head.loop
            head = replace(
                head,
                occurrences=crash.occurrences,
                burst=place.burst.count,
                loop=place.burst.loop,
                last_id=crash.id,
                last_seen=place.burst.last_seen,
            )
        self._stage(crash, head)
        self._shown += not crash.dismissed
        self._first_seen[key] = first_seen
        self.stats.published += 1
        if effect.metadata is not None:
            self.stats.with_metadata += 1
        # A first start can index thousands of past crashes: those go to the debug log, and the
        # "caught up" line counts them.
        logger.log(
            logging.DEBUG if crash.past else logging.INFO,
            "crash %s: %s (pid %d, %s)%s%s%s",
            crash.id,
            crash.entry.exe or crash.entry.comm,
            entry.pid,
            entry.signal_name,
            " with KCrash metadata" if effect.metadata else "",
            " [past]" if crash.past else "",
            f" [burst of {head.id}: {head.burst}]" if head else "",
        )
        if head is None:
            self._outbox.append((True, crash))
        else:
            self.stats.folded += 1
            if head.loop and not was_loop:
                self.stats.loops += 1
                logger.warning("crash loop: %s crashed %d times", key, head.burst)
            self._mem[head.id] = head
            self._outbox.append((False, head))

    def _publish_quietly(self, crash: Crash, key: str, first_seen: int) -> None:
        """Index a crash the user had dismissed before the store was rebuilt: no event."""
        crash = replace(crash, first_seen=first_seen, last_seen=crash.entry.timestamp)
        self._stage(crash, None)
        self._first_seen[key] = first_seen

    def _stage(self, crash: Crash, head: Crash | None) -> None:
        """Index a published crash and remember it (and its burst head) for
        :meth:`_commit_staged`."""
        self._ids.add(crash.id)
        self._mem[crash.id] = crash
        self._signatures[grouping(crash.entry)] += 1
        self._staged[crash.id] = None
        if head is not None:
            self._mem[head.id] = head
            self._staged[head.id] = None

    def _head(self, head_id: str) -> Crash | None:
        """A burst's head, to fold a crash into; None (a new burst then) if it cannot be read."""
        try:
            return self._get(head_id)
        except StoreError as exc:
            logger.error("cannot read burst head %s: %s", head_id, exc)
            return None

    def _get(self, crash_id: str) -> Crash | None:
        """The newest version of a crash: from memory, else the store."""
        crash = self._mem.get(crash_id)
        if crash is None and crash_id in self._ids:
            crash = self._store.get(crash_id)
        return crash

    def _forget_stored(self, stored: list[Crash]) -> None:
        """The store has these versions now: memory need not keep them (unless a newer one
        arrived meanwhile)."""
        for crash in stored:
            if self._mem.get(crash.id) is crash and crash.id not in self._unsaved:
                del self._mem[crash.id]

    async def _commit_staged(self) -> None:
        """Store what this batch found, then announce it, then note that it was announced.

        1. the crash rows and the cursor commit with ``announced=0``;
        2. the signals go out, and a round trip to the bus (the barrier) confirms the bus has
           them all;
        3. the rows are marked ``announced=1``.

        A ``kill -9`` before 1 re-reads the entries; between 1 and 2 the next start announces
        the stored rows; only between 2 and 3 — the barrier's round trip and one UPDATE — can a
        crash be announced twice (same id). Nothing can be stored and never announced.
        """
        if not self._staged:
            return
        async with self._commit_lock:
            await self._commit_staged_locked()

    async def quiesce(self) -> None:
        """For a clean stop: wait for a commit in progress, and let no other one start (a stop
        between announcing and noting it would announce those crashes again next time)."""
        await self._commit_lock.acquire()

    async def _commit_staged_locked(self) -> None:
        if not self._staged:
            return
        ids = list(self._staged)
        self._staged.clear()
        outbox, self._outbox = self._outbox, []
        rows = [self._mem[i] for i in ids if i in self._mem]
        # While earlier crashes wait for a retry, the cursor must not move past them.
        cursor = None if self._unsaved else self._tracker.safe()
        positions = {} if self._unsaved else self._moved_positions()
        stored = True
        try:
            self._store.upsert(rows, cursor, announced=False, positions=positions)
            if cursor is not None:
                self._saved_cursor = cursor
            self._saved_positions.update(positions)
            self._forget_stored(rows)
        except StoreError as exc:
            # Publishing live matters more than persisting. The crashes are retried; until
            # they are stored the cursor stays behind them, so a restart reads them again.
            stored = False
            self._store_failed(f"could not store {len(rows)} crashes", exc, *rows)
        delivered = await self._announce(outbox)
        if stored and delivered:
            try:
                self._store.mark_announced(ids)
            except StoreError as exc:
                logger.warning("could not note %d crashes as announced: %s", len(ids), exc)

    async def run_checkpoints(self) -> None:
        """Checkpoint the store's write-ahead log in a worker thread whenever a commit finds it
        grown, so that no commit before a CrashDetected waits for the copy and its fsync."""
        while True:
            await self._checkpoint_wake.wait()
            self._checkpoint_wake.clear()
            try:
                copied = await asyncio.to_thread(self._store.checkpoint)
            except StoreError as exc:
                logger.warning("%s", exc)
                continue
            if copied:
                self.stats.checkpoints += 1

    async def _announce(self, outbox: list[tuple[bool, Crash]]) -> bool:
        """Send the signals; True once the bus confirmed it has them."""
        for n, (new, crash) in enumerate(outbox, 1):
            if new:
                self.publisher.crash_detected(crash)
            else:
                self.publisher.crash_updated(crash, _BURST_KEYS)
            if n % DRAIN_EVERY == 0:  # whichever kind: a loop storm is mostly updates
                await self.publisher.drain()
        if not outbox:
            return True
        self.publisher.properties_changed(["CrashCount"])
        try:
            await self.publisher.barrier()
        except Exception as exc:  # the bus is going away; the daemon notices and exits
            logger.error("the bus did not confirm %d announcements: %s", len(outbox), exc)
            return False
        return True

    async def announce_pending(self) -> None:
        """At start, on the bus: announce crashes an earlier run stored but was killed before
        announcing (step 2 of :meth:`_commit_staged`)."""
        try:
            pending = self._store.unannounced()
        except StoreError as exc:
            logger.error("cannot read unannounced crashes: %s", exc)
            return
        if not pending:
            return
        try:
            heads = [c for c in map(self._get, pending) if c is not None]
        except StoreError as exc:
            logger.error("cannot read unannounced crashes: %s", exc)
            return
        logger.warning("announcing %d crashes a killed run stored but never announced", len(heads))
        for crash in heads:
            if crash.loop_head:
                continue  # its head carries it
            self.publisher.crash_detected(crash)
        try:
            await self.publisher.barrier()
        except Exception as exc:  # the bus is going away; the daemon notices and exits
            logger.error("the bus did not confirm the announcements: %s", exc)
            return
        try:
            self._store.mark_announced(pending)
        except StoreError as exc:
            logger.warning("could not note crashes as announced: %s", exc)

    def _store_failed(self, what: str, exc: StoreError, *crashes: Crash | None) -> None:
        self.stats.store_errors += 1
        if not self._unsaved:
            logger.error("%s: %s; retrying every %d s", what, exc, STORE_RETRY_US // 1_000_000)
        self._unsaved.update(c.id for c in crashes if c is not None)
        self._retry_at = self._monotonic() + STORE_RETRY_US
        self._timer_wake.set()

    def _flush_unsaved(self) -> bool:
        """Store what earlier writes could not; True when nothing is left unsaved."""
        if not self._unsaved:
            return True
        if self._retry_at is not None and self._monotonic() < self._retry_at:
            return False
        pending = [self._mem[i] for i in self._unsaved if i in self._mem]
        try:
            self._store.upsert(pending, None, announced=True)
        except StoreError as exc:
            self._store_failed("the crash store still fails", exc)
            return False
        logger.warning("crash store writable again: stored %d crashes", len(pending))
        self._unsaved.clear()
        self._forget_stored(pending)
        self._retry_at = None
        return True

    def _persist_cursor(self) -> None:
        if not self._flush_unsaved():
            return
        self._retry_at = None  # set again below if the cursor cannot be saved either
        safe = self._tracker.safe()
        if safe == self._saved_cursor:
            safe = None
        positions = self._moved_positions()
        if safe is None and not positions:
            return
        try:
            self._store.save_cursor(safe, positions)
            if safe is not None:
                self._saved_cursor = safe
            self._saved_positions.update(positions)
        except StoreError as exc:
            self._store_failed("could not save the journal cursor", exc)

    def _moved_positions(self) -> dict[str, str]:
        """The machines' positions (fleet mode) that moved since they were last stored."""
        return {
            s: c for s, c in self._tracker.streams().items() if self._saved_positions.get(s) != c
        }

    # ---- queries and commands (the D-Bus service translates to these) -----------------------

    def stats_dict(self) -> dict[str, int]:
        """Counters plus current gauges, for GetStats and ``crashbroker stats``."""
        return {
            **self.stats.as_dict(),
            "pending": self._correlator.pending,
            "indexed": len(self._ids),
            "caught_up": int(self.caught_up),
        }

    @property
    def crash_count(self) -> int:
        """Crashes that are not dismissed."""
        return self._shown

    def list_crashes(self, flt: CrashFilter) -> list[Crash]:
        """The crashes matching ``flt``, newest first (as :func:`newest_first`).

        Raises:
            StoreError: the store cannot be read.
        """
        if not self._mem:
            return self._store.crashes(flt)
        return self._with_memory(
            flt,
            lambda wider: [
                (c.id, c.entry.timestamp, c.entry.realtime, c) for c in self._store.crashes(wider)
            ],
        )

    def listing(self, flt: CrashFilter) -> list[bytes | Crash]:
        """:meth:`list_crashes` as the store's pre-rendered list records, except crashes whose
        newest version only memory has (a batch being committed, a failing store): those are
        given as crashes, for the caller to render.

        Raises:
            StoreError: the store cannot be read.
        """
        if not self._mem:
            return [row.record for row in self._store.listing(flt)]
        return self._with_memory(flt, self._store.listing)

    def _with_memory(
        self, flt: CrashFilter, read: Callable[[CrashFilter], Iterable[tuple[str, int, int, T]]]
    ) -> list[T | Crash]:
        """The store's answer (``read``: id, timestamp, realtime, item) from its first row,
        widened by as many rows as memory holds crashes (one may no longer match), with
        memory's versions in place of the store's; newest first (as :func:`newest_first`),
        the first ``flt.offset`` skipped, at most ``flt.limit``."""
        limit = flt.limit + flt.offset + len(self._mem) if flt.limit else None
        merged: list[tuple[int, int, str, T | Crash]] = [
            (ts, rt, crash_id, item)
            for crash_id, ts, rt, item in read(replace(flt, limit=limit, offset=0))
            if crash_id not in self._mem
        ]
        merged += [
            (c.entry.timestamp, c.entry.realtime, c.id, c)
            for c in self._mem.values()
            if flt.matches(c)
        ]
        merged.sort(key=lambda m: m[:3], reverse=True)
        end = flt.offset + flt.limit if flt.limit else None
        return [m[3] for m in merged[flt.offset : end]]

    def get_crash(self, crash_id: str) -> Crash:
        """Raises: NoSuchCrash; StoreError (the store cannot be read)."""
        crash = self._get(crash_id)
        if crash is None:
            raise NoSuchCrash(crash_id)
        return crash

    def _replace(self, crash: Crash, **changes: object) -> Crash:
        updated = replace(crash, **changes)  # type: ignore[arg-type]
        if crash.id in self._mem:
            self._mem[crash.id] = updated
        if crash.id in self._unsaved:
            return updated  # the retry stores the newest version
        try:
            self._store.update(updated)
        except StoreError as exc:
            self._mem[crash.id] = updated
            self._store_failed(f"could not update crash {crash.id}", exc, updated)
            return updated
        if crash.id not in self._staged:  # else the batch's commit stores it (and forgets it)
            self._mem.pop(crash.id, None)
        return updated

    def claim(self, crash_id: str, handler: str, owner: str = "") -> bool:
        """Give the crash to ``handler`` unless someone has it already (or it is dismissed).

        ``owner``: the claimant's unique bus name; the claim is undone when it leaves the bus
        (:meth:`claimant_left`), and only it may :meth:`release` the claim. "" ties it to none.
        """
        crash = self.get_crash(crash_id)
        if crash.state is not CrashState.NEW:
            return False
        updated = self._replace(crash, state=CrashState.CLAIMED, claimed_by=handler)
        self._claims.add(Claim(crash.id, handler, owner, crash.state, crash.claimed_by))
        self.publisher.crash_updated(updated, ["state", "claimed_by"])
        return True

    def release(self, crash_id: str, handler: str, owner: str = "") -> bool:
        """Give a crash ``handler`` claimed back (it could not handle it): ``new`` again.
        False when it is not claimed by ``handler``, or the claim was made over another
        connection than ``owner``."""
        crash = self.get_crash(crash_id)
        if crash.state is not CrashState.CLAIMED or crash.claimed_by != handler:
            return False
        if not self._claims.may_release(crash.id, handler, owner):
            return False
        self._claims.pop(crash.id)
        updated = self._replace(crash, state=CrashState.NEW, claimed_by="")
        self.publisher.crash_updated(updated, ["state", "claimed_by"])
        return True

    def claimant_left(self, owner: str) -> int:
        """Connection ``owner`` left the bus: each crash it still holds goes back to its state
        before the claim (``CrashUpdated``). Returns how many did."""
        undone = 0
        for claim in self._claims.left(owner):
            try:
                crash = self._get(claim.crash_id)
            except StoreError as exc:
                logger.error("cannot undo the claim of %s: %s", claim.crash_id, exc)
                continue
            back = undo(claim, crash.state, crash.claimed_by) if crash else None
            if crash is None or back is None:
                continue
            state, claimed_by = back
            updated = self._replace(crash, state=state, claimed_by=claimed_by)
            self.publisher.crash_updated(updated, ["state", "claimed_by"])
            logger.info(
                "%s (handler %s) left the bus: crash %s is %s again",
                owner,
                claim.handler,
                crash.id,
                state.value,
            )
            undone += 1
        return undone

    def dismiss(self, crash_id: str) -> None:
        """Mark dismissed, remove its KCrash INI, announce CrashRemoved. Idempotent.

        Dismissing a burst's head dismisses the crashes folded into it (the user saw one event)
        and ends the burst: the next crash of that program is news again.
        """
        crash = self.get_crash(crash_id)
        if crash.dismissed:
            return
        members = [crash]
        if not crash.loop_head:
            self._loops.close(crash.id)
            ids = {*self._store.shown_ids(loop_head=crash.id)}
            ids.update(c.id for c in self._mem.values() if c.loop_head == crash.id)
            members += [c for c in map(self._get, sorted(ids)) if c and not c.dismissed]
        for member in members:
            self._claims.pop(member.id)
            self._replace(member, state=CrashState.DISMISSED)
            self._shown -= 1
            if member.kcrash_source in (MetadataSource.KCRASH_V1, MetadataSource.KCRASH_V2):
                self._metadata.remove_ini(
                    member.metadata_path, member.metadata_dev, member.metadata_ino
                )
            self.publisher.crash_removed(member.id)
        self.publisher.properties_changed(["CrashCount"])

    def expire(self, max_age_s: int) -> int:
        """Forget crashes older than ``max_age_s`` (by COREDUMP_TIMESTAMP); CrashRemoved for those
        still shown. Returns how many were removed.

        Raises:
            StoreError: the rows could not be deleted (nothing is forgotten then).
        """
        # An age beyond the epoch expires nothing (and must not overflow SQLite's 64 bits).
        cutoff = max(0, self._wall() - max_age_s * 1_000_000)
        removed = self._store.expire(cutoff) if cutoff else []
        for gone in removed:
            if gone.id not in self._ids:
                continue
            self._ids.discard(gone.id)
            self._claims.pop(gone.id)
            self._mem.pop(gone.id, None)
            self._signatures[gone.key] -= 1
            self._loops.close(gone.id)
            if not gone.dismissed:
                self._shown -= 1
                self.publisher.crash_removed(gone.id)
        if removed:
            logger.info("expired %d crashes older than %d s", len(removed), max_age_s)
            self.publisher.properties_changed(["CrashCount"])
        return len(removed)

    def dismiss_all(self) -> int:
        ids = {*self._store.shown_ids()}
        ids.update(c.id for c in self._mem.values() if not c.dismissed)
        before = self._shown
        for crash_id in sorted(ids):
            self.dismiss(crash_id)
        return before - self._shown

    # ---- backtraces ---------------------------------------------------------------------------

    def request_backtrace(self, crash_id: str) -> bool:
        """Ask for the crash's backtrace without waiting for it. True: it is cached
        (:meth:`cached_backtrace` has it). False: the backtrace worker (:meth:`run_backtraces`)
        makes it (a run already queued or running for this crash is shared) and announces the
        outcome: ``CrashUpdated`` with ``backtrace_available``, or ``backtrace_failed``.

        Raises:
            NoSuchCrash, NotSupported.
        """
        crash = self.get_crash(crash_id)
        if self._backtracer is None:
            raise NotSupported("this daemon was started without backtraces")
        if self._cached(crash.id) is not None:
            return True
        if crash.id not in self._bt_pending:
            self._bt_failed.pop(crash.id, None)
            self._bt_pending.add(crash.id)
            self._bt_queue.put_nowait(crash.id)
        return False

    def cached_backtrace(self, crash_id: str) -> str:
        """The cached backtrace, at once; never runs gdb.

        Raises:
            NoSuchCrash, NotSupported; NotReady (none yet: :meth:`request_backtrace`); NoCore,
            CoreTruncated, BacktraceFailed: why the last run, if no run is pending, failed.
        """
        crash = self.get_crash(crash_id)
        if self._backtracer is None:
            raise NotSupported("this daemon was started without backtraces")
        cached = self._cached(crash.id)
        if cached is not None:
            return cached
        failed = self._bt_failed.get(crash.id)
        if failed is not None and crash.id not in self._bt_pending:
            raise failed
        making = " (it is being made)" if crash.id in self._bt_pending else ""
        raise NotReady(
            f"no backtrace of {crash.id} yet{making}: call RequestBacktrace and wait for "
            "CrashUpdated with backtrace_available (or backtrace_error)"
        )

    def _cached(self, crash_id: str) -> str | None:
        try:
            return self._store.backtrace(crash_id)
        except StoreError as exc:
            logger.warning("backtrace cache unreadable for %s: %s", crash_id, exc)
            return None

    async def run_backtraces(self) -> None:
        """The backtrace worker: one gdb at a time, until cancelled. Each outcome is
        announced: a success by ``CrashUpdated``, a failure by ``backtrace_failed``."""
        while True:
            crash_id = await self._bt_queue.get()
            try:
                await self._make_backtrace(crash_id)
            except RequestError as exc:
                self.stats.backtrace_errors += 1
                self._bt_failed[crash_id] = exc
                while len(self._bt_failed) > MAX_FAILURES_KEPT:
                    self._bt_failed.pop(next(iter(self._bt_failed)))
                self.publisher.backtrace_failed(crash_id, exc)
            except asyncio.CancelledError:
                # Best effort: whoever waits learns it at once instead of at its deadline.
                with contextlib.suppress(Exception):
                    stopping = BacktraceFailed("the daemon is stopping")
                    for pending in self._bt_pending:
                        self.publisher.backtrace_failed(pending, stopping)
                raise
            finally:
                self._bt_pending.discard(crash_id)

    async def _make_backtrace(self, crash_id: str) -> None:
        """Make, cache and announce one backtrace.

        Raises:
            RequestError: why there is none (a store failure is a BacktraceFailed: the text
                must be cached for GetBacktrace to give it).
        """
        assert self._backtracer is not None
        try:
            crash = self.get_crash(crash_id)
        except StoreError as exc:
            raise BacktraceFailed(f"the crash store cannot be read: {exc}") from exc
        logger.info("making the backtrace of %s (%s)", crash.id, crash.entry.exe)
        text = await self._backtracer.backtrace(crash.entry)
        self.stats.backtraces += 1
        try:
            self._store.save_backtrace(crash.id, text)
            current = self._get(crash.id)  # it may have been expired while gdb ran
        except StoreError as exc:
            self.stats.store_errors += 1
            logger.error("could not cache the backtrace of %s: %s", crash.id, exc)
            raise BacktraceFailed(f"the backtrace could not be cached: {exc}") from exc
        if current is None:
            raise NoSuchCrash(crash.id)
        refined = refined_signature(current.entry, text) or current.signature
        updated = self._replace(current, backtrace_available=True, signature=refined)
        self.publisher.crash_updated(updated, ["backtrace_available", "signature"])
