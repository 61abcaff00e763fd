"""systemd's Journal Export Format: read recorded entries, write entries for journal-remote.

https://systemd.io/JOURNAL_EXPORT_FORMATS/ — ``KEY=value\\n`` for text, and for a value with a
newline or binary data ``KEY\\n<le64 length><bytes>\\n``; an empty line ends an entry.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

Entry = dict[str, bytes]

DATA = Path(__file__).parent / "data"


def parse(data: bytes) -> Iterator[Entry]:
    entry: Entry = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if not line:
            if entry:
                yield entry
            entry = {}
            i = nl + 1
            continue
        if b"=" in line:
            key, _, value = line.partition(b"=")
            entry[key.decode()] = value
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            entry[line.decode()] = data[nl + 9 : nl + 9 + size]
            i = nl + 9 + size + 1
    if entry:
        yield entry


def load(name: str) -> Entry:
    """The first entry of ``tests/data/<name>``."""
    return next(parse((DATA / name).read_bytes()))


def serialize(entries: Iterable[Entry]) -> bytes:
    out = bytearray()
    for entry in entries:
        for key, value in entry.items():
            if b"\n" in value or any(b < 0x20 and b != 0x09 for b in value):
                out += key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
            else:
                out += key.encode() + b"=" + value + b"\n"
        out += b"\n"
    return bytes(out)


def maps_text(size: int) -> bytes:
    """A field value for big-entry tests and the memory bench: ``size`` bytes of
    /proc/PID/maps-like lines (as compressible as real maps)."""
    lines = (
        f"7f{i:010x}000-7f{i:010x}fff r-xp 00000000 fe:01 {1000 + i} "
        f"/usr/lib/x86_64-linux-gnu/libmodule{i % 997}.so.{i % 7}\n".encode()
        for i in range(size // 60)
    )
    return b"".join(lines)[:size]
