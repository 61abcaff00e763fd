"""Correlation of coredump entries with KCrash metadata, as a pure state machine.

The shell feeds three events — a coredump entry arrived, a metadata lookup finished, time passed —
each with ``now`` (µs), and carries out the returned effects. The machine never reads a clock,
never does I/O and never starts tasks; :meth:`Correlator.next_deadline` says when to call
:meth:`Correlator.tick` next.

Why there is a grace period at all: by the time systemd-coredump logs the entry the crashed
process is dead, so its KCrash file is normally final (KCrash writes it ~130 ms before the entry).
But the file is written non-atomically at its final path, KF6 only marks completion since 6.23,
and a slow or remote cache directory can lag. So:

* a complete file (``[KCrashComplete]``), a KF5 file (KF5 never writes the marker) or DrKonqi's
  record settles the crash at once;
* a process that had no KCrash mapped and left no file settles at once — non-KDE crashes are
  published without delay;
* otherwise the lookup is retried every ``retry_us`` until ``grace_us`` after arrival, and the
  crash is then published with what was found, gaps filled from the journal;
* entries found while catching up (``past``) get one lookup: their files are long final.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from crashbroker.domain.model import (
    CoredumpEntry,
    CrashKey,
    KCrashLib,
    KCrashMetadata,
    MetadataSource,
)

DEFAULT_GRACE_US = 1_000_000
DEFAULT_RETRY_US = 50_000
# Finished keys remembered to ignore a duplicate entry; the broker checks the crash index first,
# so this only covers a repeat within a few batches (4096 held 1.3 MB of keys for nothing).
_DONE_MEMORY = 256


@dataclass(frozen=True, slots=True)
class LookupMetadata:
    """Effect: read the metadata files for ``entry`` and report with :meth:`Correlator.metadata`."""

    entry: CoredumpEntry


@dataclass(frozen=True, slots=True)
class PublishCrash:
    """Effect: the crash is settled; persist and announce it."""

    entry: CoredumpEntry
    metadata: KCrashMetadata | None
    past: bool


Effect = LookupMetadata | PublishCrash


@dataclass(slots=True)
class _Pending:
    entry: CoredumpEntry
    past: bool
    deadline: int
    next_try: int | None  # None while a lookup is in flight
    best: KCrashMetadata | None = None
    lookups: int = 0


class Correlator:
    """Holds coredumps waiting for their metadata; see the module docstring for the policy."""

    def __init__(self, grace_us: int = DEFAULT_GRACE_US, retry_us: int = DEFAULT_RETRY_US) -> None:
        if grace_us < 0 or retry_us <= 0:
            raise ValueError("grace_us must be >= 0 and retry_us > 0")
        self._grace = grace_us
        self._retry = retry_us
        self._pending: dict[CrashKey, _Pending] = {}
        self._done: OrderedDict[CrashKey, None] = OrderedDict()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def is_pending(self, key: CrashKey) -> bool:
        return key in self._pending

    def coredump(self, entry: CoredumpEntry, past: bool, now: int) -> list[Effect]:
        """A trusted coredump entry arrived. Duplicates (same key) are ignored."""
        key = entry.key
        if key in self._pending or key in self._done:
            return []
        deadline = now if past else now + self._grace
        self._pending[key] = _Pending(entry, past, deadline, next_try=None, lookups=1)
        return [LookupMetadata(entry)]

    def metadata(self, key: CrashKey, found: KCrashMetadata | None, now: int) -> list[Effect]:
        """A lookup for ``key`` finished; ``found`` is None when no usable file exists."""
        p = self._pending.get(key)
        if p is None or p.next_try is not None:
            return []  # late answer for a settled crash, or one we did not ask for
        if found is not None:
            p.best = found
        if self._settled(p, now):
            return [self._finish(key, p)]
        p.next_try = min(now + self._retry, p.deadline)
        return []

    def tick(self, now: int) -> list[Effect]:
        """Time passed: retry lookups that are due."""
        effects: list[Effect] = []
        for p in self._pending.values():
            if p.next_try is not None and p.next_try <= now:
                p.next_try = None
                p.lookups += 1
                effects.append(LookupMetadata(p.entry))
        return effects

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has work next (µs), or None when nothing waits on time."""
        tries = [p.next_try for p in self._pending.values() if p.next_try is not None]
        return min(tries) if tries else None

    def _settled(self, p: _Pending, now: int) -> bool:
        meta = p.best
        if now >= p.deadline:
            return True
        if meta is None:
            return p.entry.kcrash_lib is KCrashLib.NONE
        return (
            meta.complete
            or meta.source is MetadataSource.DRKONQI
            or p.entry.kcrash_lib is KCrashLib.KF5
            or meta.source is MetadataSource.KCRASH_V1
        )

    def _finish(self, key: CrashKey, p: _Pending) -> PublishCrash:
        del self._pending[key]
        self._done[key] = None
        if len(self._done) > _DONE_MEMORY:
            self._done.popitem(last=False)
        return PublishCrash(p.entry, p.best, p.past)
