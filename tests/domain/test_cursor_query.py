"""The safe journal cursor, building published crashes, and ListCrashes filters."""

from __future__ import annotations

import dataclasses
import re

import pytest

from conftest import FACTORY_BOOT as BOOT
from conftest import FACTORY_T0 as T0
from conftest import make_entry
from crashbroker.domain.correlator import Correlator, LookupMetadata, PublishCrash
from crashbroker.domain.crash import build_crash, signature
from crashbroker.domain.cursor import CursorTracker
from crashbroker.domain.errors import InvalidArgs
from crashbroker.domain.model import (
    Crash,
    CrashKey,
    CrashState,
    KCrashLib,
    KCrashMetadata,
    MetadataSource,
)
from crashbroker.domain.query import (
    MAX_EXE_CHARS,
    MAX_LIMIT,
    MAX_OFFSET,
    CrashFilter,
    newest_first,
)


def key(pid: int) -> CrashKey:
    return CrashKey(BOOT, pid, T0 + pid)


# --- CursorTracker --------------------------------------------------------------------------


@pytest.mark.parametrize("start", [None, "s=start"])
def test_safe_cursor_is_the_start_before_anything_is_read(start: str | None) -> None:
    assert CursorTracker(start).safe() == start


def test_safe_cursor_follows_entries_that_need_no_correlation() -> None:
    t = CursorTracker("c0")
    t.seen("c1")
    t.seen("c2")
    assert t.safe() == "c2"


def test_each_machine_stream_has_its_own_safe_position() -> None:
    """Fleet mode: a crash pending on one machine holds back only that machine's position;
    positions stored earlier are where each stream starts; the one reader's stream is apart."""
    t = CursorTracker("fleet", {"a": "a0", "b": "b0"})
    t.seen("a1", stream="a")
    t.seen("a2", pending=key(2), stream="a")
    t.seen("b1", stream="b")
    t.seen("c1", pending=key(3), stream="c")  # a machine new in this run
    t.seen("c2", stream="c")
    assert t.streams() == {"a": "a1", "b": "b1"}  # nothing of c is safe yet
    assert t.safe() == "fleet"
    t.settled(key(3))
    t.settled(key(2))
    assert t.streams() == {"a": "a2", "b": "b1", "c": "c2"}


def test_safe_cursor_stops_before_the_oldest_pending_entry() -> None:
    t = CursorTracker("c0")
    t.seen("c1")
    t.seen("c2", pending=key(2))
    t.seen("c3")
    t.seen("c4", pending=key(4))
    t.seen("c5")
    assert t.safe() == "c1"

    t.settled(key(2))
    assert t.safe() == "c3"

    t.settled(key(4))
    assert t.safe() == "c5"


def test_safe_cursor_waits_for_the_oldest_when_a_newer_one_settles_first() -> None:
    t = CursorTracker("c0")
    t.seen("c1", pending=key(1))
    t.seen("c2", pending=key(2))
    t.seen("c3")

    t.settled(key(2))
    assert t.safe() == "c0"

    t.settled(key(1))
    assert t.safe() == "c3"


@pytest.mark.parametrize("start", [None, "c0"])
def test_pending_first_entry_keeps_the_start_cursor(start: str | None) -> None:
    t = CursorTracker(start)
    t.seen("c1", pending=key(1))
    t.seen("c2")
    assert t.safe() == start
    t.settled(key(1))
    assert t.safe() == "c2"


def test_pending_entry_seen_again_keeps_its_first_position() -> None:
    t = CursorTracker("c0")
    t.seen("c1", pending=key(1))
    t.seen("c2")
    t.seen("c3", pending=key(1))  # the same crash read again
    assert t.safe() == "c0"
    t.settled(key(1))
    assert t.safe() == "c3"


def test_settling_an_unknown_crash_changes_nothing() -> None:
    t = CursorTracker("c0")
    t.seen("c1", pending=key(1))
    t.settled(key(99))
    t.settled(key(99))
    assert t.safe() == "c0"


