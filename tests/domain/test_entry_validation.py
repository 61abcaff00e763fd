"""Every field of a trusted entry is validated (issue 14, item 2): numbers fit their D-Bus types,
identifying strings with a NUL are refused, free text is cleaned — so that whatever classify()
accepts, with whatever KCrash metadata, is a record that can be stored and sent."""

from __future__ import annotations

import json

import pytest
from dbus_fast._private.marshaller import Marshaller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import export_format
from crashbroker.adapters import dbus_wire
from crashbroker.adapters.dbus_record import list_items, to_record, unsendable
from crashbroker.domain.crash import build_crash
from crashbroker.domain.entry import TrustPolicy, Verdict, classify
from crashbroker.domain.metadata import parse_drkonqi_json, parse_ini
from crashbroker.domain.model import CoredumpEntry, MetadataSource
from crashbroker.domain.text import dbus_string_ok

ALL_USERS = TrustPolicy(writer_uids=frozenset({0, 995}), own_uid=None)
U32 = 2**32
T63 = 2**63


def fields(**changes: str) -> dict[str, str]:
    """The recorded sleep crash (trusted: logged by systemd-coredump as root), changed."""
    out = {
        k: v.decode("utf-8", errors="replace")
        for k, v in export_format.load("sleep-sigsegv.export").items()
    }
    out.setdefault("__CURSOR", "s=recorded;i=1")
    out.update(changes)
    return out


def verdict(**changes: str) -> Verdict:
    return classify(fields(**changes), ALL_USERS)[0]


def accepted(**changes: str) -> CoredumpEntry:
    got, entry = classify(fields(**changes), ALL_USERS)
    assert got is Verdict.ACCEPT
    assert entry is not None
    return entry


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"COREDUMP_PID": str(U32 + 5)}, id="pid-above-u32"),
        pytest.param({"COREDUMP_PID": str(U32)}, id="pid-u32"),
        pytest.param({"COREDUMP_UID": str(U32)}, id="uid-above-u32"),
        pytest.param({"COREDUMP_UID": "-1000"}, id="negative-uid"),
        pytest.param({"COREDUMP_GID": "-5"}, id="negative-gid"),
        pytest.param({"COREDUMP_GID": str(U32)}, id="gid-above-u32"),
        pytest.param({"COREDUMP_GID": "staff"}, id="garbage-gid"),
        pytest.param({"COREDUMP_SIGNAL": str(U32)}, id="signal-above-u32"),
        pytest.param({"COREDUMP_SIGNAL": "-11"}, id="negative-signal"),
        pytest.param({"COREDUMP_TIMESTAMP": str(T63 + 1)}, id="timestamp-above-2^63"),
        pytest.param({"COREDUMP_TIMESTAMP": str(T63)}, id="timestamp-2^63"),
        pytest.param({"COREDUMP_TIMESTAMP": str(2**64)}, id="timestamp-above-t"),
        pytest.param({"__REALTIME_TIMESTAMP": str(T63)}, id="realtime-2^63"),
        pytest.param({"__REALTIME_TIMESTAMP": "-1"}, id="negative-realtime"),
        pytest.param({"COREDUMP_PID": "5_447"}, id="pid-with-underscore"),
        pytest.param({"COREDUMP_PID": "+5447"}, id="pid-with-plus"),
        pytest.param({"COREDUMP_PID": "\uff15\uff14\uff14\uff17"}, id="pid-in-fullwidth-digits"),
        pytest.param({"COREDUMP_EXE": "/usr/bin/sl\0eep"}, id="nul-in-exe"),
        pytest.param({"COREDUMP_EXE": "/usr/bin/\ud800"}, id="surrogate-in-exe"),
        pytest.param({"COREDUMP_COMM": "sl\0eep"}, id="nul-in-comm"),
        pytest.param({"COREDUMP_FILENAME": "/var/lib/systemd/coredump/c\0"}, id="nul-in-core"),
        pytest.param({"__CURSOR": "s=1;i=\0"}, id="nul-in-cursor"),
        pytest.param({"_MACHINE_ID": "\0" * 32}, id="nul-in-machine-id"),
    ],
)
def test_fields_no_real_crash_has_make_the_entry_malformed(changes: dict[str, str]) -> None:
    assert verdict(**changes) is Verdict.MALFORMED


def test_the_limits_themselves_are_accepted() -> None:
    entry = accepted(
        COREDUMP_PID=str(U32 - 1),
        COREDUMP_UID=str(U32 - 1),
        COREDUMP_GID=str(U32 - 1),
        COREDUMP_SIGNAL=str(U32 - 1),
        COREDUMP_TIMESTAMP=str(T63 - 1),
        __REALTIME_TIMESTAMP=str(T63 - 1),
    )
    assert (entry.pid, entry.uid, entry.gid, entry.signal) == (U32 - 1,) * 4
    assert entry.timestamp == entry.realtime == T63 - 1


