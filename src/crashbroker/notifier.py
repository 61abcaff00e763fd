"""``crashbroker-notifier``: desktop notifications for the daemon's crashes.

A subscriber of ``org.kde.crashbroker1`` and a client of ``org.freedesktop.Notifications``.
One notification per live crash (per burst: a loop replaces it in place); one summary for the
crashes found at login; actions "Details" (backtrace), "Report…" (asks crashbroker-launcher) and
"Dismiss". Composition root of its own: one TaskGroup, signals only set an event, non-zero exit
when the bus goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import xdg.DesktopEntry
import xdg.Exceptions
import xdg.Locale
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from crashbroker.adapters.dbus_names import (
    BUS_NAME,
    LAUNCHER_BUS_NAME,
    LAUNCHER_INTERFACE,
    LAUNCHER_OBJECT_PATH,
    MANAGER_INTERFACE,
    OBJECT_PATH,
)
from crashbroker.adapters.notifications import NotificationError, Notifications
from crashbroker.client import BrokerClient, ClientError, CrashEvent, connect_bus
from crashbroker.domain import notification as n
from crashbroker.domain.backtrace import crashing_thread_frames
from crashbroker.domain.notification import AppInfo, Policy, Shown

logger = logging.getLogger("crashbroker.notifier")


def _desktop_dirs(env: Mapping[str, str]) -> list[Path]:
    home = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME", "/"), ".local/share")
    dirs = [home, *(env.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":")]
    return [Path(d) / "applications" for d in dirs if d]


def _language(env: Mapping[str, str]) -> str | None:
    """The messages locale, as gettext chooses it."""
    for key in ("LC_ALL", "LC_MESSAGES", "LANG"):
        if env.get(key):
            return env[key]
    return None


def read_desktop_entry(path: Path, env: Mapping[str, str] | None = None) -> AppInfo | None:
    """Name (localized for ``env``'s locale) and Icon of a desktop entry, read by pyxdg."""
    if not path.is_file():
        return None  # pyxdg would make a new, empty entry
    xdg.Locale.update(_language(env if env is not None else os.environ))
    try:
        entry = xdg.DesktopEntry.DesktopEntry(str(path))
        name = str(entry.getName() or "")
        icon = str(entry.getIcon() or "")
    except (xdg.Exceptions.Error, OSError, UnicodeError, ValueError) as exc:
        logger.debug("desktop entry %s not read: %s", path, exc)
        return None
    if not name or entry.getHidden():
        return None
    return AppInfo(name, icon or n.DEFAULT_ICON, path.stem)


def app_info(crash: Mapping[str, Any], env: Mapping[str, str]) -> AppInfo:
    """The crashed program's desktop entry: the one its user unit names (systemd's
    ``app-<id>…`` convention, how Plasma and others start applications), else
    ``<exe>.desktop`` / ``org.kde.<exe>.desktop`` / ``org.kde.<appname>.desktop``."""
    base = str(crash.get("exe") or crash.get("comm") or "").rsplit("/", 1)[-1]
    appname = str(crash.get("kcrash", {}).get("appname", ""))
    ids = n.unit_desktop_ids(str(crash.get("user_unit") or ""))
    ids += [x for x in (base, f"org.kde.{base}", f"org.kde.{appname}") if x]
    names = [f"{x}.desktop" for x in ids if "/" not in x and x != n.DESKTOP_ENTRY]
    for directory in _desktop_dirs(env):
        for name in names:
            found = read_desktop_entry(directory / name, env)
            if found:
                return found
    return AppInfo(str(crash.get("app_name") or base or "A program"))


class Notifier:
    """Turns crash events and notification signals into calls (the shell of domain rules)."""

    def __init__(
        self,
        client: BrokerClient,
        server: Notifications,
        tg: asyncio.TaskGroup,
        env: Mapping[str, str],
    ) -> None:
        self._client = client
        self._server = server
        self._tg = tg
        self._env = env
        self._shown = Shown()
        self._policy = Policy()
        self._loop_announced: set[str] = set()
        self._past: dict[str, Mapping[str, Any]] = {}
        self._summary_id = 0
        self._summary_done = False
        self._started = False
        self._crashes: dict[str, Mapping[str, Any]] = {}
        server.on_action = lambda nid, key: self._spawn(self.on_action(nid, key))
        server.on_closed = lambda nid, reason: self._forget(nid)

    def _spawn(self, coro: Any) -> None:
        self._tg.create_task(self._guarded(coro))

    @staticmethod
    async def _guarded(coro: Any) -> None:
        # One failed action must not take the notifier (and its TaskGroup) down.
        try:
            await coro
        except (ClientError, NotificationError, OSError) as exc:
            logger.error("action failed: %s", exc)

    def _forget(self, nid: int) -> None:
        if nid == self._summary_id:
            self._summary_id = 0
        self._shown.forget_notification(nid)

    async def _notify(self, notice: n.Notice, replaces: int = 0) -> int:
        logger.debug("notify %r (replaces %d)", notice.summary, replaces)
        try:
            return await self._server.notify(notice, replaces)
        except NotificationError as exc:
            logger.error("notification not shown (%s): %s", notice.summary, exc)
            return 0

    async def start(self) -> None:
        """The daemon is on the bus: if it has caught up, sum up what it found at login."""
        self._started = True
        caught_up = await self._caught_up()
        logger.debug("daemon found, caught up: %s", caught_up)
        if caught_up:
            await self.show_summary()

    async def _caught_up(self) -> bool:
        try:
            value = await self._client.call(
                "Get",
                "ss",
                [MANAGER_INTERFACE, "CaughtUp"],
                interface="org.freedesktop.DBus.Properties",
            )
        except ClientError:
            return False
        return bool(value)

    async def show_summary(self) -> None:
        """Once: one notification for the crashes found while catching up (still new)."""
        if not self._started or self._summary_done:
            return
        self._summary_done = True
        for crash in await self._client.list_all():
            if crash["past"] and crash["state"] == "new" and not crash["loop_head"]:
                self._past[crash["id"]] = crash
        notice = n.past_summary(self._past.values())
        if notice is not None:
            self._summary_id = await self._notify(notice)
            logger.info("summary of %d crashes found at login", len(self._past))

    async def on_event(self, event: CrashEvent) -> None:
        if event.kind == "detected":
            crash = event.data
            if crash["past"]:
                self._past[event.crash_id] = crash
                return
            now = time.monotonic_ns() // 1000
            if not self._policy.notify_live(crash, now):
                logger.info("not notifying %s again (crashbroker's own crash)", event.crash_id)
                return
            self._crashes[event.crash_id] = crash
            await self._show(crash)
        elif event.kind == "updated":
            await self._update(event.crash_id, event.data)
        elif event.kind == "removed":
            self._past.pop(event.crash_id, None)
            nid = self._shown.forget_crash(event.crash_id)
            if nid:
                await self._close(nid)

    async def _close(self, nid: int) -> None:
        try:
            await self._server.close(nid)
        except NotificationError as exc:
            logger.debug("close %d: %s", nid, exc)

    async def _show(self, crash: Mapping[str, Any], replaces: int = 0) -> None:
        can_report = bool(await self._client.call(
            "NameHasOwner", "s", [LAUNCHER_BUS_NAME], destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
        ))  # fmt: skip
        notice = n.crash_notice(crash, app_info(crash, self._env), can_report=can_report)
        nid = await self._notify(notice, replaces)
        if nid:
            self._shown.add(str(crash["id"]), nid)

    async def _update(self, crash_id: str, changes: Mapping[str, Any]) -> None:
        nid = self._shown.by_crash.get(crash_id, 0)
        if not self._policy.update_shows(
            changes, shown=bool(nid), loop_announced=crash_id in self._loop_announced
        ):
            return
        if changes.get("loop"):
            self._loop_announced.add(crash_id)
        try:
            crash = await self._client.get_crash(crash_id)
        except ClientError:
            return
        if crash["past"] and not nid:
            return  # a loop found at login is part of the summary
        self._crashes[crash_id] = crash
        await self._show(crash, replaces=nid)

    async def on_action(self, nid: int, key: str) -> None:
        if nid == self._summary_id and key == n.ACTION_DISMISS_ALL:
            for past_id in list(self._past):
                await self._dismiss(past_id)
            return
        crash_id = self._shown.by_id.get(nid)
        if crash_id is None:
            return
        logger.info("action %s on %s", key, crash_id)
        if key in (n.ACTION_DEFAULT, n.ACTION_DETAILS):
            await self._details(crash_id, nid)
        elif key == n.ACTION_REPORT:
            await self._report(crash_id)
        elif key == n.ACTION_DISMISS:
            await self._dismiss(crash_id)

    async def _dismiss(self, crash_id: str) -> None:
        try:
            await self._client.dismiss(crash_id)  # CrashRemoved then closes the notification
        except ClientError as exc:
            logger.warning("Dismiss(%s): %s", crash_id, exc)

    async def _details(self, crash_id: str, nid: int) -> None:
        try:
            crash = await self._client.get_crash(crash_id)
        except ClientError:
            return
        frames: list[str] | None = None
        error = ""
        try:
            text = await self._client.backtrace(crash_id)
            frames = [f for f in crashing_thread_frames(text) if f != "??"]
        except ClientError as exc:
            error = f"{exc.short_name}: {exc.text}"
        notice = n.details_notice(crash, app_info(crash, self._env), frames, error)
        new = await self._notify(notice, nid)
        if new:
            self._shown.add(crash_id, new)

    async def _report(self, crash_id: str) -> None:
        reply = await self._client.bus.call(
            Message(
                destination=LAUNCHER_BUS_NAME,
                path=LAUNCHER_OBJECT_PATH,
                interface=LAUNCHER_INTERFACE,
                member="Launch",
                signature="s",
                body=[crash_id],
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR or not reply.body[0]:
            why = reply.body[0] if reply is not None and reply.body else "no answer"
            logger.warning("the launcher did not start DrKonqi for %s (%s)", crash_id, why)
            await self._notify(
                n.Notice(
                    summary="Could not start the crash reporter",
                    body=f"crashbroker-launcher refused or is not running ({n.escape(str(why))}).",
                    actions=(),
                    event=n.EVENT_REPORT_FAILED,
                )
            )


def _properties_changed(bus: MessageBus, notifier: Notifier, tg: asyncio.TaskGroup) -> None:
    """CaughtUp turning true (the daemon finished reading the journal) shows the summary."""

    def handler(msg: Message) -> None:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.member == "PropertiesChanged"
            and msg.path == OBJECT_PATH
            and msg.body
            and msg.body[0] == MANAGER_INTERFACE
        ):
            caught = msg.body[1].get("CaughtUp")
            if caught is not None and caught.value:
                tg.create_task(notifier.show_summary())

    bus.add_message_handler(handler)


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
            stack.callback(loop.remove_signal_handler, signum)
        bus = await connect_bus(args.bus_address)
        stack.callback(bus.disconnect)
        client = BrokerClient(bus)
        await client.subscribe()
        await client.call(
            "AddMatch",
            "s",
            [
                f"type='signal',sender='{BUS_NAME}',interface='org.freedesktop.DBus.Properties',"
                f"path='{OBJECT_PATH}'"
            ],
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
        )
        server = Notifications(bus)
        await server.server_owner()
        async with asyncio.TaskGroup() as tg:
            notifier = Notifier(client, server, tg, dict(os.environ))
            _properties_changed(bus, notifier, tg)
            logger.info("notifying crashes of %s", BUS_NAME)

            async def pump() -> None:
                while not await client.daemon_running():
                    await stop_or_sleep(stop, 1.0)
                await notifier.start()
                async for event in client.events():
                    await notifier.on_event(event)

            tasks = [
                tg.create_task(pump(), name="signals"),
                tg.create_task(stop.wait(), name="stop"),
                tg.create_task(bus.wait_for_disconnect(), name="bus"),  # type: ignore[no-untyped-call]
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            bus_lost = tasks[2].done()
            for task in tasks:
                task.cancel()
    if bus_lost:
        logger.error("lost the session bus; exiting so the service manager restarts us")
        return 1
    return 0


async def stop_or_sleep(stop: asyncio.Event, seconds: float) -> None:
    """Wait for the daemon to appear without outliving a stop request."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crashbroker-notifier", description="Desktop notifications for crashes."
    )
    p.add_argument("--bus-address", help="D-Bus address (default: the session bus)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crashbroker import logs

    logs.configure(args.log_level)
    try:
        return asyncio.run(run(args))
    except OSError as exc:
        logger.error("cannot connect to the session bus: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
