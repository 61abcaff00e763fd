"""A client of ``org.freedesktop.Notifications`` (Desktop Notifications spec 1.2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from crashbroker.domain.notification import DESKTOP_ENTRY, NOTIFYRC_NAME, Notice

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
IFACE = "org.freedesktop.Notifications"


class NotificationError(Exception):
    """The server answered a call with an error."""


class Notifications:
    """Notify/CloseNotification, and the server's ActionInvoked/NotificationClosed.

    The server sends its signals to the connection that called ``Notify`` (dunst unicasts them);
    only signals whose sender is the current owner of the name are believed, so another client
    cannot fake a click.
    """

    def __init__(self, bus: MessageBus, app_name: str = "crashbroker") -> None:
        self._bus = bus
        self._app_name = app_name
        self._owner = ""
        self.on_action: Callable[[int, str], None] = lambda nid, key: None
        self.on_closed: Callable[[int, int], None] = lambda nid, reason: None
        bus.add_message_handler(self._on_message)

    async def _call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        reply = await self._bus.call(
            Message(
                destination=NAME,
                path=PATH,
                interface=IFACE,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise NotificationError(f"{reply.error_name}: {reply.body[0] if reply.body else ''}")
        return reply.body

    async def server_owner(self) -> str:
        """The unique name of the server now ('' when none), remembered for signal checks."""
        reply = await self._bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="NameHasOwner",
                signature="s",
                body=[NAME],
            )
        )
        assert reply is not None
        if not reply.body or not reply.body[0]:
            self._owner = ""
            return ""
        owner = await self._bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetNameOwner",
                signature="s",
                body=[NAME],
            )
        )
        assert owner is not None
        self._owner = str(owner.body[0]) if owner.message_type == MessageType.METHOD_RETURN else ""
        return self._owner

    async def capabilities(self) -> list[str]:
        return [str(c) for c in (await self._call("GetCapabilities"))[0]]

    async def notify(self, notice: Notice, replaces_id: int = 0, timeout_ms: int = -1) -> int:
        # What KNotification sends: our own desktop entry (the sender Plasma shows, whose
        # settings "Configure…" opens) and the notifyrc name + event, so each event can be
        # configured; the crashed program only as the image.
        hints: dict[str, Variant] = {
            "urgency": Variant("y", notice.urgency),
            "desktop-entry": Variant("s", DESKTOP_ENTRY),
            "x-kde-appname": Variant("s", NOTIFYRC_NAME),
            "x-kde-eventId": Variant("s", notice.event),
        }
        if notice.image:
            hints["image-path"] = Variant("s", notice.image)
        body = await self._call(
            "Notify",
            "susssasa{sv}i",
            [
                self._app_name,
                replaces_id,
                notice.icon,
                notice.summary,
                notice.body,
                list(notice.actions),
                hints,
                timeout_ms,
            ],
        )
        await self.server_owner()  # the server may have been (re)started by activation
        return int(body[0])

    async def close(self, notification_id: int) -> None:
        await self._call("CloseNotification", "u", [notification_id])

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or msg.interface != IFACE:
            return
        if not self._owner or msg.sender != self._owner:
            return
        if msg.member == "ActionInvoked" and msg.signature == "us":
            self.on_action(int(msg.body[0]), str(msg.body[1]))
        elif msg.member == "NotificationClosed" and msg.signature == "uu":
            self.on_closed(int(msg.body[0]), int(msg.body[1]))
