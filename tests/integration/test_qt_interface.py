"""Every interface XML in dbus/ is consumable from Qt: Debian's qdbusxml2cpp (Qt 5, the KF5
era, and Qt 6) makes a proxy class of it without a complaint, and the proxy and its moc output
compile against QtDBus.

qdbusxml2cpp knows no Qt type for ``a{sv}``/``aa{sv}`` unless an
``org.qtproject.QtDBus.QtTypeName.{In,Out}N`` annotation names one; for a signal argument it
only prints a warning, exits 0 and drops the type, so its stderr must be empty too. The files
are read when the tests are collected: members added to the XML are covered as they come.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import missing_rig

DBUS_DIR = Path(__file__).resolve().parents[2] / "dbus"
INTERFACES = sorted(DBUS_DIR.glob("*.xml"))


@dataclass(frozen=True)
class QtKit:
    name: str
    xml2cpp: str
    moc: str
    pkg: str
    package: str  # the Debian packages (scripts/setup installs them)
    cxxflags: tuple[str, ...] = ()


KITS = [
    QtKit(
        "qt5",
        "/usr/lib/qt5/bin/qdbusxml2cpp",
        "/usr/lib/qt5/bin/moc",
        "Qt5DBus",
        "qtbase5-dev-tools qtbase5-dev",
    ),
    QtKit(
        "qt6",
        "/usr/lib/qt6/bin/qdbusxml2cpp",
        "/usr/lib/qt6/libexec/moc",
        "Qt6DBus",
        "qt6-base-dev-tools qt6-base-dev",
        ("-std=c++17",),
    ),
]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def cflags(kit: QtKit) -> list[str]:
    for tool in (kit.xml2cpp, kit.moc):
        if not Path(tool).is_file():
            missing_rig(f"{tool} is not installed ({kit.package}; scripts/setup installs them)")
    if shutil.which("g++") is None or shutil.which("pkg-config") is None:
        missing_rig("g++ or pkg-config is not installed (scripts/setup installs them)")
    done = subprocess.run(
        ["pkg-config", "--cflags", kit.pkg], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        missing_rig(f"no {kit.pkg} headers ({kit.package}): {done.stderr.strip()}")
    return done.stdout.split()


def test_dbus_dir_has_the_interfaces():
    names = {p.name for p in INTERFACES}
    assert {"org.kde.crashbroker1.Manager.xml", "org.kde.crashbroker1.Launcher.xml"} <= names


@pytest.mark.parametrize("kit", KITS, ids=[k.name for k in KITS])
@pytest.mark.parametrize("xml", INTERFACES, ids=[p.stem for p in INTERFACES])
def test_qdbusxml2cpp_proxy_compiles(kit: QtKit, xml: Path, tmp_path: Path):
    flags = cflags(kit)
    gen = run([kit.xml2cpp, "-p", "proxy", str(xml)], tmp_path)
    assert gen.returncode == 0, gen.stderr
    assert gen.stderr == "", gen.stderr  # an unknown signal argument type is only a warning
    moc = run([kit.moc, "proxy.h", "-o", "moc_proxy.cpp"], tmp_path)
    assert moc.returncode == 0, moc.stderr
    for source in ("proxy.cpp", "moc_proxy.cpp"):
        cc = run(["g++", "-fPIC", *kit.cxxflags, *flags, "-c", source], tmp_path)
        assert cc.returncode == 0, cc.stderr
