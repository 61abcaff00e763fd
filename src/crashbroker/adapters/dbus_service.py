"""``org.kde.crashbroker1.Manager`` on the session bus: translation only.

Each method unpacks its arguments, calls the broker, and packs the answer. Every
:class:`RequestError` becomes the named error ``org.kde.crashbroker1.Error.<Name>``; anything else
is logged here once and answered with ``…Error.Failed`` and no traceback.
"""

# No ``from __future__ import annotations`` here: dbus-fast reads the annotations at runtime, and
# a postponed ``-> None`` reaches it as the string "None", which it turns into a None signature.
import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Annotated, Any, Protocol

from dbus_fast import DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from crashbroker.adapters import dbus_wire
from crashbroker.adapters.dbus_names import (
    MANAGER_INTERFACE,
    OBJECT_PATH,
    SIGNAL_UPDATED,
    error_name,
)
from crashbroker.adapters.dbus_record import LIST_KEYS, list_items, to_record, unwrap
from crashbroker.adapters.memory import trim_heap
from crashbroker.domain.errors import InvalidArgs, RequestError, TooLarge
from crashbroker.domain.model import Crash
from crashbroker.domain.query import CrashFilter

logger = logging.getLogger(__name__)

_DBUS = "org.freedesktop.DBus"
# Every connection that leaves the bus (its unique name loses its owner): a claimant among them
# gives its claims back. One broad rule installed before the name is requested, rather than one
# per claimant added at claim time: the bus then delivers a claimant's NameOwnerChanged after its
# Claim, so a claimant that leaves at once cannot slip between the claim and the match.
LEFT_THE_BUS_MATCH = (
    f"type='signal',sender='{_DBUS}',path='/org/freedesktop/DBus',interface='{_DBUS}',"
    "member='NameOwnerChanged',arg2=''"
)
BACKTRACE_ERROR = "backtrace_error"  # CrashUpdated keys of a failed backtrace (not record keys)
BACKTRACE_ERROR_MESSAGE = "backtrace_error_message"
DBusRecords = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]
DBusCrashEvent = Annotated[list[Any], DBusSignature("sa{sv}")]
MAX_HANDLER_CHARS = 256
_CHUNK_CACHE = 256
LARGE_REPLY = 1 << 20  # bytes of list records (~2,500 crashes) after which the heap is trimmed
# Names what the store's pre-rendered list records are: a change of the keys renders them again.
LISTING_TAG = "dbus-wire-1:" + ",".join(LIST_KEYS)


class Manager(Protocol):
    """What the service needs from the broker."""

    caught_up: bool

    @property
    def crash_count(self) -> int: ...

    def list_crashes(self, flt: CrashFilter) -> list[Crash]: ...

    def listing(self, flt: CrashFilter) -> list[bytes | Crash]: ...

    def get_crash(self, crash_id: str) -> Crash: ...

    def dismiss(self, crash_id: str) -> None: ...

    def dismiss_all(self) -> int: ...

    def expire(self, max_age_s: int) -> int: ...

    def claim(self, crash_id: str, handler: str, owner: str = "") -> bool: ...

    def release(self, crash_id: str, handler: str, owner: str = "") -> bool: ...

    def claimant_left(self, owner: str) -> int: ...

    def request_backtrace(self, crash_id: str) -> bool: ...

    def cached_backtrace(self, crash_id: str) -> str: ...

    def stats_dict(self) -> dict[str, int]: ...


@contextlib.contextmanager
def _translated(member: str) -> Iterator[None]:
    try:
        yield
    except RequestError as exc:
        raise DBusError(error_name(exc.name), exc.detail) from None
    except DBusError:
        raise
    except Exception:
        logger.exception("%s failed", member)
        raise DBusError(error_name("Failed"), f"{member} failed; see the daemon's log") from None


def _check_handler(handler: str) -> None:
    if not handler or len(handler) > MAX_HANDLER_CHARS:
        raise InvalidArgs(f"handler must be 1..{MAX_HANDLER_CHARS} characters")


