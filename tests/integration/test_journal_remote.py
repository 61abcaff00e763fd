"""The daemon on a private dbus-daemon, following journal files written by systemd-journal-remote
from recorded real coredump entries (trusted ``_`` fields included) and synthesised variants."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from pathlib import Path

from dbus_fast import MessageType

from conftest import Daemon, RemoteJournal, variant_filter, write_ini, written_at_crash
from crashbroker.adapters.dbus_names import error_name
from crashbroker.adapters.store import CHECKPOINT_LIMIT

KF6_MAPS = b"7f0000000000-7f0000001000 r-xp 00000000 fe:01 42 /usr/lib/libKF6Crash.so.6.8.0\n"


async def start(daemon: Daemon, rj: RemoteJournal, *extra: str) -> None:
    """Start on the journal directory; entries appended after this are live (past=false)."""
    daemon.args = [f"--journal-dir={rj.directory}", "--grace-ms=300", *extra]
    await daemon.start()
    await daemon.caught_up()


async def test_replayed_real_entry_is_published(daemon: Daemon, remote_journal: RemoteJournal):
    await start(daemon, remote_journal)
    entry = remote_journal.coredump()
    remote_journal.append(entry)
    pid = int(entry["COREDUMP_PID"])
    crash = await daemon.client.crash(pid)
    assert crash["exe"] == "/usr/bin/sleep"
    assert crash["signal"] == 11
    assert crash["signal_name"] == "SIGSEGV"
    assert crash["boot_id"] == remote_journal.boot_id
    assert crash["kcrash"] == {}
    assert crash["past"] is False
    assert crash["journal_cursor"].startswith("s=")
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    assert [c["id"] for c in listed] == [crash["id"]]
    assert await daemon.call("GetCrash", "s", crash["id"]) == crash
    # Started as the scripts start it (crashbroker.entry): OpenSSL is never loaded, and the ids
    # (BLAKE2, from hashlib's built-in code then) are what OpenSSL's would be.
    assert daemon.proc is not None
    assert "libcrypto" not in Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    key = f"{remote_journal.boot_id}:{pid}:{entry['COREDUMP_TIMESTAMP'].decode()}"
    assert crash["id"] == "c" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


async def test_entry_without_exe_from_coredump_user_is_trusted(
    daemon: Daemon, remote_journal: RemoteJournal
):
    """Real entries can miss _EXE (journald lost the /proc race); _UID=systemd-coredump holds."""
    await start(daemon, remote_journal)
    entry = remote_journal.coredump("sleep-sigsegv-no-exe.export")
    assert "_EXE" not in entry
    remote_journal.append(entry)
    await daemon.client.crash(int(entry["COREDUMP_PID"]))


async def test_kcrash_v1_ini_is_correlated(daemon: Daemon, remote_journal: RemoteJournal):
    await start(daemon, remote_journal)
    entry = remote_journal.coredump("kronometer-sigsegv.export")
    pid = int(entry["COREDUMP_PID"])
    ini = (Path(__file__).parent.parent / "data" / "kronometer.ini").read_text()
    ini = "\n".join(f"pid={pid}" if line.startswith("pid=") else line for line in ini.split("\n"))
    written_at_crash(write_ini(daemon.kcrash_dir / f"{pid}.ini", ini), entry)
    remote_journal.append(entry)
    crash = await daemon.client.crash(pid)
    assert crash["kcrash"]["programname"] == "Kronometer"
    assert crash["kcrash"]["bugaddress"] == "submit@bugs.kde.org"
    assert crash["kcrash_source"] == "kcrash-v1"
    assert crash["app_name"] == "Kronometer"
    assert crash["bug_address"] == "submit@bugs.kde.org"


async def test_v1_ini_of_another_program_is_not_used(daemon: Daemon, remote_journal: RemoteJournal):
    """pid reuse / a hostile file: <pid>.ini whose exe= names another program is refused."""
    await start(daemon, remote_journal)
    entry = remote_journal.coredump("kronometer-sigsegv.export")
    pid = int(entry["COREDUMP_PID"])
    write_ini(daemon.kcrash_dir / f"{pid}.ini", f"[KCrash]\nexe=/usr/bin/evil\npid={pid}\n")
    remote_journal.append(entry)
    crash = await daemon.client.crash(pid)
    assert crash["kcrash"] == {}
    assert (daemon.kcrash_dir / f"{pid}.ini").exists()


async def test_kf6_v2_file_arriving_late_is_waited_for(
    daemon: Daemon, remote_journal: RemoteJournal
):
    """Journal entry first, metadata second: the crash waits (within grace) for the file."""
    daemon.args = [f"--journal-dir={remote_journal.directory}", "--grace-ms=20000"]
    await daemon.start()
    await daemon.caught_up()
    entry = remote_journal.coredump(
        COREDUMP_EXE="/usr/bin/kf6app", COREDUMP_COMM="kf6app", COREDUMP_PROC_MAPS=KF6_MAPS
    )
    pid = int(entry["COREDUMP_PID"])
    remote_journal.append(entry)
    # The daemon has looked once and found nothing; only then does the file appear.
    for _ in range(400):
        if (await daemon.stats())["lookups"] >= 1:
            break
        await asyncio.sleep(0.025)
    assert daemon.client.detected() == []
    name = f"kf6app.{remote_journal.boot_id}.{pid}.ini"
    write_ini(
        daemon.kcrash_dir / name,
        f"""
        [KCrashTags]
        tag1=value
        [KCrash]
        exe=/usr/bin/kf6app
        appname=kf6app
        signal=11
        pid={pid}
        exceptionwhat=line one\\nline two
        [KCrashComplete]
        Complete=1
        """,
    )
    crash = await daemon.client.crash(pid)
    assert crash["kcrash_complete"] is True
    assert crash["kcrash_source"] == "kcrash-v2"
    assert crash["kcrash"]["exceptionwhat"] == "line one\nline two"
    assert crash["kcrash_filled"] == []


async def test_incomplete_kf6_file_is_published_after_grace_with_gaps_filled(
    daemon: Daemon, remote_journal: RemoteJournal
):
    await start(daemon, remote_journal)
    entry = remote_journal.coredump(
        COREDUMP_EXE="/usr/bin/kf6app", COREDUMP_COMM="kf6app", COREDUMP_PROC_MAPS=KF6_MAPS
    )
    pid = int(entry["COREDUMP_PID"])
    write_ini(
        daemon.kcrash_dir / f"kf6app.{remote_journal.boot_id}.{pid}.ini",
        "[KCrash]\nexe=/usr/bin/kf6app\nappname=kf6app\n",
    )
    remote_journal.append(entry)
    crash = await daemon.client.crash(pid)
    assert crash["kcrash_complete"] is False
    assert crash["kcrash"]["signal"] == "11"
    assert crash["kcrash"]["pid"] == str(pid)
    assert sorted(crash["kcrash_filled"]) == ["pid", "signal"]
    assert (await daemon.stats())["lookups"] >= 2  # it did wait and look again


async def test_drkonqi_json_record_is_the_fallback(daemon: Daemon, remote_journal: RemoteJournal):
    """DrKonqi's launcher consumed the INI; its JSON record still has the kcrash keys."""
    await start(daemon, remote_journal)
    entry = remote_journal.coredump(
        COREDUMP_EXE="/usr/bin/kf6app", COREDUMP_COMM="kf6app", COREDUMP_PROC_MAPS=KF6_MAPS
    )
    pid, ts = int(entry["COREDUMP_PID"]), int(entry["COREDUMP_TIMESTAMP"])
    records = daemon.cache_home / "drkonqi" / "crashes"
    records.mkdir(parents=True)
    (records / f"kf6app.{remote_journal.boot_id}.{pid}.{ts}.ini").write_text(
        json.dumps(
            {
                "version": 2,
                "kcrash": {"exe": "/usr/bin/kf6app", "appname": "kf6app", "pid": str(pid)},
                "kcrash-complete": True,
                "drkonqi": {"PickedUp": True},
            }
        )
    )
    remote_journal.append(entry)
    crash = await daemon.client.crash(pid)
    assert crash["kcrash_source"] == "drkonqi"
    assert crash["kcrash"]["appname"] == "kf6app"


