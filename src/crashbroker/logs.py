"""Log lines on stderr: sd-daemon priority prefixes when stderr is the journal, else for people.

Under systemd, stderr is a stream to journald, which stamps each line with a time, the unit and a
priority — by default the unit's ``SyslogLevel=`` (info) unless the line starts with ``<N>``
(sd-daemon(3), ``SyslogLevelPrefix=`` on by default). So in the journal every line gets its
syslog priority as ``<N>`` and no level word; ``journalctl --user -u crashbroker -p warning``
then shows warnings and worse. systemd sets ``JOURNAL_STREAM=DEVICE:INODE`` (systemd.exec(5));
stderr is the journal only when fd 2 is still that very stream — a child that inherited the
variable but was redirected (a test, a pipe to ``less``) keeps the human format.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

HUMAN_FORMAT = "%(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

# sd-daemon(3) / syslog(3) priorities; the standard levels between them round down (a level
# above WARNING but below ERROR is still a warning).
_PRIORITIES = (
    (logging.CRITICAL, 2),  # SD_CRIT
    (logging.ERROR, 3),  # SD_ERR
    (logging.WARNING, 4),  # SD_WARNING
    (logging.INFO, 6),  # SD_INFO
)
_DEBUG = 7  # SD_DEBUG


def syslog_priority(levelno: int) -> int:
    """The sd-daemon priority of a logging level (CRITICAL 2, ERROR 3, WARNING 4, INFO 6,
    DEBUG and below 7)."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return _DEBUG


class JournalFormatter(logging.Formatter):
    """``<N>name: message``; each line of a multi-line record (a traceback) gets the prefix, as
    journald makes one entry per line."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def is_journal_stream(environ: Mapping[str, str], stat: os.stat_result) -> bool:
    """True when ``stat`` (of our stderr) is the stream ``JOURNAL_STREAM`` names."""
    device, sep, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        return (int(device), int(inode)) == (stat.st_dev, stat.st_ino)
    except ValueError:
        return False


def formatter_for(stream: TextIO, environ: Mapping[str, str]) -> logging.Formatter:
    """The journal's format when ``stream`` is the journal stream, else the human one."""
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (io.UnsupportedOperation), or closed
        return logging.Formatter(HUMAN_FORMAT)
    if is_journal_stream(environ, stat):
        return JournalFormatter()
    return logging.Formatter(HUMAN_FORMAT)


def configure(level: str | int, stream: TextIO | None = None) -> None:
    """Configure the root logger once, for a program's ``main``: one handler on stderr."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter_for(stream, os.environ))
    logging.basicConfig(level=level, handlers=[handler])
