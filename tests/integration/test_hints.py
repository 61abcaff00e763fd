"""Crash hints (adapters/hints.py): a core or KCrash file arriving makes the journal source read
at once and briefly after, instead of waiting for journald's late notification (issue 16); and
nothing wakes the daemon while nothing arrives."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conftest import Daemon, RemoteJournal
from crashbroker.adapters.hints import HintWatcher, core_hint, kcrash_hint
from crashbroker.adapters.journal import HINT_INTERVAL_S, JournalBatch, JournalSource
from crashbroker.adapters.journal_fleet import FleetSource
from crashbroker.domain.cursor import CatchUp

BOOT = "0123456789abcdef0123456789abcdef"


async def quiet_source(rj: RemoteJournal) -> tuple[JournalSource, AsyncIterator[JournalBatch]]:
    """A source caught up on ``rj`` whose journal notifications never come (as journald's come
    ~250 ms late): only a hint makes it read again."""
    rj.append(rj.coredump())
    rj.wait_written(1)
    source = JournalSource(directory=rj.directory, catch_up=CatchUp.ALL)
    source.open()
    batches = source.batches()
    async with asyncio.timeout(10):
        while True:  # the catch-up, then the reopened reader's first (empty) read
            batch = await anext(batches)
            if batch.at_end and not batch.entries:
                break
    # The reader's own wake-up, taken away: journal-remote notifies at once, journald does not.
    asyncio.get_running_loop().remove_reader(source._reader.fileno())
    return source, batches


async def cancelled(task: asyncio.Future[Any]) -> None:
    """``task`` cancelled and awaited."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def closed(source: JournalSource, batches: AsyncIterator[JournalBatch]) -> None:
    await batches.aclose()  # type: ignore[attr-defined]
    source.close()


async def assert_quiet(batches: AsyncIterator[JournalBatch], seconds: float) -> None:
    """Nothing makes the pump yield a batch for ``seconds``."""
    pending = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(seconds)
    assert not pending.done()
    await cancelled(pending)


async def test_a_hint_reads_an_entry_whose_notification_never_comes(
    remote_journal: RemoteJournal,
) -> None:
    source, batches = await quiet_source(remote_journal)
    try:
        entry = remote_journal.coredump()
        pid = int(entry["COREDUMP_PID"])
        source.hint_window_s = 30  # this test asserts no time: the window only has to be long
        source.read_soon(pid)  # the core file arrived: the entry is logged after it
        first = await anext(batches)  # read at once: nothing yet
        assert first.entries == []
        remote_journal.append(entry)
        remote_journal.wait_written(2)
        async with asyncio.timeout(10):
            read: list[str] = []
            while not read:
                read = [e["COREDUMP_PID"] for e in (await anext(batches)).entries]
        assert read == [str(pid)]
        assert source.hint_reads >= 1  # found by a re-read, not by the hint's first read
        # The hinted entry was read: the re-reads stop, and nothing wakes the pump any more.
        reads = source.hint_reads
        await assert_quiet(batches, 20 * HINT_INTERVAL_S)
        assert source.hint_reads == reads
    finally:
        await closed(source, batches)


async def test_a_hinted_entry_the_reader_does_not_report_is_read_by_a_reopened_reader(
    remote_journal: RemoteJournal,
) -> None:
    """libsystemd 252, following a file being appended to, once reported the end with a new
    entry there, and kept doing so until the next crash (1 in 400 real crashes, seconds late).
    Here the reader is made to report the end: when the hinted crash's window ends unread, the
    source reads once more from a reader opened anew."""
    source, batches = await quiet_source(remote_journal)
    try:
        entry = remote_journal.coredump()
        pid = int(entry["COREDUMP_PID"])
        remote_journal.append(entry)
        remote_journal.wait_written(2)
        stale = source._reader
        stale._next = lambda *_: 0  # "at the end", whatever is there
        source.hint_window_s = 0.1
        source.read_soon(pid)
        async with asyncio.timeout(10):
            read: list[str] = []
            while not read:
                read = [e["COREDUMP_PID"] for e in (await anext(batches)).entries]
        assert read == [str(pid)]
        assert source.hint_reopens == 1 and source._reader is not stale
        # Read once: no more reopens, nothing wakes the pump.
        await assert_quiet(batches, 0.3)
        assert source.hint_reopens == 1
    finally:
        await closed(source, batches)


async def test_a_missed_crash_is_read_again_at_its_own_deadline_while_hints_go_on(
    remote_journal: RemoteJournal,
) -> None:
    """Other crashes' hints (a foreign service crashing every 30 ms) do not hold back the
    reopen for one whose entry the reader did not report: each hint has its own window."""
    source, batches = await quiet_source(remote_journal)
    source.hint_window_s = 0.1

    async def other_crashes() -> None:
        for other in range(3_000_000, 3_000_100):  # 3 s of hints, none of them ever logged
            source.read_soon(other)
            await asyncio.sleep(0.03)

    flood = asyncio.ensure_future(other_crashes())
    try:
        entry = remote_journal.coredump()
        pid = int(entry["COREDUMP_PID"])
        remote_journal.append(entry)
        remote_journal.wait_written(2)
        source._reader._next = lambda *_: 0  # "at the end", whatever is there
        source.read_soon(pid)
        read: list[str] = []
        while not read:
            read = [e["COREDUMP_PID"] for e in (await anext(batches)).entries]
        assert read == [str(pid)]
        assert not flood.done()  # read while the other hints still came
    finally:
        await cancelled(flood)
        await closed(source, batches)


