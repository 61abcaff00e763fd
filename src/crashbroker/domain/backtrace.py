"""Reading gdb's ``thread apply all bt`` output: the crashing thread's top frames, and the
signature they refine (pure)."""

from __future__ import annotations

import re

from crashbroker.domain.model import CoredumpEntry

SIGNATURE_FRAMES = 3
# Frames of the signal path itself: the same for every crash, so they say nothing about it.
_NOISE = re.compile(
    r"^(__pthread_kill\w*|__GI_raise|__GI_abort|raise|abort|__restore_rt|__assert_fail\w*|"
    r"_ZN6KCrash\w+|KCrash::.*|qt_assert\w*|qt_message_fatal\w*|QMessageLogger::fatal.*|\?\?)$"
)
_HANDLER_MARK = "<signal handler called>"
_THREAD = re.compile(r"^Thread (\d+) ")
_FRAME = re.compile(r"^#(\d+)\s+(?:0x[0-9a-fA-F]+ in )?(.+)$")
_LOCATION = re.compile(r" (?:at|from) \S+$")


def crashing_thread_frames(gdb_output: str) -> list[str]:
    """Function names of the crashing thread, innermost first.

    In a kernel core the thread that took the signal is thread 1; ``thread apply all bt`` lists
    threads from the highest number down, so thread 1 comes last. Output without thread headers
    (a single-threaded ``bt``) is read as one thread.
    """
    threads: dict[int, list[str]] = {}
    current = 1
    for line in gdb_output.splitlines():
        header = _THREAD.match(line)
        if header:
            current = int(header.group(1))
            threads[current] = []
            continue
        frame = _FRAME.match(line.strip())
        if frame:
            if frame.group(1) == "0":
                # A new listing: gdb also prints the current frame once when it loads the core.
                threads[current] = []
            threads.setdefault(current, []).append(_function(frame.group(2)))
    if not threads:
        return []
    return threads.get(1) or threads[min(threads)]


def _before_last_group(text: str) -> str:
    """``text`` without its final balanced ``(...)`` group (and the space before it); ``text``
    itself when it does not end in one. Names may hold parentheses of their own (templates)."""
    if not text.endswith(")"):
        return text
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return text[:i].rstrip() or text
    return text


def _function(rest: str) -> str:
    """``f (a=1, b=2) at x.c:3`` → ``f``: drop the location, then gdb's argument list."""
    return _before_last_group(_LOCATION.sub("", rest.strip()))


def _without_parameters(name: str) -> str:
    """``ns::f(int, char*) const`` → ``ns::f``: overloads differ, the crash site does not."""
    if name.startswith("<"):
        return name
    return _before_last_group(name.removesuffix(" const"))


def refined_signature(entry: CoredumpEntry, gdb_output: str) -> str | None:
    """exe:signal:top frames, or None when the trace has no meaningful frame."""
    frames = crashing_thread_frames(gdb_output)
    if _HANDLER_MARK in frames:
        # Above the mark is the handler (KCrash re-raising); below it, where the crash happened.
        frames = frames[frames.index(_HANDLER_MARK) + 1 :]
    frames = [f for f in frames if not _NOISE.match(f)]
    if not frames:
        return None
    exe = entry.exe.removesuffix(" (deleted)") or entry.comm
    top = [_without_parameters(f) for f in frames[:SIGNATURE_FRAMES]]
    return f"{exe}:{entry.signal_name}:{'|'.join(top)}"
