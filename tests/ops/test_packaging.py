"""The wheel as pip and pipx install it: built from a copy of the checkout, installed into a fresh
venv of the system Python, then ``crashbroker install`` in the user layout and the distribution
layout (``--system``), each verified by the real systemd-analyze."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import missing_rig
from crashbroker.ops.install import MARKER, UNITS

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "units",
    "dbus",
    "desktop",
    "src",
)
DATA = [f"units/{u}" for u in UNITS] + [
    "dbus/org.kde.crashbroker1.service",
    "dbus/org.kde.crashbroker1.Manager.xml",
    "dbus/org.kde.crashbroker1.Launcher.xml",
    "desktop/org.kde.crashbroker.desktop",
    "desktop/crashbroker.notifyrc",
]


def sh(*cmd: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], env=env, capture_output=True, text=True, check=False, timeout=240
    )
    assert done.returncode == 0, (cmd, done.stdout, done.stderr)
    return done.stdout


def verify(unit_dir: Path, env: dict[str, str]) -> None:
    """systemd-analyze verify --user on every unit; any diagnostic fails."""
    for unit in sorted(unit_dir.iterdir()):
        v = subprocess.run(
            ["systemd-analyze", "verify", "--user", "--man=no", str(unit)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert v.returncode == 0 and v.stderr.strip() == "", (unit, v.stderr)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "src"
    tree.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            shutil.copy2(source, tree / name)
    # Build isolation fetches setuptools from the package index.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), "."],
        cwd=tree, capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    if built.returncode != 0:
        missing_rig(f"pip wheel could not build (no package index?): {built.stderr[-2000:]}")
    [whl] = (tmp / "dist").glob("crashbroker-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Path:
    """A fresh venv of /usr/bin/python3 with only the wheel installed; its dependencies are
    the test venv's (a .pth after its own site-packages), so nothing else is downloaded."""
    if not Path("/usr/bin/python3").exists():
        missing_rig("/usr/bin/python3 missing")
    v = wheel.parent / "venv"
    sh("/usr/bin/python3", "-m", "venv", v)
    sh(v / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(sh(v / "bin" / "python", "-c", where).strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz-crashbroker-test-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return v


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    if shutil.which("systemd-analyze") is None:
        missing_rig("systemd-analyze missing (package systemd)")
    home, run = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    run.mkdir(mode=0o700)
    drop = ("XDG_", "DBUS_", "CRASHBROKER_", "PYTHON", "VIRTUAL_ENV")
    e = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    e.update(HOME=str(home), XDG_RUNTIME_DIR=str(run), PATH="/usr/bin:/bin")
    return e


def test_the_wheel_carries_units_dbus_and_desktop_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in DATA:
        assert f"crashbroker/data/{rel}" in names
        packed = zipfile.ZipFile(wheel).read(f"crashbroker/data/{rel}")
        assert packed == (ROOT / rel).read_bytes(), rel


def test_an_installed_wheel_installs_the_user_layout(venv: Path, env: dict[str, str]) -> None:
    bindir = venv / "bin"
    where = "from crashbroker.ops.install import data_dir; print(data_dir())"
    found = sh(bindir / "python", "-c", where, env=env)
    data = Path(found.strip())  # the package data, not the checkout
    assert (data.name, data.parent.name, data.parent.parent.name) == (
        "data",
        "crashbroker",
        "site-packages",
    )
    out = sh(bindir / "crashbroker", "install", env=env)
    assert out.count("wrote ") == 14
    home = Path(env["HOME"])
    units = home / ".config/systemd/user"
    share = home / ".local/share"
    exec_start = {
        u.name: [line for line in u.read_text().splitlines() if line.startswith("ExecStart=")]
        for u in units.iterdir()
    }
    assert exec_start == {
        "crashbroker.service": [f"ExecStart={bindir}/crashbroker daemon"],
        "crashbroker-cleanup.service": [f"ExecStart={bindir}/crashbroker cleanup"],
        "crashbroker-cleanup.timer": [],
        "crashbroker-launcher.service": [f"ExecStart={bindir}/crashbroker-launcher"],
        "crashbroker-notifier.service": [f"ExecStart={bindir}/crashbroker-notifier"],
    }
    activation = (share / "dbus-1/services/org.kde.crashbroker1.service").read_text()
    assert f"Exec={bindir}/crashbroker daemon" in activation
    desktop = (share / "applications/org.kde.crashbroker.desktop").read_text()
    assert desktop.startswith(MARKER) and f"Exec={bindir}/crashbroker list" in desktop
    for kf in ("knotifications5", "knotifications6"):
        assert "[Event/crashed]" in (share / kf / "crashbroker.notifyrc").read_text()
    verify(units, env)
    # Made from the installed code's parsers: man pages, bash and zsh completions.
    assert "\\fB\\-\\-since\\fR" in (share / "man/man1/crashbroker.1").read_text()
    assert (share / "man/man8/crashbroker-launcher.8").is_file()
    assert (
        "complete -F _crashbroker crashbroker"
        in (share / "bash-completion/completions/crashbroker").read_text()
    )
    assert (share / "zsh/site-functions/_crashbroker").read_text().startswith("#compdef ")
    assert sh(bindir / "crashbroker", "install", "--uninstall", env=env).count("removed ") == 14


def test_an_installed_wheel_installs_the_distribution_layout(
    venv: Path, env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    cmd = [venv / "bin" / "crashbroker", "install", "--system", "--prefix=/usr"]
    sh(*cmd, f"--destdir={dest}", env=env)
    tree = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert tree == sorted(
        [f"usr/lib/systemd/user/{u}" for u in UNITS]
        + [
            "usr/share/dbus-1/services/org.kde.crashbroker1.service",
            "usr/share/dbus-1/interfaces/org.kde.crashbroker1.Manager.xml",
            "usr/share/dbus-1/interfaces/org.kde.crashbroker1.Launcher.xml",
            "usr/share/applications/org.kde.crashbroker.desktop",
            "usr/share/knotifications5/crashbroker.notifyrc",
            "usr/share/knotifications6/crashbroker.notifyrc",
            "usr/libexec/crashbroker-launcher",
            "usr/libexec/crashbroker-notifier",
            "usr/share/man/man1/crashbroker.1",
            "usr/share/man/man8/crashbroker-launcher.8",
            "usr/share/man/man8/crashbroker-notifier.8",
            "usr/share/bash-completion/completions/crashbroker",
            "usr/share/zsh/vendor-completions/_crashbroker",
        ]
    )
    units = dest / "usr/lib/systemd/user"
    assert "ExecStart=/usr/bin/crashbroker daemon" in (units / "crashbroker.service").read_text()
    for program in ("launcher", "notifier"):
        unit = (units / f"crashbroker-{program}.service").read_text()
        assert f"ExecStart=/usr/libexec/crashbroker-{program}\n" in unit
        assert os.access(dest / f"usr/libexec/crashbroker-{program}", os.X_OK)
    assert (
        "Exec=/usr/bin/crashbroker daemon"
        in (dest / "usr/share/dbus-1/services/org.kde.crashbroker1.service").read_text()
    )
    xml = dest / "usr/share/dbus-1/interfaces/org.kde.crashbroker1.Manager.xml"
    assert xml.read_bytes() == (ROOT / "dbus/org.kde.crashbroker1.Manager.xml").read_bytes()
    for f in dest.rglob("*"):
        if f.is_file():
            assert MARKER not in f.read_text(), f  # a package's files, not the user's

    # Into a real prefix (the venv itself): the units verify clean, commands and all, and the
    # libexec programs run.
    sh(venv / "bin" / "crashbroker", "install", "--system", f"--prefix={venv}", env=env)
    verify(venv / "lib/systemd/user", env)
    for program in ("launcher", "notifier"):
        assert "usage:" in sh(venv / "libexec" / f"crashbroker-{program}", "--help", env=env)