async def test_fleet_mode_never_reopens_for_a_hint(remote_journal: RemoteJournal) -> None:
    """In fleet mode hints name this machine's crashes, while entries come by upload: an
    unread hinted crash is forgotten at its window's end, without reopening the directory."""
    remote_journal.append(remote_journal.coredump())
    remote_journal.wait_written(1)
    source = FleetSource(directory=remote_journal.directory, catch_up=CatchUp.ALL)
    source.open()
    batches = source.batches()
    try:
        async with asyncio.timeout(10):
            while True:
                batch = await anext(batches)
                if batch.at_end and not batch.entries:
                    break
        source.hint_window_s = 0.05
        pump = asyncio.ensure_future(_drain(batches))
        source.read_soon(4_000_000)
        assert "4000000" in source._hinted  # taken, with its window
        await asyncio.sleep(0.3)
        assert not pump.done()
        await cancelled(pump)
        assert source.hint_reopens == 0 and not source._hinted  # forgotten, no reopen
    finally:
        await closed(source, batches)


async def test_a_hint_without_a_pid_rereads_only_within_its_window(
    remote_journal: RemoteJournal,
) -> None:
    source, batches = await quiet_source(remote_journal)
    pump = asyncio.ensure_future(_drain(batches))
    try:
        source.hint_window_s = 0.1
        source.read_soon()
        await asyncio.sleep(0.5)
        reads = source.hint_reads
        # Timers never fire early: at most one re-read per interval of the window.
        assert 1 <= reads <= round(0.1 / HINT_INTERVAL_S) + 1
        await asyncio.sleep(0.3)
        assert source.hint_reads == reads  # the window closed: quiet again
    finally:
        await cancelled(pump)
        await closed(source, batches)


async def _drain(batches: AsyncIterator[JournalBatch]) -> None:
    async for _ in batches:
        pass


def test_hint_names() -> None:
    assert core_hint(f"core.sleep.1000.{BOOT}.4242.1764500000000000.zst") == 4242
    assert core_hint(f"core.a\\x2eb.0.{BOOT}.7.1764500000000000") == 7
    assert core_hint(f".#core.sleep.1000.{BOOT}.4242.1764500000000000.zstab12") is None
    assert core_hint("core") is None
    assert kcrash_hint(f"kronometer.{BOOT}.77.ini") == 77
    assert kcrash_hint("77.ini") == 77
    assert kcrash_hint(".77.ini.tmp") is None
    assert kcrash_hint("notes.txt") is None


async def test_the_watcher_hints_final_core_names_and_kcrash_files(tmp_path: Path) -> None:
    cores = tmp_path / "coredump"
    cores.mkdir()
    kcrash = tmp_path / "cache" / "kcrash-metadata"  # made by KCrash at its first crash
    kcrash.parent.mkdir()
    got: list[int | None] = []
    changed = asyncio.Event()

    def on_hint(pid: int | None) -> None:
        got.append(pid)
        changed.set()

    async def until(n: int) -> None:
        async with asyncio.timeout(10):
            while len(got) < n:
                changed.clear()
                await changed.wait()

    watcher = HintWatcher(on_hint, core_dir=cores, kcrash_dir=kcrash)
    watcher.open()
    task = asyncio.ensure_future(watcher.run())
    try:
        # systemd-coredump: a temporary ".#core…" written, then renamed to its final name.
        temp = cores / f".#core.sleep.1000.{BOOT}.4242.1764500000000000.zstab12cd"
        temp.write_bytes(b"core")
        (cores / "unrelated").write_bytes(b"")
        temp.rename(cores / f"core.sleep.1000.{BOOT}.4242.1764500000000000.zst")
        await until(1)
        assert got == [4242]
        kcrash.mkdir()
        await until(2)
        (kcrash / f"kronometer.{BOOT}.77.ini").write_text("[KCrash]\n")
        await until(4)  # created, then closed after writing
        assert got == [4242, None, 77, 77]
        assert watcher.hints == 4
    finally:
        await cancelled(task)
        watcher.close()


def _switches(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far: each is a wake-up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


async def test_the_daemon_reads_on_a_hint_then_idles_without_wakeups(
    daemon: Daemon, remote_journal: RemoteJournal, tmp_path: Path
) -> None:
    cores = tmp_path / "coredump"
    cores.mkdir()
    remote_journal.append(remote_journal.coredump())
    daemon.args = [f"--journal-dir={remote_journal.directory}", f"--hint-core-dir={cores}"]
    await daemon.start()
    await daemon.caught_up()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    await asyncio.sleep(0.5)  # the start's last work done
    before = _switches(pid)
    await asyncio.sleep(3)
    assert _switches(pid) == before, "the daemon woke while idle"

    (cores / f"core.sleep.1000.{BOOT}.{os.getpid()}.1764500000000000.zst").write_bytes(b"")
    async with asyncio.timeout(10):
        while (await daemon.stats())["hints"] < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(1)  # the hint's window (0.3 s) is over
    before = _switches(pid)
    await asyncio.sleep(3)
    assert _switches(pid) == before, "the daemon kept waking after a hint"