async def test_fifo_and_symlink_metadata_neither_block_nor_leak(
    daemon: Daemon, remote_journal: RemoteJournal, tmp_path: Path
):
    await start(daemon, remote_journal)
    secret = tmp_path / "secret.ini"
    write_ini(secret, "[KCrash]\nexe=/usr/bin/kronometer\nappname=LEAKED\n")
    e1 = remote_journal.coredump("kronometer-sigsegv.export")
    e2 = remote_journal.coredump("kronometer-sigsegv.export")
    p1, p2 = int(e1["COREDUMP_PID"]), int(e2["COREDUMP_PID"])
    os.mkfifo(daemon.kcrash_dir / f"{p1}.ini")  # a FIFO with no writer: open() must not block
    (daemon.kcrash_dir / f"{p2}.ini").symlink_to(secret)
    remote_journal.append(e1, e2)
    c1 = await daemon.client.crash(p1)
    c2 = await daemon.client.crash(p2)
    assert c1["kcrash"] == {}
    assert c2["kcrash"] == {}
    assert "refused" in daemon.log_text()


async def test_forged_entry_in_journal_is_dropped_and_counted(
    daemon: Daemon, remote_journal: RemoteJournal
):
    """Entries whose trusted fields name another program are never published."""
    await start(daemon, remote_journal)
    forged = remote_journal.coredump(_UID="1000", _EXE="/usr/bin/python3", _COMM="python3")
    forged_root = remote_journal.coredump(_UID="0", _EXE="/usr/bin/logger", _COMM="logger")
    real = remote_journal.coredump()
    remote_journal.append(forged, forged_root, real)
    await daemon.client.crash(int(real["COREDUMP_PID"]))
    assert [c["pid"] for c in daemon.client.detected()] == [int(real["COREDUMP_PID"])]
    assert (await daemon.stats())["forged"] == 2


