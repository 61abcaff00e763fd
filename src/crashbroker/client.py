"""An async client of ``org.kde.crashbroker1.Manager``: the CLI and the subscriber processes
(launcher, notifier) use it. Records come back as plain Python values (variants unwrapped)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from crashbroker.adapters.dbus_names import (
    BUS_NAME,
    ERROR_PREFIX,
    MANAGER_INTERFACE,
    OBJECT_PATH,
    SIGNAL_DETECTED,
    SIGNAL_REMOVED,
    SIGNAL_UPDATED,
)
from crashbroker.adapters.dbus_record import unwrap

Record = dict[str, Any]
NOT_RUNNING = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
)
_KINDS: dict[str, Literal["detected", "updated", "removed"]] = {
    SIGNAL_DETECTED: "detected",
    SIGNAL_UPDATED: "updated",
    SIGNAL_REMOVED: "removed",
}


class ClientError(Exception):
    """A D-Bus call failed; ``name`` is the D-Bus error name."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        super().__init__(f"{name}: {text}")

    @property
    def not_running(self) -> bool:
        """The daemon does not own its name on this bus."""
        return self.name in NOT_RUNNING

    @property
    def short_name(self) -> str:
        """``NoSuchCrash`` for ``org.kde.crashbroker1.Error.NoSuchCrash``."""
        return self.name.removeprefix(ERROR_PREFIX)


@dataclass(frozen=True, slots=True)
class CrashEvent:
    """One signal: ``data`` is the record (detected), the changed keys (updated) or {}."""

    kind: Literal["detected", "updated", "removed"]
    crash_id: str
    data: Record


async def connect_bus(address: str | None = None) -> MessageBus:
    """The session bus (or ``address``). Raises whatever dbus-fast raises when there is none."""
    bus = MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SESSION)
    return await bus.connect()


class BrokerClient:
    """Calls and signals of the crashbroker daemon on one bus connection."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._events: asyncio.Queue[CrashEvent] | None = None

    async def call(
        self,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        destination: str = BUS_NAME,
        path: str = OBJECT_PATH,
        interface: str = MANAGER_INTERFACE,
    ) -> Any:
        """Call a method; returns the unwrapped single value (or the list of values).

        Raises:
            ClientError: the call was answered with an error.
        """
        reply = await self.bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None  # only None for NO_REPLY_EXPECTED calls
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise ClientError(reply.error_name or "", str(text))
        values = unwrap(reply.body)
        return values[0] if len(values) == 1 else values

    async def _bus_call(self, member: str, signature: str, *body: Any) -> Any:
        return await self.call(
            member,
            signature,
            list(body),
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
        )

    async def daemon_running(self) -> bool:
        return bool(await self._bus_call("NameHasOwner", "s", BUS_NAME))

    async def list_crashes(self, **filters: Variant) -> list[Record]:
        result: list[Record] = await self.call("ListCrashes", "a{sv}", [filters])
        return result

    async def get_crash(self, crash_id: str) -> Record:
        result: Record = await self.call("GetCrash", "s", [crash_id])
        return result

    async def claim(self, crash_id: str, handler: str) -> bool:
        return bool(await self.call("Claim", "ss", [crash_id, handler]))

    async def release(self, crash_id: str, handler: str) -> bool:
        return bool(await self.call("Release", "ss", [crash_id, handler]))

    async def dismiss(self, crash_id: str) -> None:
        await self.call("Dismiss", "s", [crash_id])

    async def backtrace(self, crash_id: str) -> str:
        return str(await self.call("GetBacktrace", "s", [crash_id]))

    async def resolve(self, crash_id: str) -> str:
        """Accept a unique id prefix, as git does for commits.

        Raises:
            ClientError: NoSuchCrash or InvalidArgs (ambiguous prefix).
        """
        crashes = await self.list_crashes(include_dismissed=Variant("b", True))
        ids = [str(c["id"]) for c in crashes]
        if crash_id in ids:
            return crash_id
        matches = [i for i in ids if i.startswith(crash_id)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ClientError(ERROR_PREFIX + "InvalidArgs", f"{crash_id!r} is ambiguous")
        raise ClientError(ERROR_PREFIX + "NoSuchCrash", f"no crash with id {crash_id!r}")

    async def subscribe(self) -> None:
        """Start queueing the daemon's signals; call before reading state to miss nothing."""
        if self._events is not None:
            return
        self._events = asyncio.Queue()
        self.bus.add_message_handler(self._on_message)
        await self._bus_call(
            "AddMatch",
            "s",
            f"type='signal',sender='{BUS_NAME}',interface='{MANAGER_INTERFACE}',"
            f"path='{OBJECT_PATH}'",
        )

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or msg.interface != MANAGER_INTERFACE:
            return
        kind = _KINDS.get(msg.member or "")
        if kind is None or self._events is None:
            return
        body = unwrap(msg.body)
        self._events.put_nowait(CrashEvent(kind, str(body[0]), body[1] if len(body) > 1 else {}))

    async def events(self) -> AsyncIterator[CrashEvent]:
        """The daemon's signals, in order, forever (until the bus connection ends)."""
        await self.subscribe()
        assert self._events is not None
        while True:
            yield await self._events.get()