def test_cursor_and_correlator_together() -> None:
    """The shell's loop in miniature: the cursor only passes crashes that were published."""
    c = Correlator(grace_us=1_000_000, retry_us=50_000)
    t = CursorTracker("c0")
    kde = make_entry(pid=1, kcrash_lib=KCrashLib.KF6)
    plain = make_entry(pid=2, kcrash_lib=KCrashLib.NONE)

    assert c.coredump(kde, past=False, now=T0) == [LookupMetadata(kde)]
    t.seen("c1", pending=kde.key)
    assert c.coredump(plain, past=False, now=T0) == [LookupMetadata(plain)]
    t.seen("c2", pending=plain.key)
    t.seen("c3")

    for effect in c.metadata(plain.key, None, now=T0 + 10):
        assert effect == PublishCrash(plain, None, past=False)
        t.settled(effect.entry.key)
    assert c.metadata(kde.key, None, now=T0 + 10) == []
    assert t.safe() == "c0"  # the KF6 crash still waits for its file

    now = c.next_deadline()
    assert now is not None
    assert c.tick(now) == [LookupMetadata(kde)]
    complete = KCrashMetadata(kcrash={"exe": "/usr/bin/kate"}, complete=True)
    (effect,) = c.metadata(kde.key, complete, now=now)
    assert isinstance(effect, PublishCrash)
    t.settled(effect.entry.key)
    assert t.safe() == "c3"


# --- build_crash ----------------------------------------------------------------------------


def test_build_crash_with_metadata_fills_gaps() -> None:
    entry = make_entry(pid=7)
    meta = KCrashMetadata(
        kcrash={"exe": "/usr/bin/kate", "programname": "Kate", "bugaddress": "b@kde.org"},
        complete=True,
        source=MetadataSource.KCRASH_V2,
        path="/run/kate.ini",
    )
    crash = build_crash(entry, meta, past=True, now=T0 + 5)

    assert crash.id == entry.key.crash_id
    assert re.fullmatch(r"[A-Za-z0-9_]+", crash.id)
    assert crash.entry is entry
    assert dict(crash.kcrash) == {
        "exe": "/usr/bin/kate",
        "programname": "Kate",
        "bugaddress": "b@kde.org",
        "signal": "11",
        "pid": "7",
        "appname": "kate",
    }
    assert crash.kcrash_filled == ("signal", "pid", "appname")
    assert crash.kcrash_complete is True
    assert crash.kcrash_source == "kcrash-v2"
    assert crash.metadata_path == "/run/kate.ini"
    assert crash.past is True
    assert crash.detected == T0 + 5
    assert crash.state is CrashState.NEW
    assert crash.signature == "/usr/bin/kate:SIGSEGV"
    assert crash.app_name == "Kate"
    assert crash.bug_address == "b@kde.org"


def test_build_crash_without_metadata_keeps_kcrash_empty() -> None:
    crash = build_crash(make_entry(exe="/usr/bin/sleep"), None, past=False, now=T0)
    assert dict(crash.kcrash) == {}
    assert crash.kcrash_filled == ()
    assert crash.kcrash_complete is False
    assert crash.kcrash_source == ""
    assert crash.metadata_path == ""
    assert crash.app_name == "sleep"
    assert crash.bug_address == ""


def test_crash_ids_are_stable_and_separate_pid_reuse() -> None:
    a = make_entry(pid=5, timestamp=T0)
    again = dataclasses.replace(a, cursor="s=elsewhere", realtime=0)
    reused = make_entry(pid=5, timestamp=T0 + 1)
    assert a.key.crash_id == again.key.crash_id
    assert a.key.crash_id != reused.key.crash_id


@pytest.mark.parametrize(
    ("exe", "comm", "expected"),
    [
        ("/usr/bin/kate", "kate", "/usr/bin/kate:SIGSEGV"),
        ("/usr/bin/kate (deleted)", "kate", "/usr/bin/kate:SIGSEGV"),
        ("", "kworker", "kworker:SIGSEGV"),
    ],
)
def test_signature_is_exe_and_signal(exe: str, comm: str, expected: str) -> None:
    assert signature(dataclasses.replace(make_entry(), exe=exe, comm=comm)) == expected


# --- CrashFilter.parse ----------------------------------------------------------------------


def test_empty_filter_is_the_default() -> None:
    assert CrashFilter.parse({}) == CrashFilter()
    assert CrashFilter() == CrashFilter(None, None, None, None, None, False)


