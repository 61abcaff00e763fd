"""Starting DrKonqi the way DrKonqi's own coredump launcher does (pure).

Interop contract (``drkonqi-spec.md`` §4.4-§4.7):

- argv: ``--<key> <value>`` for every ``[KCrash]`` key except ``exe``; a value of exactly ``true``
  or ``false`` becomes a bare flag. DrKonqi 5.27 read the keys through QSettings, which sorts
  them; DrKonqi 6 iterates a JSON object. A KCrash ``exe`` ending in ``/drkonqi`` means DrKonqi
  itself crashed: no arguments, no launch.
- environment: the launcher's own, minus the service manager's activation variables, plus
  ``DRKONQI_BACKEND=COREDUMPD`` and ``DRKONQI_METADATA_FILE``.
- metadata file: DrKonqi 5 (Plasma 5.23-5.27) gets the KCrash INI with a ``[Journal]`` group of
  the entry's fields; DrKonqi 6 gets the v2 JSON record under ``drkonqi/crashes/`` with
  ``drkonqi.PickedUp``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BACKEND = "COREDUMPD"
HANDLER = "crashbroker-launcher"
# Set by the service manager for the launcher itself; DrKonqi must not inherit them (it would
# think it was socket-activated, or log into our journal stream).
ACTIVATION_VARIABLES = frozenset(
    {
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "MANAGERPID",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
        "SYSTEMD_EXEC_PID",
        "TRIGGER_UNIT",
        "TRIGGER_PATH",
        "TRIGGER_TIMER_REALTIME_USEC",
        "TRIGGER_TIMER_MONOTONIC_USEC",
        "MONITOR_SERVICE_RESULT",
        "MONITOR_EXIT_CODE",
        "MONITOR_EXIT_STATUS",
        "MONITOR_INVOCATION_ID",
        "MONITOR_UNIT",
    }
)
# Our own processes: python running one of our entry points, or the scripts by name.
_OWN_NAMES = ("crashbroker", "crashbroker-launcher", "crashbroker-notifier")


class Flavor(enum.StrEnum):
    """Which DrKonqi is installed: it decides the metadata file and the argv order."""

    V5 = "5"
    V6 = "6"


def arguments(kcrash: Mapping[str, str], flavor: Flavor) -> list[str] | None:
    """DrKonqi's options for a ``[KCrash]`` group; None when DrKonqi must not be started."""
    if kcrash.get("exe", "").endswith("/drkonqi"):
        return None
    keys = sorted(kcrash) if flavor is Flavor.V5 else list(kcrash)
    argv: list[str] = []
    for key in keys:
        if key == "exe":
            continue
        value = kcrash[key]
        argv.append(f"--{key}")
        if value not in ("true", "false"):
            argv.append(value)
    return argv


def child_environment(env: Mapping[str, str], metadata_file: str) -> dict[str, str]:
    """DrKonqi's environment: ours without activation variables, plus the backend contract."""
    child = {k: v for k, v in env.items() if k not in ACTIVATION_VARIABLES}
    child["DRKONQI_BACKEND"] = BACKEND
    child["DRKONQI_METADATA_FILE"] = metadata_file
    return child


def _ini_value(value: str) -> str:
    """A value as QSettings writes a byte array, escaped so QSettings reads it back."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\x{ord(ch):x}")
        else:
            out.append(ch)
    text = "@ByteArray(" + "".join(out) + ")"
    # QSettings quotes values holding its list separators or edge spaces.
    if any(c in text for c in ";,=") or text != text.strip():
        text = f'"{text}"'
    return text


def v5_metadata(kcrash_ini: str, journal: Mapping[str, str]) -> str:
    """DrKonqi 5's metadata file: the KCrash INI as written, then a ``[Journal]`` group."""
    lines = [kcrash_ini.rstrip("\n"), "", "[Journal]"]
    for key in sorted(journal):
        if _valid_ini_key(key):
            lines.append(f"{key}={_ini_value(journal[key])}")
    return "\n".join(lines) + "\n"


