"""Starting DrKonqi the way DrKonqi's own coredump launcher does (pure).

Interop contract (``drkonqi-spec.md`` §4.4-§4.7):

- argv: ``--<key> <value>`` for every ``[KCrash]`` key except ``exe``; a value of exactly ``true``
  or ``false`` becomes a bare flag. Unlike DrKonqi's launcher, only the options KCrash passes
  (:data:`OPTIONS`) with values that cannot be read as options: the file is written by the
  crashed program, and Qt reads its own options (``-platformpluginpath``…) anywhere in argv.
  DrKonqi 5.27 read the keys through QSettings, which sorts them; DrKonqi 6 iterates a JSON
  object. A KCrash ``exe`` ending in ``/drkonqi`` means DrKonqi itself crashed: no arguments,
  no launch.
- environment: the launcher's own, minus the service manager's activation variables, plus
  ``DRKONQI_BACKEND=COREDUMPD`` and ``DRKONQI_METADATA_FILE``.
- metadata file: DrKonqi 5 (Plasma 5.23-5.27) gets the KCrash INI with a ``[Journal]`` group of
  the entry's fields; DrKonqi 6 gets the v2 JSON record under ``drkonqi/crashes/`` with
  ``drkonqi.PickedUp``. That record is also DrKonqi 6's own de-duplication (spec §4.4 step 4): a
  record already there is never replaced, and one marked ``PickedUp`` means DrKonqi handled it.
- process: a transient service of the user manager (``systemd-run --user``), not a child of ours,
  so DrKonqi lives outside the launcher's sandbox and cgroup (see :func:`systemd_run_command`).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crashbroker.domain.entry import CoreFile, JournalFields, TrustPolicy, classify

BACKEND = "COREDUMPD"
HANDLER = "crashbroker-launcher"
# Top-level key of the DrKonqi 6 records we write: tells ours from DrKonqi's own. DrKonqi reads
# the keys it knows and keeps the others when it adds its own (``sentryEventId``).
OWNER_KEY = "crashbroker"
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


# The [KCrash] keys KCrash writes, which DrKonqi's launcher passes as ``--<key>``: every key of
# drkonqi-spec §2.4's table (kcrash.cpp@HEAD and @kf5) except ``exe`` (INI only) and ``thread``
# (Windows only), i.e. §4.7's list of resulting options with the legacy ``glrenderer``,
# ``startupid`` and ``kdeinit``. DrKonqi takes unknown options with a warning, so nothing it
# reads is lost; what is kept out is Qt's own options (``platformpluginpath``, ``platformtheme``,
# ``plugin``, ``qwindowgeometry``, ``stylesheet``…), which load code or change how DrKonqi runs.
OPTIONS = frozenset(
    {
        "appname", "apppath", "signal", "pid", "appversion", "programname", "bugaddress",
        "productname", "safer", "restarted", "startupid", "kdeinit", "exceptionname",
        "exceptionwhat", "qtversion", "kdeframeworksversion", "glrenderer", "platform", "display",
    }
)  # fmt: skip
# ``platform`` and ``display`` are read by Qt itself (QGuiApplication), not DrKonqi: KCrash
# passes them so DrKonqi shows where the application did. Only the platforms a desktop
# application runs on are passed, by name alone: a value like ``vnc:port=…``,
# ``wayland:…``-with-options or ``eglfs`` would make DrKonqi listen on a port or take over the
# screen. KF5 writes QGuiApplication::platformName() (``offscreen`` for a headless app, as in
# tests/data/kronometer.ini); KF6 ≥ 6.3 writes KWin's own platform as ``wayland``.
PLATFORMS = frozenset({"xcb", "wayland", "wayland-egl", "offscreen", "minimal"})
# An X display on this machine (":0", ":1.0"); "host:0" would show the crash's details on
# another machine's X server.
_LOCAL_DISPLAY = re.compile(r":[0-9]+(?:\.[0-9]+)?")
_DECIMAL = re.compile(r"[0-9]+")


class Flavor(enum.StrEnum):
    """Which DrKonqi is installed: it decides the metadata file and the argv order."""

    V5 = "5"
    V6 = "6"


def passed_option(key: str, value: str) -> bool:
    """True when ``--<key> <value>`` may be passed to DrKonqi: a key of :data:`OPTIONS` and a
    value no parser can take for an option (no leading ``-``; Qt scans the whole argv for its
    own options), ``platform`` one of :data:`PLATFORMS`, ``display`` a local X display."""
    if key not in OPTIONS or value.startswith("-"):
        return False
    if key == "platform":
        return value in PLATFORMS
    if key == "display":
        return _LOCAL_DISPLAY.fullmatch(value) is not None
    return True


def refused_options(kcrash: Mapping[str, str]) -> list[str]:
    """The ``[KCrash]`` keys :func:`arguments` leaves out (for the log)."""
    return sorted(k for k, v in kcrash.items() if k != "exe" and not passed_option(k, v))


def arguments(
    kcrash: Mapping[str, str], flavor: Flavor, *, dialog: bool = False
) -> list[str] | None:
    """DrKonqi's options for a ``[KCrash]`` group; None when DrKonqi must not be started.

    Only keys :func:`passed_option` allows become options (:func:`refused_options` names the
    rest). ``pid`` and ``signal`` are what DrKonqi cannot do without: one that is not a decimal
    number means no DrKonqi. ``dialog`` (a user's "Report…") adds ``--dialog``: DrKonqi opens
    its dialog at once instead of waiting behind a notification of its own.
    """
    if kcrash.get("exe", "").endswith("/drkonqi"):
        return None
    if any(not _DECIMAL.fullmatch(kcrash.get(k, "0")) for k in ("pid", "signal")):
        return None
    keys = sorted(kcrash) if flavor is Flavor.V5 else list(kcrash)
    argv: list[str] = []
    for key in keys:
        value = kcrash[key]
        if key == "exe" or not passed_option(key, value):
            continue
        argv.append(f"--{key}")
        if value not in ("true", "false"):
            argv.append(value)
    if dialog:
        argv.append("--dialog")
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
    return kcrash_ini.rstrip("\n") + "\n" + v5_journal_group(journal)


def v5_journal_group(journal: Mapping[str, str]) -> str:
    """The ``[Journal]`` group (after a blank line) that :func:`v5_metadata` appends; the
    launcher appends it to the KCrash INI in place, so the file stays the one (device, inode)
    the daemon matched to the crash."""
    lines = ["", "[Journal]"]
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
        OWNER_KEY: {"handler": HANDLER},
    }
    return json.dumps(doc, indent=4, ensure_ascii=False)


def v6_metadata_name(exe: str, boot_id: str, pid: int, timestamp: int) -> str:
    """``<basename(exe)>.<boot>.<pid>.<COREDUMP_TIMESTAMP>.ini`` (JSON despite the name)."""
    base = exe.removesuffix(" (deleted)").rsplit("/", 1)[-1]
    return f"{base}.{boot_id}.{pid}.{timestamp}.ini"


def entry_problem(
    fields: JournalFields, policy: TrustPolicy, core: CoreFile | None, crash: Mapping[str, Any]
) -> str | None:
    """Why the journal entry read at a crash's cursor must not go into DrKonqi's metadata, or
    None when it is that crash's trusted entry.

    The daemon's trust rule again (:func:`~crashbroker.domain.entry.classify`; ``core``: what
    :func:`~crashbroker.domain.entry.core_to_check` names, inspected), and the same crash as
    the record: boot id, pid and COREDUMP_TIMESTAMP (its id), and the cursor itself.
    """
    verdict, entry = classify(fields, policy, core)
    if entry is None:
        return f"the entry there is {verdict.value}"
    if entry.cursor != crash.get("journal_cursor"):
        return "the entry there has another cursor"
    if entry.key.crash_id != crash.get("id") or (entry.boot_id, entry.pid, entry.timestamp) != (
        crash.get("boot_id"),
        crash.get("pid"),
        crash.get("timestamp"),
    ):
        return "the entry there is another crash"
    return None


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
    NO_ARGUMENTS = "KCrash data names DrKonqi itself, or has no numeric pid/signal"
    RECORD_EXISTS = "DrKonqi's record of it exists without PickedUp: left as it is"
    RECORD_REFUSED = "DrKonqi's record of it is not a regular file: left as it is"
    LAUNCHED_BEFORE = "crashbroker-launcher started DrKonqi for it before"


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


class RecordAction(enum.Enum):
    """What to do with DrKonqi 6's record of a crash (``drkonqi/crashes/<name>.ini``)."""

    CREATE = "create"  # none there: write ours (exclusively: it may appear meanwhile)
    REUSE = "reuse"  # ours, and a user asked again: start DrKonqi on it, unchanged


