"""Which leftover files ``crashbroker cleanup`` removes (pure: listings and ``now`` in)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One directory entry as ``lstat`` saw it (a link is never ``regular``)."""

    name: str
    mtime: float
    regular: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    remove: tuple[str, ...]
    keep_pending: tuple[str, ...]
    skipped: tuple[str, ...]  # not regular files: links, FIFOs, directories — never touched


def stale_files(
    files: Iterable[FileInfo],
    *,
    now: float,
    max_age_s: float,
    pending: frozenset[str] = frozenset(),
    suffix: str = ".ini",
) -> Verdict:
    """Regular ``*suffix`` files older than ``max_age_s`` and not named in ``pending``."""
    remove: list[str] = []
    keep: list[str] = []
    skipped: list[str] = []
    for f in files:
        if not f.name.endswith(suffix) or f.name.startswith("."):
            continue
        if not f.regular:
            skipped.append(f.name)
        elif now - f.mtime < max_age_s:
            continue
        elif f.name in pending:
            keep.append(f.name)
        else:
            remove.append(f.name)
    return Verdict(tuple(sorted(remove)), tuple(sorted(keep)), tuple(sorted(skipped)))
