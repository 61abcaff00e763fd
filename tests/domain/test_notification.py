"""What the notifier shows (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crashbroker.domain import notification as n
from crashbroker.domain.notification import AppInfo, Policy, Shown


def crash(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "c1", "exe": "/usr/bin/kronometer", "comm": "kronometer", "cmdline": "kronometer",
        "pid": 42, "signal_name": "SIGSEGV", "timestamp": 1_700_000_000_000_000,
        "last_seen": 1_700_000_010_000_000, "app_name": "Kronometer", "kcrash": {"appname": "k"},
        "burst": 1, "loop": False, "signature": "/usr/bin/kronometer:SIGSEGV",
    }  # fmt: skip
    return {**base, **changes}


def test_escape_covers_the_markup_characters() -> None:
    assert n.escape("<b>&\"'") == "&lt;b&gt;&amp;&quot;&apos;"


def test_single_crash_notice_has_details_report_and_dismiss() -> None:
    notice = n.crash_notice(
        crash(), AppInfo("Kronometer", "kronometer", "org.kde.kronometer"), can_report=True
    )
    assert notice.summary == "Kronometer crashed"
    assert "(pid 42) received SIGSEGV" in notice.body
    assert notice.actions[::2] == ("default", "details", "report", "dismiss")
    # crashbroker is the sender (its icon); the crashed program is the image.
    assert (notice.icon, notice.image, notice.event, notice.urgency) == (
        "tools-report-bug",
        "kronometer",
        "crashed",
        1,
    )


def test_an_icon_file_becomes_a_file_uri_for_image_path() -> None:
    notice = n.crash_notice(crash(), AppInfo("K", "/opt/k/my icon.png"), can_report=False)
    assert notice.image == "file:///opt/k/my%20icon.png"


@pytest.mark.parametrize(
    ("unit", "ids"),
    [
        ("app-org.kde.kronometer@3f2a.service", ["org.kde.kronometer"]),
        ("app-org.kde.kate-12345.scope", ["org.kde.kate"]),
        (
            "app-gnome-org.gnome.Terminal-991.scope",
            ["gnome-org.gnome.Terminal", "org.gnome.Terminal"],
        ),
        (r"app-my\x2dapp@1.service", ["my-app"]),
        ("app-firefox.service", ["firefox"]),
        ("plasma-kwin_x11.service", []),
        ("app-..@1.service", []),
        ("", []),
    ],
)
def test_desktop_ids_from_the_user_unit(unit: str, ids: list[str]) -> None:
    assert n.unit_desktop_ids(unit) == ids


def test_events_name_the_notifyrc_groups() -> None:
    loop = n.crash_notice(crash(burst=3), AppInfo("K"), can_report=False)
    away = n.past_summary([crash(past=True)])
    assert loop.event == "crashLoop" and away is not None and away.event == "crashesWhileAway"
    groups = (Path(__file__).parents[2] / "desktop" / "crashbroker.notifyrc").read_text()
    for event in (n.EVENT_CRASHED, n.EVENT_LOOP, n.EVENT_AWAY, n.EVENT_REPORT_FAILED):
        assert f"[Event/{event}]" in groups
    assert f"DesktopEntry={n.DESKTOP_ENTRY}" in groups


@pytest.mark.parametrize(("kcrash", "can_report"), [({}, True), ({"a": "b"}, False)])
def test_report_only_for_kcrash_crashes_with_a_launcher(
    kcrash: dict[str, str], can_report: bool
) -> None:
    notice = n.crash_notice(crash(kcrash=kcrash), AppInfo("K"), can_report=can_report)
    assert "report" not in notice.actions


def test_loop_notice_counts_and_is_critical() -> None:
    notice = n.crash_notice(crash(burst=5, loop=True), AppInfo("Kronometer"), can_report=False)
    assert notice.summary == "Kronometer crashed 5 times"
    assert notice.body.startswith("It keeps crashing: SIGSEGV")
    assert notice.urgency == 2


def test_hostile_exe_is_escaped_in_the_body() -> None:
    notice = n.crash_notice(crash(exe="/tmp/<i>x</i>"), AppInfo("X"), can_report=False)
    assert "&lt;i&gt;x&lt;/i&gt;" in notice.body and "<i>" not in notice.body


def test_details_show_frames_or_the_reason_there_are_none() -> None:
    d = n.details_notice(crash(), AppInfo("K"), ["f<T>", "g"], "")
    assert "Crashed in:" in d.body and "f&lt;T&gt;" in d.body and "crashbroker show c1" in d.body
    e = n.details_notice(crash(), AppInfo("K"), None, "NoCore: gone")
    assert "No backtrace: NoCore: gone" in e.body


def test_past_summary_is_one_notice_listing_apps_once() -> None:
    assert n.past_summary([]) is None
    items = [crash(app_name=f"app{i % 7}") for i in range(9)]
    notice = n.past_summary(items)
    assert notice is not None
    assert notice.summary == "9 crashes while you were away"
    assert notice.body.startswith("app0, app1, app2, app3, app4 and 2 more.")
    single = n.past_summary([crash()])
    assert single is not None and single.summary == "1 crash while you were away"


def test_shown_maps_both_ways_and_forgets() -> None:
    s = Shown()
    s.add("c1", 7)
    s.add("c1", 8)  # replaced by the server with a new id
    assert s.by_crash == {"c1": 8} and s.by_id == {8: "c1"}
    assert s.forget_notification(8) == "c1" and s.by_crash == {}
    s.add("c2", 9)
    assert s.forget_crash("c2") == 9 and s.by_id == {}


def test_own_crashes_are_notified_once_per_interval() -> None:
    p = Policy(own_interval_us=100)
    own = crash(exe="/usr/bin/python3.11", cmdline="python3 -m crashbroker daemon", comm="python3")
    assert p.notify_live(own, 0)
    assert not p.notify_live(own, 50)
    assert p.notify_live(own, 100)
    assert all(p.notify_live(crash(), t) for t in (0, 1, 2))


@pytest.mark.parametrize(
    ("changes", "shown", "announced", "expected"),
    [
        ({"burst": 2, "loop": False}, True, False, True),
        ({"burst": 2, "loop": False}, False, False, False),
        ({"burst": 3, "loop": True}, False, False, True),
        ({"burst": 4, "loop": True}, False, True, False),
        ({"state": "claimed"}, True, False, False),
    ],
)
def test_burst_updates(
    changes: dict[str, Any], shown: bool, announced: bool, expected: bool
) -> None:
    assert Policy.update_shows(changes, shown=shown, loop_announced=announced) is expected
