"""The trust decision on coredump journal entries, checked on entries recorded on a real rig."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import export_format
from crashbroker.domain.entry import (
    MAX_PATH,
    MAX_TEXT,
    TrustPolicy,
    Verdict,
    classify,
    kcrash_lib_from,
    signal_name,
    written_by_coredump,
)
from crashbroker.domain.model import COREDUMP_MESSAGE_ID, CoredumpEntry, KCrashLib

BOOT = "e04ff1c3b3f8438a9752aa220502ee22"
COREDUMP_USER = 995  # the systemd-coredump user on the recording rig
WRITERS = frozenset({0, COREDUMP_USER})
ALL_USERS = TrustPolicy(writer_uids=WRITERS, own_uid=None)
SLEEP = "sleep-sigsegv.export"
KRONOMETER = "kronometer-sigsegv.export"
NO_EXE = "sleep-sigsegv-no-exe.export"


def real_fields(name: str) -> dict[str, str]:
    """A recorded entry as the journal adapter hands it over: str values, with a cursor."""
    fields = {
        key: value.decode("utf-8", errors="replace")
        for key, value in export_format.load(name).items()
    }
    fields.setdefault("__CURSOR", f"s=recorded;name={name}")
    return fields


def variant(name: str, drop: tuple[str, ...] = (), **changes: str) -> dict[str, str]:
    fields = real_fields(name)
    for key in drop:
        fields.pop(key, None)
    fields.update(changes)
    return fields


def accepted(fields: dict[str, str], policy: TrustPolicy = ALL_USERS) -> CoredumpEntry:
    verdict, entry = classify(fields, policy)
    assert verdict is Verdict.ACCEPT
    assert entry is not None
    return entry


# --- real entries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pid", "exe", "comm", "timestamp"),
    [
        (SLEEP, 5447, "/usr/bin/sleep", "sleep", 1795398270000000),
        (KRONOMETER, 5461, "/usr/bin/kronometer", "kronometer", 1795398271000000),
        (NO_EXE, 4762, "/usr/bin/sleep", "sleep", 1795398184000000),
    ],
)
def test_real_entry_is_accepted_with_its_identity(
    name: str, pid: int, exe: str, comm: str, timestamp: int
) -> None:
    fields = real_fields(name)
    assert fields["MESSAGE_ID"] == COREDUMP_MESSAGE_ID
    entry = accepted(fields)

    assert entry.pid == pid
    assert entry.uid == 0
    assert entry.gid == 0
    assert entry.signal == 11
    assert entry.signal_name == "SIGSEGV"
    assert entry.exe == exe
    assert entry.exe_basename == comm
    assert entry.comm == comm
    assert entry.boot_id == BOOT
    assert entry.machine_id == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    assert entry.hostname == "vm"
    assert entry.timestamp == timestamp
    assert entry.realtime == int(fields["__REALTIME_TIMESTAMP"])
    assert entry.cursor == fields["__CURSOR"]
    assert entry.core_filename == (
        f"/var/lib/systemd/coredump/core.{comm}.0.{BOOT}.{pid}.{timestamp}.zst"
    )
    assert entry.core_in_journal is False
    assert entry.truncated is False
    assert entry.key.pid == pid
    assert entry.key.boot_id == BOOT
    assert entry.key.timestamp == timestamp


@pytest.mark.parametrize(
    ("name", "kcrash_lib"),
    [
        (SLEEP, KCrashLib.NONE),
        (NO_EXE, KCrashLib.NONE),
        # kronometer links libKF5Crash.so.5 (its KCrash handler is frame #2 of the recorded
        # stack trace, and it wrote the KF5 <pid>.ini in tests/data)
        (KRONOMETER, KCrashLib.KF5),
    ],
)
def test_real_entry_reports_which_kcrash_was_mapped(name: str, kcrash_lib: KCrashLib) -> None:
    fields = real_fields(name)
    assert accepted(fields).kcrash_lib is kcrash_lib, (
        f"COREDUMP_PROC_MAPS as systemd-coredump recorded it ({len(fields['COREDUMP_PROC_MAPS'])}"
        " chars, cut at one page) does not reach the KCrash mapping"
    )


def test_real_entry_without_exe_is_trusted_only_from_the_coredump_user() -> None:
    fields = real_fields(NO_EXE)
    assert "_EXE" not in fields
    assert fields["_UID"] == str(COREDUMP_USER)

    assert accepted(fields, TrustPolicy(frozenset({0, COREDUMP_USER}), None)).pid == 4762
    verdict, entry = classify(fields, TrustPolicy(frozenset({0}), None))
    assert (verdict, entry) == (Verdict.FORGED, None)


# --- forged entries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(variant(SLEEP, _UID="1000"), id="ordinary-user"),
        pytest.param(variant(SLEEP, _UID="0", _EXE="/usr/bin/python3"), id="root-python"),
        pytest.param(
            variant(SLEEP, _UID=str(COREDUMP_USER), _EXE="/usr/bin/python3"),
            id="coredump-uid-wrong-exe",
        ),
        pytest.param(variant(SLEEP, drop=("_EXE",), _UID="0"), id="root-without-exe"),
        pytest.param(variant(SLEEP, drop=("_UID",)), id="no-uid"),
        pytest.param(variant(SLEEP, _UID="root"), id="garbage-uid"),
        pytest.param(variant(SLEEP, _UID=""), id="empty-uid"),
        pytest.param(
            variant(SLEEP, _UID="1000", _SYSTEMD_UNIT="systemd-coredump@0-1-2.service"),
            id="coredump-unit-wrong-uid",
        ),
        pytest.param(variant(KRONOMETER, _UID="1000"), id="kronometer-ordinary-user"),
        pytest.param(variant(NO_EXE, _UID="1000"), id="no-exe-ordinary-user"),
        pytest.param(variant(NO_EXE, _UID="0"), id="no-exe-root"),
        pytest.param(variant(NO_EXE, _EXE="/usr/bin/logger"), id="no-exe-now-logger"),
    ],
)
def test_forged_entry_is_refused(fields: dict[str, str]) -> None:
    assert classify(fields, ALL_USERS) == (Verdict.FORGED, None)
    assert written_by_coredump(fields, WRITERS) is False


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(real_fields(SLEEP), id="recorded"),
        pytest.param(variant(SLEEP, _UID="0"), id="root-with-coredump-exe"),
        pytest.param(variant(SLEEP, _EXE="/lib/systemd/systemd-coredump"), id="lib-path"),
        pytest.param(
            variant(SLEEP, drop=("_EXE",), _UID="0", _SYSTEMD_UNIT="systemd-coredump@5-6.service"),
            id="root-in-coredump-unit",
        ),
        pytest.param(variant(SLEEP, _UID=" 995 "), id="uid-with-spaces"),
    ],
)
def test_entry_written_by_coredump_is_trusted(fields: dict[str, str]) -> None:
    assert written_by_coredump(fields, WRITERS) is True
    assert classify(fields, ALL_USERS)[0] is Verdict.ACCEPT


def test_writer_uids_decide_who_may_log_coredumps() -> None:
    fields = real_fields(SLEEP)  # _UID=995 with systemd-coredump's _EXE
    assert written_by_coredump(fields, frozenset({COREDUMP_USER}))
    assert not written_by_coredump(fields, frozenset({0}))
    assert not written_by_coredump(fields, frozenset())


# --- users ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("own_uid", "coredump_uid", "verdict"),
    [
        (1000, "0", Verdict.OTHER_USER),
        (1000, "1001", Verdict.OTHER_USER),
        (1000, "1000", Verdict.ACCEPT),
        (0, "0", Verdict.ACCEPT),
        (None, "0", Verdict.ACCEPT),
        (None, "1000", Verdict.ACCEPT),
        (None, "65534", Verdict.ACCEPT),
    ],
)
def test_own_uid_selects_whose_crashes_are_published(
    own_uid: int | None, coredump_uid: str, verdict: Verdict
) -> None:
    fields = variant(SLEEP, COREDUMP_UID=coredump_uid)
    got, entry = classify(fields, TrustPolicy(WRITERS, own_uid))
    assert got is verdict
    if verdict is Verdict.ACCEPT:
        assert entry is not None
        assert entry.uid == int(coredump_uid)
    else:
        assert entry is None


# --- malformed entries ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(variant(SLEEP, drop=("COREDUMP_PID",)), id="no-pid"),
        pytest.param(variant(SLEEP, COREDUMP_PID="abc"), id="garbage-pid"),
        pytest.param(variant(SLEEP, COREDUMP_PID=""), id="empty-pid"),
        pytest.param(variant(SLEEP, COREDUMP_PID="-5447"), id="negative-pid"),
        pytest.param(variant(SLEEP, COREDUMP_PID="0"), id="zero-pid"),
        pytest.param(variant(SLEEP, COREDUMP_PID="12.5"), id="fractional-pid"),
        pytest.param(variant(SLEEP, COREDUMP_PID="9" * 5000), id="pid-too-many-digits"),
        pytest.param(variant(SLEEP, drop=("COREDUMP_UID",)), id="no-coredump-uid"),
        pytest.param(variant(SLEEP, COREDUMP_UID="-1"), id="negative-coredump-uid"),
        pytest.param(variant(SLEEP, drop=("COREDUMP_SIGNAL",)), id="no-signal"),
        pytest.param(variant(SLEEP, COREDUMP_SIGNAL="SIGSEGV"), id="signal-name-as-number"),
        pytest.param(variant(SLEEP, drop=("COREDUMP_TIMESTAMP",)), id="no-timestamp"),
        pytest.param(variant(SLEEP, COREDUMP_TIMESTAMP="yesterday"), id="garbage-timestamp"),
        pytest.param(variant(SLEEP, COREDUMP_TIMESTAMP="-5"), id="negative-timestamp"),
        pytest.param(variant(SLEEP, COREDUMP_TIMESTAMP="0"), id="zero-timestamp"),
        pytest.param(variant(SLEEP, drop=("_BOOT_ID",)), id="no-boot-id"),
        pytest.param(variant(SLEEP, _BOOT_ID="not-a-boot-id"), id="garbage-boot-id"),
        pytest.param(variant(SLEEP, _BOOT_ID=BOOT[:-1]), id="short-boot-id"),
        pytest.param(variant(SLEEP, _BOOT_ID=BOOT + "0"), id="long-boot-id"),
        pytest.param(variant(SLEEP, _BOOT_ID="g" * 32), id="non-hex-boot-id"),
        pytest.param(variant(SLEEP, drop=("__CURSOR",)), id="no-cursor"),
        pytest.param(variant(SLEEP, __CURSOR=""), id="empty-cursor"),
        pytest.param(variant(SLEEP, MESSAGE_ID="0" * 32), id="wrong-message-id"),
        pytest.param(variant(SLEEP, drop=("MESSAGE_ID",)), id="no-message-id"),
        # not a coredump message at all: wrong MESSAGE_ID wins over the trust check
        pytest.param(variant(SLEEP, MESSAGE_ID="x", _UID="1000"), id="forged-other-message"),
    ],
)
def test_malformed_entry_is_refused(fields: dict[str, str]) -> None:
    assert classify(fields, ALL_USERS) == (Verdict.MALFORMED, None)


def test_boot_id_in_uuid_form_is_normalised() -> None:
    dashed = f"{BOOT[:8]}-{BOOT[8:12]}-{BOOT[12:16]}-{BOOT[16:20]}-{BOOT[20:]}".upper()
    assert accepted(variant(SLEEP, _BOOT_ID=dashed)).boot_id == BOOT


def test_realtime_falls_back_to_the_coredump_timestamp() -> None:
    entry = accepted(variant(SLEEP, drop=("__REALTIME_TIMESTAMP",)))
    assert entry.realtime == entry.timestamp == 1795398270000000


@pytest.mark.parametrize(
    ("extra", "core_in_journal", "truncated"),
    [
        ({}, False, False),
        ({"COREDUMP": "\x7fELF..."}, True, False),
        ({"COREDUMP_TRUNCATED": "1"}, False, True),
        ({"COREDUMP_TRUNCATED": "yes"}, False, True),
        ({"COREDUMP_TRUNCATED": "0"}, False, False),
    ],
)
def test_core_storage_flags(extra: dict[str, str], core_in_journal: bool, truncated: bool) -> None:
    entry = accepted({**real_fields(SLEEP), **extra})
    assert entry.core_in_journal is core_in_journal
    assert entry.truncated is truncated


# --- caps -----------------------------------------------------------------------------------

MEGABYTE = 1024 * 1024


@pytest.mark.parametrize(
    ("field", "attribute", "cap"),
    [
        ("COREDUMP_CMDLINE", "cmdline", MAX_TEXT),
        ("COREDUMP_EXE", "exe", MAX_PATH),
        ("COREDUMP_FILENAME", "core_filename", MAX_PATH),
        ("COREDUMP_COMM", "comm", 64),
        ("COREDUMP_HOSTNAME", "hostname", MAX_TEXT),
        ("COREDUMP_UNIT", "unit", 256),
        ("COREDUMP_USER_UNIT", "user_unit", 256),
        ("_MACHINE_ID", "machine_id", 32),
    ],
)
def test_huge_fields_are_capped(field: str, attribute: str, cap: int) -> None:
    huge = "a" * MEGABYTE
    entry = accepted(variant(SLEEP, **{field: huge}))
    value = getattr(entry, attribute)
    assert len(value) <= cap
    assert len(value) > 0
    assert huge.startswith(value)


def test_one_megabyte_cmdline_is_cut_to_max_text() -> None:
    cmdline = "kwrite " + "x" * MEGABYTE
    entry = accepted(variant(SLEEP, COREDUMP_CMDLINE=cmdline))
    assert len(entry.cmdline) == MAX_TEXT
    assert entry.cmdline.startswith("kwrite xxx")


# --- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "given", "expected"),
    [
        (11, "SIGSEGV", "SIGSEGV"),
        (11, "", "SIGSEGV"),
        (6, "bogus", "SIGABRT"),
        (11, "SIG", "SIGSEGV"),
        (11, "SIG SEGV", "SIGSEGV"),
        (11, "SIGSEGV\n", "SIGSEGV"),
        (11, "sigsegv", "SIGSEGV"),
        (11, "SIGFOO", "SIGFOO"),  # a well-formed name from systemd-coredump is kept
        (99, "", "SIG99"),
        (0, "", "SIG0"),
        (-1, "", "SIG-1"),
        (10**30, "", f"SIG{10**30}"),
    ],
)
def test_signal_name_falls_back_to_the_number(number: int, given: str, expected: str) -> None:
    assert signal_name(number, given) == expected


def test_classify_derives_signal_name_when_missing() -> None:
    entry = accepted(variant(SLEEP, drop=("COREDUMP_SIGNAL_NAME",), COREDUMP_SIGNAL="6"))
    assert (entry.signal, entry.signal_name) == (6, "SIGABRT")


@pytest.mark.parametrize(
    ("maps", "expected"),
    [
        ("", KCrashLib.NONE),
        (
            "7f0-7f1 r-xp 0 fe:00 1 /usr/lib/x86_64-linux-gnu/libKF5Crash.so.5.103.0\n",
            KCrashLib.KF5,
        ),
        ("7f0-7f1 r-xp 0 fe:00 1 /usr/lib64/libKF6Crash.so.6.8.0\n", KCrashLib.KF6),
        (
            "7f0-7f1 r-xp 0 fe:00 1 /usr/lib/libKF5Crash.so.5\n"
            "7f2-7f3 r-xp 0 fe:00 2 /usr/lib/libKF6Crash.so.6\n",
            KCrashLib.KF6,
        ),
        ("7f0-7f1 r-xp 0 fe:00 1 /usr/lib/libKF5CrashHandler.so\n", KCrashLib.NONE),
        ("7f0-7f1 r-xp 0 fe:00 1 /usr/lib/libkf5crash.so.5\n", KCrashLib.NONE),
    ],
)
def test_kcrash_lib_from(maps: str, expected: KCrashLib) -> None:
    assert kcrash_lib_from(maps) is expected


def test_kcrash_lib_from_stack_trace_when_maps_are_cut_short() -> None:
    trace = "#2  0x00007f0af455c83d _ZN6KCrash19defaultCrashHandlerEi (libKF5Crash.so.5 + 0x583d)"
    assert (
        kcrash_lib_from("7f0-7f1 r-xp 0 fe:00 1 /usr/lib/libQt5Core.so.5\n", trace) is KCrashLib.KF5
    )


@pytest.mark.parametrize(
    ("exe", "basename"),
    [
        ("/usr/bin/kate", "kate"),
        ("/usr/bin/kate (deleted)", "kate"),
        ("/opt/My App/bin/run (deleted)", "run"),
        ("/usr/bin/(deleted) tool", "(deleted) tool"),
        ("/usr/bin/kate (deleted) (deleted)", "kate (deleted)"),
        ("kate", "kate"),
        ("", ""),
    ],
)
def test_exe_basename_drops_the_deleted_suffix(exe: str, basename: str) -> None:
    entry = dataclasses.replace(accepted(real_fields(SLEEP)), exe=exe)
    assert entry.exe_basename == basename


def test_deleted_exe_from_journal_gives_plain_basename() -> None:
    entry = accepted(variant(KRONOMETER, COREDUMP_EXE="/usr/bin/kronometer (deleted)"))
    assert entry.exe == "/usr/bin/kronometer (deleted)"
    assert entry.exe_basename == "kronometer"


# --- totality -------------------------------------------------------------------------------

_KEYS = [*sorted(real_fields(SLEEP)), "COREDUMP", "COREDUMP_TRUNCATED", "_SYSTEMD_UNIT"]


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    changes=st.dictionaries(
        st.sampled_from(_KEYS),
        st.one_of(st.text(max_size=40), st.integers(-(2**70), 2**70).map(str)),
        max_size=8,
    ),
    drop=st.sets(st.sampled_from(_KEYS), max_size=4),
    own_uid=st.one_of(st.none(), st.integers(-1, 70_000)),
)
def test_classify_is_total(changes: dict[str, str], drop: set[str], own_uid: int | None) -> None:
    fields = variant(SLEEP, drop=tuple(drop), **changes)
    verdict, entry = classify(fields, TrustPolicy(WRITERS, own_uid))
    assert isinstance(verdict, Verdict)
    assert (entry is not None) == (verdict is Verdict.ACCEPT)
    if entry is not None:
        assert entry.pid > 0
        assert entry.uid >= 0
        assert len(entry.boot_id) == 32
        assert entry.cursor
        assert own_uid is None or entry.uid == own_uid
