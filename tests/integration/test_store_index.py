"""The store as the crash index, on a real SQLite file: its SQL selects what the pure filter
selects, list records are kept and rendered again when their tag changes, and a schema-1 store is
upgraded in place."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_crash
from crashbroker.adapters.store import CHECKPOINT_BYTES, CHECKPOINT_LIMIT, CrashStore, encode
from crashbroker.domain.crash import signature
from crashbroker.domain.errors import StoreError
from crashbroker.domain.loops import BurstMember, LoopPolicy, LoopTracker
from crashbroker.domain.model import Crash, CrashState
from crashbroker.domain.query import CrashFilter, newest_first

T0 = 1_700_000_000_000_000
EXES = ["/usr/bin/kate", "/usr/bin/dolphin", "/usr/bin/kate (deleted)", "/opt/kate"]
# (machine id, hostname) of a fleet: a hostname may be shared, or be another machine's id.
MACHINES = [
    ("3d1219c7c4c5404aaa1f6d2a48adfda4", "vm"),
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "vm"),
    ("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ("cccccccccccccccccccccccccccccccc", "build-1"),
]


crash_rows = st.lists(
    st.tuples(
        st.integers(0, 20),  # timestamp step (ties on purpose)
        st.integers(0, 3),  # realtime step
        st.sampled_from(EXES),
        st.sampled_from(list(CrashState)),
        st.sampled_from(MACHINES),
    ),
    max_size=25,
)
filters = st.fixed_dictionaries(
    {},
    optional={
        "since": st.one_of(st.integers(-(2**64), 2**64), st.integers(T0, T0 + 300)),
        "until": st.one_of(st.integers(-(2**64), 2**64), st.integers(T0, T0 + 300)),
        "exe": st.sampled_from([*EXES, "kate", "dolphin", "nothing"]),
        "state": st.sampled_from([s.value for s in CrashState]),
        "limit": st.integers(1, 30),
        "offset": st.integers(0, 30),
        "include_dismissed": st.booleans(),
        "machine": st.sampled_from(
            [
                *(m for m, _ in MACHINES),
                "vm",
                "build-1",
                "BBBBBBBB-BBBB-BBBB-BBBB-BBBBBBBBBBBB",
                "nothing",
            ]
        ),
    },
)


Row = tuple[int, int, str, CrashState, tuple[str, str]]


def build(rows: list[Row]) -> list[Crash]:
    crashes, ts, rt = [], T0, T0
    for pid, (step, rstep, exe, state, (machine, host)) in enumerate(rows, start=1):
        ts += step
        rt += rstep
        crash = make_crash(pid, ts, rt, exe, state)
        entry = dataclasses.replace(crash.entry, machine_id=machine, hostname=host, fleet=True)
        crashes.append(dataclasses.replace(crash, id=entry.key.crash_id, entry=entry))
    return crashes


def render(crash: Crash) -> bytes:
    return f"{crash.id}:{crash.state.value}".encode()


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=crash_rows, raw=filters)
def test_sql_selects_what_the_filter_selects(
    tmp_path: Path, rows: list[Row], raw: dict[str, object]
) -> None:
    db = tmp_path / "crashes.sqlite"
    db.unlink(missing_ok=True)
    store = CrashStore(db)
    try:
        crashes = build(rows)
        store.set_renderer(render, "t1")
        store.upsert(crashes, None)
        flt = CrashFilter.parse(raw)
        expected = newest_first(crashes, flt)
        got = store.crashes(flt)
        # The same total order (ties on timestamp and realtime by id): the same crashes, also
        # for a page (limit and offset).
        assert [c.id for c in got] == [c.id for c in expected]
        assert got == [store.get(c.id) for c in got]
        listed = store.listing(flt)
        assert [r.record for r in listed] == [render(c) for c in got]
    finally:
        store.close()


def test_pages_of_tied_crashes_partition_the_list_in_id_order(tmp_path: Path) -> None:
    """Crashes at one timestamp and journal time come by id (descending), whatever order they
    were stored in, so that pages (limit, offset) neither overlap nor skip one."""
    store = CrashStore(tmp_path / "crashes.sqlite")
    store.set_renderer(render, "t1")
    tied = [make_crash(pid, T0, T0, "/usr/bin/kate", CrashState.NEW) for pid in range(1, 12)]
    older = make_crash(99, T0 - 1, T0 + 5, "/usr/bin/kate", CrashState.NEW)
    # Stored newest id first: SQLite's own order of ties (the rowid, descending) is the other.
    for crash in [*sorted(tied, key=lambda c: c.id, reverse=True), older]:
        store.upsert([crash], None)
    expected = [*sorted((c.id for c in tied), reverse=True), older.id]
    assert [c.id for c in store.crashes(CrashFilter())] == expected
    pages = [store.listing(CrashFilter(limit=5, offset=o)) for o in (0, 5, 10)]
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [r.record for p in pages for r in p] == [f"{i}:new".encode() for i in expected]
    # An offset without a limit: the rest of the list.
    assert [c.id for c in store.crashes(CrashFilter(offset=9))] == expected[9:]
    assert store.crashes(CrashFilter(offset=12)) == []
    store.close()


def test_a_page_walks_an_index_in_list_order_without_sorting(tmp_path: Path) -> None:
    """ListCrashes' order (timestamp, realtime, id; newest first) is an index's: the newest 20
    of 100,000 crashes were 0.02 ms, a sort of every match would be ~50 ms."""
    store = CrashStore(tmp_path / "crashes.sqlite")
    for flt in (CrashFilter(), CrashFilter(limit=20, offset=40), CrashFilter(since=T0)):
        where, args = store._where(flt)
        plan = store._read(f"EXPLAIN QUERY PLAN SELECT id, listing FROM crashes{where}", args)
        details = " / ".join(str(r[3]) for r in plan)
        assert "TEMP B-TREE" not in details, details
    store.close()


def test_counts_groups_members_and_expiry(tmp_path: Path) -> None:
    store = CrashStore(tmp_path / "crashes.sqlite")
    a = make_crash(1, T0, T0, "/usr/bin/kate", CrashState.NEW)
    b = make_crash(2, T0 + 5, T0 + 5, "/usr/bin/kate", CrashState.DISMISSED, head=a.id)
    c = make_crash(3, T0 + 9, T0 + 9, "/usr/bin/dolphin", CrashState.CLAIMED)
    store.upsert([a, b, c], "cursor-1")
    assert store.ids() == {a.id, b.id, c.id}
    assert store.count_shown() == 2
    assert store.groups() == {
        "/usr/bin/kate:SIGSEGV": (2, T0),
        "/usr/bin/dolphin:SIGSEGV": (1, T0 + 9),
    }
    assert sorted(store.shown_ids()) == sorted([a.id, c.id])
    assert store.shown_ids(loop_head=a.id) == []  # b is dismissed
    assert sorted(store.latest_bursts()) == sorted(
        [
            BurstMember(a.id, "/usr/bin/kate:SIGSEGV", T0, "", False, False),
            BurstMember(b.id, "/usr/bin/kate:SIGSEGV", T0 + 5, a.id, False, True),
            BurstMember(c.id, "/usr/bin/dolphin:SIGSEGV", T0 + 9, "", False, False),
        ]
    )
    gone = store.expire(T0 + 6)
    assert sorted(gone) == sorted(
        [(a.id, "/usr/bin/kate:SIGSEGV", False), (b.id, "/usr/bin/kate:SIGSEGV", True)]
    )
    assert store.ids() == {c.id}
    assert store.cursor() == "cursor-1"
    store.close()


def test_machine_positions_commit_with_the_rows_and_apart_from_the_cursor(tmp_path: Path) -> None:
    path = tmp_path / "crashes.sqlite"
    store = CrashStore(path)
    crash = make_crash(1, T0, T0, "/usr/bin/kate", CrashState.NEW)
    store.upsert([crash], "fleet", positions={"a" * 32: "s=1;i=2", "b" * 32: "s=3;i=4"})
    store.save_cursor(None, {"b" * 32: "s=3;i=5"})
    store.save_cursor("fleet")
    store.close()
    store = CrashStore(path)
    assert store.cursor() == "fleet"
    assert store.positions() == {"a" * 32: "s=1;i=2", "b" * 32: "s=3;i=5"}
    assert store.ids() == {crash.id}
    store.close()


def test_list_records_follow_updates_and_are_rendered_again_under_a_new_tag(
    tmp_path: Path,
) -> None:
    path = tmp_path / "crashes.sqlite"
    store = CrashStore(path)
    store.set_renderer(render, "t1")
    crash = make_crash(1, T0, T0, "/usr/bin/kate", CrashState.NEW)
    store.upsert([crash], None)
    store.update(dataclasses.replace(crash, state=CrashState.CLAIMED))
    assert [r.record for r in store.listing(CrashFilter())] == [f"{crash.id}:claimed".encode()]
    store.close()

    store = CrashStore(path)
    store.set_renderer(lambda c: b"v2:" + render(c), "t2")
    assert [r.record for r in store.listing(CrashFilter())] == [f"v2:{crash.id}:claimed".encode()]
    store.close()
    with sqlite3.connect(path) as db:  # rendered once, then kept
        assert db.execute("SELECT listing FROM crashes").fetchone()[0].startswith(b"v2:")


def test_a_schema_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "crashes.sqlite"
    old = [
        make_crash(1, T0, T0, "/usr/bin/kate (deleted)", CrashState.NEW),
        make_crash(2, T0 + 1, T0 + 1, "/usr/bin/dolphin", CrashState.DISMISSED),
    ]
    with sqlite3.connect(path) as db:  # the tables as schema 1 made them
        db.executescript(
            "CREATE TABLE crashes (id TEXT PRIMARY KEY, timestamp INTEGER NOT NULL,"
            " signature TEXT NOT NULL, state TEXT NOT NULL, record TEXT NOT NULL,"
            " announced INTEGER NOT NULL DEFAULT 1);"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES('schema', '1'), ('cursor', 'old-cursor');"
        )
        db.executemany(
            "INSERT INTO crashes VALUES(?, ?, ?, ?, ?, 1)",
            [(c.id, c.entry.timestamp, c.signature, c.state.value, encode(c)) for c in old]
            + [("cbroken", T0, "x", "new", json.dumps({"not": "a crash"}))],
        )
    store = CrashStore(path)
    assert store.ids() == {c.id for c in old}  # the unreadable row is dropped, with a warning
    assert store.crashes(CrashFilter.parse({"exe": "kate"})) == [old[0]]
    # schema 3's machine and host columns are filled from the records
    assert store.crashes(CrashFilter.parse({"machine": "vm", "include_dismissed": True})) == [
        old[1],
        old[0],
    ]
    assert store.crashes(CrashFilter.parse({"machine": old[0].entry.machine_id})) == [old[0]]
    assert store.crashes(CrashFilter.parse({"machine": "other"})) == []
    assert store.count_shown() == 1
    assert store.cursor() == "old-cursor"
    store.set_renderer(render, "t1")
    assert [r.record for r in store.listing(CrashFilter(include_dismissed=True))] == [
        render(old[1]),
        render(old[0]),
    ]
    store.close()


def test_the_log_is_checkpointed_from_another_thread_while_writes_go_on(tmp_path: Path) -> None:
    """SQLite's own checkpoint (inside a commit, with an fsync) is off; the daemon's worker
    thread checkpoints while the loop writes, and nothing written meanwhile is lost."""
    path = tmp_path / "crashes.sqlite"
    store = CrashStore(path)
    pid = 0

    def write(n: int) -> None:
        nonlocal pid
        for _ in range(n):
            pid += 1
            store.upsert(
                [make_crash(pid, T0 + pid, T0 + pid, "/usr/bin/kate", CrashState.NEW)], "c"
            )

    while not store.checkpoint_due():
        write(50)
        assert pid < 20_000, "the log never grew past the checkpoint size"
    due_at = pid  # with SQLite's auto-checkpoint on, the log would never have grown this far
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(store.checkpoint)
        write(100)  # on this thread, during the checkpoint
        assert done.result() > 0  # frames copied by the worker, not a busy no-op
    write(1)  # the first commit after a complete checkpoint starts the log over
    if store.checkpoint_due():  # the 100 rows were logged after the checkpoint's snapshot
        store.checkpoint()
        write(1)
    assert not store.checkpoint_due()
    assert (tmp_path / "crashes.sqlite-wal").stat().st_size < 1_000_000
    store.close()
    store = CrashStore(path)
    assert len(store.ids()) == pid > due_at
    store.close()


def test_any_write_that_grows_the_log_asks_for_a_checkpoint(tmp_path: Path) -> None:
    """Not only crashes: backtraces, updates and re-rendered records grow the log too."""
    store = CrashStore(tmp_path / "crashes.sqlite")
    asked: list[int] = []
    store.when_log_grows(lambda: asked.append(len(asked)))
    crash = make_crash(1, T0, T0, "/usr/bin/kate", CrashState.NEW)
    store.upsert([crash], "c")
    assert asked == []
    n = 0
    while not asked:
        n += 1
        # ~120 KB, different throughout: SQLite rewrites only the pages whose bytes change.
        store.save_backtrace(crash.id, f"frame {n:04} " * 10_000)
        assert n < 200, "the log never grew past CHECKPOINT_BYTES"
    assert store.checkpoint_due()
    assert store.checkpoint() > 0
    store.save_backtrace(crash.id, "short")  # the first write after the copy starts over
    assert not store.checkpoint_due()
    store.close()


def test_the_log_is_bounded_when_no_worker_checkpoints(tmp_path: Path) -> None:
    """A backstop for a worker that cannot keep up: past CHECKPOINT_LIMIT the committing call
    checkpoints inline, so the log never holds much more than the limit."""
    store = CrashStore(tmp_path / "crashes.sqlite")
    wal = tmp_path / "crashes.sqlite-wal"
    pid, largest = 0, 0
    while (tmp_path / "crashes.sqlite").stat().st_size < 2 * CHECKPOINT_LIMIT:
        rows = []
        for _ in range(100):
            pid += 1
            rows.append(make_crash(pid, T0 + pid, T0 + pid, "/usr/bin/kate", CrashState.NEW))
        store.upsert(rows, "c")
        largest = max(largest, wal.stat().st_size)
        assert pid < 200_000, "the database never grew: nothing was checkpointed"
    assert CHECKPOINT_BYTES < largest < CHECKPOINT_LIMIT + CHECKPOINT_BYTES
    store.close()


def test_the_log_is_bounded_while_the_worker_checkpoints_without_pause(tmp_path: Path) -> None:
    """In a long storm the worker checkpoints back to back, each one overtaken by the writes
    made during it: the inline backstop must still get its turn, or the log grows unbounded."""
    store = CrashStore(tmp_path / "crashes.sqlite")
    wal = tmp_path / "crashes.sqlite-wal"
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            store.checkpoint()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        pid, largest = 0, 0
        big = "x" * 4000
        while pid < 4000:  # ~50 MB of rows
            rows = []
            for _ in range(20):
                pid += 1
                crash = make_crash(pid, T0 + pid, T0 + pid, "/usr/bin/kate", CrashState.NEW)
                entry = dataclasses.replace(crash.entry, cmdline=big, hostname=big)
                rows.append(dataclasses.replace(crash, entry=entry))
            store.upsert(rows, "c")
            largest = max(largest, wal.stat().st_size)
    finally:
        stop.set()
        thread.join()
    assert largest < CHECKPOINT_LIMIT + CHECKPOINT_BYTES, largest
    store.close()


def test_a_checkpoint_never_creates_a_database_where_the_store_has_gone(tmp_path: Path) -> None:
    path = tmp_path / "dir with space" / "crashes.sqlite"
    store = CrashStore(path)
    store.upsert([make_crash(1, T0, T0, "/usr/bin/kate", CrashState.NEW)], "c")
    store.checkpoint()  # a path that needs quoting in a URI
    store.close()
    path.unlink()
    with pytest.raises(StoreError, match="cannot checkpoint"):
        store.checkpoint()
    assert not path.exists()


def test_the_check_at_open_leaves_no_database_pages_mapped(tmp_path: Path) -> None:
    """The open's integrity check maps the file to read it; an idle daemon must not keep it."""
    path = tmp_path / "crashes.sqlite"
    store = CrashStore(path)
    store.upsert(
        [make_crash(p, T0 + p, T0 + p, "/usr/bin/kate", CrashState.NEW) for p in range(500)], "c"
    )
    store.close()
    store = CrashStore(path)
    try:
        assert len(store.ids()) == 500
        mapped = {
            line.split(maxsplit=5)[-1] for line in Path("/proc/self/maps").read_text().splitlines()
        }
        assert str(path) not in mapped  # (its -shm index is mapped, as WAL mode needs)
    finally:
        store.close()