async def test_other_users_crashes_only_with_all_users(
    daemon: Daemon, remote_journal: RemoteJournal
):
    other = remote_journal.coredump(COREDUMP_UID="4242")
    mine = remote_journal.coredump()
    remote_journal.append(other, mine)
    await start(daemon, remote_journal)
    await daemon.client.crash(int(mine["COREDUMP_PID"]))
    await daemon.caught_up()
    assert len(daemon.client.detected()) == 1
    assert (await daemon.stats())["other_user"] == 1
    await daemon.stop()

    daemon.args = [f"--journal-dir={remote_journal.directory}", "--all-users"]
    (daemon.tmp / "state").rename(daemon.tmp / "state.old")
    await daemon.start()
    crash = await daemon.client.crash(int(other["COREDUMP_PID"]))
    assert crash["uid"] == 4242


async def test_catch_up_marks_past_and_flips_caught_up(
    daemon: Daemon, remote_journal: RemoteJournal
):
    """More entries than one batch (256) exist before the first start."""
    entries = [remote_journal.coredump() for _ in range(600)]
    remote_journal.append(*entries)
    remote_journal.wait_written(600)
    await start(daemon, remote_journal)
    await daemon.caught_up()
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    assert len(listed) == 600
    assert all(c["past"] for c in listed)
    assert [c["timestamp"] for c in listed] == sorted(
        (c["timestamp"] for c in listed), reverse=True
    )
    live = remote_journal.coredump()
    remote_journal.append(live)
    crash = await daemon.client.crash(int(live["COREDUMP_PID"]))
    assert crash["past"] is False


async def test_restart_neither_loses_nor_repeats(daemon: Daemon, remote_journal: RemoteJournal):
    await start(daemon, remote_journal)
    first = remote_journal.coredump()
    remote_journal.append(first)
    c_first = await daemon.client.crash(int(first["COREDUMP_PID"]))
    assert await daemon.stop() == 0

    while_down = [remote_journal.coredump(), remote_journal.coredump()]
    remote_journal.append(*while_down)
    remote_journal.wait_written(3)
    daemon.client.signals.clear()
    await daemon.start()
    await daemon.caught_up()
    for e in while_down:
        crash = await daemon.client.crash(int(e["COREDUMP_PID"]))
        assert crash["past"] is True
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    assert sorted(c["id"] for c in listed) == sorted(
        [c_first["id"], *(c["id"] for c in daemon.client.detected())]
    )
    assert len(daemon.client.detected()) == 2  # the first crash was not announced again


