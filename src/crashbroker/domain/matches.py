"""``crashbroker list [MATCH...]``: coredumpctl's matches, split between the daemon's
``ListCrashes`` filter and the client (pure).

A match is a PID (a number), an executable (an absolute path), a program name (a word: the
crash's ``comm``, ``app_name`` or the exe's basename) or ``FIELD=VALUE`` on a record key
(``pid=42``, ``signal_name=SIGABRT``, ``unit=foo.service``; coredumpctl's journal field names
such as ``COREDUMP_COMM=`` or ``_HOSTNAME=`` name the same keys). As in coredumpctl and
journalctl, matches on the same field are alternatives (OR), matches on different fields must
all hold (AND).

What ``ListCrashes`` can filter itself (one executable, one state, one machine) goes to the
daemon; the rest is checked here on the records it returns. When anything is left for the
client, the daemon gets no ``limit`` (it would count crashes the client then drops).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The keys of a list record (docs/dbus.md, "List records"); any other record key needs `full`.
LIST_KEYS = frozenset(
    {
        "id", "timestamp", "pid", "uid", "signal", "signal_name", "exe", "comm", "app_name",
        "state", "claimed_by", "core_available", "kcrash_source", "metadata_path", "signature",
        "occurrences", "burst", "loop", "loop_head", "past",
    }
)  # fmt: skip
FULL_KEYS = LIST_KEYS | {
    "boot_id", "machine_id", "hostname", "gid", "realtime", "cmdline", "unit", "user_unit",
    "journal_cursor", "core_filename", "core_truncated", "kcrash_complete", "app_name",
    "bug_address", "first_seen", "last_seen", "last_id", "backtrace_available", "detected",
}  # fmt: skip
# Journal field names (coredumpctl's matches) for record keys.
_JOURNAL_FIELDS = {
    "_HOSTNAME": "hostname",
    "_MACHINE_ID": "machine_id",
    "_BOOT_ID": "boot_id",
    "COREDUMP_SIGNAL_NAME": "signal_name",
    "COREDUMP_TIMESTAMP": "timestamp",
}
# Keys whose values are ids: a UUID's dashes and upper case are accepted, as by `machine`.
_IDS = frozenset({"machine_id", "boot_id"})
# The program name a bare word matches.
WORD = "program"
_TRUE, _FALSE = ("1", "yes", "true", "y"), ("0", "no", "false", "n")


class MatchError(ValueError):
    """A match that names no record key, or a value of the wrong kind for it."""


@dataclass(frozen=True, slots=True)
class Matches:
    """Parsed matches: for each field (a record key, or ``WORD``), the values any of which
    may match."""

    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        """Some field is not in a list record: ask the daemon for full records."""
        return any(k not in LIST_KEYS and k != WORD for k in self.fields)

    def server_filter(self) -> dict[str, str]:
        """The part ``ListCrashes`` does itself: ``exe``, ``state`` and ``machine`` (string
        filter values), where the field has one value."""
        out: dict[str, str] = {}
        for key in ("exe", "state"):
            values = self.fields.get(key, ())
            if len(values) == 1:
                out[key] = values[0]
        ids = self.fields.get("machine_id", ())
        if len(ids) == 1:
            # The daemon's `machine` also takes a hostname: a superset, checked again here.
            out["machine"] = ids[0]
        return out

    @property
    def client_side(self) -> bool:
        """Some match is left for the client to check (so the daemon gets no ``limit``)."""
        exact = {k for k in ("exe", "state") if k in self.server_filter()}
        return bool(self.fields.keys() - exact)

    @property
    def wants_dismissed(self) -> bool:
        """A ``state=dismissed`` match: the daemon must include dismissed crashes."""
        return "dismissed" in self.fields.get("state", ())

    def accepts(self, record: Mapping[str, Any]) -> bool:
        """Every field has a value that matches ``record`` (all of them, the daemon's too:
        checking again costs little and keeps one meaning)."""
        return all(
            any(_matches(record, key, value) for value in values)
            for key, values in self.fields.items()
        )

    def select(self, records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return [r for r in records if self.accepts(r)]


def _matches(record: Mapping[str, Any], key: str, value: str) -> bool:
    if key == WORD:
        exe = str(record.get("exe", ""))
        return value in (record.get("comm"), record.get("app_name"), exe.rsplit("/", 1)[-1])
    if key not in record:
        return False
    if key == "exe":  # a path, or a basename as the daemon's `exe` filter takes it
        return value in (record["exe"], str(record["exe"]).rsplit("/", 1)[-1])
    actual = record[key]
    if isinstance(actual, bool):
        return (value.lower() in _TRUE) if actual else (value.lower() in _FALSE)
    if isinstance(actual, int):
        return value.isdigit() and int(value) == actual
    if key in _IDS:
        return str(actual).replace("-", "").lower() == value.replace("-", "").lower()
    return str(actual) == value


def record_key(name: str) -> str:
    """The record key a match's FIELD names (``COREDUMP_PID`` → ``pid``).

    Raises:
        MatchError: it names none.
    """
    key = _JOURNAL_FIELDS.get(name)
    if key is None:
        key = name.removeprefix("COREDUMP_").lower() if name.startswith("COREDUMP_") else name
    if key not in FULL_KEYS:
        known = ", ".join(sorted(FULL_KEYS))
        raise MatchError(f"no record key {name!r} (known: {known})")
    return key


def parse_matches(tokens: Sequence[str]) -> Matches:
    """coredumpctl's matches (see the module docstring).

    Raises:
        MatchError: an unknown FIELD, or an empty match.
    """
    fields: dict[str, tuple[str, ...]] = {}
    for token in tokens:
        if not token:
            raise MatchError("empty match")
        if "=" in token and not token.startswith("/"):
            name, value = token.split("=", 1)
            key = record_key(name)
        elif token.isdigit():
            key, value = "pid", token
        elif token.startswith("/"):
            key, value = "exe", token
        else:
            key, value = WORD, token
        if value not in fields.get(key, ()):
            fields[key] = (*fields.get(key, ()), value)
    return Matches(fields)