def _valid_ini_key(key: str) -> bool:
    # Journal field names are [A-Z0-9_]; anything else would break the INI.
    return bool(key) and all(c.isascii() and (c.isalnum() or c == "_") for c in key)


@dataclass(frozen=True, slots=True)
class KCrashGroups:
    """The groups of a KCrash file, for DrKonqi 6's JSON record."""

    kcrash: Mapping[str, str]
    tags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)
    gpu: Mapping[str, str] = field(default_factory=dict)
    complete: bool = False


def v6_metadata(groups: KCrashGroups, journal: Mapping[str, str], cursor: str) -> str:
    """DrKonqi 6's v2 JSON record (spec §4.5), picked up by us."""
    doc: dict[str, Any] = {
        "version": 2,
        "kcrash": dict(groups.kcrash),
        "kcrash-tags": dict(groups.tags),
        "kcrash-extra-data": dict(groups.extra),
        "kcrash-gpu": dict(groups.gpu),
        "kcrash-complete": groups.complete,
        "journal": {**journal, "_DRKONQI_SD_CURSOR": cursor},
        "drkonqi": {"PickedUp": True},
    }
    return json.dumps(doc, indent=4, ensure_ascii=False)


def v6_metadata_name(exe: str, boot_id: str, pid: int, timestamp: int) -> str:
    """``<basename(exe)>.<boot>.<pid>.<COREDUMP_TIMESTAMP>.ini`` (JSON despite the name)."""
    base = exe.removesuffix(" (deleted)").rsplit("/", 1)[-1]
    return f"{base}.{boot_id}.{pid}.{timestamp}.ini"


def own_process(exe: str, cmdline: str, comm: str) -> bool:
    """A crash of crashbroker itself (python running our entry points) or of DrKonqi."""
    base = exe.removesuffix(" (deleted)").rsplit("/", 1)[-1]
    if base == "drkonqi" or comm == "drkonqi" or base in _OWN_NAMES:
        return True
    if not base.startswith("python"):
        return False
    args = cmdline.split()[1:]
    if len(args) >= 2 and args[0] == "-m":
        return args[1] == "crashbroker" or args[1].startswith("crashbroker.")
    return bool(args) and args[0].rsplit("/", 1)[-1] in _OWN_NAMES


class Skip(enum.StrEnum):
    """Why a crash is not launched (logged, and the answer of ``Launch``)."""

    NO_KCRASH = "not a KCrash crash"
    PAST = "happened while we were not running"
    NOT_NEW = "already claimed or dismissed"
    NO_CORE = "no core to debug"
    KDE_DEBUG = "KDE_DEBUG is set"
    OWN = "a crash of DrKonqi or crashbroker"
    DRKONQI_SEEN = "DrKonqi already picked it up"
    RATE_LIMITED = "this signature was launched moments ago"
    NO_ARGUMENTS = "KCrash data names DrKonqi itself"


def should_launch(
    crash: Mapping[str, Any], *, kde_debug: bool, explicit: bool = False
) -> Skip | None:
    """None when DrKonqi should be started for ``crash`` (a record as the daemon sends it).

    ``explicit`` is a user's request (``Launch``): past crashes are fine then.
    """
    if not crash.get("kcrash"):
        return Skip.NO_KCRASH
    if own_process(str(crash.get("exe", "")), str(crash.get("cmdline", "")), str(crash["comm"])):
        return Skip.OWN
    if kde_debug:
        return Skip.KDE_DEBUG
    if crash.get("kcrash_source") == "drkonqi":
        return Skip.DRKONQI_SEEN
    if not crash.get("core_available"):
        return Skip.NO_CORE
    if not explicit and crash.get("past"):
        return Skip.PAST
    if not explicit and crash.get("state") != "new":
        return Skip.NOT_NEW
    return None


class RateLimit:
    """At most one automatic launch per signature per ``interval_us`` (a loop that slips
    through grouping, or two bursts close together, still gets one DrKonqi)."""

    def __init__(self, interval_us: int) -> None:
        self.interval_us = interval_us
        self._last: dict[str, int] = {}

    def allow(self, key: str, now: int) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval_us:
            return False
        self._last[key] = now
        return True