async def test_kill_9_then_restart_loses_nothing_and_repeats_only_what_was_in_flight(
    daemon: Daemon, remote_journal: RemoteJournal
):
    """Killed right as the subscriber got the signals: the daemon may not yet have noted them
    as announced, so the next start may announce those again (same ids) — never lose them."""
    await start(daemon, remote_journal)
    entries = [remote_journal.coredump() for _ in range(50)]
    remote_journal.append(*entries)
    await daemon.client.wait_for(lambda: len(daemon.client.detected()) == 50)
    ids = {c["id"] for c in daemon.client.detected()}
    assert await daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    daemon.client.signals.clear()
    await daemon.start()
    await daemon.caught_up()
    again = [c["id"] for c in daemon.client.detected()]
    assert set(again) <= ids and len(again) == len(set(again))
    assert len(await daemon.call("ListCrashes", "a{sv}", {})) == 50
    # Once noted, a restart (clean or not) repeats nothing.
    await daemon.stop()
    daemon.client.signals.clear()
    await daemon.start()
    await daemon.caught_up()
    assert daemon.client.detected() == []


async def test_claim_dismiss_and_named_errors(daemon: Daemon, remote_journal: RemoteJournal):
    await start(daemon, remote_journal)
    entry = remote_journal.coredump("kronometer-sigsegv.export")
    pid = int(entry["COREDUMP_PID"])
    ini = write_ini(
        daemon.kcrash_dir / f"{pid}.ini", f"[KCrash]\nexe=/usr/bin/kronometer\npid={pid}\n"
    )
    written_at_crash(ini, entry)
    remote_journal.append(entry)
    crash_id = (await daemon.client.crash(pid))["id"]

    assert await daemon.call("Claim", "ss", crash_id, "test-launcher") is True
    assert await daemon.call("Claim", "ss", crash_id, "other") is False
    updated = await daemon.client.wait_for(
        lambda: [b for n, b in daemon.client.signals if n == "CrashUpdated"]
    )
    assert updated[0] == [crash_id, {"state": "claimed", "claimed_by": "test-launcher"}]

    await daemon.call("Dismiss", "s", crash_id)
    await daemon.client.wait_for(lambda: ("CrashRemoved", [crash_id]) in daemon.client.signals)
    assert not ini.exists()
    assert await daemon.call("ListCrashes", "a{sv}", {}) == []
    dismissed = await daemon.call("ListCrashes", "a{sv}", variant_filter(include_dismissed=True))
    assert [c["state"] for c in dismissed] == ["dismissed"]

    bus = daemon.client.bus
    from conftest import bus_call

    cases = [
        ("GetCrash", "s", ["nope"], "NoSuchCrash"),
        ("Dismiss", "s", ["nope"], "NoSuchCrash"),
        ("Claim", "ss", [crash_id, ""], "InvalidArgs"),
        ("ListCrashes", "a{sv}", [variant_filter(bogus=True)], "InvalidArgs"),
        ("ListCrashes", "a{sv}", [variant_filter(limit=0)], "InvalidArgs"),
        ("ListCrashes", "a{sv}", [variant_filter(state="weird")], "InvalidArgs"),
        ("ListCrashes", "a{sv}", [variant_filter(exe=7)], "InvalidArgs"),
        ("GetBacktrace", "s", ["nope"], "NoSuchCrash"),
        ("RequestBacktrace", "s", ["nope"], "NoSuchCrash"),
        ("GetBacktrace", "s", [crash_id], "NotReady"),  # none requested (the run would: NoCore)
    ]
    for member, sig, body, err in cases:
        reply = await bus_call(bus, member, sig, body)
        assert reply.message_type == MessageType.ERROR, member
        assert reply.error_name == error_name(err), (member, reply.error_name, reply.body)
        assert "Traceback" not in reply.body[0]