class ManagerInterface(ServiceInterface):
    """The exported Manager object; also the broker's :class:`~crashbroker.ports.Publisher`."""

    def __init__(
        self,
        manager: Manager,
        version: str,
        barrier: Callable[[], Awaitable[object]] | None = None,
        max_reply: int = dbus_wire.MAX_ARRAY_LENGTH,
    ) -> None:
        """``max_reply``: the most bytes of records one ListCrashes reply holds (a test lowers
        it); a longer listing is answered with TooLarge."""
        super().__init__(MANAGER_INTERFACE)
        self._manager = manager
        self._version = version
        self._barrier = barrier
        self._max_reply = max_reply
        self._bus: MessageBus | None = None
        # The latest list records made: id -> (the crash as it was, the record's wire bytes).
        # The store asks for one when it writes a crash, the catch-up signal of that crash
        # reuses it; bounded, as the store keeps them all.
        self._chunks: OrderedDict[str, tuple[Crash, bytes]] = OrderedDict()
        self._last_send: asyncio.Future[None] | None = None

    def attach(self, bus: MessageBus) -> Callable[[], None]:
        """Serve ``ListCrashes`` and send ``CrashDetected`` from records marshalled once, on
        ``bus`` (where this object is exported), replies bounded by ``max_reply``. Returns the
        undo. Without it (or when dbus-fast's internals moved) dbus-fast's general path
        answers: same bytes, slower, and a listing too long for one message fails with dbus-fast's
        own error instead of TooLarge."""
        if not dbus_wire.AVAILABLE:
            return lambda: None
        self._bus = bus
        bus.add_message_handler(self._on_message)

        def detach() -> None:
            bus.remove_message_handler(self._on_message)
            self._bus = None

        return detach

    async def serve_claims(self, bus: MessageBus) -> Callable[[], None]:
        """Tie claims to the claimant's connection on ``bus``: answer ``Claim`` and ``Release``
        knowing the caller's unique name (dbus-fast's method handlers are not told the
        sender), and undo the claims of a connection that leaves the bus. Call before the
        name is requested. Returns the undo.

        Raises:
            DBusError: the bus refused the match rule.
        """
        bus.add_message_handler(self._on_claim_message)
        try:
            reply = await bus.call(
                Message(
                    destination=_DBUS,
                    path="/org/freedesktop/DBus",
                    interface=_DBUS,
                    member="AddMatch",
                    signature="s",
                    body=[LEFT_THE_BUS_MATCH],
                )
            )
            if reply is not None and reply.message_type is MessageType.ERROR:
                raise DBusError(reply.error_name or "", str(reply.body[0] if reply.body else ""))
        except BaseException:
            bus.remove_message_handler(self._on_claim_message)
            raise
        return lambda: bus.remove_message_handler(self._on_claim_message)

    def _on_claim_message(self, msg: Message) -> Message | bool | None:
        """Claim/Release with the caller's unique name; a connection leaving the bus. None
        lets anything else through (and this signal on to dbus-fast)."""
        if msg.message_type is MessageType.SIGNAL:
            if (
                msg.member == "NameOwnerChanged"
                and msg.sender == _DBUS
                and msg.interface == _DBUS
                and msg.signature == "sss"
                and msg.body[0].startswith(":")
                and not msg.body[2]
            ):
                try:
                    self._manager.claimant_left(msg.body[0])
                except Exception:
                    logger.exception("undoing the claims of %s failed", msg.body[0])
            return None
        if (
            msg.message_type is not MessageType.METHOD_CALL
            or msg.member not in ("Claim", "Release")
            or msg.path != OBJECT_PATH
            or msg.interface not in (MANAGER_INTERFACE, None)
            or msg.signature != "ss"
        ):
            return None  # dbus-fast answers (a wrong signature with its own error)
        with _translated(msg.member):  # a DBusError raised here becomes the error reply
            crash_id, handler = msg.body
            _check_handler(handler)
            act = self._manager.claim if msg.member == "Claim" else self._manager.release
            result = act(crash_id, handler, msg.sender or "")
        if not dbus_wire.wants_reply(msg):
            return True
        return Message.new_method_return(msg, "b", [result])

    def _on_message(self, msg: Message) -> bool | None:
        """ListCrashes before dbus-fast dispatches it; None lets anything else through."""
        if (
            msg.member != "ListCrashes"
            or msg.message_type is not MessageType.METHOD_CALL
            or msg.path != OBJECT_PATH
            or msg.interface not in (MANAGER_INTERFACE, None)  # D-Bus allows a call without one
            or msg.signature != "a{sv}"
            or self._bus is None
        ):
            return None
        with _translated("ListCrashes"):  # a DBusError raised here becomes the error reply
            flt = CrashFilter.parse(unwrap(msg.body[0]))
            # Full records too: dbus-fast would marshal the same bytes, but could only fail
            # with its own error where a listing is too long for one message.
            # Generators, not lists: the records must be freed before trim_heap below, which
            # a list held here until the method returned prevented (idle RSS after a 10,000
            # listing: 37 → 44 MiB, the records' 6.5 MB left in the heap).
            chunks = (
                (dbus_wire.record_chunk(to_record(c)) for c in self._manager.list_crashes(flt))
                if flt.full
                else (
                    c if isinstance(c, bytes) else self.list_chunk(c)
                    for c in self._manager.listing(flt)
                )
            )
            refused: TooLarge | None = None
            try:
                body = dbus_wire.records_body(chunks, self._max_reply)
            except TooLarge as exc:
                # Without its traceback, whose frames hold the records: freed before the trim.
                refused = exc.with_traceback(None)
            del chunks
            if refused is not None:
                trim_heap()
                raise refused
        if dbus_wire.wants_reply(msg):
            self._bus.send(dbus_wire.method_return(msg, "aa{sv}", body))
        if len(body) > LARGE_REPLY:
            # Its rows, records and buffers were freed into the heap, which glibc keeps.
            trim_heap()
        return True

    def list_chunk(self, crash: Crash) -> bytes:
        """The list record of ``crash`` as wire bytes (see dbus_wire); what the store keeps as
        each crash's listing, under the tag :data:`LISTING_TAG`."""
        cached = self._chunks.get(crash.id)
        if cached is not None and cached[0] is crash:
            return cached[1]
        chunk = dbus_wire.scalar_record_chunk(list_items(crash))
        self._chunks[crash.id] = (crash, chunk)
        if len(self._chunks) > _CHUNK_CACHE:
            self._chunks.popitem(last=False)
        return chunk

    # ---- methods ----------------------------------------------------------------------------

    @dbus_method(name="ListCrashes")
    def list_crashes(self, filter: DBusDict) -> DBusRecords:
        with _translated("ListCrashes"):
            flt = CrashFilter.parse(unwrap(filter))
            keys = None if flt.full else LIST_KEYS
            return [to_record(c, keys) for c in self._manager.list_crashes(flt)]

    @dbus_method(name="GetCrash")
    def get_crash(self, crash_id: DBusStr) -> DBusDict:
        with _translated("GetCrash"):
            return to_record(self._manager.get_crash(crash_id))

    @dbus_method(name="Dismiss")
    def dismiss(self, crash_id: DBusStr) -> None:
        with _translated("Dismiss"):
            self._manager.dismiss(crash_id)

    @dbus_method(name="DismissAll")
    def dismiss_all(self) -> None:
        with _translated("DismissAll"):
            self._manager.dismiss_all()

    @dbus_method(name="Expire")
    def expire(self, max_age_seconds: DBusUInt64) -> DBusUInt32:
        with _translated("Expire"):
            return self._manager.expire(max_age_seconds)

    # Claim and Release are answered by _on_claim_message (serve_claims), which knows the
    # caller; these declare them, and serve them tied to no connection without it.
    @dbus_method(name="Claim")
    def claim(self, crash_id: DBusStr, handler: DBusStr) -> DBusBool:
        with _translated("Claim"):
            _check_handler(handler)
            return self._manager.claim(crash_id, handler)

    @dbus_method(name="Release")
    def release(self, crash_id: DBusStr, handler: DBusStr) -> DBusBool:
        with _translated("Release"):
            _check_handler(handler)
            return self._manager.release(crash_id, handler)

    @dbus_method(name="RequestBacktrace")
    def request_backtrace(self, crash_id: DBusStr) -> DBusBool:
        # Never waits for gdb: the outcome comes as CrashUpdated.
        with _translated("RequestBacktrace"):
            return self._manager.request_backtrace(crash_id)

    @dbus_method(name="GetBacktrace")
    def get_backtrace(self, crash_id: DBusStr) -> DBusStr:
        with _translated("GetBacktrace"):
            return self._manager.cached_backtrace(crash_id)

    @dbus_method(name="GetStats")
    def get_stats(self) -> DBusDict:
        with _translated("GetStats"):
            return {k: Variant("t", v) for k, v in self._manager.stats_dict().items()}

    # ---- properties -------------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ, name="Version")
    def version(self) -> DBusStr:
        return self._version

    @dbus_property(access=PropertyAccess.READ, name="CrashCount")
    def crash_count(self) -> DBusUInt32:
        return self._manager.crash_count

    @dbus_property(access=PropertyAccess.READ, name="CaughtUp")
    def caught_up(self) -> DBusBool:
        return self._manager.caught_up

    # ---- signals ----------------------------------------------------------------------------

    @dbus_signal(name="CrashDetected")
    def _crash_detected(self, crash_id: str, record: dict[str, Variant]) -> DBusCrashEvent:
        return [crash_id, record]

    @dbus_signal(name="CrashUpdated")
    def _crash_updated(self, crash_id: str, changed: dict[str, Variant]) -> DBusCrashEvent:
        return [crash_id, changed]

    @dbus_signal(name="CrashRemoved")
    def _crash_removed(self, crash_id: str) -> DBusStr:
        return crash_id

    # ---- Publisher --------------------------------------------------------------------------

    def crash_detected(self, crash: Crash) -> None:
        # A crash found while catching up is announced with its list record: a first start
        # can find thousands, and a subscriber wanting more asks GetCrash.
        if self._bus is None:
            self._crash_detected(crash.id, to_record(crash, LIST_KEYS if crash.past else None))
            return
        chunk = self.list_chunk(crash) if crash.past else dbus_wire.record_chunk(to_record(crash))
        body = dbus_wire.event_body(crash.id, chunk)
        self._last_send = self._bus.send(
            dbus_wire.signal(OBJECT_PATH, MANAGER_INTERFACE, "CrashDetected", "sa{sv}", body)
        )

    async def drain(self) -> None:
        """Returns once the last CrashDetected is written to the socket: a burst of thousands
        (a first catch-up) waits for a slow bus instead of queueing megabytes in the writer.
        A write failure surfaces at the barrier."""
        fut, self._last_send = self._last_send, None
        if fut is not None:
            with contextlib.suppress(Exception):
                await fut

    def crash_updated(self, crash: Crash, changed: Sequence[str]) -> None:
        self._crash_updated(crash.id, to_record(crash, changed))

    def crash_removed(self, crash_id: str) -> None:
        self._chunks.pop(crash_id, None)
        self._crash_removed(crash_id)

    def backtrace_failed(self, crash_id: str, error: RequestError) -> None:
        # The text may name a path from the entry: whatever it holds, it must be valid UTF-8.
        message = error.detail.encode("utf-8", "replace").decode("utf-8")
        changed = {
            BACKTRACE_ERROR: Variant("s", error_name(error.name)),
            BACKTRACE_ERROR_MESSAGE: Variant("s", message),
        }
        try:
            self._crash_updated(crash_id, changed)
        except Exception:
            logger.exception("could not send %s of %s", SIGNAL_UPDATED, crash_id)

    async def barrier(self) -> None:
        """Signals are written in order: once a round trip to the bus after them is answered,
        the bus has every one of them."""
        if self._barrier is not None:
            await self._barrier()

    def properties_changed(self, names: Sequence[str]) -> None:
        values = {
            "CrashCount": lambda: Variant("u", self._manager.crash_count),
            "CaughtUp": lambda: Variant("b", self._manager.caught_up),
        }
        self.emit_properties_changed({n: values[n]().value for n in names if n in values})
