"""Log lines carry sd-daemon priorities when stderr is the journal stream, and only then."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crashbroker import logs


def record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("crashbroker.daemon", level, __file__, 1, msg, (), exc_info)


def journal_stream(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}"


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (logging.WARNING + 5, 4),
        (logging.NOTSET, 7),
    ],
)
def test_levels_map_to_sd_daemon_priorities(level: int, priority: int):
    assert logs.syslog_priority(level) == priority


def test_journal_format_is_a_priority_prefix_without_level_word():
    line = logs.JournalFormatter().format(record(logging.WARNING, "store full"))
    assert line == "<4>crashbroker.daemon: store full"


def test_every_line_of_a_traceback_keeps_the_priority():
    text = logs.JournalFormatter().format(record(logging.ERROR, "worker failed", exc=True))
    lines = text.split("\n")
    assert len(lines) > 3
    assert lines[0] == "<3>crashbroker.daemon: worker failed"
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>RuntimeError: boom"


def test_journal_stream_must_be_our_very_stderr(tmp_path: Path):
    path = tmp_path / "stderr"
    path.write_text("")
    stat = path.stat()
    assert logs.is_journal_stream({"JOURNAL_STREAM": journal_stream(path)}, stat)
    assert not logs.is_journal_stream({}, stat)
    assert not logs.is_journal_stream({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"}, stat)
    assert not logs.is_journal_stream({"JOURNAL_STREAM": "8:x"}, stat)
    assert not logs.is_journal_stream({"JOURNAL_STREAM": "8"}, stat)


def test_formatter_follows_the_stream(tmp_path: Path):
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        env = {"JOURNAL_STREAM": journal_stream(path)}
        assert isinstance(logs.formatter_for(stream, env), logs.JournalFormatter)
        human = logs.formatter_for(stream, {"JOURNAL_STREAM": "8:1234"})
        assert not isinstance(human, logs.JournalFormatter)
        assert human.format(record(logging.WARNING, "x")) == "WARNING crashbroker.daemon: x"


def run_daemon(tmp_path: Path, journal: bool) -> list[str]:
    """The daemon up to its failure to reach a bus that is not there: a DEBUG, an INFO and an
    ERROR line, on a stderr that is (or is not) the stream JOURNAL_STREAM names."""
    for name in ("state", "cache", "journal"):
        (tmp_path / name).mkdir(exist_ok=True)
    err = tmp_path / "stderr"
    err.write_text("")
    env = dict(os.environ, JOURNAL_STREAM=journal_stream(err) if journal else "8:1234")
    argv = [
        sys.executable, "-m", "crashbroker", f"--bus-address=unix:path={tmp_path}/none",
        "daemon", "--log-level=DEBUG", f"--state-dir={tmp_path}/state",
        f"--cache-home={tmp_path}/cache", f"--journal-dir={tmp_path}/journal",
    ]  # fmt: skip
    with err.open("w") as stderr:
        done = subprocess.run(argv, stderr=stderr, env=env, timeout=60, check=False)
    assert done.returncode == 1
    return err.read_text().splitlines()


def test_daemon_logs_priorities_into_the_journal_stream(tmp_path: Path):
    lines = run_daemon(tmp_path, journal=True)
    assert lines
    assert all(line[:3] in {"<2>", "<3>", "<4>", "<6>", "<7>"} for line in lines), lines
    assert "<3>crashbroker.daemon: cannot connect to the session bus" in "\n".join(lines)
    assert any(line.startswith("<7>") for line in lines), lines
    assert any(line.startswith("<6>crashbroker.") for line in lines), lines


def test_daemon_keeps_the_human_format_elsewhere(tmp_path: Path):
    lines = run_daemon(tmp_path, journal=False)
    assert "ERROR crashbroker.daemon: cannot connect to the session bus" in "\n".join(lines)
    assert not any(line.startswith("<") for line in lines), lines