async def test_filters(daemon: Daemon, remote_journal: RemoteJournal):
    sleeps = [remote_journal.coredump() for _ in range(3)]
    krono = remote_journal.coredump("kronometer-sigsegv.export")
    remote_journal.append(*sleeps, krono)
    await start(daemon, remote_journal)
    await daemon.client.wait_for(lambda: len(daemon.client.detected()) == 4)
    by_exe = await daemon.call("ListCrashes", "a{sv}", variant_filter(exe="kronometer"))
    assert [c["pid"] for c in by_exe] == [int(krono["COREDUMP_PID"])]
    newest_two = await daemon.call("ListCrashes", "a{sv}", variant_filter(limit=2))
    assert [c["pid"] for c in newest_two] == [
        int(krono["COREDUMP_PID"]),
        int(sleeps[2]["COREDUMP_PID"]),
    ]
    since = int(sleeps[1]["COREDUMP_TIMESTAMP"])
    recent = await daemon.call("ListCrashes", "a{sv}", variant_filter(since=since))
    assert len(recent) == 3
    assert (await daemon.call("ListCrashes", "a{sv}", {}))[0]["occurrences"] == 1
    assert max(c["occurrences"] for c in await daemon.call("ListCrashes", "a{sv}", {})) == 3


async def test_new_journal_file_in_directory_is_followed(
    daemon: Daemon, remote_journal: RemoteJournal
):
    """journal-remote rotating (or a second machine's file appearing) in --journal-dir."""
    await start(daemon, remote_journal)
    first = remote_journal.coredump()
    remote_journal.append(first)
    await daemon.client.crash(int(first["COREDUMP_PID"]))
    second_writer = RemoteJournal(remote_journal.directory, name="second")
    try:
        entry = remote_journal.coredump()
        second_writer.append(entry)
        crash = await daemon.client.crash(int(entry["COREDUMP_PID"]))
        assert crash["past"] is False
    finally:
        second_writer.close()


async def test_expire_forgets_old_crashes(daemon: Daemon, remote_journal: RemoteJournal):
    now_us = int(time.time() * 1_000_000)
    old = remote_journal.coredump(COREDUMP_TIMESTAMP=str(now_us - 10 * 86400 * 1_000_000))
    new = remote_journal.coredump(COREDUMP_TIMESTAMP=str(now_us - 60 * 1_000_000))
    remote_journal.append(old, new)
    await start(daemon, remote_journal)
    old_id = (await daemon.client.crash(int(old["COREDUMP_PID"])))["id"]
    new_id = (await daemon.client.crash(int(new["COREDUMP_PID"])))["id"]
    dismissed = remote_journal.coredump(COREDUMP_TIMESTAMP=str(now_us - 9 * 86400 * 1_000_000))
    remote_journal.append(dismissed)
    dismissed_id = (await daemon.client.crash(int(dismissed["COREDUMP_PID"])))["id"]
    await daemon.call("Dismiss", "s", dismissed_id)
    assert await daemon.get_property("CrashCount") == 2
    assert await daemon.call("Expire", "t", 86400) == 2
    assert await daemon.get_property("CrashCount") == 1
    await daemon.client.wait_for(lambda: ("CrashRemoved", [old_id]) in daemon.client.signals)
    listed = await daemon.call("ListCrashes", "a{sv}", variant_filter(include_dismissed=True))
    assert [c["id"] for c in listed] == [new_id]
    await daemon.stop()
    daemon.client.signals.clear()
    await daemon.start()  # the row is gone from the store too, and is not re-read as new
    await daemon.caught_up()
    listed = await daemon.call("ListCrashes", "a{sv}", variant_filter(include_dismissed=True))
    assert [c["id"] for c in listed] == [new_id]
    assert await daemon.get_property("CrashCount") == 1
    stats = await daemon.stats()
    assert stats["indexed"] == 1
    assert 0 < stats["catch_up_us"] < 60_000_000