def record_verdict(existing: bytes | None, *, explicit: bool) -> RecordAction | Skip:
    """Decide on the record found at our record's name (``None``: nothing there).

    A record is never replaced: DrKonqi 6's launcher and pickup service write theirs at the same
    name, and one with ``drkonqi.PickedUp`` true means DrKonqi already handled the crash (its own
    de-duplication, spec §4.4 step 4). One without ``PickedUp`` is DrKonqi's too (older builds,
    or a pickup in progress): ours would overwrite what it wrote, so we step aside.

    Args:
        existing: the file's bytes, or None when there is no file at that name.
        explicit: a user's ``Launch``; our own record is then started again as it is.
    """
    if existing is None:
        return RecordAction.CREATE
    try:
        doc = json.loads(existing.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return Skip.RECORD_EXISTS
    if not isinstance(doc, dict):
        return Skip.RECORD_EXISTS
    owner = doc.get(OWNER_KEY)
    if isinstance(owner, dict) and owner.get("handler") == HANDLER:
        return RecordAction.REUSE if explicit else Skip.LAUNCHED_BEFORE
    drkonqi = doc.get("drkonqi")
    if isinstance(drkonqi, dict) and drkonqi.get("PickedUp") is True:
        return Skip.DRKONQI_SEEN
    return Skip.RECORD_EXISTS


# ---- how DrKonqi's process is started ----------------------------------------------------------


class StartVia(enum.StrEnum):
    """How DrKonqi is started (``--start-via``)."""

    AUTO = "auto"  # a transient service when the user manager is reachable, else a child
    SERVICE = "service"  # a transient service of the user manager, or not at all
    CHILD = "child"  # our own child (no service manager, or by choice)


class Start(enum.Enum):
    SERVICE = "transient service of the user manager"
    CHILD = "child of crashbroker-launcher"


# The slice DrKonqi's own drkonqi-coredump-launcher@.service uses, and where a desktop puts apps
# (systemd.special(7)); systemd-run --user would otherwise use the root slice.
SLICE = "app.slice"
# systemd's desktop convention for units of launched apps: app-<launcher>-<app id>@<random>.service
# (systemd.io/DESKTOP_ENVIRONMENTS); DrKonqi's application id is org.kde.drkonqi.
UNIT_PREFIX = "app-crashbroker-org.kde.drkonqi@"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def choose_start(
    via: StartVia, *, manager_socket: str, manager_running: bool, systemd_run: str | None
) -> tuple[Start | None, str]:
    """How to start DrKonqi now, and why (for the log).

    Args:
        via: the configured choice.
        manager_socket: ``$XDG_RUNTIME_DIR/systemd/private`` ("" without ``XDG_RUNTIME_DIR``).
        manager_running: that socket exists (a ``systemd --user`` is listening there).
        systemd_run: the ``systemd-run`` command, or None when it is not installed.

    Returns:
        (``Start.SERVICE`` or ``Start.CHILD``, why) — or (None, why) when ``via`` is
        ``service`` and no user manager can be asked: DrKonqi is then not started.
    """
    if via is StartVia.CHILD:
        return Start.CHILD, "--start-via=child"
    if not manager_socket:
        why = "no user manager: XDG_RUNTIME_DIR is not set"
    elif not manager_running:
        why = f"no user manager: {manager_socket} does not exist"
    elif systemd_run is None:
        why = "systemd-run is not installed"
    else:
        return Start.SERVICE, f"user manager at {manager_socket}"
    return (None if via is StartVia.SERVICE else Start.CHILD), why


_UNIT_CRASH = re.compile(rf"{re.escape(UNIT_PREFIX)}([0-9a-z]{{1,64}})-[0-9a-f]+\.service")


def unit_name(token: str, crash_id: str = "") -> str:
    """The transient unit's name; ``token`` is a random hex string (unique per launch). The
    crash's id is part of it, so a restarted launcher finds the DrKonqi windows still open
    (:func:`crash_of_unit`) and claims their crashes again: a claim ends with the connection
    that made it."""
    if crash_id and re.fullmatch(r"[0-9a-z]{1,64}", crash_id):
        return f"{UNIT_PREFIX}{crash_id}-{token}.service"
    return f"{UNIT_PREFIX}{token}.service"


def crash_of_unit(name: str) -> str | None:
    """The crash id in a unit name made by :func:`unit_name`, or None."""
    m = _UNIT_CRASH.fullmatch(name)
    return m[1] if m else None


def _systemd_argument(arg: str) -> str:
    # The manager expands $VAR and ${VAR} in ExecStart= arguments, also in those of a transient
    # unit (systemd-run 252 has no --expand-environment=no); "$$" is its literal "$". KCrash
    # values (a program name, an exception's text) may hold a "$".
    return arg.replace("$", "$$")


def _passable(name: str, value: str) -> bool:
    # What systemd accepts in Environment=: a shell variable name and UTF-8 text. A value with
    # undecodable bytes (a surrogate escape here) would make the manager refuse the whole unit.
    if not _ENV_NAME.fullmatch(name):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def systemd_run_command(
    systemd_run: str,
    *,
    unit: str,
    description: str,
    drkonqi: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
) -> list[str] | None:
    """The ``systemd-run`` command that starts DrKonqi as a transient service of the user manager.

    Why a service, not ``--scope``: with ``--scope`` systemd-run forks the command itself and
    only moves it into a new cgroup, so DrKonqi would keep the launcher's sandbox for good —
    ``NoNewPrivileges`` and the seccomp filters (``SystemCallArchitectures=``,
    ``RestrictSUIDSGID=``, ``LockPersonality=``) are inherited across fork and exec and cannot be
    dropped, and so is ``UMask=0077`` — and pass it on to every application DrKonqi restarts. A
    transient service is forked by the user manager, from its own clean context, like any app.

    Properties: ``Type=exec`` (systemd-run returns once DrKonqi was exec'd, and fails if it
    could not be), ``ExitType=cgroup`` (the unit stays until the application DrKonqi may restart
    exits too, instead of killing it when DrKonqi exits), ``--collect`` (no failed unit left
    behind), ``app.slice``. The environment is passed whole with ``--setenv``, as a child would
    inherit it: the manager's own lacks ``DRKONQI_*`` and may lack the display variables.

    Returns:
        The command, or None when a variable DrKonqi cannot do without cannot be passed.
    """
    passed = {k: v for k, v in env.items() if _passable(k, v)}
    if any(k not in passed for k in ("DRKONQI_BACKEND", "DRKONQI_METADATA_FILE")):
        return None
    command = [
        systemd_run,
        "--user",
        "--quiet",
        "--no-ask-password",
        "--collect",
        f"--unit={unit}",
        f"--description={description}",
        f"--slice={SLICE}",
        "--service-type=exec",
        "--property=ExitType=cgroup",
        f"--working-directory={cwd}",
    ]
    command += [f"--setenv={k}={v}" for k, v in sorted(passed.items())]
    return [*command, "--", drkonqi, *(_systemd_argument(a) for a in argv)]
