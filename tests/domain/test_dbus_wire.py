"""Records marshalled once and assembled into replies and signals must be, byte for byte, what
dbus-fast itself would send."""

from __future__ import annotations

from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast._private.marshaller import Marshaller
from hypothesis import given
from hypothesis import strategies as st

from crashbroker.adapters import dbus_wire
from crashbroker.adapters.dbus_record import unwrap
from crashbroker.domain.errors import TooLarge

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
values = st.one_of(
    st.builds(lambda v: Variant("s", v), text),
    st.builds(lambda v: Variant("u", v), st.integers(0, 2**32 - 1)),
    st.builds(lambda v: Variant("t", v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: Variant("b", v), st.booleans()),
    st.builds(lambda v: Variant("as", v), st.lists(text, max_size=3)),
    st.builds(lambda v: Variant("a{ss}", v), st.dictionaries(text, text, max_size=3)),
)
records = st.dictionaries(text, values, max_size=6)


def test_the_fast_path_is_available():
    """If a dbus-fast upgrade moved what dbus_wire uses, this says so (the daemon would still
    work, through dbus-fast's general path, only slower)."""
    assert dbus_wire.AVAILABLE


@given(st.lists(records, max_size=5))
def test_records_body_is_dbus_fasts_aa_sv(recs: list[dict[str, Variant]]):
    body = dbus_wire.records_body(dbus_wire.record_chunk(r) for r in recs)
    assert body == bytes(Marshaller("aa{sv}", [recs]).marshall())


@given(st.lists(records, max_size=5))
def test_array_length_is_the_length_records_body_writes(recs: list[dict[str, Variant]]):
    chunks = [dbus_wire.record_chunk(r) for r in recs]
    body = dbus_wire.records_body(chunks)
    assert dbus_wire.array_length(chunks) == int.from_bytes(body[:4], "little") == len(body) - 4


def test_records_body_refuses_an_array_past_the_bound_before_building_it():
    chunks = [dbus_wire.record_chunk({"id": Variant("s", f"c{i}")}) for i in range(3)]
    length = dbus_wire.array_length(chunks)
    assert dbus_wire.records_body(chunks, max_length=length)  # the bound itself is allowed
    with pytest.raises(TooLarge) as info:
        dbus_wire.records_body(iter(chunks), max_length=length - 1)
    assert (info.value.count, info.value.size, info.value.maximum) == (3, length, length - 1)
    assert info.value.name == "TooLarge"
    assert "3 crashes" in info.value.detail and "'offset'" in info.value.detail
    assert dbus_wire.MAX_ARRAY_LENGTH == 2**26  # the specification's


@given(text, records)
def test_event_body_is_dbus_fasts_s_a_sv(crash_id: str, record: dict[str, Variant]):
    body = dbus_wire.event_body(crash_id, dbus_wire.record_chunk(record))
    assert body == bytes(Marshaller("sa{sv}", [crash_id, record]).marshall())


def same_message(raw: Message, body: list[Any], **kwargs: Any) -> None:
    reference = Message(body=body, **kwargs)
    raw.serial = reference.serial = 7
    assert bytes(raw._marshall(False)) == bytes(reference._marshall(False))


@given(records)
def test_raw_signal_is_the_message_dbus_fast_would_send(record: dict[str, Variant]):
    body = dbus_wire.event_body("c0ffee", dbus_wire.record_chunk(record))
    raw = dbus_wire.signal("/o", "a.b", "CrashDetected", "sa{sv}", body)
    same_message(
        raw, ["c0ffee", record], message_type=MessageType.SIGNAL, path="/o", interface="a.b",
        member="CrashDetected", signature="sa{sv}",
    )  # fmt: skip


@given(st.lists(records, max_size=3))
def test_raw_method_return_is_the_message_dbus_fast_would_send(recs: list[dict[str, Variant]]):
    call = Message(destination="x.y", path="/o", member="ListCrashes", serial=3)
    call.sender = ":1.5"  # as the bus daemon fills it in
    body = dbus_wire.records_body(dbus_wire.record_chunk(r) for r in recs)
    raw = dbus_wire.method_return(call, "aa{sv}", body)
    same_message(
        raw, [recs], message_type=MessageType.METHOD_RETURN, reply_serial=3, destination=":1.5",
        signature="aa{sv}",
    )  # fmt: skip


def test_a_full_socket_is_a_partial_write_not_a_dead_bus():
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        a.setblocking(False)
        patient = dbus_wire._PatientSocket(a)
        sent = 0
        while (n := patient.send(b"x" * 65536)) > 0:
            sent += n
        assert n == 0  # EAGAIN, reported as nothing written
        assert len(b.recv(65536)) > 0 and sent > 0
        assert patient.fileno() == a.fileno()  # everything else passes through
    finally:
        a.close()
        b.close()


scalars = st.one_of(
    st.tuples(st.just("s"), text),
    st.tuples(st.just("u"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("t"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("b"), st.booleans()),
)


@given(st.dictionaries(text, scalars, max_size=8))
def test_scalar_record_chunk_is_dbus_fasts(record: dict[str, tuple[str, Any]]):
    items = [(k, sig, v) for k, (sig, v) in record.items()]
    expected = dbus_wire.record_chunk({k: Variant(sig, v) for k, sig, v in items})
    assert dbus_wire.scalar_record_chunk(items) == expected


def test_scalar_record_chunk_refuses_what_it_cannot_marshal():
    with pytest.raises(ValueError, match="not a scalar"):
        dbus_wire.scalar_record_chunk([("k", "as", ["x"])])
    with pytest.raises(ValueError, match="is not a u"):
        dbus_wire.scalar_record_chunk([("k", "u", 2**32)])


def test_a_crash_list_record_is_the_same_bytes_either_way():
    from conftest import make_crash
    from crashbroker.adapters.dbus_record import LIST_KEYS, list_items, to_record
    from crashbroker.domain.model import CrashState

    for state in CrashState:
        crash = make_crash(7, 1_700_000_000_000_000, 1, "/usr/bin/käte (deleted)", state)
        assert dbus_wire.scalar_record_chunk(list_items(crash)) == dbus_wire.record_chunk(
            to_record(crash, LIST_KEYS)
        )


def test_unwrap_leaves_no_variant_at_any_depth() -> None:
    inner = {"n": Variant("u", 3), "deep": Variant("v", Variant("as", ["a", "b"]))}
    value = [{"plain": Variant("a{ss}", {"k": "v"}), "nested": Variant("a{sv}", inner)}]
    assert unwrap(value) == [{"plain": {"k": "v"}, "nested": {"n": 3, "deep": ["a", "b"]}}]
