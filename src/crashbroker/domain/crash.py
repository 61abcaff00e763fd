"""Building the published :class:`Crash` from a settled correlation."""

from __future__ import annotations

from crashbroker.domain.metadata import fill_gaps
from crashbroker.domain.model import CoredumpEntry, Crash, KCrashMetadata


def signature(entry: CoredumpEntry) -> str:
    """The grouping key of a crash before its backtrace is known: exe and signal."""
    exe = entry.exe.removesuffix(" (deleted)") or entry.comm
    return f"{exe}:{entry.signal_name}"


def grouping(entry: CoredumpEntry) -> str:
    """The key crashes are counted and grouped into bursts by (domain/loops.py): the
    :func:`signature`, per machine for crashes of other machines, so that one machine's crash
    loop never folds another's crashes. A local crash's key is its signature alone (as in stores
    written before fleet grouping); a fleet key starts with ``@`` and the machine id."""
    if entry.fleet:
        return f"@{entry.machine_id}:{signature(entry)}"
    return signature(entry)


def build_crash(
    entry: CoredumpEntry,
    metadata: KCrashMetadata | None,
    past: bool,
    now: int,
    occurrences: int = 1,
) -> Crash:
    """The record to persist and publish.

    A crash with metadata gets the journal's values for missing ``[KCrash]`` keys (the file may
    be incomplete); a crash without metadata keeps an empty ``kcrash`` map, so subscribers can
    tell a KCrash crash from a plain one.
    """
    if metadata is not None:
        kcrash, filled = fill_gaps(metadata.kcrash, entry)
        complete, source, path = metadata.complete, str(metadata.source), metadata.path
        dev, ino = metadata.dev, metadata.ino
    else:
        kcrash, filled, complete, source, path = {}, (), False, "", ""
        dev = ino = 0
    return Crash(
        id=entry.key.crash_id,
        entry=entry,
        kcrash=kcrash,
        kcrash_complete=complete,
        kcrash_source=source,
        kcrash_filled=filled,
        metadata_path=path,
        past=past,
        detected=now,
        signature=signature(entry),
        occurrences=occurrences,
        metadata_dev=dev,
        metadata_ino=ino,
    )