def test_full_filter_parses() -> None:
    flt = CrashFilter.parse(
        {
            "since": 1,
            "until": 2,
            "exe": "kate",
            "state": "claimed",
            "limit": 10,
            "include_dismissed": True,
        }
    )
    assert flt == CrashFilter(
        since=1,
        until=2,
        exe="kate",
        state=CrashState.CLAIMED,
        limit=10,
        include_dismissed=True,
    )


def test_unknown_filter_key_is_refused() -> None:
    with pytest.raises(InvalidArgs, match="unknown filter key 'pid'") as info:
        CrashFilter.parse({"pid": 5})
    assert info.value.name == "InvalidArgs"


@pytest.mark.parametrize(
    "raw",
    [
        {"since": "1"},
        {"since": 1.0},
        {"since": True},
        {"until": None},
        {"until": False},
        {"limit": True},
        {"limit": 10.0},
        {"limit": "10"},
        {"offset": True},
        {"offset": 1.0},
        {"offset": "1"},
        {"exe": 5},
        {"exe": b"/usr/bin/kate"},
        {"state": 1},
        {"state": None},
        {"include_dismissed": 1},
        {"include_dismissed": "true"},
        {"include_dismissed": None},
    ],
    ids=repr,
)
def test_filter_of_the_wrong_type_is_refused(raw: dict[str, object]) -> None:
    with pytest.raises(InvalidArgs, match="wrong type"):
        CrashFilter.parse(raw)


@pytest.mark.parametrize("state", ["bogus", "NEW", "", " new", "open"])
def test_unknown_state_is_refused(state: str) -> None:
    with pytest.raises(InvalidArgs, match="unknown state"):
        CrashFilter.parse({"state": state})


@pytest.mark.parametrize(
    ("limit", "ok"),
    [(-1, False), (0, False), (1, True), (MAX_LIMIT, True), (MAX_LIMIT + 1, False)],
)
def test_limit_bounds(limit: int, ok: bool) -> None:
    if ok:
        assert CrashFilter.parse({"limit": limit}).limit == limit
    else:
        with pytest.raises(InvalidArgs, match="limit"):
            CrashFilter.parse({"limit": limit})


@pytest.mark.parametrize(
    ("offset", "ok"),
    [(-1, False), (0, True), (1, True), (MAX_OFFSET, True), (MAX_OFFSET + 1, False)],
)
def test_offset_bounds(offset: int, ok: bool) -> None:
    if ok:
        assert CrashFilter.parse({"offset": offset}).offset == offset
    else:
        with pytest.raises(InvalidArgs, match="offset"):
            CrashFilter.parse({"offset": offset})


def test_exe_length_bound() -> None:
    assert CrashFilter.parse({"exe": "x" * MAX_EXE_CHARS}).exe == "x" * MAX_EXE_CHARS
    with pytest.raises(InvalidArgs, match="exe"):
        CrashFilter.parse({"exe": "x" * (MAX_EXE_CHARS + 1)})


@pytest.mark.parametrize(
    ("raw", "include_dismissed"),
    [
        ({}, False),
        ({"include_dismissed": False}, False),
        ({"include_dismissed": True}, True),
        ({"state": "dismissed"}, True),
        ({"state": "dismissed", "include_dismissed": False}, True),
        ({"state": "new"}, False),
    ],
)
def test_include_dismissed(raw: dict[str, object], include_dismissed: bool) -> None:
    assert CrashFilter.parse(raw).include_dismissed is include_dismissed


# --- newest_first ---------------------------------------------------------------------------


def crash(
    pid: int,
    timestamp: int,
    exe: str = "/usr/bin/kate",
    state: CrashState = CrashState.NEW,
    realtime: int | None = None,
) -> Crash:
    built = build_crash(
        make_entry(pid=pid, timestamp=timestamp, exe=exe, realtime=realtime),
        None,
        past=False,
        now=timestamp + 1_000_000,
    )
    return dataclasses.replace(built, state=state)


