"""A pager for ``list``, ``show`` and ``backtrace`` on a terminal, chosen as systemd does
(systemd's ``src/shared/pager.c``): ``$SYSTEMD_PAGER``, else ``$PAGER``, else ``less``; an
empty value or ``cat`` means none; ``$LESS`` is set to ``$SYSTEMD_LESS`` or ``FRSXMK`` (quit
when it fits one screen, pass colours, chop long lines, keep the screen, long prompt, exit on
Ctrl-C). Never when stdout is not a terminal, nor with ``--no-pager``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping

LESS_DEFAULT = "FRSXMK"


def pager_command(env: Mapping[str, str], *, isatty: bool, enabled: bool = True) -> str | None:
    """The shell command to page through, or None for no pager."""
    if not enabled or not isatty:
        return None
    for name in ("SYSTEMD_PAGER", "PAGER"):
        if name in env:
            value = env[name].strip()
            return None if value in ("", "cat") else value
    return "less"


def pager_environment(env: Mapping[str, str]) -> dict[str, str]:
    out = dict(env)
    out["LESS"] = env.get("SYSTEMD_LESS", LESS_DEFAULT)
    return out


def page(text: str, command: str | None) -> None:
    """Write ``text`` through the pager ``command`` (None: to stdout). Falls back to stdout
    when the pager cannot start; a pager quit early is no error."""
    if command is None or (command == "less" and shutil.which("less") is None):
        sys.stdout.write(text)
        return
    # Ctrl-C is the pager's (less -K exits on it): the client only waits for it, as systemd's
    # commands do, instead of dying with a traceback under the pager.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            env=pager_environment(os.environ),
        )
    except OSError:
        signal.signal(signal.SIGINT, previous)
        sys.stdout.write(text)
        return
    try:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(text.encode("utf-8", errors="surrogateescape"))
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
