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


# Crashes asked for per ListCrashes call by list_all: about 13 MiB of list records (26 MiB of
# full ones), well within one D-Bus message (an array of 64 MiB at most).
LIST_PAGE = 20_000

# How long `backtrace` waits for the daemon's gdb: runs are one at a time, each within the
# daemon's --backtrace-timeout (default 120 s), so a queue ahead of ours can take a while.
BACKTRACE_WAIT_S = 300.0


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


class BacktraceTimeout(ClientError):
    """No backtrace arrived within the client's own deadline (the daemon may still make it)."""

    def __init__(self, crash_id: str, timeout: float) -> None:
        super().__init__(
            "org.freedesktop.DBus.Error.Timeout",
            f"no backtrace of {crash_id} within {timeout:g} s; gdb may still be running in the "
            "daemon: ask again later",
        )

    @property
    def short_name(self) -> str:
        return "Timeout"


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
        self._listening = False
        self._listen_lock = asyncio.Lock()
        # Callers of backtrace() waiting for the CrashUpdated that ends a run, by crash id.
        self._bt_waiters: dict[str, list[asyncio.Future[Record]]] = {}

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

    async def list_all(self, want: int | None = None, **filters: Variant) -> list[Record]:
        """``ListCrashes`` of ``filters`` (no ``limit`` or ``offset``): the newest ``want``
        matches (None: all), in pages of :data:`LIST_PAGE` (``limit`` and ``offset``) until
        an empty one, so that no reply outgrows a D-Bus message; ``want`` within a page is
        one call. A page answered TooLarge (very large full records) is asked again half as
        long. A daemon older than ``offset`` (InvalidArgs for it) is asked once, unpaged.

        Not a snapshot: a crash arriving or dismissed between two pages shifts the ones after
        it, so a crash can be missed or (given once here, by id) come twice. A page can also
        come back short before the end (the daemon skips a stored record it cannot decode),
        which is why only an empty page ends the listing.

        Raises:
            ClientError: a call failed (TooLarge even for a page of one crash).
        """
        found: dict[str, Record] = {}  # by id, in the daemon's order
        page, offset = LIST_PAGE, 0
        while want is None or len(found) < want:
            size = page if want is None else min(page, want - len(found))
            # An offset of 0 is left out: a daemon older than `offset` answers the first page.
            at = {"offset": Variant("u", offset)} if offset else {}
            try:
                batch = await self.list_crashes(**filters, limit=Variant("u", size), **at)
            except ClientError as exc:
                if exc.short_name == "InvalidArgs" and offset and "offset" in exc.text:
                    return await self._list_unpaged(want, found, filters)
                if exc.short_name != "TooLarge" or size == 1:
                    raise
                page = size // 2
                continue
            if not batch:
                break
            for record in batch:
                found.setdefault(str(record["id"]), record)
            offset += len(batch)
        return list(found.values())[:want]

    async def _list_unpaged(
        self, want: int | None, found: dict[str, Record], filters: dict[str, Variant]
    ) -> list[Record]:
        """The whole listing in one call, for a daemon that knows no ``offset``."""
        limit = {"limit": Variant("u", want)} if want is not None else {}
        for record in await self.list_crashes(**filters, **limit):
            found.setdefault(str(record["id"]), record)
        return list(found.values())[:want]

    async def get_crash(self, crash_id: str) -> Record:
        result: Record = await self.call("GetCrash", "s", [crash_id])
        return result

    async def claim(self, crash_id: str, handler: str) -> bool:
        return bool(await self.call("Claim", "ss", [crash_id, handler]))

    async def release(self, crash_id: str, handler: str) -> bool:
        return bool(await self.call("Release", "ss", [crash_id, handler]))

    async def dismiss(self, crash_id: str) -> None:
        await self.call("Dismiss", "s", [crash_id])

    async def request_backtrace(self, crash_id: str) -> bool:
        """``RequestBacktrace``: True when cached, else the daemon makes it (CrashUpdated)."""
        return bool(await self.call("RequestBacktrace", "s", [crash_id]))

    async def cached_backtrace(self, crash_id: str) -> str:
        """``GetBacktrace``: the cached text; ClientError ``NotReady`` when there is none."""
        return str(await self.call("GetBacktrace", "s", [crash_id]))

    async def backtrace(self, crash_id: str, wait_s: float = BACKTRACE_WAIT_S) -> str:
        """The crash's backtrace, made by the daemon if need be: listen, request, wait for the
        ``CrashUpdated`` that ends the run (no call waits on gdb), then fetch the text.

        Raises:
            ClientError: the request or the run failed (NoSuchCrash, NoCore, CoreTruncated,
                BacktraceFailed, …); BacktraceTimeout after ``wait_s`` seconds.
        """
        await self._listen()  # before the request: the outcome cannot be missed
        done: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        waiters = self._bt_waiters.setdefault(crash_id, [])
        waiters.append(done)
        try:
            if not await self.request_backtrace(crash_id):
                try:
                    async with asyncio.timeout(wait_s):
                        outcome = await done
                except TimeoutError:
                    raise BacktraceTimeout(crash_id, wait_s) from None
                if "backtrace_error" in outcome:
                    raise ClientError(
                        str(outcome["backtrace_error"]),
                        str(outcome.get("backtrace_error_message", "")),
                    )
            return await self.cached_backtrace(crash_id)
        finally:
            waiters.remove(done)
            if not waiters:
                del self._bt_waiters[crash_id]

    async def resolve(self, crash_id: str) -> str:
        """Accept a unique id prefix, as git does for commits.

        Raises:
            ClientError: NoSuchCrash or InvalidArgs (ambiguous prefix).
        """
        crashes = await self.list_all(include_dismissed=Variant("b", True))
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
        if self._events is None:
            self._events = asyncio.Queue()
        await self._listen()

    async def _listen(self) -> None:
        """Receive the daemon's signals (for subscribe() and backtrace()); returns once the
        match rule is in place, also to a second caller arriving while it is being added."""
        async with self._listen_lock:
            if self._listening:
                return
            self.bus.add_message_handler(self._on_message)
            try:
                await self._bus_call(
                    "AddMatch",
                    "s",
                    f"type='signal',sender='{BUS_NAME}',interface='{MANAGER_INTERFACE}',"
                    f"path='{OBJECT_PATH}'",
                )
            except BaseException:
                self.bus.remove_message_handler(self._on_message)
                raise
            self._listening = True

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or msg.interface != MANAGER_INTERFACE:
            return
        kind = _KINDS.get(msg.member or "")
        if kind is None:
            return
        body = unwrap(msg.body)
        event = CrashEvent(kind, str(body[0]), body[1] if len(body) > 1 else {})
        if kind == "updated" and (
            event.data.get("backtrace_available") is True or "backtrace_error" in event.data
        ):
            for waiter in self._bt_waiters.get(event.crash_id, ()):
                if not waiter.done():
                    waiter.set_result(event.data)
        if self._events is not None:
            self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[CrashEvent]:
        """The daemon's signals, in order, forever (until the bus connection ends)."""
        await self.subscribe()
        assert self._events is not None
        while True:
            yield await self._events.get()
