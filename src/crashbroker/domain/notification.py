"""What the notifier shows (pure): text, actions, and which notification a crash event replaces.

One notification per burst head: a crash loop updates it in place (``replaces_id``) instead of
raising N notifications. Crashes found while catching up at login (``past``) never get one each:
they are summed up in one notification once the daemon has caught up.

The sender is crashbroker itself (its desktop entry and notifyrc, as KNotification does); the
crashed program is named in the text and shown by its icon as the notification's image.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crashbroker.domain.drkonqi import RateLimit, own_process

ACTION_DEFAULT = "default"  # a click on the notification: show details
ACTION_DETAILS = "details"
ACTION_REPORT = "report"
ACTION_DISMISS = "dismiss"
ACTION_DISMISS_ALL = "dismiss-all"
DEFAULT_ICON = "tools-report-bug"
MAX_LISTED = 5
# Our identity on the notification server (desktop/ in the checkout; `crashbroker install`).
DESKTOP_ENTRY = "org.kde.crashbroker"  # the desktop-entry hint
NOTIFYRC_NAME = "crashbroker"  # x-kde-appname: knotifications{5,6}/crashbroker.notifyrc
# x-kde-eventId: the [Event/…] groups of crashbroker.notifyrc.
EVENT_CRASHED = "crashed"
EVENT_LOOP = "crashLoop"
EVENT_AWAY = "crashesWhileAway"
EVENT_REPORT_FAILED = "reportFailed"
_UNIT_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")

Record = Mapping[str, Any]


def escape(text: str) -> str:
    """Text for the spec's body markup: ``&``, ``<``, ``>`` (and quotes) as entities.

    Servers like dunst interpret markup whether or not they announce ``body-markup``, so text
    from a crashed program (its name, its command line) is always escaped.
    """
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


def unit_desktop_ids(unit: str) -> list[str]:
    """Desktop file ids a unit name gives, by systemd's desktop conventions:
    ``app[-<launcher>]-<id>[@<random>].service`` and ``app[-<launcher>]-<id>-<random>.scope``,
    with ``-`` inside ``<id>`` escaped as ``\\x2d``. Both readings of an optional launcher
    prefix are returned, the whole name first."""
    if not unit.startswith("app-"):
        return []
    name, _, kind = unit[4:].rpartition(".")
    if kind == "service":
        name = name.split("@", 1)[0]
    elif kind == "scope":
        name = name.rsplit("-", 1)[0] if "-" in name else name
    else:
        return []
    readings = [name]
    if "-" in name:
        readings.append(name.split("-", 1)[1])
    ids = [_UNIT_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), r) for r in readings]
    return [i for i in ids if i and "/" not in i and not i.startswith(".")]


def image_hint(icon: str) -> str:
    """The ``image-path`` hint for a desktop entry's ``Icon=``: an icon name as it is, a file
    as a ``file://`` URI (the spec's two forms)."""
    if icon.startswith("/"):
        return "file://" + urllib.parse.quote(icon)
    return icon


@dataclass(frozen=True, slots=True)
class AppInfo:
    """The crashed program, from its desktop entry when there is one (name localized)."""

    name: str
    icon: str = DEFAULT_ICON
    desktop_id: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """One ``Notify`` call's content. The sender's identity (app name, desktop entry,
    notifyrc) is crashbroker's; ``image`` shows the crashed program."""

    summary: str
    body: str
    actions: tuple[str, ...]  # key, label, key, label, …
    icon: str = DEFAULT_ICON  # app_icon: crashbroker's
    image: str = ""  # image-path hint: the crashed program's icon
    event: str = EVENT_CRASHED  # x-kde-eventId
    urgency: int = 1  # 0 low, 1 normal, 2 critical


def _when(usec: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(usec / 1_000_000))


