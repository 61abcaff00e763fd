"""Crash bursts and loops (pure): which crashes fold into one evolving event.

A *burst* is a run of crashes with one grouping key (exe + signal) where each crash follows the
previous one within ``window``. Its first crash is the *head*: the only one announced with
``CrashDetected``; the others are folded into it and announced as ``CrashUpdated`` of the head.
A burst becomes a *loop* once ``threshold`` of its crashes fall within one window; it stays one.

Time is ``COREDUMP_TIMESTAMP`` (µs, seconds resolution from the kernel), not arrival time, so
crashes found while catching up group the same way as live ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple

from crashbroker.domain.model import Crash


@dataclass(frozen=True, slots=True)
class LoopPolicy:
    """``threshold`` crashes within ``window_us`` make a loop; a gap over ``window_us`` ends a
    burst. A window of 0 turns grouping off: every crash is its own event."""

    threshold: int = 3
    window_us: int = 60_000_000

    def __post_init__(self) -> None:
        if self.threshold < 2 or self.window_us < 0:
            raise ValueError("a loop needs a threshold of at least 2 and a window of 0 or more")


@dataclass(frozen=True, slots=True)
class Burst:
    """The state of one burst."""

    head_id: str
    count: int
    last_id: str
    last_seen: int
    recent: tuple[int, ...]  # timestamps of the latest ``threshold`` crashes, oldest first
    loop: bool


class BurstMember(NamedTuple):
    """What :meth:`LoopTracker.restore` needs of a stored crash (a row, not a whole record)."""

    id: str
    key: str  # the grouping key (exe + signal)
    timestamp: int
    loop_head: str
    loop: bool
    dismissed: bool

    @classmethod
    def of(cls, key: str, crash: Crash) -> BurstMember:
        return cls(
            crash.id, key, crash.entry.timestamp, crash.loop_head, crash.loop, crash.dismissed
        )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a new crash goes: a new head (``folded`` false) or into ``burst``'s head."""

    burst: Burst
    folded: bool


class LoopTracker:
    """The open burst of each grouping key. Only :meth:`place` changes a burst."""

    def __init__(self, policy: LoopPolicy) -> None:
        self.policy = policy
        self._open: dict[str, Burst] = {}

    def place(self, key: str, crash_id: str, timestamp: int) -> Placement:
        """Fold the crash into the open burst of ``key`` or start a new burst with it."""
        current = self._open.get(key)
        if (
            self.policy.window_us
            and current is not None
            and abs(timestamp - current.last_seen) <= self.policy.window_us
        ):
            recent = (*current.recent, timestamp)[-self.policy.threshold :]
            burst = replace(
                current,
                count=current.count + 1,
                last_id=crash_id,
                last_seen=max(current.last_seen, timestamp),
                recent=recent,
                loop=current.loop or self._is_loop(recent),
            )
            self._open[key] = burst
            return Placement(burst, folded=True)
        burst = Burst(crash_id, 1, crash_id, timestamp, (timestamp,), loop=False)
        self._open[key] = burst
        return Placement(burst, folded=False)

    def _is_loop(self, recent: tuple[int, ...]) -> bool:
        return (
            len(recent) >= self.policy.threshold
            and max(recent) - min(recent) <= self.policy.window_us
        )

    def close(self, head_id: str) -> None:
        """End the burst headed by ``head_id`` (dismissed or expired): the next crash of its
        key starts a new burst."""
        for key, burst in list(self._open.items()):
            if burst.head_id == head_id:
                del self._open[key]

    def restore(self, members: Iterable[BurstMember]) -> None:
        """Reopen the latest burst of each key from the stored crashes, so a loop that goes on
        across a daemon restart stays one event. Dismissed heads stay closed."""
        # One pass, then a Burst only for each key's latest: a restart with ten thousand stored
        # crashes should not build ten thousand bursts to keep a handful.
        heads: dict[str, BurstMember] = {}
        folded: dict[str, list[BurstMember]] = {}
        for member in members:
            if member.loop_head:
                folded.setdefault(member.loop_head, []).append(member)
            else:
                heads[member.id] = member
        latest: dict[str, tuple[int, str]] = {}  # key -> (last_seen, head id)
        for head_id, head in heads.items():
            if head.dismissed:
                continue
            others = folded.get(head_id)
            last_seen = (
                max(head.timestamp, *(m.timestamp for m in others)) if others else (head.timestamp)
            )
            best = latest.get(head.key)
            if best is None or best < (last_seen, head_id):  # ties: the larger head id
                latest[head.key] = (last_seen, head_id)
        for key, (_, head_id) in latest.items():
            head = heads[head_id]
            group = sorted([head, *folded.get(head_id, ())], key=lambda m: m.timestamp)
            stamps = tuple(m.timestamp for m in group)
            self._open[key] = Burst(
                head_id=head_id,
                count=len(group),
                last_id=group[-1].id,
                last_seen=stamps[-1],
                recent=stamps[-self.policy.threshold :],
                loop=head.loop,
            )
