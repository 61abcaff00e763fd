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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from crashbroker.domain.errors import StoreError
from crashbroker.domain.model import CoredumpEntry, Crash, CrashState, KCrashLib

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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

    Every statement is short (WAL mode, no fsync per commit), so calls run on the event loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open crash store {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a killed process (not a power cut) without an fsync per commit.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(crashes)")}
            if "announced" not in columns:  # a store from before announced-tracking
                self._db.execute(
                    "ALTER TABLE crashes ADD COLUMN announced INTEGER NOT NULL DEFAULT 1"
                )
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES('schema', ?)", (str(SCHEMA_VERSION),)
            )
            (verdict,) = self._db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise CorruptStore(f"crash store {path} is damaged: {exc}") from exc
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot open crash store {path}: {exc}") from exc

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

    def load(self) -> list[Crash]:
        """All stored crashes; unreadable rows are logged and skipped."""
        crashes = []
        try:
            rows = self._db.execute("SELECT id, record FROM crashes").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"crash store {self.path}: {exc}") from exc
        for crash_id, record in rows:
            try:
                crashes.append(decode(record))
            except StoreError as exc:
                logger.warning("skipping stored crash %s: %s", crash_id, exc)
        return crashes

    def cursor(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key='cursor'").fetchone()
        return str(row[0]) if row else None

    def add(self, crash: Crash, cursor: str | None, also: Crash | None = None) -> bool:
        """Insert a crash, update ``also`` (its burst's head) and move the cursor in one
        transaction.

        Returns:
            False when a crash with this id was already stored (nothing changes but the cursor).
        """
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO crashes(id, timestamp, signature, state, record)"
                " VALUES(?, ?, ?, ?, ?)",
                (
                    crash.id,
                    crash.entry.timestamp,
                    crash.signature,
                    crash.state.value,
                    encode(crash),
                ),
            )
            added = cur.rowcount == 1
            if added and also is not None:
                self._update(db, also)
            if cursor is not None:
                self._put_cursor(db, cursor)
            return added

    def update(self, crash: Crash) -> None:
        with self._tx() as db:
            self._update(db, crash)

    @staticmethod
    def _update(db: sqlite3.Connection, crash: Crash) -> None:
        db.execute(
            "UPDATE crashes SET state=?, signature=?, record=? WHERE id=?",
            (crash.state.value, crash.signature, encode(crash), crash.id),
        )

    def upsert(self, crashes: list[Crash], cursor: str | None, announced: bool = True) -> None:
        """Insert or replace ``crashes`` (and move the cursor) in one transaction. New rows get
        ``announced``; a row already announced stays so."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO crashes(id, timestamp, signature, state, record, announced)"
                " VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " state=excluded.state, signature=excluded.signature, record=excluded.record,"
                " announced=max(announced, excluded.announced)",
                [
                    (
                        crash.id,
                        crash.entry.timestamp,
                        crash.signature,
                        crash.state.value,
                        encode(crash),
                        int(announced),
                    )
                    for crash in crashes
                ],
            )
            if cursor is not None:
                self._put_cursor(db, cursor)

    def mark_announced(self, ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE crashes SET announced=1 WHERE id=?", [(i,) for i in ids])

    def unannounced(self) -> list[str]:
        """Crashes stored by a run that stopped before announcing them."""
        try:
            rows = self._db.execute("SELECT id FROM crashes WHERE announced=0").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"crash store {self.path}: {exc}") from exc
        return [str(r[0]) for r in rows]

    def backtrace(self, crash_id: str) -> str | None:
        """The cached backtrace of a crash, or None."""
        try:
            row = self._db.execute("SELECT text FROM backtraces WHERE id=?", (crash_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"crash store {self.path}: {exc}") from exc
        return str(row[0]) if row else None

    def save_backtrace(self, crash_id: str, text: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO backtraces(id, text) VALUES(?, ?)"
                " ON CONFLICT(id) DO UPDATE SET text=excluded.text",
                (crash_id, text),
            )

    def expire(self, before_us: int) -> list[str]:
        """Delete crashes with COREDUMP_TIMESTAMP before ``before_us``; returns their ids."""
        with self._tx() as db:
            ids = [
                str(r[0])
                for r in db.execute("SELECT id FROM crashes WHERE timestamp < ?", (before_us,))
            ]
            db.execute(
                "DELETE FROM backtraces WHERE id IN (SELECT id FROM crashes WHERE timestamp < ?)",
                (before_us,),
            )
            db.execute("DELETE FROM crashes WHERE timestamp < ?", (before_us,))
        return ids

    def save_cursor(self, cursor: str) -> None:
        with self._tx() as db:
            self._put_cursor(db, cursor)

    @staticmethod
    def _put_cursor(db: sqlite3.Connection, cursor: str) -> None:
        db.execute(
            "INSERT INTO meta(key, value) VALUES('cursor', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (cursor,),
        )
