"""ListCrashes in pages (``limit`` and ``offset``), a listing too long for one D-Bus message
(TooLarge instead of a message the bus refuses), and ``crashbroker list`` joining pages."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
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
from crashbroker.domain.errors import InvalidArgs
from crashbroker.domain.model import Crash, CrashState
from crashbroker.domain.query import CrashFilter
from crashbroker.ops.cleanup import cleanup

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
    assert len(calls) == 5  # 3 + 3 + 3 + 1, then an empty page ends it
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
    """The ``limit`` of every ListCrashes call the CLI makes from now on (0: none)."""
    calls: list[int] = []
    real = broker_client.BrokerClient.list_crashes

    async def counted(self: broker_client.BrokerClient, **filters: Any) -> list[dict[str, Any]]:
        calls.append(filters["limit"].value if "limit" in filters else 0)
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


@contextlib.asynccontextmanager
async def serving(
    bus_address: str, store: CrashStore, crashes: list[Crash], bound: int | None = None
) -> AsyncIterator[Service]:
    """``crashes`` stored and served on the private bus by an in-process service (replies of
    at most ``bound`` bytes of records, when given)."""
    interface = (
        ManagerInterface(StoreManager(store), "test")
        if bound is None
        else ManagerInterface(StoreManager(store), "test", max_reply=bound)
    )
    store.set_renderer(interface.list_chunk, LISTING_TAG)
    store.upsert(crashes, None)
    bus = await MessageBus(bus_address=bus_address).connect()
    try:
        bus.export(OBJECT_PATH, interface)
        interface.attach(bus)
        await bus.request_name(BUS_NAME)
        yield Service(bus, interface, crashes[::-1])
    finally:
        bus.disconnect()


@pytest.fixture
async def service(bus_address: str, store: CrashStore) -> AsyncIterator[Service]:
    """Five crashes served on the private bus, by a service whose replies hold at most the
    list records of three."""
    crashes = [make_crash(p, T0 + p, T0 + p, "/usr/bin/kate", CrashState.NEW) for p in range(1, 6)]
    newest = crashes[::-1]
    bound = dbus_wire.array_length(dbus_wire.scalar_record_chunk(list_items(c)) for c in newest[:3])
    async with serving(bus_address, store, crashes, bound) as served:
        yield served


async def test_a_reply_past_the_bound_is_too_large_and_the_service_stays(
    service: Service, client: Recorder
):
    caller = client.bus
    too_large = error_name("TooLarge")
    for flt, count in (({}, 5), ({"limit": 4}, 4), ({"full": True, "limit": 3}, 3)):
        reply = await bus_call(caller, "ListCrashes", "a{sv}", [variant_filter(**flt)])
        assert reply.message_type == MessageType.ERROR, flt
        assert reply.error_name == too_large, (flt, reply.body)
        assert f"a reply of {count} crashes" in reply.body[0]
        assert "'limit' and 'offset'" in reply.body[0]
        # Still on the bus, and answering: a page within the bound.
        assert service.bus.connected
        listed = await call_ok(caller, "ListCrashes", "a{sv}", variant_filter(limit=3))
        assert [c["id"] for c in listed] == [c.id for c in service.crashes[:3]]
    # A call naming no interface (D-Bus allows it) is the same call: TooLarge, not the error
    # of dbus-fast's own marshaller.
    anonymous = await caller.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            member="ListCrashes",
            signature="a{sv}",
            body=[variant_filter()],
        )
    )
    assert anonymous is not None and anonymous.error_name == too_large, anonymous
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
    assert calls == [5, 2, 2, 2, 2]  # TooLarge, then pages of 2 until an empty one


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
            if isinstance(value, list | tuple) and any(isinstance(v, bytes | Crash) for v in value):
                held.append(name)
        return True

    monkeypatch.setattr(dbus_service, "trim_heap", check)
    monkeypatch.setattr(dbus_service, "LARGE_REPLY", 0)  # trim after any reply here
    for flt in ({"limit": 3}, {"full": True, "limit": 1}):
        await call_ok(client.bus, "ListCrashes", "a{sv}", variant_filter(**flt))
    assert held == []


async def test_a_page_cut_short_before_the_end_does_not_end_the_listing(
    bus_address: str, store: CrashStore, monkeypatch: pytest.MonkeyPatch
):
    """The store skips a record it cannot decode after SQL applied the page's limit: that page
    comes back short, and the listing must go on (it ended there, dropping the rest)."""
    crashes = [make_crash(p, T0 + p, T0 + p, "/usr/bin/kate", CrashState.NEW) for p in range(1, 8)]
    async with serving(bus_address, store, crashes) as served:
        broken = served.crashes[1].id
        store._db.execute("UPDATE crashes SET record='{' WHERE id=?", (broken,))
        store._db.commit()
        monkeypatch.setattr(broker_client, "LIST_PAGE", 3)
        calls = count_calls(monkeypatch)
        bus = await MessageBus(bus_address=bus_address).connect()
        try:
            listed = await broker_client.BrokerClient(bus).list_all(full=Variant("b", True))
        finally:
            bus.disconnect()
    assert [c["id"] for c in listed] == [c.id for c in served.crashes if c.id != broken]
    assert calls == [3, 3, 3, 3]  # 2 (one skipped), 3, 1, then empty


async def test_a_daemon_without_offset_is_asked_once_unpaged(
    bus_address: str, store: CrashStore, monkeypatch: pytest.MonkeyPatch
):
    """A daemon from before ``offset`` (still running after an upgrade) refuses the key as
    unknown: the client falls back to one call, as it made before paging."""
    real_parse = CrashFilter.parse

    def older(raw: dict[str, Any]) -> CrashFilter:
        if "offset" in raw:
            raise InvalidArgs("unknown filter key 'offset'; known: since, until, exe, limit")
        return real_parse(raw)

    monkeypatch.setattr(dbus_service.CrashFilter, "parse", staticmethod(older))
    crashes = [make_crash(p, T0 + p, T0 + p, "/usr/bin/kate", CrashState.NEW) for p in range(1, 6)]
    async with serving(bus_address, store, crashes) as served:
        monkeypatch.setattr(broker_client, "LIST_PAGE", 2)
        calls = count_calls(monkeypatch)
        bus = await MessageBus(bus_address=bus_address).connect()
        try:
            client = broker_client.BrokerClient(bus)
            listed = await client.list_all()
            newest_3 = await client.list_all(3)
        finally:
            bus.disconnect()
    assert [c["id"] for c in listed] == [c.id for c in served.crashes]
    assert [c["id"] for c in newest_3] == [c.id for c in served.crashes[:3]]
    assert calls == [2, 2, 0, 2, 1, 3]  # a page, the refused offset, then one call each


async def test_cleanup_leaves_kcrash_files_alone_when_the_listing_fails(
    bus_address: str, store: CrashStore, tmp_path: Path
):
    """``cleanup`` keeps the INIs of crashes still shown, which it learns from ListCrashes:
    with a running daemon whose listing fails (here TooLarge even for one crash), it must not
    take "no answer" for "nothing pending" and remove them."""
    crashes = [make_crash(p, T0 + p, T0 + p, "/usr/bin/kate", CrashState.NEW) for p in range(1, 4)]
    old = tmp_path / "kcrash-metadata" / "kate.1.ini"
    old.parent.mkdir()
    old.write_text("[KCrash]\n")
    os.utime(old, (1, 1))  # far older than any age limit
    async with serving(bus_address, store, crashes, bound=1):
        bus = await MessageBus(bus_address=bus_address).connect()
        try:
            report = await cleanup(
                broker_client.BrokerClient(bus), tmp_path,
                max_age_days=7, expire_days=30, dry_run=False,
            )  # fmt: skip
        finally:
            bus.disconnect()
    assert old.exists()
    assert report.removed == [] and any("ListCrashes" in e for e in report.errors), report
