"""The broker's pacing of a burst of signals, with the real store behind it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from conftest import make_crash
from crashbroker.adapters.metadata_dir import MetadataDir
from crashbroker.adapters.store import CrashStore
from crashbroker.broker import DRAIN_EVERY, Broker
from crashbroker.domain.correlator import Correlator
from crashbroker.domain.entry import TrustPolicy
from crashbroker.domain.model import Crash, CrashState

T0 = 1_700_000_000_000_000


class Recorder:
    """A publisher that notes what the broker asks of it, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def crash_detected(self, crash: Crash) -> None:
        self.calls.append("detected")

    def crash_updated(self, crash: Crash, changed: Sequence[str]) -> None:
        self.calls.append("updated")

    def crash_removed(self, crash_id: str) -> None:
        self.calls.append("removed")

    def properties_changed(self, names: Sequence[str]) -> None:
        self.calls.append("properties")

    async def drain(self) -> None:
        self.calls.append("drain")

    async def barrier(self) -> None:
        self.calls.append("barrier")


async def test_a_burst_waits_for_the_socket_every_few_signals_whatever_their_kind(
    tmp_path: Path,
) -> None:
    """A loop storm is mostly CrashUpdated: those count towards the pacing as CrashDetected do
    (counting only new crashes let an outbox of updates go unpaced)."""
    store = CrashStore(tmp_path / "crashes.sqlite")
    broker = Broker(
        store=store,
        metadata=MetadataDir(tmp_path / "cache"),
        policy=TrustPolicy(writer_uids=frozenset({0}), own_uid=None),
        correlator=Correlator(grace_us=0),
        monotonic=lambda: time.monotonic_ns() // 1000,
        wall=lambda: time.time_ns() // 1000,
    )
    recorder = Recorder()
    broker.publisher = recorder
    crashes = [
        make_crash(pid, T0 + pid, T0 + pid, "/usr/bin/kate", CrashState.NEW)
        for pid in range(1, 3 * DRAIN_EVERY + 2)
    ]
    # One new crash, then only updates: the shape of a crash loop folding into its head.
    outbox = [(i == 0, crash) for i, crash in enumerate(crashes)]
    assert await broker._announce(outbox)
    signals = [c for c in recorder.calls if c in ("detected", "updated")]
    assert signals == ["detected"] + ["updated"] * (len(crashes) - 1)
    # A drain follows every DRAIN_EVERY-th signal, then one barrier ends the burst.
    drains = [i for i, c in enumerate(recorder.calls) if c == "drain"]
    assert len(drains) == len(crashes) // DRAIN_EVERY == 3
    for k, at in enumerate(drains, 1):
        assert recorder.calls[:at].count("detected") + recorder.calls[:at].count("updated") == (
            k * DRAIN_EVERY
        )
    assert recorder.calls[-2:] == ["properties", "barrier"]
    store.close()
