"""``crashbroker install``: the user units and the D-Bus activation file where a session finds
them, with the absolute path of the installed commands filled in; with ``--kcrash-dump-only``
also an ``environment.d`` drop-in setting ``KCRASH_DUMP_ONLY=1`` for the user's sessions.

Files it writes carry a marker line; a file without it (the user's own, or a distribution's) is
never overwritten or removed without ``--force``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from crashbroker.config import xdg_dir

MARKER = "# Installed by `crashbroker install`; it is rewritten and removed by it."
UNITS = (
    "crashbroker.service",
    "crashbroker-launcher.service",
    "crashbroker-notifier.service",
    "crashbroker-cleanup.service",
    "crashbroker-cleanup.timer",
)
ACTIVATION = "org.kde.crashbroker1.service"
# environment.d(5): read by the user manager when it starts; 60- sorts after distribution
# defaults and leaves room for the user's own files after it.
KCRASH_DROPIN = "60-crashbroker-kcrash.conf"
KCRASH_DROPIN_TEXT = """\
# Without it, KF5's KCrash starts DrKonqi itself from the crash handler and holds the application
# without a core dump while DrKonqi waits: the crash reaches systemd-coredump, the journal and
# crashbroker only if the user closes DrKonqi (then without its KCrash metadata), else never.
# With it, KCrash only writes its metadata and dumps core;
# crashbroker-launcher then starts DrKonqi for the crash (DrKonqi's own docs give the same
# advice for its coredumpd mode). KF6's KCrash dumps by default when cores go to a pipe.
KCRASH_DUMP_ONLY=1
"""


class InstallError(Exception):
    """The templates are missing, or a foreign file is in the way."""


def data_dir() -> Path:
    """Where ``units/`` and ``dbus/`` are: ``$CRASHBROKER_DATA_DIR``, the source checkout, or
    ``/usr/share/crashbroker``."""
    candidates = [
        Path(os.environ["CRASHBROKER_DATA_DIR"]) if "CRASHBROKER_DATA_DIR" in os.environ else None,
        Path(__file__).resolve().parents[3],
        Path("/usr/share/crashbroker"),
    ]
    for c in candidates:
        if c is not None and (c / "units" / "crashbroker.service").is_file():
            return c
    raise InstallError("cannot find the unit templates (set CRASHBROKER_DATA_DIR)")


def default_bindir() -> Path:
    """The directory holding the ``crashbroker`` command that is running (or on PATH)."""
    here = Path(sys.argv[0])
    if here.name == "crashbroker" and here.is_file():
        return here.resolve().parent
    found = shutil.which("crashbroker")
    if found:
        return Path(found).resolve().parent
    return Path(sys.executable).parent


@dataclass(frozen=True, slots=True)
class Targets:
    units: Path
    services: Path
    environment: Path  # environment.d

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Targets:
        config = xdg_dir(env, "XDG_CONFIG_HOME", ".config")
        return cls(
            units=config / "systemd" / "user",
            services=xdg_dir(env, "XDG_DATA_HOME", ".local/share") / "dbus-1" / "services",
            environment=config / "environment.d",
        )

    @property
    def kcrash_dropin(self) -> Path:
        return self.environment / KCRASH_DROPIN

    def files(self) -> list[tuple[str, Path]]:
        """(template relative to the data dir, destination)."""
        return [(f"units/{u}", self.units / u) for u in UNITS] + [
            (f"dbus/{ACTIVATION}", self.services / ACTIVATION)
        ]


@dataclass(slots=True)
class Result:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def render(template: str, bindir: Path) -> str:
    lines = [line for line in template.splitlines() if not line.startswith("# Template:")]
    return MARKER + "\n" + "\n".join(lines).replace("@BINDIR@", str(bindir)) + "\n"


def render_kcrash_dropin() -> str:
    return MARKER + "\n" + KCRASH_DROPIN_TEXT


def ours(path: Path) -> bool:
    """``path`` is a regular file that ``crashbroker install`` wrote (its first line)."""
    return not path.is_symlink() and _ours(path)


def _ours(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") == MARKER
    except OSError:
        return False


def install(
    targets: Targets, bindir: Path, *, force: bool = False, kcrash_dump_only: bool = False
) -> Result:
    """Write every unit and the activation file, and with ``kcrash_dump_only`` the
    environment.d drop-in; idempotent.

    Raises:
        InstallError: a file we did not write is in the way (and not ``force``).
    """
    source = data_dir()
    result = Result()
    plan = [(dest, render((source / tmpl).read_text(), bindir)) for tmpl, dest in targets.files()]
    if kcrash_dump_only:
        plan.append((targets.kcrash_dropin, render_kcrash_dropin()))
    for dest, _ in plan:
        if (dest.exists() or dest.is_symlink()) and not _ours(dest) and not force:
            raise InstallError(f"{dest} exists and was not written by crashbroker (use --force)")
    for dest, text in plan:
        if dest.is_file() and not dest.is_symlink() and dest.read_text() == text:
            result.unchanged.append(str(dest))
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, dest)  # replaces a link itself, never writes through it
        result.written.append(str(dest))
    return result


def uninstall(targets: Targets, *, force: bool = False) -> Result:
    """Remove what ``install`` wrote (the drop-in too); files without the marker stay."""
    result = Result()
    for dest in [d for _, d in targets.files()] + [targets.kcrash_dropin]:
        if dest.is_symlink() or (dest.exists() and (force or _ours(dest))):
            if dest.is_symlink() and not force:
                continue
            dest.unlink()
            result.removed.append(str(dest))
    return result
