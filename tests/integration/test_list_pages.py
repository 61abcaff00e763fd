"""ListCrashes in pages (``limit`` and ``offset``), a listing too long for one D-Bus message
(TooLarge instead of a message the bus refuses), and ``crashbroker list`` joining pages."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus

import crashbroker.client as broker_client
from conftest import (
    Daemon,
    Recorder,
    RemoteJournal,
    bus_call,
    call_ok,
    make_crash,
    variant_filter,
)
from crashbroker import cli
from crashbroker.adapters import dbus_service, dbus_wire
from crashbroker.adapters.dbus_names import BUS_NAME, OBJECT_PATH, error_name
from crashbroker.adapters.dbus_record import list_items
from crashbroker.adapters.dbus_service import LISTING_TAG, ManagerInterface
from crashbroker.adapters.store import CrashStore
from crashbroker.domain.model import Crash, CrashState
from crashbroker.domain.query import CrashFilter

T0 = 1_700_000_000_000_000


# ---- the daemon: pages of a listing with ties --------------------------------------------------


async def tied_crashes(daemon: Daemon, rj: RemoteJournal) -> list[str]:
    """Ten crashes, six of them at one COREDUMP_TIMESTAMP and journal time; their ids."""
    tied_at = rj._ts + 5_000_000
    entries = [rj.coredump() for _ in range(2)]
    entries += [
        rj.coredump(COREDUMP_TIMESTAMP=str(tied_at), __REALTIME_TIMESTAMP=str(tied_at))
        for _ in range(6)
    ]
    entries += [rj.coredump() for _ in range(2)]
    rj.append(*entries)
    daemon.args = [f"--journal-dir={rj.directory}"]
    await daemon.start()
    await daemon.client.wait_for(lambda: len(daemon.client.detected()) == len(entries))
    detected = daemon.client.detected()
    assert sum(c["timestamp"] == tied_at for c in detected) == 6
    return [c["id"] for c in detected]


async def test_pages_give_every_crash_once_in_the_order_of_one_call(
    daemon: Daemon, remote_journal: RemoteJournal
):
    ids = await tied_crashes(daemon, remote_journal)
    whole = await daemon.call("ListCrashes", "a{sv}", {})
    assert sorted(c["id"] for c in whole) == sorted(ids)
    for full in (False, True):
        for size in (1, 3, 4):
            pages = [
                await daemon.call(
                    "ListCrashes", "a{sv}", variant_filter(limit=size, offset=o, full=full)
                )
                for o in range(0, len(ids) + size, size)
            ]
            assert pages[-1] == []
            assert [c["id"] for p in pages for c in p] == [c["id"] for c in whole]
    # An offset alone skips; past the end is an empty page; a bad one is InvalidArgs.
    rest = await daemon.call("ListCrashes", "a{sv}", variant_filter(offset=7))
    assert rest == whole[7:]
    assert await daemon.call("ListCrashes", "a{sv}", variant_filter(offset=10)) == []
    for bad in (Variant("s", "3"), Variant("t", 2**32)):
        reply = await bus_call(daemon.client.bus, "ListCrashes", "a{sv}", [{"offset": bad}])
        assert reply.message_type == MessageType.ERROR
        assert reply.error_name == error_name("InvalidArgs"), reply.body


async def test_cli_list_in_small_pages_is_one_big_call(
    daemon: Daemon, remote_journal: RemoteJournal, monkeypatch: pytest.MonkeyPatch
):
    ids = await tied_crashes(daemon, remote_journal)
    monkeypatch.setattr(broker_client, "LIST_PAGE", 3)
    whole = await daemon.call("ListCrashes", "a{sv}", {})
    calls = count_calls(monkeypatch)
    assert json.loads(await cli_out(daemon.bus_address, "list", "--json")) == whole
    assert len(calls) == 4  # 3 + 3 + 3 + 1
    full = await daemon.call("ListCrashes", "a{sv}", variant_filter(full=True))
    assert json.loads(await cli_out(daemon.bus_address, "list", "--json", "--full")) == full
    # The newest N: one call within a page, pages beyond it.
    calls.clear()
    assert json.loads(await cli_out(daemon.bus_address, "list", "--json", "-n", "2")) == whole[:2]
    assert calls == [2]
    calls.clear()
    assert json.loads(await cli_out(daemon.bus_address, "list", "--json", "-n", "7")) == whole[:7]
    assert calls == [3, 3, 1]
    # A match checked by the CLI (every crash is asked for, in pages), then the limit.
    sleeps = [c for c in whole if c["comm"] == "sleep"]
    assert len(sleeps) == len(ids)
    listed = json.loads(await cli_out(daemon.bus_address, "list", "--json", "-n", "5", "sleep"))
    assert listed == sleeps[:5]
    # The table is the same too.
    monkeypatch.setattr(broker_client, "LIST_PAGE", 20_000)
    table = await cli_out(daemon.bus_address, "list")
    monkeypatch.setattr(broker_client, "LIST_PAGE", 2)
    assert await cli_out(daemon.bus_address, "list") == table


def count_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``limit`` of every ListCrashes call the CLI makes from now on."""
    calls: list[int] = []
    real = broker_client.BrokerClient.list_crashes

    async def counted(self: broker_client.BrokerClient, **filters: Any) -> list[dict[str, Any]]:
        calls.append(filters["limit"].value)
        return await real(self, **filters)

    monkeypatch.setattr(broker_client.BrokerClient, "list_crashes", counted)
    return calls


