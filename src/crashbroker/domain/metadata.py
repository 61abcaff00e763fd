"""KCrash metadata: file names, the INI and DrKonqi JSON formats, cross-checks, gap filling.

Metadata files are written by the crashing program, so every function here treats its input as
hostile: parsing is total (a :class:`KCrashMetadata` or a :class:`MetadataError`), sizes are
capped, and no value is trusted to name another program's crash.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Mapping

from crashbroker.domain.errors import MetadataError, MetadataReason
from crashbroker.domain.model import CoredumpEntry, KCrashMetadata, MetadataSource
from crashbroker.domain.text import clean_text

MAX_FILE_BYTES = 256 * 1024
MAX_KEYS_PER_GROUP = 256
MAX_KEY_CHARS = 256
MAX_VALUE_CHARS = 16 * 1024

GROUPS = {
    "KCrash": "kcrash",
    "KCrashTags": "tags",
    "KCrashExtra": "extra",
    "KCrashGPU": "gpu",
}
COMPLETE_GROUP = "KCrashComplete"

# KF5's KCrash writes <pid>.ini inside its signal handler, right before it re-raises the signal
# for the kernel to dump core (kcrash.cpp@kf5 defaultCrashHandler, under alarm(3)), and
# COREDUMP_TIMESTAMP is the kernel's %t of that dump, in whole seconds. So KCrash's file for this
# crash was last written within seconds before COREDUMP_TIMESTAMP: a minute before allows for a
# slow emergency-save function and a loaded machine; 2 s after covers %t's truncation to
# seconds. The name binds only the pid, which every boot hands out again (drkonqi-spec §9.12).
V1_WRITTEN_BEFORE_US = 60_000_000
V1_WRITTEN_AFTER_US = 2_000_000
# Group- or world-writable: another user could have written or swapped the file.

# KConfig's escapes; KCrash itself only writes "\n".
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "s": " ", ";": ";", ",": ","}
_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)")


def v2_name(entry: CoredumpEntry) -> str:
    """KF6 file name: ``<basename(COREDUMP_EXE)>.<_BOOT_ID>.<COREDUMP_PID>.ini``."""
    return f"{entry.exe_basename}.{entry.boot_id}.{entry.pid}.ini"


def v1_name(entry: CoredumpEntry) -> str:
    """KF5 file name: ``<COREDUMP_PID>.ini``."""
    return f"{entry.pid}.ini"


def drkonqi_name(entry: CoredumpEntry) -> str:
    """DrKonqi 6's JSON record: ``<exe>.<bootid>.<pid>.<COREDUMP_TIMESTAMP>.ini``."""
    return f"{entry.exe_basename}.{entry.boot_id}.{entry.pid}.{entry.timestamp}.ini"


def safe_name(name: str) -> bool:
    """A file name we may open inside our directory: one path element, no traversal."""
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def _clean(text: str, limit: int) -> str:
    """Capped, and a valid D-Bus string without control characters but tab and newline: a NUL
    (an INI's raw byte or ``\\x00``) or a lone surrogate (JSON can spell ``\\ud800``) would
    make dbus-daemon drop our connection, or dbus-fast raise, on every announce."""
    return clean_text(text[:limit])


def unescape(value: str) -> str:
    """Undo KConfig value escaping (``\\n``, ``\\t``, ``\\\\``, ``\\s``, ``\\xHH``, …)."""

    def repl(m: re.Match[str]) -> str:
        code = m.group(1)
        if code.startswith("x") and len(code) == 3:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, "\\" + code)

    return _ESCAPE_RE.sub(repl, value) if "\\" in value else value


def parse_ini(data: bytes, path: str, source: MetadataSource) -> KCrashMetadata:
    """Parse a KCrash INI file.

    Tolerates keys before any group (KConfig's default group, ignored), unknown groups (ignored),
    duplicate keys (the last wins, as in KConfig), CRLF, invalid UTF-8 (replaced) and NUL bytes.

    Raises:
        MetadataError: too large, or no ``[KCrash]`` group at all.
    """
    if len(data) > MAX_FILE_BYTES:
        raise MetadataError(path, MetadataReason.TOO_LARGE, f"{len(data)} bytes")
    text = data.decode("utf-8", errors="replace")
    groups: dict[str, dict[str, str]] = {name: {} for name in GROUPS.values()}
    current: dict[str, str] | None = None
    complete = False
    seen_kcrash = False
    for raw_line in text.split("\n"):
        line = raw_line.rstrip("\r").strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1]
            current = None
            if name == COMPLETE_GROUP:
                complete = True
            elif name in GROUPS:
                current = groups[GROUPS[name]]
                seen_kcrash = seen_kcrash or name == "KCrash"
            continue
        if current is None or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if not key or len(key) > MAX_KEY_CHARS:
            continue
        if key not in current and len(current) >= MAX_KEYS_PER_GROUP:
            continue
        current[_clean(key, MAX_KEY_CHARS)] = _clean(unescape(value.strip()), MAX_VALUE_CHARS)
    if not seen_kcrash:
        raise MetadataError(path, MetadataReason.MALFORMED, "no [KCrash] group")
    return KCrashMetadata(
        kcrash=groups["kcrash"],
        tags=groups["tags"],
        extra=groups["extra"],
        gpu=groups["gpu"],
        complete=complete,
        source=source,
        path=path,
    )


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if len(out) >= MAX_KEYS_PER_GROUP:
            break
        if isinstance(k, str) and isinstance(v, str | int | float | bool):
            text = ("true" if v else "false") if isinstance(v, bool) else str(v)
            out[_clean(k, MAX_KEY_CHARS)] = _clean(text, MAX_VALUE_CHARS)
    return out


