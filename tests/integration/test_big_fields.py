"""Entries with multi-MB fields (issue 14, item 4): what a batch holds is bounded, and the fields
that decide a crash are still read whole enough (KCrash in maps or stack trace, repeated fields).

Before the fix a batch kept every field of every entry: 64 entries with 4 MB
``COREDUMP_PROC_MAPS`` and ``COREDUMP_PROC_MOUNTINFO`` peaked at ~540 MB of RSS."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import export_format
from conftest import Daemon, RemoteJournal
from crashbroker.adapters.journal import USED_FIELDS, kcrash_excerpt
from crashbroker.domain.entry import REPEATED, TrustPolicy, classify, core_to_check, kcrash_lib_from
from crashbroker.domain.model import KCrashLib

MIB = 1 << 20
KF5_MAPS_LINE = (
    b"7f1c2d000000-7f1c2d001000 r-xp 00000000 fe:01 42 /usr/lib/libKF5Crash.so.5.103.0\n"
)
KF5_FRAME = (
    b"#2  0x00007ffaf339283d _ZN6KCrash19defaultCrashHandlerEi (libKF5Crash.so.5 + 0x583d)\n"
)


BIG = export_format.maps_text(4 * MIB)


def big_entry(rj: RemoteJournal, *, maps_tail: bytes = b"", **overrides: Any) -> dict[str, bytes]:
    """A coredump entry with 4 MB maps and mountinfo of its own (journald would store a copy
    shared between entries only once)."""
    entry = rj.coredump(**overrides)
    head = entry["COREDUMP_PID"] + b"\n"
    if "COREDUMP_PROC_MAPS" not in overrides:
        entry["COREDUMP_PROC_MAPS"] = head + BIG + maps_tail
    entry["COREDUMP_PROC_MOUNTINFO"] = head + BIG
    return entry


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def published_after(daemon: Daemon, pid: int) -> int:
    """Publish ``pid``'s crash; the metadata lookups it took (1: at once; more: it waited)."""
    before = (await daemon.stats())["lookups"]
    crash = await daemon.client.crash(pid)
    assert crash["pid"] == pid
    return (await daemon.stats())["lookups"] - before


async def test_entries_with_4_mb_fields_keep_the_daemon_small_and_are_still_judged_whole(
    daemon: Daemon, remote_journal: RemoteJournal
) -> None:
    rj = remote_journal
    backlog = [big_entry(rj, maps_tail=KF5_MAPS_LINE) for _ in range(64)]
    for i in range(0, len(backlog), 8):
        rj.append(*backlog[i : i + 8])
    rj.wait_written(64, timeout=60)
    daemon.args = [f"--journal-dir={rj.directory}", "--grace-ms=300"]
    await daemon.start()
    await daemon.caught_up(timeout=120)
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    assert len(listed) == 64
    assert daemon.proc is not None
    peak_mib = vm_hwm_kib(daemon.proc.pid) / 1024
    # Was ~540 MB (every field of the 64 entries in one batch); now one entry's fields at a time
    # next to the mapped journal (measured ~75 MiB; the small-field daemon is ~30).
    assert peak_mib < 150, peak_mib

    # Live entries (a catch-up looks metadata up once; a live KCrash crash waits for its file):
    # libKF5Crash.so at the end of 4 MB of maps still makes the daemon wait for KCrash's file…
    kf5_maps = big_entry(rj, maps_tail=KF5_MAPS_LINE)
    rj.append(kf5_maps)
    assert await published_after(daemon, int(kf5_maps["COREDUMP_PID"])) >= 2
    # … and so does KCrash's frame at the end of a 4 MB stack trace, with maps that show nothing.
    kf5_trace = big_entry(rj, COREDUMP_PROC_MAPS=b"")
    kf5_trace["MESSAGE"] += b"\n" + BIG + KF5_FRAME
    rj.append(kf5_trace)
    assert await published_after(daemon, int(kf5_trace["COREDUMP_PID"])) >= 2
    # A program without KCrash is published at once (one lookup).
    plain = big_entry(rj)
    rj.append(plain)
    assert await published_after(daemon, int(plain["COREDUMP_PID"])) == 1

    # A crash field logged twice (systemd-coredump --backtrace appends stdin) is still seen, in
    # an entry whose other fields are large.
    forged_before = (await daemon.stats())["forged"]
    twice = export_format.serialize([big_entry(rj)])
    assert rj.proc.stdin is not None
    rj.proc.stdin.write(twice[:-1] + b"COREDUMP_SIGNAL=6\n\n")
    rj.proc.stdin.flush()
    control = rj.coredump()
    rj.append(control)
    await daemon.client.crash(int(control["COREDUMP_PID"]))
    for _ in range(100):
        if (await daemon.stats())["forged"] > forged_before:
            break
        await asyncio.sleep(0.05)
    assert (await daemon.stats())["forged"] == forged_before + 1
    assert len(await daemon.call("ListCrashes", "a{sv}", {})) == 64 + 4


@pytest.mark.parametrize(
    ("text", "lib"),
    [
        (BIG + KF5_MAPS_LINE, KCrashLib.KF5),
        (BIG + b"/usr/lib/libKF6Crash.so.6\n" + BIG + KF5_MAPS_LINE, KCrashLib.KF6),
        (BIG + KF5_FRAME, KCrashLib.KF5),
        (BIG + b"/usr/lib/xlibKF5Crash.so.5\n", KCrashLib.NONE),  # no word boundary: no match
        (b"libKF5Crash.so" + BIG, KCrashLib.KF5),
        (BIG + "/usr/lib/élibKF5Crash.so\n".encode(), KCrashLib.NONE),
        (BIG, KCrashLib.NONE),
    ],
)
def test_the_excerpt_of_a_long_field_names_the_kcrash_library_the_whole_field_names(
    text: bytes, lib: KCrashLib
) -> None:
    whole = kcrash_lib_from(text.decode())
    excerpt = kcrash_excerpt(text)
    assert len(excerpt) < 1024
    assert whole is lib
    assert kcrash_lib_from(excerpt.decode("utf-8", errors="replace")) is lib


class _Recording(dict[str, str]):
    """Fields that remember which names were asked for."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


@pytest.mark.parametrize(
    "template", ["sleep-sigsegv.export", "kronometer-sigsegv.export", "user-sleep-sigsegv.export"]
)
def test_the_trust_rule_reads_only_fields_the_journal_source_keeps(template: str) -> None:
    raw = export_format.load(template)
    fields = _Recording({k: v.decode("utf-8", errors="replace") for k, v in raw.items()})
    policy = TrustPolicy(writer_uids=frozenset({0, 996}), own_uid=None, machine_id=None)
    core_to_check(fields, policy)
    classify(fields, policy)
    policy = TrustPolicy(writer_uids=frozenset(), own_uid=1001, machine_id=fields["_MACHINE_ID"])
    core_to_check(fields, policy)
    classify(fields, policy)
    added = {REPEATED, "COREDUMP", "__CURSOR", "__REALTIME_TIMESTAMP"}
    assert fields.asked - added <= USED_FIELDS