async def cli_out(address: str, *argv: str) -> str:
    """``crashbroker`` in this process (its page size patched): what it printed."""
    args = cli.build_parser().parse_args(["--bus-address", address, *argv])
    args.out = io.StringIO()
    assert await cli.client_main(args) == cli.EXIT_OK
    return str(args.out.getvalue())


# ---- the service with a lowered bound: TooLarge ------------------------------------------------


@dataclass
class StoreManager:
    """What the service needs of the broker for ListCrashes, from a store alone."""

    store: CrashStore
    caught_up: bool = True
    crash_count: int = 0

    def list_crashes(self, flt: CrashFilter) -> list[Crash]:
        return self.store.crashes(flt)

    def listing(self, flt: CrashFilter) -> list[bytes | Crash]:
        return [row.record for row in self.store.listing(flt)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CrashStore]:
    s = CrashStore(tmp_path / "crashes.sqlite")
    try:
        yield s
    finally:
        s.close()


@dataclass
class Service:
    bus: MessageBus
    interface: ManagerInterface
    crashes: list[Crash]  # newest first


@pytest.fixture
async def service(bus_address: str, store: CrashStore) -> AsyncIterator[Service]:
    """Five crashes served on the private bus, by a service whose replies hold at most the
    list records of three."""
    crashes = [make_crash(p, T0 + p, T0 + p, "/usr/bin/kate", CrashState.NEW) for p in range(1, 6)]
    newest = crashes[::-1]
    bound = dbus_wire.array_length(dbus_wire.scalar_record_chunk(list_items(c)) for c in newest[:3])
    interface = ManagerInterface(StoreManager(store), "test", max_reply=bound)
    store.set_renderer(interface.list_chunk, LISTING_TAG)
    store.upsert(crashes, None)
    bus = await MessageBus(bus_address=bus_address).connect()
    try:
        bus.export(OBJECT_PATH, interface)
        interface.attach(bus)
        await bus.request_name(BUS_NAME)
        yield Service(bus, interface, newest)
    finally:
        bus.disconnect()


async def test_a_reply_past_the_bound_is_too_large_and_the_service_stays(
    service: Service, client: Recorder
):
    caller = client.bus
    too_large = error_name("TooLarge")
    for flt, count in (({}, 5), ({"limit": 4}, 4), ({"full": True, "limit": 3}, 3)):
        reply = await bus_call(caller, "ListCrashes", "a{sv}", [variant_filter(**flt)])
        assert reply.message_type == MessageType.ERROR, flt
        assert reply.error_name == too_large, (flt, reply.body)
        assert f"{count} crashes matched" in reply.body[0]
        assert "'limit' and 'offset'" in reply.body[0]
        # Still on the bus, and answering: a page within the bound.
        assert service.bus.connected
        listed = await call_ok(caller, "ListCrashes", "a{sv}", variant_filter(limit=3))
        assert [c["id"] for c in listed] == [c.id for c in service.crashes[:3]]
    full = await call_ok(caller, "ListCrashes", "a{sv}", variant_filter(full=True, limit=1))
    assert full[0]["id"] == service.crashes[0].id
    assert "kcrash" in full[0]  # a full record (within the bound: one of them is)
    rest = await call_ok(caller, "ListCrashes", "a{sv}", variant_filter(offset=3))
    assert [c["id"] for c in rest] == [c.id for c in service.crashes[3:]]


async def test_cli_halves_a_page_answered_too_large(
    service: Service, bus_address: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(broker_client, "LIST_PAGE", 5)
    calls = count_calls(monkeypatch)
    listed = json.loads(await cli_out(bus_address, "list", "--json"))
    assert [c["id"] for c in listed] == [c.id for c in service.crashes]
    assert calls == [5, 2, 2, 2]  # TooLarge, then pages of 2 until a short one


async def test_the_records_are_let_go_before_the_heap_is_trimmed(
    service: Service, client: Recorder, monkeypatch: pytest.MonkeyPatch
):
    """A large reply is followed by malloc_trim; records still referenced from the answering
    frame are freed only after it, and glibc keeps their memory (a list kept there left the
    10,000 records' 6.5 MB in the daemon's heap: idle RSS 37 → 44 MiB in the bench)."""
    held: list[str] = []

    def check() -> bool:
        frame = sys._getframe(1)  # the service's ListCrashes handler
        for name, value in frame.f_locals.items():
            if isinstance(value, list | tuple) and any(isinstance(v, bytes) for v in value):
                held.append(name)
        return True

    monkeypatch.setattr(dbus_service, "trim_heap", check)
    monkeypatch.setattr(dbus_service, "LARGE_REPLY", 0)  # trim after any reply here
    for flt in ({"limit": 3}, {"full": True, "limit": 1}):
        await call_ok(client.bus, "ListCrashes", "a{sv}", variant_filter(**flt))
    assert held == []
