"""``crashbroker install``: the user units, the D-Bus activation file, crashbroker's desktop
entry and its KNotification ``crashbroker.notifyrc`` where a session finds them, with the absolute
path of the installed commands filled in; with ``--kcrash-dump-only`` also an ``environment.d``
drop-in setting ``KCRASH_DUMP_ONLY=1`` for the user's sessions. ``--system`` writes the same
files in a distribution's layout under ``DESTDIR/PREFIX`` (plus the interface XML and the
launcher and notifier under ``libexec``), for packaging. Both layouts also get the man pages
and the bash and zsh completions, generated from the argument parsers (manual.py).

Files the user layout writes carry a marker line; a file without it (the user's own, or a
distribution's) is never overwritten or removed without ``--force``.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from crashbroker import manual
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
INTERFACES = ("org.kde.crashbroker1.Manager.xml", "org.kde.crashbroker1.Launcher.xml")
# crashbroker's own identity for notifications (docs/notifier.md): the desktop entry Plasma shows
# as the sender, and the KNotification event list its notification settings read; KF5 looks in
# knotifications5/, KF6 in knotifications6/ of the XDG data dirs.
DESKTOP_FILE = "org.kde.crashbroker.desktop"
NOTIFYRC = "crashbroker.notifyrc"
NOTIFYRC_DIRS = ("knotifications5", "knotifications6")
# In the --system layout they run from libexec: not commands a user types.
LIBEXEC_PROGRAMS = {"crashbroker-launcher": "launcher", "crashbroker-notifier": "notifier"}
# Generated files (manual.py) and where each layout puts them, under the data dir (share/):
# bash-completion 2 loads completions on demand from $XDG_DATA_HOME/bash-completion/completions
# (or $BASH_COMPLETION_USER_DIR/completions) and <prefix>/share/bash-completion/completions;
# zsh has no per-user directory in its default $fpath (docs/operations.md says what to add);
# Debian's zsh reads /usr/share/zsh/vendor-completions, other prefixes' site-functions (zsh's
# own default for /usr/local); man-db finds ~/.local/share/man through ~/.local/bin in $PATH.
ZSH_FILE = "_crashbroker"
MAN_PAGES = (
    "man1/crashbroker.1",
    "man8/crashbroker-launcher.8",
    "man8/crashbroker-notifier.8",
)
BASH_FILE = "crashbroker"
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


def _package_data() -> Path | None:
    """``crashbroker/data`` of an installed wheel (setup.py copies the checkout's ``units/``,
    ``dbus/`` and ``desktop/`` there); None when not a directory on disk."""
    try:
        found = resources.files("crashbroker").joinpath("data")
    except (ModuleNotFoundError, TypeError):
        return None
    return found if isinstance(found, Path) else None


def data_dir() -> Path:
    """Where ``units/``, ``dbus/`` and ``desktop/`` are: ``$CRASHBROKER_DATA_DIR``, the installed
    package's data, the source checkout (an editable install), or ``/usr/share/crashbroker``."""
    candidates = [
        Path(os.environ["CRASHBROKER_DATA_DIR"]) if "CRASHBROKER_DATA_DIR" in os.environ else None,
        _package_data(),
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
    applications: Path
    notifyrc: tuple[Path, ...]  # knotifications5/, knotifications6/
    interfaces: Path | None = None  # only the --system layout ships the XML
    libexec: Path | None = None  # --system: where the launcher and notifier go
    marker: bool = True  # the user layout's ownership marker; packages own --system files
    man: Path | None = None  # share/man: the generated man pages (manual.py)
    bash_completions: Path | None = None
    zsh_functions: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Targets:
        config = xdg_dir(env, "XDG_CONFIG_HOME", ".config")
        data = xdg_dir(env, "XDG_DATA_HOME", ".local/share")
        return cls(
            units=config / "systemd" / "user",
            services=data / "dbus-1" / "services",
            environment=config / "environment.d",
            applications=data / "applications",
            notifyrc=tuple(data / d for d in NOTIFYRC_DIRS),
            man=data / "man",
            bash_completions=(
                Path(env["BASH_COMPLETION_USER_DIR"]) / "completions"
                if env.get("BASH_COMPLETION_USER_DIR")
                else data / "bash-completion" / "completions"
            ),
            zsh_functions=data / "zsh" / "site-functions",
        )

    @classmethod
    def system(cls, prefix: Path, destdir: Path | None = None) -> Targets:
        """A distribution's layout: ``DESTDIR/PREFIX/lib/systemd/user``, ``…/share/dbus-1``,
        ``…/share/applications``, ``…/share/knotifications{5,6}``, ``…/libexec``, ``…/share/man``,
        ``…/share/bash-completion/completions``, ``…/share/zsh/vendor-completions`` (Debian's,
        for the prefix ``/usr``; else ``…/share/zsh/site-functions``)."""
        root = Path(str(destdir) + str(prefix)) if destdir else prefix
        share = root / "share"
        return cls(
            units=root / "lib" / "systemd" / "user",
            services=share / "dbus-1" / "services",
            environment=root / "lib" / "environment.d",
            applications=share / "applications",
            notifyrc=tuple(share / d for d in NOTIFYRC_DIRS),
            interfaces=share / "dbus-1" / "interfaces",
            libexec=root / "libexec",
            marker=False,
            man=share / "man",
            bash_completions=share / "bash-completion" / "completions",
            zsh_functions=share
            / "zsh"
            / ("vendor-completions" if prefix == Path("/usr") else "site-functions"),
        )

    @property
    def kcrash_dropin(self) -> Path:
        return self.environment / KCRASH_DROPIN

    def files(self) -> list[tuple[str, Path]]:
        """(template relative to the data dir, destination)."""
        out = [(f"units/{u}", self.units / u) for u in UNITS]
        out.append((f"dbus/{ACTIVATION}", self.services / ACTIVATION))
        out.append((f"desktop/{DESKTOP_FILE}", self.applications / DESKTOP_FILE))
        out += [(f"desktop/{NOTIFYRC}", d / NOTIFYRC) for d in self.notifyrc]
        if self.interfaces is not None:
            out += [(f"dbus/{x}", self.interfaces / x) for x in INTERFACES]
        return out

    def generated(self) -> list[tuple[str, Path]]:
        """(name in ``manual.generated()``, destination)."""
        out: list[tuple[str, Path]] = []
        if self.man is not None:
            out += [(page, self.man / page) for page in MAN_PAGES]
        if self.bash_completions is not None:
            out.append((manual.BASH, self.bash_completions / BASH_FILE))
        if self.zsh_functions is not None:
            out.append((manual.ZSH, self.zsh_functions / ZSH_FILE))
        return out


@dataclass(slots=True)
class Result:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def render(
    template: str, bindir: Path, libexecdir: Path | None = None, *, marker: bool = True
) -> str:
    """A template with ``@BINDIR@`` and ``@LIBEXECDIR@`` (default: ``bindir``) filled in."""
    lines = [line for line in template.splitlines() if not line.startswith("# Template:")]
    text = "\n".join(lines).replace("@BINDIR@", str(bindir))
    text = text.replace("@LIBEXECDIR@", str(libexecdir or bindir)) + "\n"
    return MARKER + "\n" + text if marker else text


def libexec_script(function: str, python: str) -> str:
    """A ``libexec`` program running ``crashbroker.entry.<function>`` under ``python``."""
    return (
        f"#!{python}\n# crashbroker's {function}, started by its user unit.\nimport sys\n\n"
        f"from crashbroker.entry import {function}\n\nsys.exit({function}())\n"
    )


def render_kcrash_dropin() -> str:
    return MARKER + "\n" + KCRASH_DROPIN_TEXT


# A man page's marker is a roff comment; a zsh completion keeps `#compdef` on its first line.
_ROFF_MARKER = '.\\" ' + MARKER


def mark_generated(name: str, text: str) -> str:
    """A generated file with the user layout's marker where its format allows a comment."""
    if name.startswith("man"):
        return _ROFF_MARKER + "\n" + text
    if name == manual.ZSH:
        first, _, rest = text.partition("\n")
        return f"{first}\n{MARKER}\n{rest}"
    return MARKER + "\n" + text


def ours(path: Path) -> bool:
    """``path`` is a regular file that ``crashbroker install`` wrote (its first line)."""
    return not path.is_symlink() and _ours(path)


def _ours(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            # The first line, or the second after a zsh completion's `#compdef`.
            head = [f.readline().rstrip("\n") for _ in range(2)]
    except OSError:
        return False
    return head[0] in (MARKER, _ROFF_MARKER) or (
        head[0].startswith("#compdef ") and head[1] == MARKER
    )


def install(
    targets: Targets,
    bindir: Path,
    *,
    force: bool = False,
    kcrash_dump_only: bool = False,
    libexecdir: Path | None = None,
    python: str = sys.executable,
) -> Result:
    """Write every unit, the activation file, the desktop entry, the notifyrc, the man pages
    and the shell completions, and with
    ``kcrash_dump_only`` the environment.d drop-in; idempotent. ``libexecdir`` is where the
    units find the launcher and notifier (default ``bindir``); a ``--system`` layout also gets
    them there, as scripts run by ``python``.

    Raises:
        InstallError: a file we did not write is in the way (and not ``force``), or the
            templates are missing.
    """
    source = data_dir()
    result = Result()
    plan = [
        (dest, render((source / tmpl).read_text(), bindir, libexecdir, marker=targets.marker))
        for tmpl, dest in targets.files()
    ]
    generated = targets.generated()
    texts = manual.generated() if generated else {}
    for name, dest in generated:
        text = texts[name]
        plan.append((dest, mark_generated(name, text) if targets.marker else text))
    if kcrash_dump_only:
        plan.append((targets.kcrash_dropin, render_kcrash_dropin()))
    scripts = set()
    if targets.libexec is not None:
        for program, function in LIBEXEC_PROGRAMS.items():
            plan.append((targets.libexec / program, libexec_script(function, python)))
            scripts.add(targets.libexec / program)
    for dest, _ in plan:
        if not targets.marker:
            break  # a package's files: the package manager owns them
        if (dest.exists() or dest.is_symlink()) and not _ours(dest) and not force:
            raise InstallError(f"{dest} exists and was not written by crashbroker (use --force)")
    for dest, text in plan:
        mode = 0o755 if dest in scripts else 0o644
        if (
            dest.is_file()
            and not dest.is_symlink()
            and dest.read_text() == text
            and stat.S_IMODE(dest.stat().st_mode) == mode
        ):
            result.unchanged.append(str(dest))
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        os.replace(tmp, dest)  # replaces a link itself, never writes through it
        result.written.append(str(dest))
    return result


def uninstall(targets: Targets, *, force: bool = False) -> Result:
    """Remove what ``install`` wrote (the drop-in too); files without the marker stay."""
    result = Result()
    dests = [d for _, d in targets.files()] + [d for _, d in targets.generated()]
    for dest in [*dests, targets.kcrash_dropin]:
        if dest.is_symlink() or (dest.exists() and (force or _ours(dest))):
            if dest.is_symlink() and not force:
                continue
            dest.unlink()
            result.removed.append(str(dest))
    return result
