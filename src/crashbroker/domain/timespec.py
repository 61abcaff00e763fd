"""Time specifications for ``crashbroker list -S/--since`` and ``-U/--until`` (pure).

The forms of systemd.time(7) that coredumpctl and journalctl take, plus crashbroker's older
bare number (seconds ago):

- ``2026-11-30``, ``2026-11-30 12:00``, ``2026-11-30 12:00:00`` (also with ``T``), ``12:00``
  (today), in local time (``tz``) unless they end in ``Z`` / ``UTC``;
- ``now``, ``today``, ``yesterday``, ``tomorrow`` (midnight, local time);
- ``-1h``, ``+30min``, ``2d 3h ago``, ``-1h30m``: relative to ``now``;
- ``@1764500000``: seconds since the epoch;
- ``3600``: a bare number is seconds ago (``--since SECONDS`` of earlier versions).

Every function takes ``now``; none reads a clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta, tzinfo


class TimeSpecError(ValueError):
    """Not a time specification; the message says what was wrong."""


USEC_PER_SEC = 1_000_000
# systemd.time(7)'s span units, in microseconds (a month is 30.44 days, a year 365.25 days).
_UNITS: dict[str, int] = {}
for _names, _factor in (
    (("us", "usec", "µs"), 1),
    (("ms", "msec"), 1_000),
    (("s", "sec", "secs", "second", "seconds"), USEC_PER_SEC),
    (("m", "min", "mins", "minute", "minutes"), 60 * USEC_PER_SEC),
    (("h", "hr", "hrs", "hour", "hours"), 3_600 * USEC_PER_SEC),
    (("d", "day", "days"), 86_400 * USEC_PER_SEC),
    (("w", "week", "weeks"), 7 * 86_400 * USEC_PER_SEC),
    (("M", "month", "months"), 2_629_800 * USEC_PER_SEC),
    (("y", "year", "years"), 31_557_600 * USEC_PER_SEC),
):
    for _name in _names:
        _UNITS[_name] = _factor
_SPAN_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Zµ]*)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DATE_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
)
_TIME_FORMATS = ("%H:%M:%S", "%H:%M")
_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}


def parse_span(text: str) -> int:
    """A time span (``1h 30min``, ``90s``, ``2d``) in microseconds; a bare number is seconds.

    Raises:
        TimeSpecError: not a span.
    """
    rest = text.strip()
    if not rest:
        raise TimeSpecError("empty time span")
    total = 0.0
    while rest:
        m = _SPAN_PART.match(rest)
        if m is None or not m.group(0):
            raise TimeSpecError(f"invalid time span {text!r}")
        unit = m.group(2) or "s"
        factor = _UNITS.get(unit, _UNITS.get(unit.lower()))  # "M" is a month, "m" a minute
        if factor is None:
            raise TimeSpecError(f"unknown time unit {unit!r} in {text!r}")
        total += float(m.group(1)) * factor
        rest = rest[m.end() :].lstrip()
    return round(total)


def _local(naive: datetime, tz: tzinfo | None) -> datetime:
    # astimezone() on a naive datetime takes it as the system's local time (with its DST rule
    # for that date, not today's offset); an explicit tz is for tests and for UTC.
    return naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()


def _usec(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * USEC_PER_SEC + delta.microseconds


def parse_timestamp(text: str, now: datetime, tz: tzinfo | None = None) -> int:
    """``text`` as microseconds since the epoch (the unit of ``COREDUMP_TIMESTAMP``).

    Args:
        text: a time specification (see the module docstring).
        now: the current time, timezone-aware.
        tz: the zone of dates without one; None: the system's local time.

    Raises:
        TimeSpecError: not a time specification (the message says which forms are).
    """
    spec = text.strip()
    now_us = _usec(now)
    if not spec:
        raise TimeSpecError("empty time")
    if spec == "now":
        return now_us
    if spec in _DAYS:
        today = (now.astimezone(tz) if tz is not None else now.astimezone()).date()
        day = today + timedelta(days=_DAYS[spec])
        return _usec(_local(datetime.combine(day, time()), tz))
    if spec.startswith("@"):
        if not _NUMBER.fullmatch(spec[1:]):
            raise TimeSpecError(f"invalid epoch time {text!r}")
        return round(float(spec[1:]) * USEC_PER_SEC)
    if _NUMBER.fullmatch(spec):
        return now_us - round(float(spec) * USEC_PER_SEC)  # seconds ago (older --since SECONDS)
    if spec[0] in "+-":
        span = parse_span(spec[1:])
        return now_us + span if spec[0] == "+" else now_us - span
    if spec.endswith(" ago"):
        return now_us - parse_span(spec.removesuffix(" ago"))
    zone = tz
    for suffix in (" UTC", "Z", " Z"):
        if spec.endswith(suffix):
            spec, zone = spec.removesuffix(suffix), UTC
            break
    for fmt in _DATE_FORMATS:
        try:
            parsed = datetime.strptime(spec, fmt)
        except ValueError:
            continue
        return _usec(_local(parsed, zone))
    for fmt in _TIME_FORMATS:
        try:
            clock = datetime.strptime(spec, fmt).time()
        except ValueError:
            continue
        today = (now.astimezone(zone) if zone is not None else now.astimezone()).date()
        return _usec(_local(datetime.combine(today, clock), zone))
    raise TimeSpecError(
        f"invalid time {text!r}: use YYYY-MM-DD [HH:MM[:SS]], HH:MM[:SS], today, yesterday, "
        "now, -1h / +30min / '2d ago', @EPOCH, or seconds ago"
    )
