"""Crash records as D-Bus ``a{sv}`` dictionaries (the keys of the contract in design.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dbus_fast import Variant

from crashbroker.domain.text import TIMESTAMP_LIMIT, U32_MAX, dbus_string_ok

if TYPE_CHECKING:  # the clients' unwrap() needs no domain model (the CLI's start-up)
    from crashbroker.domain.model import Crash

# key -> (D-Bus signature, getter); the order is the documented order of the record.
_FIELDS: dict[str, tuple[str, Any]] = {
    "id": ("s", lambda c: c.id),
    "boot_id": ("s", lambda c: c.entry.boot_id),
    "pid": ("u", lambda c: c.entry.pid),
    "uid": ("u", lambda c: c.entry.uid),
    "gid": ("u", lambda c: c.entry.gid),
    "signal": ("u", lambda c: c.entry.signal),
    "signal_name": ("s", lambda c: c.entry.signal_name),
    "timestamp": ("t", lambda c: c.entry.timestamp),
    "realtime": ("t", lambda c: c.entry.realtime),
    "exe": ("s", lambda c: c.entry.exe),
    "comm": ("s", lambda c: c.entry.comm),
    "cmdline": ("s", lambda c: c.entry.cmdline),
    "unit": ("s", lambda c: c.entry.unit),
    "user_unit": ("s", lambda c: c.entry.user_unit),
    "hostname": ("s", lambda c: c.entry.hostname),
    "machine_id": ("s", lambda c: c.entry.machine_id),
    "journal_cursor": ("s", lambda c: c.entry.cursor),
    "core_filename": ("s", lambda c: c.entry.core_filename if c.core_readable else ""),
    "core_available": (
        "b",
        lambda c: (bool(c.entry.core_filename) and c.core_readable) or c.entry.core_in_journal,
    ),
    "core_truncated": ("b", lambda c: c.entry.truncated),
    "kcrash": ("a{ss}", lambda c: dict(c.kcrash)),
    "kcrash_complete": ("b", lambda c: c.kcrash_complete),
    "kcrash_source": ("s", lambda c: c.kcrash_source),
    "kcrash_filled": ("as", lambda c: list(c.kcrash_filled)),
    "metadata_path": ("s", lambda c: c.metadata_path),
    "metadata_dev": ("t", lambda c: c.metadata_dev),
    "metadata_ino": ("t", lambda c: c.metadata_ino),
    "app_name": ("s", lambda c: c.app_name),
    "bug_address": ("s", lambda c: c.bug_address),
    "state": ("s", lambda c: c.state.value),
    "claimed_by": ("s", lambda c: c.claimed_by),
    "signature": ("s", lambda c: c.signature),
    "occurrences": ("u", lambda c: c.occurrences),
    "first_seen": ("t", lambda c: c.first_seen),
    "last_seen": ("t", lambda c: c.last_seen),
    "burst": ("u", lambda c: c.burst),
    "loop": ("b", lambda c: c.loop),
    "loop_head": ("s", lambda c: c.loop_head),
    "last_id": ("s", lambda c: c.last_id),
    "backtrace_available": ("b", lambda c: c.backtrace_available),
    "past": ("b", lambda c: c.past),
    "detected": ("t", lambda c: c.detected),
}
RECORD_KEYS = tuple(_FIELDS)
# What ListCrashes gives per crash (and CrashDetected for a crash found while catching up): what
# a list, a summary or a cleanup needs. GetCrash, a live CrashDetected and ListCrashes with
# ``full`` give every key. A tenth of the bytes of a whole record: a list of 10,000 crashes stays
# a few MB that busctl and the CLI read in a blink.
LIST_KEYS = (
    "id",
    "timestamp",
    "pid",
    "uid",
    "signal",
    "signal_name",
    "exe",
    "comm",
    "app_name",
    "machine_id",  # a fleet's list is grouped and shown by machine
    "hostname",
    "state",
    "claimed_by",
    "core_available",
    "kcrash_source",
    "metadata_path",
    "signature",
    "occurrences",
    "burst",
    "loop",
    "loop_head",
    "past",
)


def to_record(crash: Crash, keys: Iterable[str] | None = None) -> dict[str, Variant]:
    """The crash (or only ``keys`` of it) as ``a{sv}``."""
    wanted = RECORD_KEYS if keys is None else keys
    return {k: Variant(_FIELDS[k][0], _FIELDS[k][1](crash)) for k in wanted}


def _sendable(sig: str, value: Any) -> bool:
    if sig == "s":
        return dbus_string_ok(value)
    if sig == "u":
        return bool(0 <= value <= U32_MAX)
    if sig == "t":  # the store keeps these as signed 64-bit integers: half of 't'
        return bool(0 <= value < TIMESTAMP_LIMIT)
    if sig == "as":
        return all(map(dbus_string_ok, value))
    if sig == "a{ss}":
        return all(dbus_string_ok(k) and dbus_string_ok(v) for k, v in value.items())
    return sig == "b"


_STRINGS = tuple(get for sig, get in _FIELDS.values() if sig == "s")
_NUMBERS = tuple(
    (get, U32_MAX + 1 if sig == "u" else TIMESTAMP_LIMIT)
    for sig, get in _FIELDS.values()
    if sig in ("u", "t")
)
_OTHERS = {k: (sig, get) for k, (sig, get) in _FIELDS.items() if sig not in ("s", "u", "t", "b")}


def unsendable(crash: Crash) -> str | None:
    """The first key of the crash's record whose value cannot be sent (a string with NUL or a
    lone surrogate, a number out of its type's range), or None when the whole record can be.

    dbus-fast's marshaller and :mod:`~crashbroker.adapters.dbus_wire` encode a NUL without a
    complaint, and dbus-daemon then drops the connection; so this checks, not marshals.
    """
    # Every crash of a catch-up passes here: its strings are checked at once (5 µs a crash
    # here, 8 µs key by key: 30 ms of a 10,000-crash catch-up); a failing crash is then
    # looked at key by key to name the key.
    text = "".join([get(crash) for get in _STRINGS])
    ok = dbus_string_ok(text) and all(0 <= get(crash) < end for get, end in _NUMBERS)
    if ok and all(_sendable(sig, get(crash)) for sig, get in _OTHERS.values()):
        return None
    for key, (sig, get) in _FIELDS.items():
        if not _sendable(sig, get(crash)):
            return key
    return None  # pragma: no cover - the checks above and this loop agree


def list_items(crash: Crash) -> list[tuple[str, str, Any]]:
    """The list record as ``(key, D-Bus signature, value)``, for
    :func:`~crashbroker.adapters.dbus_wire.scalar_record_chunk`."""
    return [(k, _FIELDS[k][0], _FIELDS[k][1](crash)) for k in LIST_KEYS]


def unwrap(value: Any) -> Any:
    """Variants (nested in dicts and lists) to plain Python values, e.g. for JSON output."""
    if isinstance(value, Variant):
        # A signature without "v" holds no variant: its value is plain already. The common
        # case by far (a list of 10,000 records holds 200,000 such variants), so inlined.
        return value.value if "v" not in value.signature else unwrap(value.value)
    if isinstance(value, dict):
        return {
            k: v.value if type(v) is Variant and "v" not in v.signature else unwrap(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value