async def test_list_records_and_full_records(daemon: Daemon, remote_journal: RemoteJournal):
    """ListCrashes gives the list keys (served from records marshalled once), ``full`` and
    GetCrash every key; a crash found while catching up is announced with its list record."""
    from crashbroker.adapters.dbus_record import LIST_KEYS, RECORD_KEYS

    before = remote_journal.coredump()
    remote_journal.append(before)
    await start(daemon, remote_journal)
    past = await daemon.client.wait_for(
        lambda: [c for c in daemon.client.detected() if c["pid"] == int(before["COREDUMP_PID"])]
    )
    assert set(past[0]) == set(LIST_KEYS)
    assert past[0]["past"] is True
    live = remote_journal.coredump("kronometer-sigsegv.export")
    remote_journal.append(live)
    detected = await daemon.client.crash(int(live["COREDUMP_PID"]))
    assert set(detected) == set(RECORD_KEYS)  # a live crash: the whole record
    for _ in range(2):  # the second answer comes from the cached bytes
        listed = await daemon.call("ListCrashes", "a{sv}", {})
        full = await daemon.call("ListCrashes", "a{sv}", variant_filter(full=True))
        assert (
            [c["id"] for c in listed]
            == [c["id"] for c in full]
            == [
                detected["id"],
                past[0]["id"],
            ]
        )
        for short, whole in zip(listed, full, strict=True):
            assert list(short) == list(LIST_KEYS)
            assert short == {k: whole[k] for k in LIST_KEYS}
            assert whole == await daemon.call("GetCrash", "s", whole["id"])
    # A change (claim) replaces the cached bytes of that crash.
    assert await daemon.call("Claim", "ss", detected["id"], "test") is True
    listed = await daemon.call("ListCrashes", "a{sv}", variant_filter(limit=1))
    assert (listed[0]["state"], listed[0]["claimed_by"]) == ("claimed", "test")
    empty = await daemon.call("ListCrashes", "a{sv}", variant_filter(exe="/nothing"))
    assert empty == []


async def test_restart_reads_only_what_is_new_in_a_directory_of_several_files(
    daemon: Daemon, remote_journal: RemoteJournal
):
    """Entries of two journal-remote files share a boot id and have no monotonic time: after the
    catch-up the reader reopens at the last entry without going back to the others' heads (it
    did: every start read the whole journal again)."""
    old = [remote_journal.coredump() for _ in range(30)]
    remote_journal.append(*old)
    remote_journal.wait_written(30)
    await start(daemon, remote_journal)
    await daemon.stop()

    extra = RemoteJournal(remote_journal.directory, "extra")
    extra._pid, extra._ts = remote_journal._pid + 1000, remote_journal._ts + 10_000_000
    new = [extra.coredump() for _ in range(3)]
    extra.append(*new)
    extra.close()
    daemon.client.signals.clear()
    await daemon.start()
    await daemon.caught_up()
    for e in new:
        await daemon.client.crash(int(e["COREDUMP_PID"]))
    await asyncio.sleep(1)  # the reopen after the catch-up, and anything it would read again
    stats = await daemon.stats()
    assert (stats["entries"], stats["already_known"], stats["published"]) == (3, 0, 3)

    # Started again, its stored cursor is in the other file now: nothing is read again.
    await daemon.stop()
    await daemon.start()
    await daemon.caught_up()
    await asyncio.sleep(1)
    stats = await daemon.stats()
    assert (stats["entries"], stats["already_known"]) == (0, 0)


async def test_the_write_ahead_log_is_checkpointed_by_the_worker(
    daemon: Daemon, remote_journal: RemoteJournal
):
    """Past CHECKPOINT_BYTES of log the daemon's worker thread checkpoints (no commit before a
    CrashDetected waits for it); the database file grows while the log stays bounded."""
    await start(daemon, remote_journal, "--grace-ms=0")
    db = daemon.tmp / "state" / "crashbroker" / "crashes.sqlite"
    empty = db.stat().st_size
    # ~15 KB rows: 600 of them log ~9 MB, over CHECKPOINT_BYTES, under the inline limit.
    big = {"COREDUMP_CMDLINE": "kate " + "x" * 4000, "COREDUMP_HOSTNAME": "h" * 4000}
    entries = [remote_journal.coredump(**big) for _ in range(600)]
    for k in range(0, 600, 50):
        remote_journal.append(*entries[k : k + 50])
        await daemon.client.crash(int(entries[k + 49]["COREDUMP_PID"]))
    stats = await daemon.stats()
    assert stats["published"] == 600
    assert stats["checkpoints"] >= 1, daemon.log_text()
    # Copied frames reached the database file. (Not all 9 MB: the log holds each page once per
    # commit that changed it, the file once.)
    assert db.stat().st_size > empty
    assert Path(f"{db}-wal").stat().st_size < CHECKPOINT_LIMIT