def crash_notice(crash: Record, app: AppInfo, *, can_report: bool) -> Notice:
    """A live crash (the head of its burst)."""
    name = app.name or str(crash.get("app_name", "")) or "A program"
    count = int(crash.get("burst", 1) or 1)
    if count > 1:
        summary = f"{name} crashed {count} times"
        lead = "It keeps crashing" if crash.get("loop") else "It crashed again"
        signal = escape(str(crash["signal_name"]))
        body = f"{lead}: {signal}, last at {_when(int(crash['last_seen']))}."
    else:
        summary = f"{name} crashed"
        body = (
            f"{escape(str(crash['exe'] or crash['comm']))} (pid {crash['pid']}) received "
            f"{escape(str(crash['signal_name']))} at {_when(int(crash['timestamp']))}."
        )
    actions: list[str] = [ACTION_DEFAULT, "Details", ACTION_DETAILS, "Details"]
    if can_report and crash.get("kcrash"):
        actions += [ACTION_REPORT, "Report…"]
    actions += [ACTION_DISMISS, "Dismiss"]
    return Notice(
        summary=summary,
        body=body,
        actions=tuple(actions),
        image=image_hint(app.icon),
        event=EVENT_LOOP if count > 1 else EVENT_CRASHED,
        urgency=2 if crash.get("loop") else 1,
    )


def details_notice(crash: Record, app: AppInfo, frames: list[str] | None, error: str) -> Notice:
    """The same notification, replaced with what a user needs to recognise the crash."""
    lines = [
        f"{escape(str(crash['exe']))} (pid {crash['pid']}, {escape(str(crash['signal_name']))})",
        f"at {_when(int(crash['timestamp']))}",
    ]
    if frames:
        lines.append("Crashed in:")
        lines += [f"  {escape(f)}" for f in frames[:5]]
    elif error:
        lines.append(f"No backtrace: {escape(error)}")
    lines.append(f"crashbroker show {crash['id']}")
    return Notice(
        summary=f"{app.name or crash['app_name']} crashed",
        body="\n".join(lines),
        actions=(ACTION_DISMISS, "Dismiss"),
        image=image_hint(app.icon),
        event=EVENT_LOOP if int(crash.get("burst", 1) or 1) > 1 else EVENT_CRASHED,
    )


def past_summary(crashes: Iterable[Record]) -> Notice | None:
    """One notification for every crash found at login; None when there were none."""
    items = list(crashes)
    if not items:
        return None
    names: list[str] = []
    for c in items:
        name = str(c.get("app_name") or c.get("comm") or "?")
        if name not in names:
            names.append(name)
    apps = ", ".join(escape(n) for n in names[:MAX_LISTED])
    if len(names) > MAX_LISTED:
        apps += f" and {len(names) - MAX_LISTED} more"
    count = len(items)
    summary = f"{count} crash{'es' if count != 1 else ''} while you were away"
    return Notice(
        summary=summary,
        body=f"{apps}. See them with: crashbroker list",
        actions=(ACTION_DISMISS_ALL, "Dismiss all"),
        event=EVENT_AWAY,
        urgency=0,
    )


@dataclass(slots=True)
class Shown:
    """Which notification shows which crash (by burst head)."""

    by_crash: dict[str, int] = field(default_factory=dict)
    by_id: dict[int, str] = field(default_factory=dict)

    def add(self, crash_id: str, notification_id: int) -> None:
        old = self.by_crash.get(crash_id)
        if old is not None and old != notification_id:
            self.by_id.pop(old, None)
        self.by_crash[crash_id] = notification_id
        self.by_id[notification_id] = crash_id

    def forget_notification(self, notification_id: int) -> str | None:
        crash_id = self.by_id.pop(notification_id, None)
        if crash_id is not None and self.by_crash.get(crash_id) == notification_id:
            del self.by_crash[crash_id]
        return crash_id

    def forget_crash(self, crash_id: str) -> int | None:
        nid = self.by_crash.pop(crash_id, None)
        if nid is not None:
            self.by_id.pop(nid, None)
        return nid


class Policy:
    """Which events become notifications (per-signature rate limit for our own processes)."""

    def __init__(self, own_interval_us: int = 3_600_000_000) -> None:
        self._own = RateLimit(own_interval_us)

    def notify_live(self, crash: Record, now: int) -> bool:
        """A crash of crashbroker itself is shown at most once an hour per signature: a
        notifier that crashes in a loop must not flood the desktop about itself."""
        if own_process(
            str(crash.get("exe", "")), str(crash.get("cmdline", "")), str(crash.get("comm", ""))
        ):
            return self._own.allow(str(crash.get("signature", "")), now)
        return True

    @staticmethod
    def update_shows(changes: Record, *, shown: bool, loop_announced: bool) -> bool:
        """A burst update replaces a shown notification; one the user closed comes back once,
        when the burst turns into a loop."""
        if "burst" not in changes:
            return False
        return shown or (bool(changes.get("loop")) and not loop_announced)
