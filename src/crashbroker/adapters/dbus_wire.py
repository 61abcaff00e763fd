"""Crash records as D-Bus wire bytes, marshalled once per crash and reused.

``ListCrashes`` of 10,000 crashes through dbus-fast's general path builds and marshals 10,000
dictionaries of variants on every call (1.5 s here), and each ``CrashDetected`` of a catch-up
walks its variants twice more (marshalling, and dbus-fast's search for unix fds). A crash record
changes rarely, so its dictionary entries are marshalled once (:func:`record_chunk`) and replies
and signals are assembled from those bytes (:func:`records_body`, :func:`event_body`).

Two pieces of dbus-fast that are not its public API are used, both here only: the
``Marshaller`` (to marshal a record exactly as dbus-fast would) and ``Message._marshall``, which a
subclass overrides to send a body that is already bytes (:class:`RawMessage`). The D-Bus layout
itself is the specification's: little-endian, arrays as a UINT32 byte length, padding to the
element alignment, then the elements; ``a{sv}`` elements are 8-aligned dict entries.
``tests/domain/test_dbus_wire.py`` checks the bytes against dbus-fast's own for arbitrary records,
and :data:`AVAILABLE` is False (callers then take dbus-fast's general path) if either piece moves.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant

from crashbroker.domain.errors import TooLarge

try:
    from dbus_fast._private.marshaller import Marshaller

    AVAILABLE = hasattr(Message, "_marshall")
except ImportError:  # pragma: no cover - a dbus-fast that moved its marshaller
    AVAILABLE = False

# The D-Bus specification, "Marshaling (Wire Format)": an array's contents (what its length
# field counts) are at most 2**26 bytes (64 MiB), a message at most 2**27 (so a reply of one
# array within the bound always fits). dbus-daemon disconnects a connection that sends a longer
# array (1.14, as tried: the caller gets NoReply and the sender loses its names; crashbroker's
# daemon then exits).
MAX_ARRAY_LENGTH = 1 << 26

_U32 = struct.Struct("<I")
_ZEROS = bytes(8)


def record_chunk(record: dict[str, Variant]) -> bytes:
    """The dict entries of ``record`` (an ``a{sv}``) as wire bytes, to be placed 8-aligned."""
    raw = Marshaller("a{sv}", [record]).marshall()
    # A standalone a{sv}: UINT32 length at 0, padding to 8, the entries from 8 on.
    return bytes(raw[8:])


_U64 = struct.Struct("<Q")
_VALUE_ALIGN = {"s": 4, "u": 4, "b": 4, "t": 8}
_ENTRY_HEADS: dict[tuple[str, str], bytes] = {}


def _entry_head(key: str, sig: str) -> bytes:
    """A dict entry up to its value: the key, the variant's signature, the value's padding.
    Entries start 8-aligned, so this is the same for every entry of this key and type."""
    name = key.encode()
    head = _U32.pack(len(name)) + name + b"\0" + bytes([len(sig)]) + sig.encode() + b"\0"
    return head + _ZEROS[: -len(head) % _VALUE_ALIGN[sig]]


def scalar_record_chunk(items: Iterable[tuple[str, str, Any]]) -> bytes:
    """:func:`record_chunk` of an ``a{sv}`` given as ``(key, signature, value)`` with only
    ``s``, ``u``, ``t`` and ``b`` values (the list record): the same bytes, marshalled here
    without building Variants — a third of the time, which a 10,000-crash catch-up feels.

    Raises:
        ValueError: another signature, or a value its signature cannot hold.
    """
    out = bytearray()
    for key, sig, value in items:
        out += _ZEROS[: -len(out) % 8]
        head = _ENTRY_HEADS.get((key, sig))
        if head is None:
            if sig not in _VALUE_ALIGN:
                raise ValueError(f"not a scalar signature: {sig!r}")
            head = _ENTRY_HEADS[key, sig] = _entry_head(key, sig)
        out += head
        try:
            if sig == "s":
                data = value.encode()
                out += _U32.pack(len(data))
                out += data
                out += b"\0"
            elif sig == "t":
                out += _U64.pack(value)
            else:  # u, b (a boolean is a UINT32 0 or 1)
                out += _U32.pack(value)
        except struct.error as exc:
            raise ValueError(f"{key}: {value!r} is not a {sig}") from exc
    return bytes(out)


def _append_array_of_entries(out: bytearray, chunk: bytes) -> None:
    out += _ZEROS[: -len(out) % 4]
    out += _U32.pack(len(chunk))
    out += _ZEROS[: -len(out) % 8]
    out += chunk


def array_length(chunks: Iterable[bytes]) -> int:
    """The length :func:`records_body` writes for its array of ``chunks``: the bytes of its
    elements, padding included, which the specification bounds."""
    end = 4  # the body starts 8-aligned, the array's elements after its length
    for chunk in chunks:
        end += -end % 4 + 4  # the element's length, 4-aligned
        end += -end % 8 + len(chunk)  # its entries, 8-aligned
    return end - 4


def records_body(chunks: Iterable[bytes], max_length: int = MAX_ARRAY_LENGTH) -> bytes:
    """The body of an ``aa{sv}`` reply made of :func:`record_chunk` results, in order.

    Raises:
        TooLarge: the array would be longer than ``max_length`` bytes (a bus disconnects the
            sender of a longer one); measured before anything is copied.
    """
    elements = tuple(chunks)
    length = array_length(elements)
    if length > max_length:
        raise TooLarge(len(elements), length, max_length)
    out = bytearray(4)
    for chunk in elements:
        _append_array_of_entries(out, chunk)
    _U32.pack_into(out, 0, len(out) - 4)  # elements are 4-aligned: the first one starts at 4
    return bytes(out)


def event_body(crash_id: str, chunk: bytes) -> bytes:
    """The body of a ``(s id, a{sv} record)`` signal."""
    text = crash_id.encode()
    out = bytearray(_U32.pack(len(text)))
    out += text
    out += b"\0"
    _append_array_of_entries(out, chunk)
    return bytes(out)


# The smallest valid body of each signature sent raw, and its length: dbus-fast marshals the
# header with it (see RawMessage). Computed once, not once per signal of a catch-up.
_EMPTY_BODIES: dict[str, list[Any]] = {"aa{sv}": [[]], "sa{sv}": ["", {}]}
_EMPTY_LENS = (
    {sig: len(Marshaller(sig, body).marshall()) for sig, body in _EMPTY_BODIES.items()}
    if AVAILABLE
    else {}
)


class RawMessage(Message):
    """A message whose body is already marshalled (``raw_body``) for ``signature``."""

    raw_body: bytes
    empty_len: int

    @classmethod
    def make(cls, signature: str, raw_body: bytes, **kwargs: Any) -> RawMessage:
        """dbus-fast marshals the header with the smallest valid body of ``signature`` (one of
        ``aa{sv}``, ``sa{sv}``), whose bytes are then replaced by ``raw_body``."""
        msg = cls(signature=signature, body=_EMPTY_BODIES[signature], **kwargs)
        msg.raw_body = raw_body
        msg.empty_len = _EMPTY_LENS[signature]
        return msg

    def _marshall(self, negotiate_unix_fd: bool) -> bytearray:
        out = bytearray(Message._marshall(self, negotiate_unix_fd))
        del out[len(out) - self.empty_len :]
        _U32.pack_into(out, 4, len(self.raw_body))  # the fixed header's body length
        out += self.raw_body
        return out


def method_return(call: Message, signature: str, raw_body: bytes) -> Message:
    return RawMessage.make(
        signature,
        raw_body,
        message_type=MessageType.METHOD_RETURN,
        reply_serial=call.serial,
        destination=call.sender,
    )


def signal(path: str, interface: str, member: str, signature: str, raw_body: bytes) -> Message:
    return RawMessage.make(
        signature,
        raw_body,
        message_type=MessageType.SIGNAL,
        path=path,
        interface=interface,
        member=member,
    )


def wants_reply(call: Message) -> bool:
    return not call.flags & MessageFlag.NO_REPLY_EXPECTED


class _PatientSocket:
    """The bus socket as dbus-fast's writer sees it: EAGAIN from ``send`` is "0 bytes sent".

    dbus-fast 5.2's writer takes ``BlockingIOError`` for a dead connection and ends the bus. A
    local stream socket raises it even when poll() said writable, once the peer's receive queue
    is full: a dbus-daemon slower than a burst of signals (a 600-crash catch-up on a loaded
    machine ended the daemon this way). Reported as "0 bytes", the writer keeps the rest of the
    message and waits for the socket to be writable, as it does for any partial write.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def send(self, data: Any) -> int:
        try:
            return int(self._sock.send(data))
        except (BlockingIOError, InterruptedError):
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def patient_writes(bus: Any) -> bool:
    """Make ``bus`` (a connected dbus-fast MessageBus) survive a full socket; False when
    dbus-fast's writer is not where this expects it (then nothing changes)."""
    writer = getattr(bus, "_writer", None)
    if writer is None or not hasattr(writer, "sock") or isinstance(writer.sock, _PatientSocket):
        return False
    writer.sock = _PatientSocket(writer.sock)
    return True
