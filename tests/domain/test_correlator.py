"""The correlation state machine: coredump entries meet KCrash metadata, time passed as ``now``."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import make_entry as shared_entry
from crashbroker.domain.correlator import (
    DEFAULT_GRACE_US,
    DEFAULT_RETRY_US,
    Correlator,
    LookupMetadata,
    PublishCrash,
)
from crashbroker.domain.model import CoredumpEntry, KCrashLib, KCrashMetadata, MetadataSource

GRACE = 1_000_000
RETRY = 50_000
T0 = 1_700_000_000_000_000
BOOT = "e04ff1c3b3f8438a9752aa220502ee22"


def make_entry(
    pid: int = 4242, kcrash_lib: KCrashLib = KCrashLib.KF6, timestamp: int = T0
) -> CoredumpEntry:
    return shared_entry(
        pid,
        timestamp,
        "/usr/bin/kf6app",
        realtime=timestamp + 500,
        kcrash_lib=kcrash_lib,
        cmdline="kf6app --test",
        user_unit="app-kf6app.service",
    )


def make_meta(
    complete: bool = False, source: MetadataSource = MetadataSource.KCRASH_V2
) -> KCrashMetadata:
    return KCrashMetadata(
        kcrash={"exe": "/usr/bin/kf6app", "appname": "kf6app"},
        complete=complete,
        source=source,
        path=f"/run/kcrash/{source.value}.ini",
    )


def test_metadata_present_on_first_lookup_publishes_at_once() -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry()
    meta = make_meta(complete=True)

    assert c.coredump(entry, past=False, now=T0) == [LookupMetadata(entry)]
    assert c.is_pending(entry.key)
    assert c.next_deadline() is None  # the lookup is in flight, nothing waits on time

    effects = c.metadata(entry.key, meta, now=T0 + 10)

    assert effects == [PublishCrash(entry, meta, past=False)]
    assert c.pending == 0
    assert not c.is_pending(entry.key)
    assert c.next_deadline() is None


def test_metadata_appearing_after_first_lookup_is_retried_then_published() -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry(kcrash_lib=KCrashLib.KF6)
    c.coredump(entry, past=False, now=T0)

    assert c.metadata(entry.key, None, now=T0 + 100) == []
    assert c.is_pending(entry.key)
    assert c.next_deadline() == T0 + 100 + RETRY

    assert c.tick(T0 + 100 + RETRY - 1) == []  # not due yet
    assert c.tick(T0 + 100 + RETRY) == [LookupMetadata(entry)]
    assert c.next_deadline() is None  # in flight again
    assert c.tick(T0 + 100 + 2 * RETRY) == []  # no second lookup while one is in flight

    meta = make_meta(complete=True)
    assert c.metadata(entry.key, meta, now=T0 + 100 + RETRY + 5) == [
        PublishCrash(entry, meta, past=False)
    ]
    assert c.pending == 0
    assert c.next_deadline() is None


def test_duplicate_coredump_is_ignored_while_pending_and_after_publish() -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry()
    assert c.coredump(entry, past=False, now=T0) == [LookupMetadata(entry)]
    assert c.coredump(entry, past=False, now=T0 + 1) == []
    assert c.coredump(entry, past=True, now=T0 + 2) == []
    assert c.pending == 1

    c.metadata(entry.key, make_meta(complete=True), now=T0 + 3)
    assert c.pending == 0
    # the same CrashKey read again (e.g. an entry re-read after a cursor rewind)
    again = dataclasses.replace(entry, cursor="s=other")
    assert again.key == entry.key
    assert c.coredump(again, past=False, now=T0 + 4) == []
    assert c.pending == 0


def test_same_pid_with_new_timestamp_is_a_new_crash() -> None:
    c = Correlator(GRACE, RETRY)
    first = make_entry(pid=77, timestamp=T0)
    second = make_entry(pid=77, timestamp=T0 + 5_000_000)
    c.coredump(first, past=False, now=T0)
    assert c.coredump(second, past=False, now=T0 + 1) == [LookupMetadata(second)]
    assert c.pending == 2


def drive_until_published(
    c: Correlator,
    entry: CoredumpEntry,
    answers: list[KCrashMetadata | None],
    start: int,
) -> tuple[list[PublishCrash], int, int]:
    """Answer the pending lookup and every retry in turn with ``answers`` (the last repeats).

    Returns the publish effects, the number of lookups and the time of publication.
    """
    lookups = 1  # the one coredump() asked for
    now = start
    effects = c.metadata(entry.key, answers[0], now=now)
    while not effects:
        deadline = c.next_deadline()
        assert deadline is not None, "a waiting crash must have a deadline"
        assert deadline > now, "deadlines must move forward"
        now = deadline
        assert c.tick(now) == [LookupMetadata(entry)]
        effects = c.metadata(entry.key, answers[min(lookups, len(answers) - 1)], now=now)
        lookups += 1
    assert all(isinstance(e, PublishCrash) for e in effects)
    return [e for e in effects if isinstance(e, PublishCrash)], lookups, now


def test_kf6_without_metadata_is_published_without_it_after_grace() -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry(kcrash_lib=KCrashLib.KF6)
    c.coredump(entry, past=False, now=T0)

    published, lookups, at = drive_until_published(c, entry, [None], start=T0)

    assert published == [PublishCrash(entry, None, past=False)]
    assert at == T0 + GRACE
    assert lookups == GRACE // RETRY + 1  # at T0, T0+RETRY, ..., T0+GRACE
    assert c.pending == 0
    assert c.next_deadline() is None


def test_incomplete_kf6_file_is_published_at_the_deadline_with_that_metadata() -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry(kcrash_lib=KCrashLib.KF6)
    incomplete = make_meta(complete=False)
    c.coredump(entry, past=False, now=T0)

    # the file is found on every lookup but never gains [KCrashComplete]
    published, lookups, at = drive_until_published(c, entry, [incomplete], start=T0)

    assert published == [PublishCrash(entry, incomplete, past=False)]
    assert at == T0 + GRACE
    assert lookups == GRACE // RETRY + 1


def test_earlier_found_metadata_survives_later_failed_lookups() -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry(kcrash_lib=KCrashLib.KF6)
    incomplete = make_meta(complete=False)
    c.coredump(entry, past=False, now=T0)

    published, _, _ = drive_until_published(c, entry, [incomplete, None], start=T0)

    assert published == [PublishCrash(entry, incomplete, past=False)]


def test_completed_file_on_a_retry_replaces_the_incomplete_one() -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry(kcrash_lib=KCrashLib.KF6)
    incomplete, complete = make_meta(complete=False), make_meta(complete=True)
    c.coredump(entry, past=False, now=T0)

    published, lookups, at = drive_until_published(
        c, entry, [incomplete, incomplete, complete], start=T0
    )

    assert published == [PublishCrash(entry, complete, past=False)]
    assert lookups == 3
    assert at == T0 + 2 * RETRY


def test_retry_is_capped_at_the_grace_deadline() -> None:
    c = Correlator(grace_us=120_000, retry_us=RETRY)
    entry = make_entry()
    c.coredump(entry, past=False, now=T0)
    c.metadata(entry.key, None, now=T0 + 100_000)
    assert c.next_deadline() == T0 + 120_000  # not T0 + 150_000


@pytest.mark.parametrize(
    ("kcrash_lib", "meta", "settles_at_once"),
    [
        pytest.param(KCrashLib.KF5, make_meta(complete=False), True, id="kf5-incomplete-file"),
        pytest.param(KCrashLib.NONE, None, True, id="no-kcrash-no-file"),
        pytest.param(KCrashLib.KF6, make_meta(complete=True), True, id="kf6-complete-file"),
        pytest.param(
            KCrashLib.KF6,
            make_meta(source=MetadataSource.DRKONQI),
            True,
            id="kf6-drkonqi-record",
        ),
        pytest.param(
            KCrashLib.KF6,
            make_meta(source=MetadataSource.KCRASH_V1),
            True,
            id="kf6-v1-file",
        ),
        pytest.param(KCrashLib.KF6, make_meta(complete=False), False, id="kf6-incomplete-file"),
        pytest.param(KCrashLib.KF6, None, False, id="kf6-no-file"),
        pytest.param(KCrashLib.KF5, None, False, id="kf5-no-file"),
        pytest.param(KCrashLib.NONE, make_meta(complete=False), False, id="no-kcrash-v2-file"),
    ],
)
def test_first_lookup_settles_only_when_nothing_better_can_come(
    kcrash_lib: KCrashLib, meta: KCrashMetadata | None, settles_at_once: bool
) -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry(kcrash_lib=kcrash_lib)
    c.coredump(entry, past=False, now=T0)

    effects = c.metadata(entry.key, meta, now=T0 + 1)

    if settles_at_once:
        assert effects == [PublishCrash(entry, meta, past=False)]
        assert c.next_deadline() is None
    else:
        assert effects == []
        assert c.next_deadline() == T0 + 1 + RETRY


@pytest.mark.parametrize("kcrash_lib", list(KCrashLib))
@pytest.mark.parametrize(
    "meta", [None, make_meta(complete=False)], ids=["no-file", "incomplete-file"]
)
def test_past_entry_gets_exactly_one_lookup(
    kcrash_lib: KCrashLib, meta: KCrashMetadata | None
) -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry(kcrash_lib=kcrash_lib)

    assert c.coredump(entry, past=True, now=T0) == [LookupMetadata(entry)]
    assert c.metadata(entry.key, meta, now=T0) == [PublishCrash(entry, meta, past=True)]
    assert c.pending == 0
    assert c.next_deadline() is None
    assert c.tick(T0 + 10 * GRACE) == []


def test_late_metadata_for_a_published_crash_is_ignored() -> None:
    c = Correlator(GRACE, RETRY)
    entry = make_entry(kcrash_lib=KCrashLib.NONE)
    c.coredump(entry, past=False, now=T0)
    assert len(c.metadata(entry.key, None, now=T0)) == 1

    assert c.metadata(entry.key, make_meta(complete=True), now=T0 + 1) == []
    assert c.metadata(entry.key, None, now=T0 + 2) == []


def test_unsolicited_metadata_is_ignored() -> None:
    c = Correlator(GRACE, RETRY)
    stranger = make_entry(pid=999)
    assert c.metadata(stranger.key, make_meta(complete=True), now=T0) == []
    assert c.pending == 0

    # a second answer while the crash waits for its retry (no lookup in flight) is not taken
    entry = make_entry(kcrash_lib=KCrashLib.KF6)
    c.coredump(entry, past=False, now=T0)
    c.metadata(entry.key, None, now=T0)
    assert c.metadata(entry.key, make_meta(complete=True), now=T0 + 1) == []
    assert c.is_pending(entry.key)
    assert c.next_deadline() == T0 + RETRY


def test_next_deadline_is_none_when_nothing_waits() -> None:
    c = Correlator(GRACE, RETRY)
    assert c.next_deadline() is None
    assert c.tick(T0) == []


def test_next_deadline_is_the_earliest_retry_of_several_crashes() -> None:
    c = Correlator(GRACE, RETRY)
    a, b = make_entry(pid=1), make_entry(pid=2)
    c.coredump(a, past=False, now=T0)
    c.coredump(b, past=False, now=T0)
    c.metadata(b.key, None, now=T0 + 30)
    c.metadata(a.key, None, now=T0 + 70)
    assert c.next_deadline() == T0 + 30 + RETRY

    assert c.tick(T0 + 30 + RETRY) == [LookupMetadata(b)]
    assert c.next_deadline() == T0 + 70 + RETRY
    assert c.tick(T0 + 70 + RETRY) == [LookupMetadata(a)]
    assert c.next_deadline() is None


def test_zero_grace_publishes_on_first_answer() -> None:
    c = Correlator(grace_us=0, retry_us=RETRY)
    entry = make_entry(kcrash_lib=KCrashLib.KF6)
    c.coredump(entry, past=False, now=T0)
    assert c.metadata(entry.key, None, now=T0) == [PublishCrash(entry, None, past=False)]


def test_defaults_are_one_second_grace_and_fifty_ms_retry() -> None:
    c = Correlator()
    entry = make_entry()
    c.coredump(entry, past=False, now=T0)

    published, lookups, at = drive_until_published(c, entry, [None], start=T0)

    assert published == [PublishCrash(entry, None, past=False)]
    assert at == T0 + DEFAULT_GRACE_US == T0 + 1_000_000
    assert lookups == 1 + 1_000_000 // DEFAULT_RETRY_US == 21


@pytest.mark.parametrize(
    ("grace_us", "retry_us"),
    [(-1, RETRY), (GRACE, 0), (GRACE, -5), (-1, 0)],
)
def test_constructor_rejects_bad_durations(grace_us: int, retry_us: int) -> None:
    with pytest.raises(ValueError, match="grace_us"):
        Correlator(grace_us=grace_us, retry_us=retry_us)


@pytest.mark.parametrize(("grace_us", "retry_us"), [(0, 1), (GRACE, RETRY)])
def test_constructor_accepts_boundary_durations(grace_us: int, retry_us: int) -> None:
    assert Correlator(grace_us=grace_us, retry_us=retry_us).pending == 0
