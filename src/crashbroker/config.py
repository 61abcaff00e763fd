"""The daemon's configuration: one frozen value built from arguments and the environment."""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from crashbroker.domain.cursor import CatchUp
from crashbroker.domain.entry import CORE_DIR, TrustPolicy

COREDUMP_USER = "systemd-coredump"


def xdg_dir(env: Mapping[str, str], var: str, fallback: str) -> Path:
    """``$VAR`` when it is an absolute path (as the XDG spec requires), else ``~/<fallback>``."""
    value = env.get(var, "")
    if value and os.path.isabs(value):
        return Path(value)
    home = env.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    return Path(home) / fallback


def coredump_writer_uids() -> frozenset[int]:
    """Root, plus the ``systemd-coredump`` user when it exists (Debian: 995ish)."""
    uids = {0}
    with contextlib.suppress(KeyError):
        uids.add(pwd.getpwnam(COREDUMP_USER).pw_uid)
    return frozenset(uids)


def local_machine_id() -> str | None:
    """This machine's id (``/etc/machine-id``): entries carrying it are this machine's own."""
    try:
        text = Path("/etc/machine-id").read_text(encoding="ascii").strip().lower()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 32 else None


def trust_policy(*, all_users: bool = False) -> TrustPolicy:
    """The trust rule on this machine: systemd-coredump's uids, our own crashes (every user's
    with ``all_users``), this machine's id. The daemon and the launcher judge alike."""
    return TrustPolicy(
        writer_uids=coredump_writer_uids(),
        own_uid=None if all_users else os.getuid(),
        machine_id=local_machine_id(),
    )


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the composition root needs.

    Attributes:
        state_dir: holds ``crashes.sqlite`` (``$XDG_STATE_HOME/crashbroker``).
        cache_home: where KCrash writes ``kcrash-metadata/`` (``$XDG_CACHE_HOME``).
        journal_dir: follow journal files in this directory instead of the local journal.
        catch_up: where a first start begins.
        all_users: publish every user's crashes, not only our own (root or fleet mode).
        grace_ms: how long a live crash may wait for its KCrash metadata.
        bus_address: a D-Bus address; None means the session bus.
        loop_threshold, loop_window_s: that many crashes of one exe+signal within the window
            are a crash loop (see domain/loops.py).
        backtrace_timeout_s: deadline for reading the core + gdb of one backtrace.
        hint_core_dir: watched for arriving core files, a hint to read the journal at once
            (adapters/hints.py); trust still asks for cores in the real directory.
    """

    state_dir: Path
    cache_home: Path
    journal_dir: Path | None = None
    catch_up: CatchUp = CatchUp.BOOT
    all_users: bool = False
    grace_ms: int = 1000
    bus_address: str | None = None
    loop_threshold: int = 3
    loop_window_s: float = 60.0
    backtrace_timeout_s: float = 120.0
    hint_core_dir: Path = Path(CORE_DIR)

    @property
    def database(self) -> Path:
        return self.state_dir / "crashes.sqlite"

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: object) -> Config:
        """Defaults from the XDG variables in ``env``; ``overrides`` that are None are ignored."""
        values: dict[str, object] = {
            "state_dir": xdg_dir(env, "XDG_STATE_HOME", ".local/state") / "crashbroker",
            "cache_home": xdg_dir(env, "XDG_CACHE_HOME", ".cache"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
