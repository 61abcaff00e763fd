"""``crashbroker cleanup``: old KCrash INIs and DrKonqi records, and old rows of the store.

Files are only ever looked at through a directory file descriptor opened with ``O_NOFOLLOW``
and removed with ``unlinkat`` (``os.unlink(name, dir_fd=…)``), which never follows a link: a
link planted in the directory is skipped, and a file swapped for a link between the check and
the removal only loses the link itself. Nothing outside the two directories is touched.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from crashbroker.client import BrokerClient, ClientError
from crashbroker.domain.cleanup import DAY_S, FileInfo, stale_files


@dataclass(slots=True)
class Report:
    removed: list[str] = field(default_factory=list)
    kept_pending: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    expired: int | None = None  # None: the daemon was not reachable

    def as_dict(self) -> dict[str, object]:
        return {
            "removed": self.removed,
            "kept_pending": self.kept_pending,
            "skipped": self.skipped,
            "errors": self.errors,
            "expired": self.expired,
        }


def _listing(dir_fd: int) -> list[FileInfo]:
    infos = []
    for name in os.listdir(dir_fd):
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile: nothing to do
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            infos.append(FileInfo(name, st.st_mtime, stat.S_ISREG(st.st_mode)))
    return infos


def clean_directory(
    directory: Path,
    *,
    max_age_s: float,
    pending: frozenset[str],
    dry_run: bool,
    report: Report,
    now: float | None = None,
) -> None:
    """Remove stale regular ``*.ini`` files directly inside ``directory``."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:  # a link in place of the directory lands here (ELOOP/ENOTDIR)
        report.errors.append(f"{directory}: refused ({exc.strerror})")
        return
    try:
        verdict = stale_files(
            _listing(fd),
            now=time.time() if now is None else now,
            max_age_s=max_age_s,
            pending=pending,
        )
        report.kept_pending += [str(directory / n) for n in verdict.keep_pending]
        report.skipped += [str(directory / n) for n in verdict.skipped]
        for name in verdict.remove:
            path = str(directory / name)
            if dry_run:
                report.removed.append(path)
                continue
            try:
                # Re-check right before: only a regular file goes (unlink never follows anyway).
                if stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=fd)
                    report.removed.append(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                report.errors.append(f"{path}: {exc.strerror}")
    finally:
        os.close(fd)


async def pending_metadata(client: BrokerClient | None) -> frozenset[str] | None:
    """Basenames of metadata files of crashes still shown (new or claimed); None without a
    daemon.

    Raises:
        ClientError: a running daemon did not answer the listing (then nothing is known to be
            safe to remove).
    """
    if client is None:
        return None
    try:
        crashes = await client.list_all()
    except ClientError as exc:
        if exc.not_running:
            return None
        raise
    return frozenset(
        os.path.basename(str(c["metadata_path"])) for c in crashes if c["metadata_path"]
    )


async def cleanup(
    client: BrokerClient | None,
    cache_home: Path,
    *,
    max_age_days: float,
    expire_days: float,
    dry_run: bool,
) -> Report:
    """KCrash INIs older than ``max_age_days`` whose crash is not pending; DrKonqi's JSON
    records and the daemon's rows older than ``expire_days``.

    Without a daemon nothing is known to be pending: an INI that old belongs to a crash nobody
    is looking at (DrKonqi's own cleanup uses the same week without asking anyone).
    """
    report = Report()
    try:
        pending = await pending_metadata(client) or frozenset()
    except ClientError as exc:
        # The daemon runs but its listing failed: a file of a crash still shown could go.
        report.errors.append(f"ListCrashes: {exc}; KCrash and DrKonqi files left alone")
        return report
    clean_directory(
        cache_home / "kcrash-metadata",
        max_age_s=max_age_days * DAY_S,
        pending=pending,
        dry_run=dry_run,
        report=report,
    )
    clean_directory(
        cache_home / "drkonqi" / "crashes",
        max_age_s=expire_days * DAY_S,
        pending=pending,
        dry_run=dry_run,
        report=report,
    )
    if client is not None and not dry_run:
        try:
            report.expired = int(await client.call("Expire", "t", [int(expire_days * DAY_S)]))
        except ClientError as exc:
            if not exc.not_running:
                report.errors.append(f"Expire: {exc}")
    return report
