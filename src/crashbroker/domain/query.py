"""ListCrashes filters: validation and application (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from crashbroker.domain.errors import InvalidArgs
from crashbroker.domain.model import Crash, CrashState

MAX_LIMIT = 100_000
MAX_OFFSET = 2**32 - 1  # the largest D-Bus UINT32
MAX_EXE_CHARS = 4096
MAX_MACHINE_CHARS = 256
_HEX32 = re.compile(r"[0-9a-f]{32}")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "since": int,
    "until": int,
    "exe": str,
    "machine": str,
    "state": str,
    "limit": int,
    "offset": int,
    "include_dismissed": bool,
    "full": bool,
}


@dataclass(frozen=True, slots=True)
class CrashFilter:
    since: int | None = None
    until: int | None = None
    exe: str | None = None
    state: CrashState | None = None
    limit: int | None = None
    include_dismissed: bool = False
    full: bool = False  # every key of each record, not only the list's
    # A machine id (32 hex digits; a UUID's dashes and upper case are accepted) or a hostname,
    # compared exactly with the crash's machine id or hostname.
    machine: str | None = None
    # Matches skipped before the first one given (with ``limit``: a page of the listing).
    offset: int = 0

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> CrashFilter:
        """Validate a filter dict (already unwrapped from variants).

        Raises:
            InvalidArgs: unknown key, wrong type or out-of-range value.
        """
        for key, value in raw.items():
            expected = _TYPES.get(key)
            if expected is None:
                raise InvalidArgs(f"unknown filter key {key!r}; known: {', '.join(_TYPES)}")
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise InvalidArgs(f"filter {key!r} has the wrong type")
        state = raw.get("state")
        parsed_state: CrashState | None = None
        if isinstance(state, str):
            try:
                parsed_state = CrashState(state)
            except ValueError:
                raise InvalidArgs(
                    f"unknown state {state!r}; known: {', '.join(s.value for s in CrashState)}"
                ) from None
        exe = raw.get("exe")
        if isinstance(exe, str) and len(exe) > MAX_EXE_CHARS:
            raise InvalidArgs("exe filter too long")
        machine = raw.get("machine")
        if isinstance(machine, str):
            if len(machine) > MAX_MACHINE_CHARS:
                raise InvalidArgs("machine filter too long")
            # The journal's machine ids are 32 lowercase hex digits; a UUID as systemd-id128 or
            # hostnamectl print it names the same machine.
            as_id = machine.replace("-", "").lower()
            if _HEX32.fullmatch(as_id):
                machine = as_id
        limit = raw.get("limit")
        if isinstance(limit, int) and not 0 < limit <= MAX_LIMIT:
            raise InvalidArgs(f"limit must be within 1..{MAX_LIMIT}")
        offset = raw.get("offset")
        if isinstance(offset, int) and not 0 <= offset <= MAX_OFFSET:
            raise InvalidArgs(f"offset must be within 0..{MAX_OFFSET}")
        since, until = raw.get("since"), raw.get("until")
        return cls(
            since=since if isinstance(since, int) else None,
            until=until if isinstance(until, int) else None,
            exe=exe if isinstance(exe, str) else None,
            machine=machine if isinstance(machine, str) else None,
            state=parsed_state,
            limit=limit if isinstance(limit, int) else None,
            offset=offset if isinstance(offset, int) else 0,
            include_dismissed=raw.get("include_dismissed") is True
            or parsed_state is CrashState.DISMISSED,
            full=raw.get("full") is True,
        )

    def matches(self, crash: Crash) -> bool:
        ts = crash.entry.timestamp
        if self.since is not None and ts < self.since:
            return False
        if self.until is not None and ts > self.until:
            return False
        if self.exe is not None and self.exe not in (crash.entry.exe, crash.entry.exe_basename):
            return False
        if self.machine is not None and self.machine not in (
            crash.entry.machine_id,
            crash.entry.hostname,
        ):
            return False
        if self.state is not None and crash.state is not self.state:
            return False
        return self.include_dismissed or not crash.dismissed


def newest_first(crashes: Iterable[Crash], flt: CrashFilter) -> list[Crash]:
    """The crashes matching ``flt``, newest first, the first ``offset`` skipped, at most
    ``limit``. Newest by (COREDUMP_TIMESTAMP, journal time, id): a total order, so that pages
    (``limit`` and ``offset``) neither overlap nor leave a gap where crashes tie."""
    found = sorted(
        (c for c in crashes if flt.matches(c)),
        key=lambda c: (c.entry.timestamp, c.entry.realtime, c.id),
        reverse=True,
    )
    end = flt.offset + flt.limit if flt.limit is not None else None
    return found[flt.offset : end]