bursts = st.lists(
    st.tuples(
        st.sampled_from(EXES[:2]),  # the grouping key
        st.integers(0, 3),  # timestamp step (ties on purpose)
        st.one_of(st.none(), st.integers(0, 30)),  # a head, or folded into an earlier head
        st.booleans(),  # dismissed
        st.booleans(),  # loop
    ),
    max_size=30,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=bursts)
def test_latest_bursts_restore_what_every_member_would(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, int, int | None, bool, bool]]
) -> None:
    """A start reads only each key's latest burst; the loop tracker must end up as if it had
    been given every stored crash."""
    crashes: list[Crash] = []
    heads: dict[str, list[Crash]] = {}
    ts = T0
    for pid, (exe, step, fold, dismissed, loop) in enumerate(rows, start=1):
        ts += step
        own = heads.setdefault(exe, [])
        head = own[fold % len(own)].id if fold is not None and own else ""
        state = CrashState.DISMISSED if dismissed else CrashState.NEW
        crash = dataclasses.replace(make_crash(pid, ts, ts, exe, state, head), loop=loop)
        crashes.append(crash)
        if not head:
            own.append(crash)
    store = CrashStore(tmp_path_factory.mktemp("store") / "crashes.sqlite")
    try:
        store.upsert(crashes, None)
        policy = LoopPolicy(threshold=3, window_us=10**15)
        everything, latest = LoopTracker(policy), LoopTracker(policy)
        everything.restore(BurstMember.of(signature(c.entry), c) for c in crashes)
        latest.restore(store.latest_bursts())
        for key in {signature(c.entry) for c in crashes}:
            assert latest.place(key, "next", ts + 1) == everything.place(key, "next", ts + 1)
    finally:
        store.close()