def parse_drkonqi_json(data: bytes, path: str) -> KCrashMetadata:
    """Parse DrKonqi 6's crash record (JSON despite its ``.ini`` name, drkonqi-spec §4.5).

    Raises:
        MetadataError: too large, not JSON, or no ``kcrash`` object.
    """
    if len(data) > MAX_FILE_BYTES:
        raise MetadataError(path, MetadataReason.TOO_LARGE, f"{len(data)} bytes")
    try:
        doc = json.loads(data.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError) as exc:
        raise MetadataError(path, MetadataReason.MALFORMED, "not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("kcrash"), dict):
        raise MetadataError(path, MetadataReason.MALFORMED, "no kcrash object")
    return KCrashMetadata(
        kcrash=_string_map(doc["kcrash"]),
        tags=_string_map(doc.get("kcrash-tags")),
        extra=_string_map(doc.get("kcrash-extra-data")),
        gpu=_string_map(doc.get("kcrash-gpu")),
        complete=doc.get("kcrash-complete") is True,
        source=MetadataSource.DRKONQI,
        path=path,
    )


def check_belongs(meta: KCrashMetadata, entry: CoredumpEntry) -> None:
    """Refuse metadata that names another program or process than the journal entry.

    v1 names (``<pid>.ini``) collide across boots and pid reuse, and any program of the user can
    write any file name; the ``exe`` key (and ``pid`` when present) must agree with the journal.

    Raises:
        MetadataError: with reason ``EXE_MISMATCH``.
    """
    exe = meta.kcrash.get("exe")
    journal_exe = entry.exe.removesuffix(" (deleted)")
    if exe is not None and exe != journal_exe:
        raise MetadataError(meta.path, MetadataReason.EXE_MISMATCH, f"exe={exe!r}")
    if exe is None and meta.source is MetadataSource.KCRASH_V1:
        raise MetadataError(meta.path, MetadataReason.EXE_MISMATCH, "v1 file without exe=")
    pid = meta.kcrash.get("pid")
    if pid is not None and pid.strip() != str(entry.pid):
        raise MetadataError(meta.path, MetadataReason.EXE_MISMATCH, f"pid={pid!r}")


def private_file(
    owner_uid: int,
    mode: int,
    uid: int,
    *,
    gid: int = -1,
    private_gids: frozenset[int] = frozenset(),
) -> bool:
    """True when a file or directory (``st_uid``, ``st_mode``, ``st_gid``) is ``uid``'s own and
    no one else may write it: owned by ``uid``, not world-writable, and not group-writable
    unless its group is in ``private_gids`` (the user's private group, which holds no one else:
    with umask 002, Debian's default for such groups, every file a user makes is group-writable,
    and refusing those would refuse every KCrash file)."""
    if owner_uid != uid or mode & stat.S_IWOTH:
        return False
    return not mode & stat.S_IWGRP or gid in private_gids


def v1_written_for(mtime_us: int, timestamp: int) -> bool:
    """True when a KF5 ``<pid>.ini`` last modified at ``mtime_us`` can have been written by
    KCrash for the crash dumped at ``timestamp`` (COREDUMP_TIMESTAMP, µs): within
    [``timestamp`` - :data:`V1_WRITTEN_BEFORE_US`, ``timestamp`` + :data:`V1_WRITTEN_AFTER_US`].

    A file of an earlier boot (or an earlier crash of a reused pid) is older than that; one
    written after the dump is not KCrash's.
    """
    return timestamp - V1_WRITTEN_BEFORE_US <= mtime_us <= timestamp + V1_WRITTEN_AFTER_US


def fill_gaps(
    kcrash: Mapping[str, str], entry: CoredumpEntry
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Fill the ``[KCrash]`` keys DrKonqi needs from the journal when the file lacks them.

    Returns:
        The completed mapping and the keys that were filled in.
    """
    filled: dict[str, str] = {
        "signal": str(entry.signal),
        "pid": str(entry.pid),
        "appname": entry.exe_basename or entry.comm,
    }
    if entry.exe:
        filled["exe"] = entry.exe.removesuffix(" (deleted)")
    out = dict(kcrash)
    added = tuple(k for k in filled if not out.get(k))
    for k in added:
        out[k] = filled[k]
    return out, added
