"""-S/-U time specifications and coredumpctl-style matches (pure; fixed ``now``)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from crashbroker.domain.matches import WORD, MatchError, parse_matches, record_key
from crashbroker.domain.timespec import TimeSpecError, parse_span, parse_timestamp

NOW = datetime(2026, 11, 30, 15, 30, 45, tzinfo=UTC)
S = 1_000_000


def us(*args: int, tz: ZoneInfo | None = None) -> int:
    return int(datetime(*args, tzinfo=tz or UTC).timestamp()) * S  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("2026-11-28", us(2026, 11, 28)),
        ("2026-11-28 12:00", us(2026, 11, 28, 12)),
        ("2026-11-28 12:00:30", us(2026, 11, 28, 12, 0, 30)),
        ("2026-11-28T12:00:30", us(2026, 11, 28, 12, 0, 30)),
        ("12:00", us(2026, 11, 30, 12)),
        ("today", us(2026, 11, 30)),
        ("yesterday", us(2026, 11, 29)),
        ("tomorrow", us(2026, 12, 1)),
        ("now", us(2026, 11, 30, 15, 30, 45)),
        ("-1h", us(2026, 11, 30, 14, 30, 45)),
        ("-30min", us(2026, 11, 30, 15, 0, 45)),
        ("-1h 30min", us(2026, 11, 30, 14, 0, 45)),
        ("+2d", us(2026, 12, 2, 15, 30, 45)),
        ("2d ago", us(2026, 11, 28, 15, 30, 45)),
        ("3600", us(2026, 11, 30, 14, 30, 45)),  # seconds ago, as --since SECONDS was
        ("0.5", us(2026, 11, 30, 15, 30, 45) - S // 2),
        ("@1764500000", 1764500000 * S),
    ],
)
def test_time_specifications(spec: str, expected: int) -> None:
    assert parse_timestamp(spec, NOW, UTC) == expected


def test_dates_are_local_time_with_that_dates_offset() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 11, 30, 0, 30, tzinfo=berlin)  # 23:30 UTC the day before
    assert parse_timestamp("today", now, berlin) == us(2026, 11, 29, 23)
    assert parse_timestamp("yesterday", now, berlin) == us(2026, 11, 28, 23)
    # Summer time in July: +2, not November's +1.
    assert parse_timestamp("2026-07-01 12:00", now, berlin) == us(2026, 7, 1, 10)
    assert parse_timestamp("2026-07-01 12:00 UTC", now, berlin) == us(2026, 7, 1, 12)


@pytest.mark.parametrize("spec", ["", "soon", "-1 fortnight", "2026-13-01", "@x", "1h", "+"])
def test_invalid_time_specifications_say_so(spec: str) -> None:
    with pytest.raises(TimeSpecError):
        parse_timestamp(spec, NOW, UTC)


def test_spans() -> None:
    assert parse_span("90") == 90 * S
    assert parse_span("1h30m") == 5400 * S
    assert parse_span("2 weeks") == 14 * 86400 * S
    assert parse_span("1M") == 2_629_800 * S and parse_span("1m") == 60 * S
    assert parse_span("250ms") == 250_000


REC = {
    "id": "c0123456789abcdef", "pid": 4242, "uid": 1000, "signal": 11, "signal_name": "SIGSEGV",
    "exe": "/usr/bin/kronometer", "comm": "kronometer", "app_name": "Kronometer",
    "state": "new", "past": True, "hostname": "box", "unit": "",
    "machine_id": "0123456789abcdef0123456789abcdef",
}  # fmt: skip


@pytest.mark.parametrize(
    ("tokens", "accepted"),
    [
        (["4242"], True),
        (["4243"], False),
        (["/usr/bin/kronometer"], True),
        (["/bin/kronometer"], False),
        (["kronometer"], True),  # comm
        (["Kronometer"], True),  # app_name
        (["sleep"], False),
        (["pid=4242"], True),
        (["COREDUMP_PID=4242"], True),
        (["signal_name=SIGSEGV"], True),
        (["signal_name=SIGABRT"], False),
        (["signal_name=SIGABRT", "signal_name=SIGSEGV"], True),  # same field: OR
        (["4242", "signal_name=SIGABRT"], False),  # different fields: AND
        (["exe=kronometer"], True),
        (["_HOSTNAME=box"], True),
        (["machine_id=01234567-89AB-CDEF-0123-456789ABCDEF"], True),
        (["past=yes"], True),
        (["past=no"], False),
        (["uid=abc"], False),
    ],
)
def test_matches(tokens: list[str], accepted: bool) -> None:
    assert parse_matches(tokens).accepts(REC) is accepted


def test_what_goes_to_the_daemon_and_what_stays_here() -> None:
    m = parse_matches(["/usr/bin/kronometer", "state=new"])
    assert m.server_filter() == {"exe": "/usr/bin/kronometer", "state": "new"}
    assert not m.client_side and not m.full
    m = parse_matches(["kronometer"])
    assert m.server_filter() == {} and m.client_side and set(m.fields) == {WORD}
    m = parse_matches(["/a", "/b"])  # two executables: the daemon takes one
    assert m.server_filter() == {} and m.client_side
    m = parse_matches(["unit=foo.service"])
    assert m.full and m.client_side
    m = parse_matches(["machine_id=0123456789abcdef0123456789abcdef"])
    assert m.server_filter() == {"machine": "0123456789abcdef0123456789abcdef"} and m.client_side
    assert parse_matches(["state=dismissed"]).wants_dismissed


def test_unknown_fields_are_errors() -> None:
    with pytest.raises(MatchError, match="no record key 'colour'"):
        parse_matches(["colour=red"])
    with pytest.raises(MatchError):
        parse_matches([""])
    assert record_key("COREDUMP_USER_UNIT") == "user_unit"
