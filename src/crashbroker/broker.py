"""The broker: journal batches in, correlated crashes out to the store and the publisher.

This is the only place that turns the correlator's effects into port calls. It owns the
in-memory index (the store's rows, loaded at start) that D-Bus queries read, so no query touches
the disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields, replace
from typing import Protocol

from crashbroker.adapters.journal import JournalBatch
from crashbroker.domain.correlator import Correlator, Effect, LookupMetadata, PublishCrash
from crashbroker.domain.crash import build_crash, signature
from crashbroker.domain.cursor import CursorTracker
from crashbroker.domain.entry import TrustPolicy, Verdict, classify
from crashbroker.domain.errors import NoSuchCrash, StoreError
from crashbroker.domain.model import Crash, CrashState, MetadataSource
from crashbroker.domain.query import CrashFilter, newest_first
from crashbroker.ports import MetadataReader, NullPublisher, Publisher

logger = logging.getLogger(__name__)

Clock = Callable[[], int]


class Store(Protocol):
    def load(self) -> list[Crash]: ...

    def cursor(self) -> str | None: ...

    def add(self, crash: Crash, cursor: str | None) -> bool: ...

    def update(self, crash: Crash) -> None: ...

    def save_cursor(self, cursor: str) -> None: ...

    def expire(self, before_us: int) -> list[str]: ...


@dataclass(slots=True)
class Stats:
    """Counters since start (exposed by GetStats)."""

    entries: int = 0
    accepted: int = 0
    forged: int = 0
    other_user: int = 0
    malformed: int = 0
    already_known: int = 0
    published: int = 0
    with_metadata: int = 0
    lookups: int = 0
    store_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
        correlator: the correlation state machine.
        monotonic: µs clock for deadlines.
        wall: µs wall clock for ``detected`` stamps.
    """

    def __init__(
        self,
        *,
        store: Store,
        metadata: MetadataReader,
        policy: TrustPolicy,
        correlator: Correlator,
        monotonic: Clock,
        wall: Clock,
    ) -> None:
        self._store = store
        self._metadata = metadata
        self._policy = policy
        self._correlator = correlator
        self._monotonic = monotonic
        self._wall = wall
        self.publisher: Publisher = NullPublisher()
        self.stats = Stats()
        self.caught_up = False
        self._crashes: dict[str, Crash] = {c.id: c for c in store.load()}
        self._signatures: Counter[str] = Counter(c.signature for c in self._crashes.values())
        stored = store.cursor()
        self._tracker = CursorTracker(stored)
        self._saved_cursor = stored
        self._timer_wake = asyncio.Event()

    # ---- ingestion -------------------------------------------------------------------------

    async def run_journal(self, batches: AsyncIterator[JournalBatch]) -> None:
        """Consume a :meth:`JournalSource.batches` iterator until cancelled."""
        async for batch in batches:
            await self.ingest(batch)

    async def ingest(self, batch: JournalBatch) -> None:
        """Handle one batch: filter, correlate, look metadata up, publish what settled."""
        now = self._monotonic()
        effects: list[Effect] = []
        for fields_ in batch.entries:
            self.stats.entries += 1
            verdict, entry = classify(fields_, self._policy)
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
                if cursor:
                    self._tracker.seen(cursor)
                continue
            self.stats.accepted += 1
            if entry.key.crash_id in self._crashes:
                self.stats.already_known += 1
                self._tracker.seen(cursor)
                continue
            new = self._correlator.coredump(entry, past=not self.caught_up, now=now)
            self._tracker.seen(cursor, pending=entry.key if new else None)
            effects.extend(new)
        if not batch.entries and batch.position:
            self._tracker.seen(batch.position)
        await self._carry_out(effects)
        self._persist_cursor()
        if batch.at_end and not self.caught_up:
            self.caught_up = True
            logger.info("caught up: %d crashes indexed", len(self._crashes))
            self.publisher.properties_changed(["CaughtUp"])
        self._timer_wake.set()

    async def run_timers(self) -> None:
        """Retry metadata lookups when the correlator asks; sleeps while nothing is pending."""
        while True:
            self._timer_wake.clear()
            deadline = self._correlator.next_deadline()
            if deadline is None:
                await self._timer_wake.wait()
                continue
            delay = (deadline - self._monotonic()) / 1_000_000
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await self._timer_wake.wait()
                    continue
                except TimeoutError:
                    pass
            await self._carry_out(self._correlator.tick(self._monotonic()))
            self._persist_cursor()

    async def _carry_out(self, effects: list[Effect]) -> None:
        while effects:
            lookups = [e for e in effects if isinstance(e, LookupMetadata)]
            for e in effects:
                if isinstance(e, PublishCrash):
                    self._publish(e)
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
        crash = build_crash(
            entry,
            effect.metadata,
            effect.past,
            now=self._wall(),
            occurrences=self._signatures[signature(entry)] + 1,
        )
        if crash.id in self._crashes:
            return
        try:
            if not self._store.add(crash, self._tracker.safe()):
                # Stored by an earlier run but not in our index: nothing new to announce.
                self.stats.already_known += 1
                return
            self._saved_cursor = self._tracker.safe()
        except StoreError as exc:
            # Publishing live matters more than persisting; the cursor stays behind this
            # crash, so a restart reads it again.
            self.stats.store_errors += 1
            logger.error("could not store crash %s: %s", crash.id, exc)
        self._crashes[crash.id] = crash
        self._signatures[crash.signature] += 1
        self.stats.published += 1
        if effect.metadata is not None:
            self.stats.with_metadata += 1
        logger.info(
            "crash %s: %s (pid %d, %s)%s%s",
            crash.id,
            crash.entry.exe or crash.entry.comm,
            entry.pid,
            entry.signal_name,
            " with KCrash metadata" if effect.metadata else "",
            " [past]" if crash.past else "",
        )
        self.publisher.crash_detected(crash)
        self.publisher.properties_changed(["CrashCount"])

    def _persist_cursor(self) -> None:
        safe = self._tracker.safe()
        if safe is None or safe == self._saved_cursor:
            return
        try:
            self._store.save_cursor(safe)
            self._saved_cursor = safe
        except StoreError as exc:
            self.stats.store_errors += 1
            logger.error("could not save the journal cursor: %s", exc)

    # ---- queries and commands (the D-Bus service translates to these) -----------------------

    def stats_dict(self) -> dict[str, int]:
        """Counters plus current gauges, for GetStats and ``crashbroker stats``."""
        return {
            **self.stats.as_dict(),
            "pending": self._correlator.pending,
            "indexed": len(self._crashes),
            "caught_up": int(self.caught_up),
        }

    @property
    def crash_count(self) -> int:
        """Crashes that are not dismissed."""
        return sum(1 for c in self._crashes.values() if not c.dismissed)

    def list_crashes(self, flt: CrashFilter) -> list[Crash]:
        return newest_first(self._crashes.values(), flt)

    def get_crash(self, crash_id: str) -> Crash:
        try:
            return self._crashes[crash_id]
        except KeyError:
            raise NoSuchCrash(crash_id) from None

    def _replace(self, crash: Crash, **changes: object) -> Crash:
        updated = replace(crash, **changes)  # type: ignore[arg-type]
        try:
            self._store.update(updated)
        except StoreError as exc:
            self.stats.store_errors += 1
            logger.error("could not update crash %s: %s", crash.id, exc)
        self._crashes[crash.id] = updated
        return updated

    def claim(self, crash_id: str, handler: str) -> bool:
        """Give the crash to ``handler`` unless someone has it already (or it is dismissed)."""
        crash = self.get_crash(crash_id)
        if crash.state is not CrashState.NEW:
            return False
        updated = self._replace(crash, state=CrashState.CLAIMED, claimed_by=handler)
        self.publisher.crash_updated(updated, ["state", "claimed_by"])
        return True

    def dismiss(self, crash_id: str) -> None:
        """Mark dismissed, remove its KCrash INI, announce CrashRemoved. Idempotent."""
        crash = self.get_crash(crash_id)
        if crash.dismissed:
            return
        self._replace(crash, state=CrashState.DISMISSED)
        if crash.kcrash_source in (MetadataSource.KCRASH_V1, MetadataSource.KCRASH_V2):
            self._metadata.remove_ini(crash.metadata_path)
        self.publisher.crash_removed(crash_id)
        self.publisher.properties_changed(["CrashCount"])

    def expire(self, max_age_s: int) -> int:
        """Forget crashes older than ``max_age_s`` (by COREDUMP_TIMESTAMP); CrashRemoved for those
        still shown. Returns how many were removed.

        Raises:
            StoreError: the rows could not be deleted (nothing is forgotten then).
        """
        cutoff = self._wall() - max_age_s * 1_000_000
        removed = self._store.expire(cutoff)
        for crash_id in removed:
            crash = self._crashes.pop(crash_id, None)
            if crash is None:
                continue
            self._signatures[crash.signature] -= 1
            if not crash.dismissed:
                self.publisher.crash_removed(crash_id)
        if removed:
            logger.info("expired %d crashes older than %d s", len(removed), max_age_s)
            self.publisher.properties_changed(["CrashCount"])
        return len(removed)

    def dismiss_all(self) -> int:
        ids = [c.id for c in self._crashes.values() if not c.dismissed]
        for crash_id in ids:
            self.dismiss(crash_id)
        return len(ids)
