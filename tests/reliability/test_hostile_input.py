"""Hostile metadata files and hostile D-Bus callers against the real daemon: nothing blocks the
loop, crashes the daemon, leaks a file from outside the metadata directory, deletes anything but a
regular file inside it, or changes state on a bad call."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from conftest import Daemon, RemoteJournal, bus_call, variant_filter, write_ini, written_at_crash
from crashbroker.adapters.dbus_names import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH, error_name


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def start(daemon: Daemon, rj: RemoteJournal) -> None:
    daemon.args = [f"--journal-dir={rj.directory}", "--grace-ms=300"]
    await daemon.start()
    await daemon.caught_up()


async def round_trip_ms(daemon: Daemon) -> float:
    t = time.monotonic()
    await daemon.stats()
    return (time.monotonic() - t) * 1000


async def test_hostile_metadata_files_are_refused_without_blocking_or_leaking(
    daemon: Daemon, remote_journal: RemoteJournal, tmp_path: Path
):
    await start(daemon, remote_journal)
    kdir = daemon.kcrash_dir
    secret = write_ini(tmp_path / "secret.ini", "[KCrash]\nexe=/usr/bin/kronometer\nappname=LEAK\n")
    cases: dict[str, object] = {}

    def entry() -> tuple[dict[str, bytes], int]:
        e = remote_journal.coredump("kronometer-sigsegv.export")
        return e, int(e["COREDUMP_PID"])

    e_huge, p = entry()
    with (kdir / f"{p}.ini").open("wb") as f:  # 100 MB, sparse: must not be read whole
        f.write(b"[KCrash]\nexe=/usr/bin/kronometer\nappname=huge\n")
        f.truncate(100 * 1024 * 1024)
    cases["huge"] = e_huge
    e_bin, p = entry()
    (kdir / f"{p}.ini").write_bytes(os.urandom(4096))
    cases["binary"] = e_bin
    e_utf, p = entry()
    (kdir / f"{p}.ini").write_bytes(
        b"[KCrash]\nexe=/usr/bin/kronometer\nappname=\xff\xfe\xc3(bad\nprogramname=Ok\n"
    )
    written_at_crash(kdir / f"{p}.ini", e_utf)
    cases["utf8"] = e_utf
    e_dup, p = entry()
    write_ini(
        kdir / f"{p}.ini",
        f"[KCrash]\nexe=/usr/bin/kronometer\nappname=first\nappname=second\npid={p}\n",
    )
    written_at_crash(kdir / f"{p}.ini", e_dup)
    cases["dup"] = e_dup
    e_dir, p = entry()
    (kdir / f"{p}.ini").mkdir()
    cases["dir"] = e_dir
    e_other, p = entry()
    write_ini(kdir / f"{p}.ini", "[KCrash]\nexe=/usr/bin/firefox\nappname=firefox\n")
    cases["other-exe"] = e_other
    e_link, p = entry()
    (kdir / f"{p}.ini").symlink_to(secret)
    cases["link"] = e_link
    e_fifo, p = entry()
    os.mkfifo(kdir / f"{p}.ini")
    cases["fifo"] = e_fifo
    e_ok, p = entry()  # the control: a good file next to the hostile ones is used
    write_ini(kdir / f"{p}.ini", "[KCrash]\nexe=/usr/bin/kronometer\nappname=good\n")
    written_at_crash(kdir / f"{p}.ini", e_ok)
    cases["good"] = e_ok

    # A file replaced over and over while the daemon reads: whatever it reads, it copes.
    e_swap, p = entry()
    swap = kdir / f"{p}.ini"
    stop = threading.Event()

    def swapper() -> None:
        n = 0
        while not stop.is_set():
            tmp = kdir / f".swap{n % 2}"
            tmp.write_text(f"[KCrash]\nexe=/usr/bin/kronometer\nappname=v{n}\n" + "x=y\n" * n)
            os.replace(tmp, swap)
            n += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        rss_before = rss_kib(daemon.proc.pid)  # type: ignore[union-attr]
        remote_journal.append(*cases.values(), e_swap)
        got = {k: await daemon.client.crash(int(e["COREDUMP_PID"])) for k, e in cases.items()}
        await daemon.client.crash(int(e_swap["COREDUMP_PID"]))
        assert await round_trip_ms(daemon) < 2000  # the loop answers while the FIFO sits there
    finally:
        stop.set()
        thread.join()
    assert got["good"]["kcrash"]["appname"] == "good"
    for bad in ("huge", "binary", "dir", "other-exe", "link", "fifo"):
        assert got[bad]["kcrash"] == {}, bad
    assert "LEAK" not in str(got)
    assert got["utf8"]["kcrash"]["programname"] == "Ok"
    assert "\ufffd" in got["utf8"]["kcrash"]["appname"]
    assert got["dup"]["kcrash"]["appname"] in ("first", "second")
    assert rss_kib(daemon.proc.pid) - rss_before < 20 * 1024  # type: ignore[union-attr]
    assert daemon.proc.returncode is None  # type: ignore[union-attr]

    # Dismiss removes only a regular file inside the directory: the link (and its target) stay.
    await daemon.call("Dismiss", "s", got["link"]["id"])
    assert (kdir / f"{cases['link']['COREDUMP_PID'].decode()}.ini").is_symlink()  # type: ignore[index]
    assert secret.exists()
    await daemon.call("Dismiss", "s", got["good"]["id"])
    assert not (kdir / f"{cases['good']['COREDUMP_PID'].decode()}.ini").exists()  # type: ignore[index]
    await daemon.call("Dismiss", "s", got["dir"]["id"])
    assert (kdir / f"{cases['dir']['COREDUMP_PID'].decode()}.ini").is_dir()  # type: ignore[index]


async def test_bad_dbus_calls_get_named_errors_and_change_nothing(
    daemon: Daemon, remote_journal: RemoteJournal
):
    entries = [remote_journal.coredump() for _ in range(3)]
    remote_journal.append(*entries)
    await start(daemon, remote_journal)
    for e in entries:
        await daemon.client.crash(int(e["COREDUMP_PID"]))
    before = await daemon.call("ListCrashes", "a{sv}", variant_filter(include_dismissed=True))
    crash_id = before[0]["id"]
    bus = daemon.client.bus
    huge_filter = {f"k{i}": Variant("s", "x") for i in range(100_000)}
    cases = [
        ("GetCrash", "s", ["nope"], "NoSuchCrash"),
        ("GetCrash", "s", ["../../etc/passwd"], "NoSuchCrash"),
        ("Dismiss", "s", ["x" * 10_000_000], "NoSuchCrash"),
        ("Claim", "ss", ["nope", "h"], "NoSuchCrash"),
        ("Claim", "ss", [crash_id, "h" * 100_000], "InvalidArgs"),
        ("GetBacktrace", "s", ["nope"], "NoSuchCrash"),
        ("ListCrashes", "a{sv}", [huge_filter], "InvalidArgs"),
        ("ListCrashes", "a{sv}", [{"limit": Variant("s", "ten")}], "InvalidArgs"),
        ("ListCrashes", "a{sv}", [{"since": Variant("as", ["a"])}], "InvalidArgs"),
        ("Expire", "t", [2**64 - 1], None),  # nothing that old: 0, no error
    ]
    for member, sig, body, err in cases:
        reply = await bus_call(bus, member, sig, body)
        if err is None:
            assert reply.message_type == MessageType.METHOD_RETURN, (member, reply.body)
            continue
        assert reply.message_type == MessageType.ERROR, member
        assert reply.error_name == error_name(err), (member, reply.error_name, reply.body)
        assert "Traceback" not in str(reply.body)
    # Wrong signatures never reach our code: dbus-fast answers with the standard error.
    for member, sig, body in [("GetCrash", "u", [1]), ("Claim", "s", ["x"]), ("Dismiss", "", [])]:
        reply = await bus_call(bus, member, sig, body)
        assert reply.message_type == MessageType.ERROR, member
        assert reply.error_name and "Traceback" not in str(reply.body)
    after = await daemon.call("ListCrashes", "a{sv}", variant_filter(include_dismissed=True))
    assert after == before
    assert daemon.proc.returncode is None  # type: ignore[union-attr]


async def test_concurrent_claims_from_many_connections_give_one_winner(
    daemon: Daemon, remote_journal: RemoteJournal
):
    entry = remote_journal.coredump()
    remote_journal.append(entry)
    await start(daemon, remote_journal)
    crash = await daemon.client.crash(int(entry["COREDUMP_PID"]))
    buses = [await MessageBus(bus_address=daemon.bus_address).connect() for _ in range(20)]
    try:
        replies = await asyncio.gather(
            *(
                b.call(
                    Message(
                        destination=BUS_NAME, path=OBJECT_PATH, interface=MANAGER_INTERFACE,
                        member="Claim", signature="ss", body=[crash["id"], f"handler-{i}"],
                    )
                )
                for i, b in enumerate(buses)
            )
        )  # fmt: skip
        wins = [r.body[0] for r in replies if r is not None]
        assert wins.count(True) == 1 and wins.count(False) == 19
        record = await daemon.call("GetCrash", "s", crash["id"])
        assert record["claimed_by"] == f"handler-{wins.index(True)}"
    finally:
        for b in buses:
            b.disconnect()
    # The claim was tied to the winner's connection: gone with it.
    await daemon.client.wait_for(
        lambda: (
            ("CrashUpdated", [crash["id"], {"state": "new", "claimed_by": ""}])
            in daemon.client.signals
        )
    )