def test_names_keep_escape_sequences_exactly() -> None:
    """A program may be named with any byte but NUL; it is that program, escaped when printed."""
    exe = "/tmp/\x1b]52;c;cHduZWQ=\x07evil\u202e"
    entry = accepted(COREDUMP_EXE=exe, COREDUMP_COMM="\x1b[31m")
    assert entry.exe == exe
    assert entry.comm == "\x1b[31m"


def test_free_text_has_its_control_characters_replaced() -> None:
    entry = accepted(
        COREDUMP_HOSTNAME="\x1b]52;c;eA==\x07host",
        COREDUMP_CMDLINE="sleep \0 \x1b[2J\ttab\nnew",
        COREDUMP_UNIT="u\x9bnit",
    )
    assert entry.hostname == "\ufffd]52;c;eA==\ufffdhost"
    assert entry.cmdline == "sleep \ufffd \ufffd[2J\ttab\nnew"
    assert entry.unit == "u\ufffdnit"


def test_a_signal_name_must_be_a_short_ascii_name() -> None:
    assert accepted(COREDUMP_SIGNAL_NAME="SIG" + "A" * 100).signal_name == "SIGSEGV"
    assert accepted(COREDUMP_SIGNAL_NAME="SIGÄ").signal_name == "SIGSEGV"
    assert accepted(COREDUMP_SIGNAL_NAME="SIGBUS").signal_name == "SIGBUS"


# Any code point, lone surrogates and NUL included; numbers near every limit.
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=40)
NUMBER = st.one_of(
    st.sampled_from([0, 1, U32 - 1, U32, T63 - 1, T63, 2**64, -1]).map(str),
    st.integers(-(2**70), 2**70).map(str),
    ANY_TEXT,
)
NUMERIC = (
    "COREDUMP_PID",
    "COREDUMP_UID",
    "COREDUMP_GID",
    "COREDUMP_SIGNAL",
    "COREDUMP_TIMESTAMP",
    "__REALTIME_TIMESTAMP",
)
TEXTUAL = (
    "COREDUMP_SIGNAL_NAME",
    "COREDUMP_EXE",
    "COREDUMP_COMM",
    "COREDUMP_CMDLINE",
    "COREDUMP_HOSTNAME",
    "_HOSTNAME",
    "COREDUMP_UNIT",
    "COREDUMP_USER_UNIT",
    "COREDUMP_FILENAME",
    "_MACHINE_ID",
    "__CURSOR",
    "COREDUMP_PROC_MAPS",
    "MESSAGE",
)
CHANGES = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(NUMERIC, NUMBER),
        **dict.fromkeys(TEXTUAL, ANY_TEXT),
    },
)
METADATA = st.one_of(
    st.none(),
    st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=5).map(
        lambda kcrash: parse_drkonqi_json(json.dumps({"kcrash": kcrash}).encode(), "/p/x.ini")
    ),
    st.binary(max_size=300).map(
        lambda data: parse_ini(b"[KCrash]\n" + data, "/p/1.ini", MetadataSource.KCRASH_V1)
    ),
)


def assert_sendable(record: object) -> None:
    if isinstance(record, str):
        assert dbus_string_ok(record), repr(record)
    elif isinstance(record, dict):
        for k, v in record.items():
            assert_sendable(k)
            assert_sendable(v)
    elif isinstance(record, list | tuple):
        for v in record:
            assert_sendable(v)


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(CHANGES, METADATA, st.booleans())
def test_whatever_is_accepted_can_be_stored_and_sent(
    changes: dict[str, str], metadata: object, past: bool
) -> None:
    got, entry = classify(fields(**changes), ALL_USERS)
    assert (got is Verdict.ACCEPT) is (entry is not None)
    if entry is None:
        return
    assert 0 < entry.pid < U32 and 0 <= entry.uid < U32 and 0 <= entry.gid < U32
    assert 0 < entry.timestamp < T63 and 0 < entry.realtime < T63
    crash = build_crash(entry, metadata, past, now=1_700_000_000_000_000)  # type: ignore[arg-type]
    assert unsendable(crash) is None
    record = to_record(crash)
    assert_sendable({k: v.value for k, v in record.items()})
    # Both ways a record goes out: dbus-fast's marshaller and the pre-rendered list record.
    Marshaller("sa{sv}", [crash.id, record]).marshall()
    dbus_wire.scalar_record_chunk(list_items(crash))


def test_unsendable_names_the_key_that_cannot_be_sent() -> None:
    import dataclasses

    crash = build_crash(accepted(), None, False, now=1)
    assert unsendable(crash) is None
    bad_entry = dataclasses.replace(crash.entry, hostname="a\0b")
    assert unsendable(dataclasses.replace(crash, entry=bad_entry)) == "hostname"
    bad_entry = dataclasses.replace(crash.entry, pid=U32)
    assert unsendable(dataclasses.replace(crash, entry=bad_entry)) == "pid"
    assert unsendable(dataclasses.replace(crash, kcrash={"k": "\udc80"})) == "kcrash"
    assert unsendable(dataclasses.replace(crash, kcrash_filled=("\0",))) == "kcrash_filled"
    assert unsendable(dataclasses.replace(crash, detected=T63)) == "detected"
