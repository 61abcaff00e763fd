"""Start-up of the query commands (list, show, stats, watch): every ``crashbroker`` command
imports crashbroker.cli first, so what only other commands or options use is imported where it
is used. A module-level import of one of these makes this test fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Not imported by importing crashbroker.cli, nor by a `list` that finds no bus.
NOT_AT_START_UP = (
    # Made lazy for start-up time:
    "crashbroker.domain.model",  # ~4 ms of frozen dataclasses; the client gets plain values
    "json",  # --json and watch
    "datetime",  # -S/-U (with domain.timespec)
    "crashbroker.domain.timespec",
    "crashbroker.docgen",  # man pages and completions: install
    # Imported by their commands only (daemon, install, cleanup, doctor):
    "crashbroker.daemon",
    "crashbroker.broker",
    "crashbroker.adapters.dbus_service",
    "crashbroker.config",
    "crashbroker.logs",
    "logging.handlers",
    "crashbroker.manual",
    "crashbroker.ops.install",
    "crashbroker.ops.cleanup",
    "crashbroker.ops.doctor",
    "crashbroker.domain.doctor",
    "crashbroker.launcher",
    "crashbroker.notifier",
    "systemd",
    "systemd.journal",
    "sqlite3",
    "aiofiles",
    "xdg",
)

# As the console script starts (entry.py), then a list without a daemon's bus (exit code 3);
# prints a line each: the modules after the import, those after the list, the exit code.
PROBE = """
import sys
from crashbroker import entry
entry._without_openssl()
import crashbroker.cli
imported = " ".join(sys.modules)
code = crashbroker.cli.main(["--bus-address", "unix:path=" + sys.argv[1], "list"])
print(imported, " ".join(sys.modules), code, sep="\\n")
"""


def test_the_query_commands_leave_the_other_commands_modules_unimported(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "no-bus")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "cannot connect to the session bus" in done.stderr, done.stderr
    imported, after_list, code = (line.split() for line in done.stdout.splitlines())
    assert "crashbroker.cli" in imported and code == ["3"]
    assert sorted(set(imported) & {*NOT_AT_START_UP, "crashbroker.pager"}) == []
    assert sorted(set(after_list) & set(NOT_AT_START_UP)) == []
