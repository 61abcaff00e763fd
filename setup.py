"""Build hook: the wheel carries the checkout's ``units/``, ``dbus/`` and ``desktop/`` as package
data (``crashbroker/data/…``), where ``crashbroker install`` finds them through
importlib.resources. They stay at the top of the checkout, where an editable install reads them.
Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("units", "dbus", "desktop")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        root = Path(__file__).resolve().parent
        for name in DATA_DIRS:
            target = Path(self.build_lib) / "crashbroker" / "data" / name
            self.mkpath(str(target))
            for source in sorted((root / name).iterdir()):
                if source.is_file():
                    self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildPyWithData})
