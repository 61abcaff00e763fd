"""The broker's last resort (issue 14, item 2): a failure in handling one entry, or a crash whose
record could not be sent, is a counted skip; the rest of the batch is stored and published, and
nothing unsendable reaches the store. With the real store behind it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import export_format
from crashbroker.adapters import dbus_wire
from crashbroker.adapters.dbus_record import list_items, unsendable
from crashbroker.adapters.journal import JournalBatch
from crashbroker.adapters.store import CrashStore
from crashbroker.broker import Broker
from crashbroker.domain.correlator import Correlator, Effect
from crashbroker.domain.entry import TrustPolicy
from crashbroker.domain.loops import LoopPolicy
from crashbroker.domain.model import CoredumpEntry, Crash, KCrashMetadata, MetadataSource
from crashbroker.domain.query import CrashFilter

T0 = 1_700_000_000_000_000
BOOT = "e04ff1c3b3f8438a9752aa220502ee22"
RAISES = 102  # the correlator fails on this pid (a bug somewhere in handling one entry)
NUL_METADATA = 103  # its metadata carries a NUL past the parser (a bug in an adapter)


class Recorder:
    def __init__(self) -> None:
        self.detected: list[int] = []

    def crash_detected(self, crash: Crash) -> None:
        self.detected.append(crash.entry.pid)

    def crash_updated(self, crash: Crash, changed: Sequence[str]) -> None:
        pass

    def crash_removed(self, crash_id: str) -> None:
        pass

    def properties_changed(self, names: Sequence[str]) -> None:
        pass

    async def drain(self) -> None:
        pass

    async def barrier(self) -> None:
        pass


class Metadata:
    async def lookup(self, entry: CoredumpEntry) -> KCrashMetadata | None:
        if entry.pid != NUL_METADATA:
            return None
        return KCrashMetadata(
            kcrash={"appname": "a\0b"}, complete=True, source=MetadataSource.KCRASH_V2
        )

    def remove_ini(self, path: str, *identity: int) -> bool:
        return False


class FailingCorrelator(Correlator):
    def coredump(self, entry: CoredumpEntry, past: bool, now: int) -> list[Effect]:
        if entry.pid == RAISES:
            raise RuntimeError("a bug")
        return super().coredump(entry, past, now)


def entry_fields(pid: int) -> dict[str, str]:
    fields = {
        k: v.decode("utf-8", errors="replace")
        for k, v in export_format.load("sleep-sigsegv.export").items()
    }
    fields.update(
        COREDUMP_PID=str(pid),
        COREDUMP_TIMESTAMP=str(T0 + pid),
        __REALTIME_TIMESTAMP=str(T0 + pid),
        _BOOT_ID=BOOT,
        __CURSOR=f"s=test;i={pid:x}",
    )
    return fields


async def test_one_failing_entry_or_unsendable_crash_is_a_counted_skip(tmp_path: Path) -> None:
    store = CrashStore(tmp_path / "crashes.sqlite")
    store.set_renderer(lambda c: dbus_wire.scalar_record_chunk(list_items(c)), "test")
    broker = Broker(
        store=store,
        metadata=Metadata(),
        policy=TrustPolicy(writer_uids=frozenset({0, 995}), own_uid=None),
        correlator=FailingCorrelator(grace_us=0),
        monotonic=lambda: time.monotonic_ns() // 1000,
        wall=lambda: time.time_ns() // 1000,
        loops=LoopPolicy(window_us=0),  # each crash its own event
        unsendable=unsendable,
    )
    recorder = Recorder()
    broker.publisher = recorder
    pids = [101, RAISES, NUL_METADATA, 104]
    batch = JournalBatch([entry_fields(p) for p in pids], at_end=True, position=None)

    await broker.ingest(batch)

    assert broker.stats.invalid == 2
    assert broker.stats.published == 2
    assert recorder.detected == [101, 104]
    assert sorted(
        c.entry.pid for c in store.crashes(CrashFilter.parse({"include_dismissed": True}))
    ) == [101, 104]
    assert store.unannounced() == []
    assert store.cursor() == "s=test;i=68"  # past all four: none of them is read again
    store.close()
