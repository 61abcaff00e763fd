"""The persistent crash index: SQLite under ``$XDG_STATE_HOME/crashbroker/``.

A crash row and the journal cursor that follows it commit in one transaction, so after any stop
(``kill -9`` included) the daemon resumes exactly behind what it stored: nothing is lost, and an
entry read again is recognised by its stable id and not published twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from crashbroker.domain.crash import grouping
from crashbroker.domain.errors import StoreError
from crashbroker.domain.loops import BurstMember
from crashbroker.domain.model import CoredumpEntry, Crash, CrashState, KCrashLib
from crashbroker.domain.query import CrashFilter
from crashbroker.ports import Expired, Listed

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# meta keys of each machine's journal position (fleet mode), after the single 'cursor'
_POSITION = "cursor@"
# The write-ahead log is checkpointed by a worker thread past SQLite's default auto-checkpoint
# size (1000 pages of 4 KiB), and inline by the committing call past the limit.
CHECKPOINT_BYTES = 4_096_000
CHECKPOINT_LIMIT = 4 * CHECKPOINT_BYTES
# The most of the database mapped while it is checked at open (what lies beyond is read).
_CHECK_MMAP_BYTES = 256 * 1024 * 1024
_SCHEMA = """
CREATE TABLE IF NOT EXISTS crashes (
    id        TEXT PRIMARY KEY,
    timestamp INTEGER NOT NULL,
    signature TEXT NOT NULL,
    state     TEXT NOT NULL,
    record    TEXT NOT NULL,
    announced INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS crashes_signature ON crashes(signature);
CREATE TABLE IF NOT EXISTS backtraces (
    id      TEXT PRIMARY KEY,
    text    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# Columns that let queries, counts and the start-up run on rows instead of decoded records
# (schema 2). Added to a schema-1 store on open and filled from its records once.
_INDEX_COLUMNS = {
    "realtime": "INTEGER",
    "exe": "TEXT",
    "exe_base": "TEXT",
    "grouping": "TEXT",  # grouping(entry): exe + signal (+ machine), what bursts group by
    "loop_head": "TEXT",
    "loop": "INTEGER",
    "listing": "BLOB",  # the list record as the renderer made it; NULL = not rendered yet
    # schema 3: the ListCrashes "machine" filter (a machine id or a hostname)
    "machine": "TEXT",
    "host": "TEXT",
}
_INDEXES = """
-- ListCrashes' order, newest first by (timestamp, realtime, id): a page (limit, offset) walks
-- this index instead of sorting every match (crashes_time lacked the id, the tie-breaker).
DROP INDEX IF EXISTS crashes_time;
CREATE INDEX IF NOT EXISTS crashes_order ON crashes(timestamp, realtime, id);
CREATE INDEX IF NOT EXISTS crashes_head ON crashes(loop_head) WHERE loop_head != '';
-- Covers what a start reads of every crash (ids, counts, bursts): a scan of this index instead
-- of the table's rows, a tenth of the bytes.
CREATE INDEX IF NOT EXISTS crashes_start
    ON crashes(grouping, timestamp, state, loop_head, loop, id);
-- What a killed run stored but never announced: read at each start (a scan of every row was
-- 7-10 ms for 10,000), empty but for a batch in flight.
CREATE INDEX IF NOT EXISTS crashes_unannounced ON crashes(id) WHERE announced = 0;
"""
_MEMBER = "id, grouping, timestamp, loop_head, loop != 0, state = 'dismissed'"
# Each key's latest burst: its newest crash (head or folded) is the newest, ties to the larger
# head id. Timestamps are positive (the entry parser refuses others): zero-padded, they compare
# as text, so one max() over "timestamp || id" picks the burst without a sort per key.
_LATEST_BURSTS = f"""
WITH folded AS (
    SELECT loop_head AS head, max(timestamp) AS last
    FROM crashes WHERE loop_head != '' GROUP BY loop_head
), heads AS (
    SELECT h.id, h.grouping, max(h.timestamp, coalesce(f.last, h.timestamp)) AS last_seen
    FROM crashes h LEFT JOIN folded f ON f.head = h.id
    WHERE h.loop_head = '' AND h.state != 'dismissed'
), latest AS (
    SELECT substr(max(printf('%020d', last_seen) || id), 21) AS id FROM heads GROUP BY grouping
)
SELECT {_MEMBER} FROM crashes WHERE id IN latest
UNION ALL
SELECT {_MEMBER} FROM crashes WHERE loop_head IN latest AND loop_head != ''
"""
_VALUE_COLUMNS = (
    "timestamp, signature, state, record, realtime, exe, exe_base, grouping, loop_head, loop,"
    " listing, machine, host"
)
_COLUMNS = f"id, {_VALUE_COLUMNS}, announced"
# Every column but id and announced: set from parameters (an update) or, when an insert meets an
# existing row, from the row being inserted.
_UPDATE = ", ".join(f"{c.strip()}=?" for c in _VALUE_COLUMNS.split(","))
_FROM_EXCLUDED = ", ".join(f"{c.strip()}=excluded.{c.strip()}" for c in _VALUE_COLUMNS.split(","))
_SQLITE_INT = (-(2**63), 2**63 - 1)

Render = Callable[[Crash], bytes]


class CorruptStore(StoreError):
    """The database file is damaged (not a database, malformed, failed its check)."""


@dataclass(slots=True)
class Salvage:
    """What was read from a damaged store before it was replaced.

    ``states`` maps crash ids to their non-``new`` state (dismissed, claimed): the one thing the
    journal cannot tell again.
    """

    reason: str
    states: dict[str, CrashState] = field(default_factory=dict)
    moved_to: Path | None = None


def _salvage_states(path: Path) -> dict[str, CrashState]:
    """Best effort: the rows of a damaged database that can still be read."""
    states: dict[str, CrashState] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return states
    try:
        for crash_id, state in db.execute("SELECT id, state FROM crashes WHERE state != 'new'"):
            with contextlib.suppress(ValueError):
                states[str(crash_id)] = CrashState(state)
    except sqlite3.Error as exc:
        logger.warning("salvaged %d crash states before: %s", len(states), exc)
    finally:
        db.close()
    return states


_CRASH_FIELDS = tuple(f.name for f in fields(Crash))
_ENTRY_FIELDS = tuple(f.name for f in fields(CoredumpEntry))


def encode(crash: Crash) -> str:
    """Serialise a crash for the ``record`` column (JSON)."""
    # Field by field rather than dataclasses.asdict(), whose recursive deep copy was a third of
    # the store's time in a catch-up. Every field is a JSON scalar, a str-enum, a tuple of str or
    # a str->str mapping.
    doc: dict[str, Any] = {name: getattr(crash, name) for name in _CRASH_FIELDS}
    entry = {name: getattr(crash.entry, name) for name in _ENTRY_FIELDS}
    entry["kcrash_lib"] = crash.entry.kcrash_lib.value
    doc["entry"] = entry
    doc["state"] = crash.state.value
    doc["kcrash"] = dict(crash.kcrash)
    return json.dumps(doc, separators=(",", ":"))


def decode(text: str) -> Crash:
    """Inverse of :func:`encode`.

    Raises:
        StoreError: the row is not a crash record of this schema.
    """
    try:
        doc: dict[str, Any] = json.loads(text)
        entry_doc = dict(doc.pop("entry"))
        entry_doc["kcrash_lib"] = KCrashLib(entry_doc["kcrash_lib"])
        doc["state"] = CrashState(doc["state"])
        doc["kcrash_filled"] = tuple(doc["kcrash_filled"])
        return Crash(entry=CoredumpEntry(**entry_doc), **doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"unreadable crash record: {exc}") from exc


class CrashStore:
    """SQLite-backed crash rows plus the journal cursor; one connection, used from the loop.

    The store is the crash index: queries, counts and a restart read rows (and the list records
    stored pre-rendered beside them), so the daemon keeps no copy of every crash in memory.
    Every statement is short (WAL mode, no fsync per commit, indexed), so calls run on the loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wal = path.with_name(path.name + "-wal")
        self._render: Render | None = None
        self._on_log_grown: Callable[[], None] | None = None
        # One checkpoint at a time: a PASSIVE one that meets another returns "busy" and copies
        # nothing, so the inline backstop waits for the worker's instead of missing its turn.
        self._checkpointing = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open crash store {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a killed process (not a power cut) without an fsync per commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-512")
            # SQLite's own checkpoint runs inside the commit that crosses 1000 WAL pages, and
            # its fsync held a CrashDetected back by 15-20 ms every ~120 crashes: the daemon
            # checkpoints from a worker thread instead (when_log_grows / checkpoint).
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            # The log is cut back when it starts over, so its size says what awaits a checkpoint.
            self._db.execute("PRAGMA journal_size_limit=0")
            self._db.executescript(_SCHEMA)
            # The check reads every page: mapped, it makes no read() per page (12.5 -> 6.3 ms
            # for 10,000 crashes); unmapped after it, so an idle daemon holds no database pages.
            # Through a map a failed read is a SIGBUS, not an error: only a disk I/O error (which
            # stops the daemon either way) or the file shrinking during these milliseconds
            # (only the daemon writes it) could raise one. Damaged contents are read as bytes.
            self._db.execute(f"PRAGMA mmap_size={_CHECK_MMAP_BYTES}")
            (verdict,) = self._db.execute("PRAGMA quick_check").fetchone()
            self._db.execute("PRAGMA mmap_size=0")
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
            self._migrate()
        except StoreError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise CorruptStore(f"crash store {path} is damaged: {exc}") from exc
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot open crash store {path}: {exc}") from exc

    def _migrate(self) -> None:
        """Bring a store of an older schema up to this one (adds and fills columns)."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(crashes)")}
        if "announced" not in columns:  # a store from before announced-tracking
            self._db.execute("ALTER TABLE crashes ADD COLUMN announced INTEGER NOT NULL DEFAULT 1")
        missing = [c for c in _INDEX_COLUMNS if c not in columns]
        for column in missing:
            self._db.execute(f"ALTER TABLE crashes ADD COLUMN {column} {_INDEX_COLUMNS[column]}")
        self._db.executescript(_INDEXES)
        if missing:
            with self._tx() as db:
                rows = db.execute("SELECT id, record FROM crashes").fetchall()
                for crash_id, record in rows:
                    try:
                        crash = decode(record)
                    except StoreError as exc:
                        logger.warning("dropping unreadable stored crash %s: %s", crash_id, exc)
                        db.execute("DELETE FROM crashes WHERE id=?", (crash_id,))
                        continue
                    self._update(db, [crash])
            logger.info("crash store upgraded to schema %d (%d crashes)", SCHEMA_VERSION, len(rows))
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES('schema', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(SCHEMA_VERSION),),
        )

    @classmethod
    def open_or_rebuild(cls, path: Path) -> tuple[CrashStore, Salvage | None]:
        """Open the store; a damaged one is moved aside (kept for inspection) and replaced by
        an empty one, with what could still be read of it.

        Returns:
            The store, and the salvage when the old one was damaged (else None).
        """
        try:
            return cls(path), None
        except CorruptStore as exc:
            damaged = exc
        salvage = Salvage(reason=str(damaged), states=_salvage_states(path))
        stamp = time.strftime("%Y%m%dT%H%M%S")
        salvage.moved_to = path.with_name(f"{path.name}.damaged-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                old = path.with_name(path.name + suffix)
                if old.exists():
                    old.rename(path.with_name(salvage.moved_to.name + suffix))
        except OSError as exc:
            raise StoreError(f"{damaged}; and it cannot be moved aside: {exc}") from exc
        return cls(path), salvage

    def close(self) -> None:
        self._db.close()

    def _wal_size(self) -> int:
        try:
            return self._wal.stat().st_size
        except OSError:
            return 0

    def checkpoint_due(self) -> bool:
        """True when the write-ahead log has grown past :data:`CHECKPOINT_BYTES`."""
        return self._wal_size() > CHECKPOINT_BYTES

    def when_log_grows(self, wake: Callable[[], None]) -> None:
        """Have ``wake`` called after any commit that leaves the write-ahead log past
        :data:`CHECKPOINT_BYTES` (on the committing thread), so the caller runs
        :meth:`checkpoint` elsewhere. Without it, only the inline backstop bounds the log."""
        self._on_log_grown = wake

    def checkpoint(self) -> int:
        """Copy the write-ahead log into the database, through a connection of its own.

        Safe to call from a worker thread while the loop writes on: a PASSIVE checkpoint takes
        no lock a writer needs, and the next commit after it starts the log over.

        Returns:
            How many log frames are in the database now (0: none, or another process's
            checkpoint was running).
        """
        with self._checkpointing:
            return self._checkpoint()

    def _checkpoint(self) -> int:
        try:
            # mode=rw: never create a database where the store's file has gone.
            db = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode=rw",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot checkpoint crash store {self.path}: {exc}") from exc
        try:
            busy, _, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot checkpoint crash store {self.path}: {exc}") from exc
        finally:
            db.close()
        return 0 if busy else max(copied, 0)

    def set_renderer(self, render: Render, tag: str) -> None:
        """Store each crash's list record as ``render`` makes it, beside the crash.

        ``tag`` names the rendering (keys, wire format): records rendered under another tag are
        dropped here and rendered again when first listed.
        """
        self._render = render
        row = self._db.execute("SELECT value FROM meta WHERE key='listing'").fetchone()
        if row is None or row[0] != tag:
            with self._tx() as db:
                db.execute("UPDATE crashes SET listing=NULL")
                db.execute(
                    "INSERT INTO meta(key, value) VALUES('listing', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (tag,),
                )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"crash store {self.path}: {exc}") from exc
        log = self._wal_size()
        if log > CHECKPOINT_BYTES and self._on_log_grown is not None:
            self._on_log_grown()
        if log > CHECKPOINT_LIMIT:
            # The worker's checkpoints cannot keep up (a long catch-up, a storm: writes during
            # each one keep the log from starting over): bound it here, inline. The write is
            # committed whatever happens to this.
            try:
                with self._checkpointing:  # after the worker's, if one runs (a few ms)
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                logger.warning("cannot checkpoint crash store %s: %s", self.path, exc)

    def _read(self, sql: str, args: Iterable[object] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"crash store {self.path}: {exc}") from exc

    # ---- reads ----------------------------------------------------------------------------------

    def get(self, crash_id: str) -> Crash | None:
        """One crash, or None."""
        rows = self._read("SELECT record FROM crashes WHERE id=?", (crash_id,))
        return decode(rows[0][0]) if rows else None

    def groups(self) -> dict[str, tuple[int, int]]:
        """Per grouping key: how many crashes are stored and the first one's timestamp."""
        rows = self._read(
            "SELECT grouping, count(*), min(timestamp) FROM crashes GROUP BY grouping"
        )
        return {str(key): (int(n), int(first)) for key, n, first in rows}

    def ids(self) -> set[str]:
        """The id of every stored crash."""
        return {i for (i,) in self._read("SELECT id FROM crashes")}

    def latest_bursts(self) -> list[BurstMember]:
        """What :meth:`LoopTracker.restore` needs to reopen bursts: the members (head and
        folded crashes) of each grouping key's latest burst whose head is not dismissed — the
        one with the newest crash, ties to the larger head id, as ``restore`` chooses.

        Chosen in SQL from the covering and head indexes: a start with 10,000 stored crashes
        builds a handful of members, not 10,000 (39 ms of a restart, now ~11)."""
        rows = self._read(_LATEST_BURSTS)
        # SQLite gives the two comparisons as 0/1: bool() keeps the member's types true.
        return [
            BurstMember(i, key, ts, head, bool(loop), bool(gone))
            for i, key, ts, head, loop, gone in rows
        ]

    def count_shown(self) -> int:
        """Stored crashes that are not dismissed."""
        return int(self._read("SELECT count(*) FROM crashes WHERE state != 'dismissed'")[0][0])

    def shown_ids(self, loop_head: str | None = None) -> list[str]:
        """Ids of the crashes not dismissed (only those folded into ``loop_head``, if given)."""
        if loop_head is None:
            rows = self._read("SELECT id FROM crashes WHERE state != 'dismissed'")
        else:
            rows = self._read(
                "SELECT id FROM crashes WHERE loop_head=? AND state != 'dismissed'", (loop_head,)
            )
        return [str(r[0]) for r in rows]

    @staticmethod
    def _where(flt: CrashFilter) -> tuple[str, list[object]]:
        """``flt`` as SQL (the same selection and order as :func:`newest_first`)."""
        clauses: list[str] = []
        args: list[object] = []
        low, high = _SQLITE_INT
        if flt.since is not None:
            clauses.append("timestamp >= ?")
            args.append(min(max(flt.since, low), high))
        if flt.until is not None:
            clauses.append("timestamp <= ?")
            args.append(min(max(flt.until, low), high))
        if flt.exe is not None:
            clauses.append("(exe = ? OR exe_base = ?)")
            args += [flt.exe, flt.exe]
        if flt.machine is not None:
            clauses.append("(machine = ? OR host = ?)")
            args += [flt.machine, flt.machine]
        if flt.state is not None:
            clauses.append("state = ?")
            args.append(flt.state.value)
        if not flt.include_dismissed:
            clauses.append("state != 'dismissed'")
        # The id last: a total order, as newest_first's, so that pages do not overlap on ties.
        sql = (" WHERE " + " AND ".join(clauses) if clauses else "") + (
            " ORDER BY timestamp DESC, realtime DESC, id DESC"
        )
        if flt.limit is not None or flt.offset:
            sql += " LIMIT ?"  # SQLite has no OFFSET without LIMIT: -1 is none
            args.append(flt.limit if flt.limit is not None else -1)
        if flt.offset:
            sql += " OFFSET ?"
            args.append(flt.offset)
        return sql, args

    def crashes(self, flt: CrashFilter) -> list[Crash]:
        """The stored crashes matching ``flt``, newest first (as :func:`newest_first`)."""
        where, args = self._where(flt)
        found = []
        for crash_id, record in self._read(f"SELECT id, record FROM crashes{where}", args):
            try:
                found.append(decode(record))
            except StoreError as exc:
                logger.warning("skipping stored crash %s: %s", crash_id, exc)
        return found

    def listing(self, flt: CrashFilter) -> list[Listed]:
        """The list records of the crashes matching ``flt``, newest first; records not rendered
        yet (a new renderer, an upgraded store) are rendered and stored now.

        Raises:
            StoreError: no renderer was set and a record is not rendered.
        """
        where, args = self._where(flt)
        rows = self._read(f"SELECT id, timestamp, realtime, listing FROM crashes{where}", args)
        missing = [str(i) for i, _, _, listing in rows if listing is None]
        rendered: dict[str, bytes] = {}
        if missing:
            if self._render is None:
                raise StoreError("list records asked for, but the store has no renderer")
            for crash_id in missing:
                crash = self.get(crash_id)
                if crash is not None:
                    rendered[crash_id] = self._render(crash)
            with self._tx() as db:
                db.executemany(
                    "UPDATE crashes SET listing=? WHERE id=?",
                    [(blob, i) for i, blob in rendered.items()],
                )
        return [
            Listed(str(i), ts, rt, listing if listing is not None else rendered[str(i)])
            for i, ts, rt, listing in rows
            if listing is not None or str(i) in rendered
        ]

    def cursor(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key='cursor'").fetchone()
        return str(row[0]) if row else None

    def positions(self) -> dict[str, str]:
        """Each machine's journal position (fleet mode: adapters/journal_fleet.py)."""
        rows = self._db.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ?",
            (_POSITION, _POSITION[:-1] + chr(ord(_POSITION[-1]) + 1)),
        ).fetchall()
        return {str(k).removeprefix(_POSITION): str(v) for k, v in rows}

    def unannounced(self) -> list[str]:
        """Crashes stored by a run that stopped before announcing them."""
        return [str(r[0]) for r in self._read("SELECT id FROM crashes WHERE announced=0")]

    def backtrace(self, crash_id: str) -> str | None:
        """The cached backtrace of a crash, or None."""
        rows = self._read("SELECT text FROM backtraces WHERE id=?", (crash_id,))
        return str(rows[0][0]) if rows else None

    # ---- writes ---------------------------------------------------------------------------------

    def _values(self, crash: Crash) -> tuple[object, ...]:
        """The row of a crash, in the order of :data:`_COLUMNS` without ``id`` and ``announced``."""
        return (
            crash.entry.timestamp,
            crash.signature,
            crash.state.value,
            encode(crash),
            crash.entry.realtime,
            crash.entry.exe,
            crash.entry.exe_basename,
            grouping(crash.entry),
            crash.loop_head,
            int(crash.loop),
            self._render(crash) if self._render is not None else None,
            crash.entry.machine_id,
            crash.entry.hostname,
        )

    def _update(self, db: sqlite3.Connection, crashes: Iterable[Crash]) -> None:
        db.executemany(
            f"UPDATE crashes SET {_UPDATE} WHERE id=?",
            [(*self._values(c), c.id) for c in crashes],
        )

    def update(self, crash: Crash) -> None:
        """Store the new version of a stored crash (nothing happens to one not stored)."""
        with self._tx() as db:
            self._update(db, [crash])

    def upsert(
        self,
        crashes: list[Crash],
        cursor: str | None,
        announced: bool = True,
        positions: Mapping[str, str] | None = None,
    ) -> None:
        """Insert or replace ``crashes`` (and move the cursor and the machines' ``positions``)
        in one transaction. New rows get ``announced``; a row already announced stays so."""
        with self._tx() as db:
            db.executemany(
                f"INSERT INTO crashes({_COLUMNS}) VALUES({', '.join('?' * 15)})"
                f" ON CONFLICT(id) DO UPDATE SET {_FROM_EXCLUDED},"
                " announced=max(announced, excluded.announced)",
                [(c.id, *self._values(c), int(announced)) for c in crashes],
            )
            if cursor is not None:
                self._put_cursor(db, cursor)
            self._put_positions(db, positions or {})

    def mark_announced(self, ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE crashes SET announced=1 WHERE id=?", [(i,) for i in ids])

    def save_backtrace(self, crash_id: str, text: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO backtraces(id, text) VALUES(?, ?)"
                " ON CONFLICT(id) DO UPDATE SET text=excluded.text",
                (crash_id, text),
            )

    def expire(self, before_us: int) -> list[Expired]:
        """Delete crashes with COREDUMP_TIMESTAMP before ``before_us``; returns them."""
        with self._tx() as db:
            gone = [
                Expired(str(i), str(key), state == "dismissed")
                for i, key, state in db.execute(
                    "SELECT id, grouping, state FROM crashes WHERE timestamp < ?", (before_us,)
                )
            ]
            db.execute(
                "DELETE FROM backtraces WHERE id IN (SELECT id FROM crashes WHERE timestamp < ?)",
                (before_us,),
            )
            db.execute("DELETE FROM crashes WHERE timestamp < ?", (before_us,))
        return gone

    def save_cursor(self, cursor: str | None, positions: Mapping[str, str] | None = None) -> None:
        with self._tx() as db:
            if cursor is not None:
                self._put_cursor(db, cursor)
            self._put_positions(db, positions or {})

    @staticmethod
    def _put_positions(db: sqlite3.Connection, positions: Mapping[str, str]) -> None:
        db.executemany(
            "INSERT INTO meta(key, value) VALUES(?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            [(_POSITION + k, v) for k, v in positions.items()],
        )

    @staticmethod
    def _put_cursor(db: sqlite3.Connection, cursor: str) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES('cursor', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (cursor,),
        )
