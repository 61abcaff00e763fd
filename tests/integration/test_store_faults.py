"""The store under faults: a full disk under the state directory, and a damaged database."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from conftest import Daemon, RemoteJournal, missing_rig, variant_filter


def mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        missing_rig(f"cannot mount a small tmpfs (needs root): {done.stderr.decode().strip()}")


def fill(directory: Path) -> Path:
    """Take every free byte of the file system of ``directory``."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.fixture
def small_state(daemon: Daemon):
    state = daemon.tmp / "state" / "crashbroker"
    mount_tmpfs(state, "2M")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


async def test_full_disk_publishes_live_and_stores_when_space_returns(
    daemon: Daemon, remote_journal: RemoteJournal, small_state: Path
):
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    first = remote_journal.coredump()
    remote_journal.append(first)
    await daemon.start()
    await daemon.client.crash(int(first["COREDUMP_PID"]))
    await daemon.caught_up()

    filler = fill(small_state)
    during = [remote_journal.coredump() for _ in range(20)]
    remote_journal.append(*during)
    for e in during:  # published live although they cannot be stored
        await daemon.client.crash(int(e["COREDUMP_PID"]))
    stats = await daemon.stats()
    assert stats["store_errors"] > 0
    assert "could not store" in daemon.log_text()
    # Not stored, still listed and shown: the store's rows merged with what only memory has.
    # Pages too, across what only memory has (the newest 20) and the store (the 21st).
    pages = ({"limit": 5, "offset": 3}, {"offset": 18}, {"full": True, "limit": 4, "offset": 17})
    expected = [int(e["COREDUMP_PID"]) for e in reversed([first, *during])]
    for flt in ({}, {"full": True}, {"limit": 5}, *pages):
        listed = await daemon.call("ListCrashes", "a{sv}", variant_filter(**flt))
        start = flt.get("offset", 0)
        assert [c["pid"] for c in listed] == expected[start : start + flt.get("limit", 21)]
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    newest = await daemon.call("GetCrash", "s", listed[0]["id"])
    assert newest["pid"] == int(during[-1]["COREDUMP_PID"])
    assert await daemon.get_property("CrashCount") == 21

    filler.unlink()  # space returns: the retry (every 5 s) stores them
    await asyncio.sleep(0)
    async with asyncio.timeout(30):
        while "crash store writable again" not in daemon.log_text():  # noqa: ASYNC110 (a file another process writes)
            await asyncio.sleep(0.2)
    await daemon.stop()
    daemon.client.signals.clear()
    await daemon.start()
    await daemon.caught_up()
    listed = await daemon.call("ListCrashes", "a{sv}", variant_filter(include_dismissed=True))
    assert len(listed) == 21
    assert daemon.client.detected() == []  # stored, so not announced again


async def test_damaged_database_is_moved_aside_and_rebuilt_from_the_journal(
    daemon: Daemon, remote_journal: RemoteJournal
):
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    entries = [remote_journal.coredump() for _ in range(3)]
    remote_journal.append(*entries)
    await daemon.start()
    ids = [(await daemon.client.crash(int(e["COREDUMP_PID"])))["id"] for e in entries]
    await daemon.call("Dismiss", "s", ids[0])
    await daemon.stop()

    db = daemon.tmp / "state" / "crashbroker" / "crashes.sqlite"
    with db.open("r+b") as f:
        f.write(b"this is not a database, it was overwritten")
    daemon.client.signals.clear()
    await daemon.start()
    for e in entries:
        crash = await daemon.client.crash(int(e["COREDUMP_PID"]))
        assert crash["past"] is True
    stats = await daemon.stats()
    assert (stats["store_rebuilt"], stats["states_salvaged"]) == (1, 0)
    log = daemon.log_text()
    assert "is damaged" in log and "rebuilding from the journal" in log
    assert "any state not salvaged are lost" in log  # the dismissal could not be salvaged
    aside = list(db.parent.glob("crashes.sqlite.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    # The new store works: the next restart announces nothing again.
    await daemon.stop()
    daemon.client.signals.clear()
    await daemon.start()
    await daemon.caught_up()
    assert daemon.client.detected() == []
    assert (await daemon.stats())["store_rebuilt"] == 0


async def test_salvaged_dismissal_stays_dismissed_after_a_rebuild(
    daemon: Daemon, remote_journal: RemoteJournal
):
    """A database whose check fails but whose rows still read: dismissed crashes stay quiet."""
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    entries = [remote_journal.coredump() for _ in range(2)]
    remote_journal.append(*entries)
    await daemon.start()
    ids = [(await daemon.client.crash(int(e["COREDUMP_PID"])))["id"] for e in entries]
    await daemon.call("Dismiss", "s", ids[0])
    await daemon.stop()

    db = daemon.tmp / "state" / "crashbroker" / "crashes.sqlite"
    # Overwrite the signature index's root page: the check fails, the table still reads.
    import sqlite3

    con = sqlite3.connect(db)
    (page_size,) = con.execute("PRAGMA page_size").fetchone()
    (root,) = con.execute(
        "SELECT rootpage FROM sqlite_master WHERE name='crashes_signature'"
    ).fetchone()
    con.close()
    assert not db.with_name(db.name + "-wal").exists()  # a clean stop checkpointed the WAL
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    daemon.client.signals.clear()
    await daemon.start()
    crash = await daemon.client.crash(int(entries[1]["COREDUMP_PID"]))
    await daemon.caught_up()
    assert crash["state"] == "new"
    assert [c["id"] for c in daemon.client.detected()] == [ids[1]]  # not the dismissed one
    stats = await daemon.stats()
    if stats["store_rebuilt"] == 0:
        pytest.fail(f"the damaged index went unnoticed:\n{daemon.log_text()}")
    assert stats["states_salvaged"] == 1
    listed = await daemon.call("ListCrashes", "a{sv}", variant_filter(include_dismissed=True))
    assert {c["id"]: c["state"] for c in listed} == {ids[0]: "dismissed", ids[1]: "new"}
    assert os.path.exists(db)
