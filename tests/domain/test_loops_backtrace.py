"""Crash bursts and loops (timestamps passed in), and reading gdb's output (recorded real runs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import make_crash
from crashbroker.domain.backtrace import crashing_thread_frames, refined_signature
from crashbroker.domain.loops import BurstMember, LoopPolicy, LoopTracker
from crashbroker.domain.model import Crash, CrashState, KCrashLib

from .test_correlator import make_entry

DATA = Path(__file__).resolve().parents[1] / "data"
S = 1_000_000
T0 = 1_700_000_000_000_000


def tracker(threshold: int = 3, window_s: int = 60) -> LoopTracker:
    return LoopTracker(LoopPolicy(threshold=threshold, window_us=window_s * S))


def test_first_crash_is_a_head_and_the_next_within_the_window_folds_into_it() -> None:
    t = tracker()
    first = t.place("app:SIGSEGV", "a", T0)
    second = t.place("app:SIGSEGV", "b", T0 + 59 * S)
    assert not first.folded
    assert first.burst.head_id == "a"
    assert second.folded
    assert second.burst.head_id == "a"
    assert (second.burst.count, second.burst.last_id, second.burst.last_seen) == (
        2,
        "b",
        T0 + 59 * S,
    )
    assert not second.burst.loop


def test_a_gap_longer_than_the_window_starts_a_new_burst() -> None:
    t = tracker()
    t.place("k", "a", T0)
    later = t.place("k", "b", T0 + 61 * S)
    assert not later.folded
    assert later.burst.head_id == "b"


def test_the_window_is_measured_from_the_previous_crash_so_a_slow_loop_stays_one_burst() -> None:
    t = tracker(threshold=3, window_s=60)
    for i in range(10):
        placed = t.place("k", f"c{i}", T0 + i * 50 * S)
    assert placed.burst.head_id == "c0"
    assert placed.burst.count == 10
    # 3 crashes never fall within 60 s (they are 50 s apart): a burst, not a loop.
    assert not placed.burst.loop


def test_threshold_crashes_within_the_window_make_a_loop_that_stays_a_loop() -> None:
    t = tracker(threshold=3, window_s=10)
    assert not t.place("k", "a", T0).burst.loop
    assert not t.place("k", "b", T0 + 4 * S).burst.loop
    assert t.place("k", "c", T0 + 8 * S).burst.loop
    assert t.place("k", "d", T0 + 18 * S).burst.loop  # the loop slowed down: still that loop


def test_keys_are_independent() -> None:
    t = tracker()
    t.place("a:SIGSEGV", "a1", T0)
    other = t.place("b:SIGSEGV", "b1", T0 + S)
    same_exe_other_signal = t.place("a:SIGABRT", "a2", T0 + S)
    assert not other.folded
    assert not same_exe_other_signal.folded


def test_out_of_order_timestamps_fold_by_distance() -> None:
    t = tracker()
    t.place("k", "a", T0 + 30 * S)
    older = t.place("k", "b", T0)
    assert older.folded
    assert older.burst.last_seen == T0 + 30 * S


def test_window_zero_turns_grouping_off() -> None:
    t = tracker(window_s=0)
    t.place("k", "a", T0)
    assert not t.place("k", "b", T0).folded


def test_closing_a_burst_makes_the_next_crash_a_head() -> None:
    t = tracker()
    t.place("k", "a", T0)
    t.close("a")
    assert not t.place("k", "b", T0 + S).folded
    t.close("nonexistent")  # harmless


@pytest.mark.parametrize(("threshold", "window"), [(1, 60 * S), (0, 60 * S), (3, -1)])
def test_policy_rejects_nonsense(threshold: int, window: int) -> None:
    with pytest.raises(ValueError, match="threshold"):
        LoopPolicy(threshold=threshold, window_us=window)


def stored(
    crash_id: str, ts: int, head: str = "", loop: bool = False, dismissed: bool = False
) -> Crash:
    state = CrashState.DISMISSED if dismissed else CrashState.NEW
    crash = make_crash(int(ts % 100_000_000 // S) + 1, ts, ts, "/usr/bin/kf6app", state, head)
    return dataclasses.replace(crash, id=crash_id, loop=loop)


def test_restore_reopens_the_latest_burst_so_a_loop_across_a_restart_stays_one_event() -> None:
    t = tracker(threshold=3, window_s=60)
    old = stored("old", T0)
    head = stored("h", T0 + 600 * S, loop=True)
    members = [stored(f"m{i}", T0 + (601 + i) * S, head="h") for i in range(3)]
    t.restore(BurstMember.of("k", c) for c in [old, head, *members])
    placed = t.place("k", "new", T0 + 610 * S)
    assert placed.folded
    assert placed.burst.head_id == "h"
    assert placed.burst.count == 5
    assert placed.burst.loop


def test_restore_leaves_a_dismissed_head_closed() -> None:
    t = tracker()
    t.restore([BurstMember.of("k", stored("h", T0, dismissed=True))])
    assert not t.place("k", "new", T0 + S).folded


# ---- gdb output ---------------------------------------------------------------------------------


def test_crashing_thread_is_thread_1_of_a_multithreaded_trace() -> None:
    frames = crashing_thread_frames((DATA / "kronometer.gdb.txt").read_text())
    assert frames[0] == "__pthread_kill_implementation"
    assert "<signal handler called>" in frames
    assert "QGuiApplication::font()" in frames
    assert frames.count("__pthread_kill_implementation") == 1  # the load-time line is not a frame


def test_single_threaded_trace_without_headers_is_one_thread() -> None:
    frames = crashing_thread_frames((DATA / "sleep.gdb.txt").read_text())
    assert frames[0] == "__GI___clock_nanosleep"
    assert frames[1:3] == ["__GI___nanosleep", "??"]
    assert len(frames) == 8  # the load-time "#0" line is not counted twice


def test_refined_signature_skips_the_crash_handler_and_the_signal_path() -> None:
    entry = dataclasses.replace(
        make_entry(kcrash_lib=KCrashLib.KF5), exe="/usr/bin/kronometer", comm="kronometer"
    )
    sig = refined_signature(entry, (DATA / "kronometer.gdb.txt").read_text())
    assert sig is not None
    exe, signal, frames = sig.split(":", 2)
    assert (exe, signal) == ("/usr/bin/kronometer", "SIGSEGV")
    top = frames.split("|")
    assert len(top) == 3
    assert not any("KCrash" in f or "pthread_kill" in f or f == "raise" for f in top)


def test_refined_signature_of_a_plain_crash_keeps_its_top_frames() -> None:
    entry = dataclasses.replace(make_entry(), exe="/usr/bin/sleep")
    sig = refined_signature(entry, (DATA / "sleep.gdb.txt").read_text())
    assert sig is not None
    assert sig.startswith("/usr/bin/sleep:SIGSEGV:__GI___clock_nanosleep|")


@pytest.mark.parametrize(
    "text",
    ["", "No symbol table is loaded.\n", "#0  0x0000 in ?? ()\n#1  0x0001 in ?? ()\n"],
)
def test_no_meaningful_frame_gives_no_refined_signature(text: str) -> None:
    assert refined_signature(make_entry(), text) is None


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            "QObjectPrivate::addConnection(int, QObjectPrivate::Connection*)",
            "QObjectPrivate::addConnection",
        ),
        ("QWidget::event(QEvent*) const", "QWidget::event"),
        (
            "std::function<void (int)>::operator()(int) const",
            "std::function<void (int)>::operator()",
        ),
        ("_int_malloc", "_int_malloc"),
        ("<signal handler called>", "<signal handler called>"),
    ],
)
def test_signature_frames_drop_parameter_lists(frame: str, expected: str) -> None:
    entry = dataclasses.replace(make_entry(), exe="/usr/bin/app")
    text = f"#0  0x0000000000401000 in {frame} () from /usr/lib/libx.so\n"
    if frame.startswith("<"):
        assert refined_signature(entry, text) is None
    else:
        assert refined_signature(entry, text) == f"/usr/bin/app:SIGSEGV:{expected}"
