"""One trusted coredump entry read again by its cursor, and the core stored in it.

``coredumpctl dump`` chooses its entry by matches (pid, timestamp, boot id) that any forged entry
with the same values also satisfies, and takes the newest. A backtrace must come from exactly the
entry the daemon trusted: this reads that entry again by its cursor (``test_cursor`` confirms
the position), runs the trust rule (:func:`~crashbroker.domain.entry.classify`) on it again, and
for a core stored in the journal (``Storage=journal``: the ``COREDUMP`` field) writes that field's
bytes to a descriptor. Blocking (journal files, a core of up to hundreds of MB): run it in a
thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from systemd import journal

from crashbroker.adapters.core_file import core_facts
from crashbroker.adapters.journal import entry_fields
from crashbroker.domain.entry import (
    CoreFile,
    TrustPolicy,
    Verdict,
    classify,
)
from crashbroker.domain.errors import NoCore
from crashbroker.domain.model import COREDUMP_MESSAGE_ID, CoredumpEntry, CrashKey

# The fields the trust rule reads are short. The threshold is only a hint (libsystemd 252 can
# hand out compressed fields whole, see journal.py): a core copied while the entry is judged is
# dropped before the core is read whole, so one copy at most is held at a time.
FIELD_THRESHOLD = 64 * 1024
# When seek_cursor misplaces (journal.py, _step_back_to), the crash's own entries are searched:
# those with its pid and boot id, forged ones included, at most this many.
SCAN_LIMIT = 10_000
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class EntryAgain:
    """The trusted entry as read again.

    Attributes:
        entry: the entry, parsed by the trust rule just now.
        own_credentials: the crashed process ran with its user's own ids only
            (``COREDUMP_DUMPABLE=1``, or without that field all ids in ``COREDUMP_PROC_STATUS``
            equal): its core holds nothing that user may not read. systemd-coredump grants the
            user no access to any other core.
        core_bytes: bytes of a journal-stored core written to the descriptor (0: none written).
    """

    entry: CoredumpEntry
    own_credentials: bool
    core_bytes: int


def _position(reader: Any, cursor: str, key: CrashKey) -> bool:
    """Put ``reader`` on the entry ``cursor`` names; False when no entry has that cursor."""
    with contextlib.suppress(OSError):
        reader.seek_cursor(cursor)
        if reader._next(1) and reader.test_cursor(cursor):
            return True
    reader.add_match(
        MESSAGE_ID=COREDUMP_MESSAGE_ID, COREDUMP_PID=str(key.pid), _BOOT_ID=key.boot_id
    )
    reader.seek_head()
    for _ in range(SCAN_LIMIT):
        if not reader._next(1):
            return False
        if reader.test_cursor(cursor):
            return True
    return False


def _own_credentials(fields: dict[str, str], uid: int, gid: int) -> bool:
    dumpable = fields.get("COREDUMP_DUMPABLE")
    if dumpable is not None:
        return dumpable.strip() == "1"
    ids: dict[str, list[str]] = {}
    for line in fields.get("COREDUMP_PROC_STATUS", "").splitlines():
        name, _, values = line.partition(":")
        if name in ("Uid", "Gid"):
            ids[name] = values.split()
    return ids.get("Uid") == [str(uid)] * 4 and ids.get("Gid") == [str(gid)] * 4


def _write_all(fd: int, data: bytes) -> int:
    """Write ``data`` in slices of one buffer (no copies of a core of hundreds of MB)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done : done + _CHUNK])
    return done


def reread_entry(
    *,
    directory: Path | None,
    cursor: str,
    key: CrashKey,
    policy: TrustPolicy,
    inspect_core: Callable[[str], CoreFile | None],
    core_fd: int | None,
) -> EntryAgain:
    """Read the entry ``cursor`` again and judge it again; write its journal core to ``core_fd``.

    Args:
        directory: the journal directory the daemon follows (None: the local journal).
        cursor, key: the stored crash's cursor and key; the entry found must have both.
        policy, inspect_core: the daemon's trust rule and its core-file facts.
        core_fd: where a journal-stored core goes; this function closes it (a caller that gave
            up waiting must not have it reused under a write still running). None: write none.

    Raises:
        NoCore: the entry is gone (rotated, vacuumed) or is no longer a trusted entry of this
            crash.
    """
    try:
        try:
            reader = (
                journal.Reader(path=str(directory)) if directory is not None else journal.Reader()
            )
        except OSError as exc:
            raise NoCore(f"cannot open the journal of this crash: {exc}") from exc
        try:
            reader.data_threshold = FIELD_THRESHOLD
            if not _position(reader, cursor, key):
                raise NoCore("the crash's journal entry is gone (rotated or vacuumed)")
            fields, _ = entry_fields(reader, None)
            verdict, entry = classify(fields, policy, core_facts(fields, policy, inspect_core))
            if verdict is not Verdict.ACCEPT or entry is None or entry.key != key:
                raise NoCore(
                    f"the crash's journal entry no longer passes the trust rule ({verdict.value})"
                )
            written = 0
            if core_fd is not None and entry.core_in_journal and not entry.core_filename:
                reader.data_threshold = 0  # the whole field: sd-journal hands it decompressed
                data = reader._get("COREDUMP")
                written = _write_all(core_fd, data)
                del data
            return EntryAgain(
                entry=entry,
                own_credentials=_own_credentials(fields, entry.uid, entry.gid),
                core_bytes=written,
            )
        finally:
            reader.close()
    finally:
        if core_fd is not None:
            os.close(core_fd)