ALL = [
    crash(1, T0 + 100, "/usr/bin/kate"),
    crash(2, T0 + 300, "/usr/bin/dolphin", CrashState.CLAIMED),
    crash(3, T0 + 200, "/usr/bin/kate", CrashState.DISMISSED),
    crash(4, T0 + 400, "/usr/bin/sleep"),
    crash(5, T0 + 500, "/opt/kate/bin/kate", CrashState.DISMISSED),
    crash(6, T0 + 50, "/usr/bin/katebuild"),
]


def pids(crashes: list[Crash]) -> list[int]:
    return [c.entry.pid for c in crashes]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({}, [4, 2, 1, 6], id="default-hides-dismissed"),
        pytest.param({"include_dismissed": True}, [5, 4, 2, 3, 1, 6], id="all"),
        pytest.param({"limit": 2}, [4, 2], id="limit"),
        pytest.param({"limit": 1, "include_dismissed": True}, [5], id="limit-all"),
        pytest.param({"limit": MAX_LIMIT}, [4, 2, 1, 6], id="limit-larger-than-result"),
        pytest.param({"offset": 1}, [2, 1, 6], id="offset"),
        pytest.param({"offset": 1, "limit": 2}, [2, 1], id="page"),
        pytest.param({"offset": 3, "limit": 2}, [6], id="last-page"),
        pytest.param({"offset": 4, "limit": 2}, [], id="past-the-end"),
        pytest.param({"offset": 2, "include_dismissed": True}, [2, 3, 1, 6], id="offset-all"),
        pytest.param({"since": T0 + 200}, [4, 2], id="since-inclusive"),
        pytest.param({"until": T0 + 300}, [2, 1, 6], id="until-inclusive"),
        pytest.param(
            {"since": T0 + 100, "until": T0 + 300, "include_dismissed": True},
            [2, 3, 1],
            id="window",
        ),
        pytest.param({"since": T0 + 301, "until": T0 + 299}, [], id="empty-window"),
        pytest.param({"exe": "kate"}, [1], id="exe-basename"),
        pytest.param({"exe": "kate", "include_dismissed": True}, [5, 3, 1], id="basename-all"),
        pytest.param({"exe": "/usr/bin/kate", "include_dismissed": True}, [3, 1], id="exe-path"),
        pytest.param({"exe": "kat"}, [], id="exe-no-prefix-match"),
        pytest.param({"exe": "bin/kate"}, [], id="exe-no-suffix-match"),
        pytest.param({"state": "new"}, [4, 1, 6], id="state-new"),
        pytest.param({"state": "claimed"}, [2], id="state-claimed"),
        pytest.param({"state": "dismissed"}, [5, 3], id="state-dismissed"),
    ],
)
def test_newest_first(raw: dict[str, object], expected: list[int]) -> None:
    assert pids(newest_first(ALL, CrashFilter.parse(raw))) == expected


def test_newest_first_breaks_timestamp_ties_by_realtime() -> None:
    crashes = [
        crash(1, T0, realtime=T0 + 2),
        crash(2, T0, realtime=T0 + 9),
        crash(3, T0, realtime=T0 + 5),
        crash(4, T0 - 1, realtime=T0 + 100),
    ]
    assert pids(newest_first(crashes, CrashFilter())) == [2, 3, 1, 4]


def test_newest_first_breaks_full_ties_by_id_so_pages_partition_the_list() -> None:
    """Crashes at the same timestamp and journal time (a fleet's, or a burst's within a
    microsecond) come by id, newest-first's total order: pages neither overlap nor skip."""
    tied = [crash(pid, T0, realtime=T0) for pid in range(1, 8)]
    by_id = sorted(tied, key=lambda c: c.id, reverse=True)
    for given in (tied, list(reversed(tied))):  # one is not by id: a stable sort keeps it
        assert newest_first(given, CrashFilter()) == by_id
        pages = [newest_first(given, CrashFilter(limit=3, offset=o)) for o in (0, 3, 6)]
        assert [c for page in pages for c in page] == by_id


def test_newest_first_accepts_any_iterable_and_leaves_input_alone() -> None:
    given = list(ALL)
    assert pids(newest_first(iter(given), CrashFilter(limit=3))) == [4, 2, 1]
    assert given == ALL
    assert newest_first([], CrashFilter()) == []
