"""``crashbroker-launcher``: starts DrKonqi for KCrash crashes announced by the daemon.

A subscriber of ``org.kde.crashbroker1``. For each live crash of a KDE application it claims
the crash over D-Bus (so two launchers never start two DrKonqis) and then starts DrKonqi exactly
as DrKonqi's own ``drkonqi-coredump-launcher`` would (see ``domain/drkonqi.py``), as a transient
service of the user manager when one runs (else as a child). It also exports
``org.kde.crashbroker1.Launcher.Launch(s id) → b`` for a user's explicit "Report…".

Composition root of its own: one TaskGroup (signal pump, DrKonqi children), signals only set an
event, exits non-zero when the bus goes away so the service manager restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import errno
import logging
import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag

from crashbroker.adapters.core_file import core_facts
from crashbroker.adapters.dbus_names import LAUNCHER_BUS_NAME, LAUNCHER_OBJECT_PATH
from crashbroker.adapters.journal import entry_fields
from crashbroker.adapters.launcher_service import LauncherInterface
from crashbroker.adapters.metadata_dir import is_private, read_capped, read_file
from crashbroker.client import BrokerClient, ClientError, CrashEvent, connect_bus
from crashbroker.config import trust_policy, xdg_dir
from crashbroker.domain import drkonqi
from crashbroker.domain.drkonqi import (
    Flavor,
    KCrashGroups,
    RateLimit,
    RecordAction,
    Skip,
    Start,
    StartVia,
)
from crashbroker.domain.entry import REPEATED, TrustPolicy
from crashbroker.domain.errors import CrashBrokerError, MetadataError, MetadataReason
from crashbroker.domain.metadata import parse_ini
from crashbroker.domain.model import MetadataSource

logger = logging.getLogger("crashbroker.launcher")

LIBEXEC_DIRS = ("/usr/lib/x86_64-linux-gnu/libexec", "/usr/libexec", "/usr/lib/libexec")
PICKUP_UNIT = Path("/usr/lib/systemd/user/drkonqi-coredump-pickup.service")


def find_drkonqi(env: Mapping[str, str]) -> str | None:
    """DrKonqi where KCrash and DrKonqi's launcher look: ``$LIBEXEC_PATH``, then libexec."""
    dirs = [d for d in env.get("LIBEXEC_PATH", "").split(":") if d] + list(LIBEXEC_DIRS)
    for d in dirs:
        path = os.path.join(d, "drkonqi")
        if os.access(path, os.X_OK) and os.path.isfile(path):
            return path
    return None


def detect_flavor(drkonqi_path: str) -> Flavor:
    """DrKonqi 6 ships the pickup service (new in Plasma 6.0); 5.23-5.27 do not."""
    libexec = os.path.dirname(drkonqi_path)
    if PICKUP_UNIT.exists() or os.path.exists(os.path.join(libexec, "drkonqi-coredump-pickup")):
        return Flavor.V6
    return Flavor.V5


class EntryRefused(CrashBrokerError):
    """The journal entry at a crash's cursor is not that crash's trusted entry."""


def journal_fields(
    crash: Mapping[str, Any], journal_dir: Path | None, policy: TrustPolicy
) -> dict[str, str]:
    """The fields of the crash's own journal entry, as text (without the core itself and
    journald's ``__`` fields), for DrKonqi's metadata.

    ``seek_cursor`` to a cursor the journal no longer has (vacuumed, rotated away, another
    journal) lands on a neighbour, which ``get_next`` would return: so the reader must be *at*
    the cursor (``test_cursor``), and the entry must pass the daemon's trust rule and be the
    same crash as the record (:func:`~crashbroker.domain.drkonqi.entry_problem`).

    Raises:
        EntryRefused: no such entry, or not this crash's trusted entry.
    """
    from systemd import journal

    cursor = str(crash["journal_cursor"])
    try:
        reader = journal.Reader(path=str(journal_dir)) if journal_dir else journal.Reader()
    except OSError as exc:
        raise EntryRefused(f"cannot open the journal: {exc}") from exc
    try:
        reader.seek_cursor(cursor)
        if not reader._next(1) or not reader.test_cursor(cursor):
            raise EntryRefused(f"the journal has no entry at {cursor}")
        # The journal's own text, as the daemon's source reads it (systemd-python's converters
        # make COREDUMP_TIMESTAMP a datetime, whose float seconds need not give back the µs).
        fields, _ = entry_fields(reader, None)
    except (OSError, ValueError) as exc:  # a cursor the journal cannot parse
        raise EntryRefused(f"cannot read the journal at {cursor}: {exc}") from exc
    finally:
        reader.close()
    problem = drkonqi.entry_problem(fields, policy, core_facts(fields, policy), crash)
    if problem is not None:
        raise EntryRefused(f"journal entry at {cursor}: {problem}")
    return {
        k: v
        for k, v in fields.items()
        if not k.startswith("__") and k not in ("COREDUMP", REPEATED)
    }


_KCRASH_SOURCES = (MetadataSource.KCRASH_V1.value, MetadataSource.KCRASH_V2.value)


async def read_kcrash_ini(crash: Mapping[str, Any]) -> tuple[bytes, os.stat_result]:
    """The crash's KCrash INI, only if it is still the file the daemon matched to the crash
    (device and inode, ``metadata_dev``/``metadata_ino``): a ``<pid>.ini`` binds by pid alone,
    and the name may hold another file by now. The file and its directory must be ours and
    not group/world-writable (:func:`~crashbroker.adapters.metadata_dir.read_file`).

    Raises:
        MetadataError: refused, gone, or not the same file (reason ``CHANGED``).
    """
    path = str(crash["metadata_path"])
    data, st = await read_file(Path(path))
    expected = (int(crash.get("metadata_dev", 0)), int(crash.get("metadata_ino", 0)))
    if crash["kcrash_source"] in _KCRASH_SOURCES and (
        (st.st_dev, st.st_ino) != expected or not expected[1]
    ):
        raise MetadataError(path, MetadataReason.CHANGED, "not the file matched to the crash")
    return data, st


def _append_in_place(path: Path, dev: int, ino: int, text: str) -> None:
    """Append ``text`` to the regular file at ``path`` if it is still (``dev``, ``ino``) and
    private; never follows a link, never creates.

    Raises:
        MetadataError: another file is there now. OSError: it cannot be written.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(path.name, flags, dir_fd=dfd)
    finally:
        os.close(dfd)
    with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or (st.st_dev, st.st_ino) != (dev, ino)
            or not is_private(st, os.getuid())
        ):
            raise MetadataError(str(path), MetadataReason.CHANGED, "replaced while being read")
        f.write(text)


def create_exclusively(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text``, unless anything at all is at that name.

    Never replaces, truncates or writes through what is there (a file, a link, a dangling link):
    the text goes to a temporary file that is then hard-linked to the final name, which fails
    when the name exists, and a reader never sees a half-written file. Where hard links are not
    supported, ``O_CREAT|O_EXCL|O_NOFOLLOW`` on the final name gives the same guarantee.

    Returns:
        True when the file was created; False when something was already at ``path``.

    Raises:
        OSError: the file could not be written.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".crashbroker-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            return _create_with_excl(path, text)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _create_with_excl(path: Path, text: str) -> bool:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except BaseException:
        # Created by us a moment ago (O_EXCL): a half-written record must not stay to be taken
        # for DrKonqi's.
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return True


async def read_record(path: Path) -> bytes | None:
    """DrKonqi 6's record at ``path``: its bytes, or None when nothing is there.

    Raises:
        MetadataError: something is there that is not a regular file, or is unreadable.
    """
    try:
        return await read_capped(path)
    except MetadataError as exc:
        if exc.reason is MetadataReason.NOT_FOUND:
            return None
        raise


def manager_socket(env: Mapping[str, str]) -> str:
    """Where the user manager listens (``$XDG_RUNTIME_DIR/systemd/private``); "" if unknown."""
    runtime = env.get("XDG_RUNTIME_DIR", "")
    return os.path.join(runtime, "systemd", "private") if os.path.isabs(runtime) else ""


# systemd-run returns once the start job is done (Type=exec: DrKonqi was exec'd).
SYSTEMD_RUN_TIMEOUT_S = 30.0


class _Outcome(enum.Enum):
    STARTED = "started"
    FAILED = "failed"  # nothing was started: falling back to a child is safe
    UNKNOWN = "unknown"  # it may have started: no fallback


@dataclass(frozen=True, slots=True)
class Options:
    drkonqi: str
    flavor: Flavor
    rate_limit_s: float
    journal_dir: Path | None
    cache_home: Path
    env: Mapping[str, str]
    on_request_only: bool = False
    start_via: StartVia = StartVia.AUTO
    policy: TrustPolicy | None = None  # None: trust_policy()


class Launcher:
    """Decides, claims, writes DrKonqi's metadata file and starts DrKonqi."""

    def __init__(self, client: BrokerClient, options: Options, tg: asyncio.TaskGroup) -> None:
        self._client = client
        self._options = options
        self._tg = tg
        self._limit = RateLimit(int(options.rate_limit_s * 1_000_000))
        self._policy = options.policy or trust_policy()
        self.launched = 0
        self.children: set[asyncio.Task[None]] = set()

    async def reclaim_open_windows(self) -> None:
        """Claim again the crashes whose DrKonqi (a transient unit we started) still runs: our
        claims ended with our previous connection, and without them a "Report…" would start a
        second DrKonqi for a crash whose window is open."""
        socket_path = manager_socket(self._options.env)
        systemctl = shutil.which("systemctl", path=self._options.env.get("PATH"))
        if not socket_path or systemctl is None:
            return
        if not await asyncio.to_thread(os.path.exists, socket_path):
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                systemctl, "--user", "list-units", "--plain", "--no-legend",
                "--state=activating,active", f"{drkonqi.UNIT_PREFIX}*",
                env=dict(self._options.env), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            async with asyncio.timeout(SYSTEMD_RUN_TIMEOUT_S):
                out, _ = await proc.communicate()
        except (OSError, TimeoutError) as exc:
            logger.warning("cannot list DrKonqi units still open: %s", exc)
            return
        for line in out.decode(errors="replace").splitlines():
            crash_id = drkonqi.crash_of_unit(line.split(" ", 1)[0])
            if crash_id is None:
                continue
            try:
                ok = await self._client.claim(crash_id, drkonqi.HANDLER)
            except ClientError as exc:
                logger.info("DrKonqi for %s still runs; not claimed again: %s", crash_id, exc)
                continue
            logger.info("DrKonqi for %s still runs; claimed again: %s", crash_id, ok)

    async def on_event(self, event: CrashEvent) -> None:
        """Only CrashDetected launches; a loop's CrashUpdated never does."""
        if event.kind != "detected" or self._options.on_request_only:
            return
        await self.consider(event.data, explicit=False)

    async def launch_request(self, crash_id: str) -> bool:
        """``Launch(id)``: a user asked; a crash claimed by someone else is theirs."""
        try:
            crash = await self._client.get_crash(crash_id)
        except ClientError as exc:
            logger.warning("Launch(%s): %s", crash_id, exc)
            return False
        if crash["state"] == "claimed" and crash["claimed_by"] != drkonqi.HANDLER:
            logger.info("Launch(%s): claimed by %s", crash_id, crash["claimed_by"])
            return False
        if crash["state"] == "dismissed":
            return False
        return await self.consider(crash, explicit=True)

    async def consider(self, crash: Mapping[str, Any], *, explicit: bool) -> bool:
        skip = drkonqi.should_launch(
            crash, kde_debug="KDE_DEBUG" in self._options.env, explicit=explicit
        )
        # A user's "Report…" wants the dialog now, not DrKonqi's own notification first.
        argv = drkonqi.arguments(crash["kcrash"], self._options.flavor, dialog=explicit)
        if skip is None and argv is None:
            skip = Skip.NO_ARGUMENTS
        record: Path | None = None
        action = RecordAction.CREATE
        if skip is None and self._options.flavor is Flavor.V6:
            # DrKonqi 6's own launcher or pickup may have handled this crash: its record says so.
            # Looked at before the claim (a crash DrKonqi handles is not claimed by us) and
            # before the rate limit (a crash DrKonqi handles does not use up the signature's turn).
            record = self._record_path(crash)
            verdict = await self._record_verdict(record, explicit=explicit)
            if isinstance(verdict, Skip):
                skip = verdict
            else:
                action = verdict
        if skip is None and not explicit:
            now = time.monotonic_ns() // 1000
            if not self._limit.allow(str(crash["signature"]), now):
                skip = Skip.RATE_LIMITED
        if skip is not None or argv is None:
            logger.info("not launching DrKonqi for %s (%s): %s", crash["id"], crash["exe"], skip)
            return False
        refused = drkonqi.refused_options(crash["kcrash"])
        if refused:
            logger.warning(
                "DrKonqi for %s: KCrash keys not passed (not DrKonqi's, or values that could "
                "be read as options): %s",
                crash["id"],
                ", ".join(refused),
            )
        claimed = crash["state"] == "new"
        if claimed and not await self._client.claim(crash["id"], drkonqi.HANDLER):
            logger.info("crash %s was claimed by another handler", crash["id"])
            return False
        try:
            if record is None:
                metadata = await self._v5_metadata_file(crash)
            else:
                outcome = await self._v6_record(crash, record, action, explicit=explicit)
                if isinstance(outcome, Skip):
                    logger.info(
                        "not launching DrKonqi for %s (%s): %s", crash["id"], crash["exe"], outcome
                    )
                    await self._release(crash, claimed)
                    return False
                metadata = outcome
        except (OSError, MetadataError, CrashBrokerError) as exc:
            logger.error("cannot prepare DrKonqi's metadata for %s: %s", crash["id"], exc)
            await self._release(crash, claimed)
            return False
        env = drkonqi.child_environment(self._options.env, str(metadata))
        child = self._tg.create_task(self._run(crash, argv, env, claimed), name="drkonqi")
        self.children.add(child)
        child.add_done_callback(self.children.discard)
        return True

    async def _release(self, crash: Mapping[str, Any], claimed: bool) -> None:
        """Give back a crash we claimed for this launch and could not launch: a claim left
        held would keep every other handler (and a later "Report…") away from it."""
        if not claimed:
            return
        try:
            if await self._client.release(crash["id"], drkonqi.HANDLER):
                logger.info("released crash %s", crash["id"])
        except ClientError as exc:
            logger.warning("cannot release crash %s: %s", crash["id"], exc)

    def _record_path(self, crash: Mapping[str, Any]) -> Path:
        name = drkonqi.v6_metadata_name(
            crash["exe"], crash["boot_id"], crash["pid"], crash["timestamp"]
        )
        return self._options.cache_home / "drkonqi" / "crashes" / name

    @staticmethod
    async def _record_verdict(record: Path, *, explicit: bool) -> RecordAction | Skip:
        try:
            existing = await read_record(record)
        except MetadataError as exc:
            logger.warning("%s", exc)
            return Skip.RECORD_REFUSED
        return drkonqi.record_verdict(existing, explicit=explicit)

    async def _v5_metadata_file(self, crash: Mapping[str, Any]) -> Path:
        """DrKonqi 5 reads the KCrash INI itself, with a ``[Journal]`` group added (as 5.27's
        launcher rewrote it through QSettings). Appended in place: the file stays the one
        (device, inode) the daemon matched to the crash, which ``Dismiss`` removes."""
        fields = await asyncio.to_thread(
            journal_fields, crash, self._options.journal_dir, self._policy
        )
        ini_path = Path(crash["metadata_path"])
        raw, st = await read_kcrash_ini(crash)
        text = ("" if raw.endswith(b"\n") else "\n") + drkonqi.v5_journal_group(fields)
        await asyncio.to_thread(_append_in_place, ini_path, st.st_dev, st.st_ino, text)
        return ini_path

    async def _v6_record(
        self, crash: Mapping[str, Any], record: Path, action: RecordAction, *, explicit: bool
    ) -> Path | Skip:
        """DrKonqi 6's record of the crash: ours created exclusively, or ours again on request;
        a record that appeared since :meth:`consider` looked (DrKonqi's launcher raced us) is
        left as it is and judged like one that was there before."""
        if action is RecordAction.REUSE:
            return record
        fields = await asyncio.to_thread(
            journal_fields, crash, self._options.journal_dir, self._policy
        )
        ini_path = Path(crash["metadata_path"])
        raw, _ = await read_kcrash_ini(crash)
        meta = parse_ini(raw, str(ini_path), MetadataSource(crash["kcrash_source"]))
        groups = KCrashGroups(meta.kcrash, meta.tags, meta.extra, meta.gpu, meta.complete)
        text = drkonqi.v6_metadata(groups, fields, crash["journal_cursor"])
        await asyncio.to_thread(record.parent.mkdir, parents=True, exist_ok=True)
        if await asyncio.to_thread(create_exclusively, record, text):
            return record
        again = await self._record_verdict(record, explicit=explicit)
        if again is RecordAction.REUSE:
            return record
        return again if isinstance(again, Skip) else Skip.RECORD_EXISTS

    async def _run(
        self,
        crash: Mapping[str, Any],
        argv: Sequence[str],
        env: Mapping[str, str],
        claimed: bool = False,
    ) -> None:
        """Start DrKonqi; release the claim (if this launch made it) when nothing started."""
        if not await self._start(crash, argv, env):
            await self._release(crash, claimed)

    async def _start(
        self, crash: Mapping[str, Any], argv: Sequence[str], env: Mapping[str, str]
    ) -> bool:
        """True when DrKonqi started or may have started; False when it certainly did not."""
        crash_id = str(crash["id"])
        socket_path = manager_socket(self._options.env)
        systemd_run = shutil.which("systemd-run", path=self._options.env.get("PATH"))
        running = bool(socket_path) and await asyncio.to_thread(os.path.exists, socket_path)
        start, why = drkonqi.choose_start(
            self._options.start_via,
            manager_socket=socket_path,
            manager_running=running,
            systemd_run=systemd_run,
        )
        if start is None:
            logger.error("not starting DrKonqi for %s: --start-via=service, but %s", crash_id, why)
            return False
        if start is Start.SERVICE and systemd_run is not None:
            outcome, why = await self._start_service(crash, argv, env, systemd_run)
            if outcome is _Outcome.FAILED and self._options.start_via is StartVia.AUTO:
                logger.warning("DrKonqi for %s: %s; starting it as our child", crash_id, why)
            elif outcome is not _Outcome.STARTED:
                logger.error("DrKonqi for %s not started: %s", crash_id, why)
                return outcome is _Outcome.UNKNOWN  # it may run: the claim stays
            else:
                return True
        return await self._run_child(crash_id, argv, env, why)

    async def _start_service(
        self,
        crash: Mapping[str, Any],
        argv: Sequence[str],
        env: Mapping[str, str],
        systemd_run: str,
    ) -> tuple[_Outcome, str]:
        """Start DrKonqi as a transient service of the user manager; the outcome and why."""
        unit = drkonqi.unit_name(secrets.token_hex(8), str(crash["id"]))
        exe = str(crash["exe"]).rsplit("/", 1)[-1]
        command = drkonqi.systemd_run_command(
            systemd_run,
            unit=unit,
            description=f"DrKonqi for the crash of {exe} ({crash['id']})",
            drkonqi=self._options.drkonqi,
            argv=argv,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        if command is None:
            return _Outcome.FAILED, "DrKonqi's metadata path cannot be passed to the user manager"
        logger.info(
            "starting %s %s for %s as %s, a %s",
            self._options.drkonqi, " ".join(argv), crash["id"], unit, Start.SERVICE.value,
        )  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                env=dict(self._options.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return _Outcome.FAILED, f"cannot run systemd-run: {exc}"
        try:
            async with asyncio.timeout(SYSTEMD_RUN_TIMEOUT_S):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            # The unit may have started all the same: a second DrKonqi as our child would be
            # worse than none (the crash stays listed; "Report…" starts it again).
            return _Outcome.UNKNOWN, f"systemd-run did not answer in {SYSTEMD_RUN_TIMEOUT_S:g} s"
        if proc.returncode != 0:
            # Type=exec: a failed start job means DrKonqi was not exec'd, and --collect unloads
            # the unit; nothing of it runs.
            detail = err.decode("utf-8", errors="replace").strip() or f"exit {proc.returncode}"
            return _Outcome.FAILED, f"systemd-run failed: {detail}"
        self.launched += 1
        # The manager owns DrKonqi now: it outlives us, and `systemctl --user status UNIT`
        # (while it runs) or the unit's journal tells how it ended.
        logger.info("DrKonqi for %s runs as %s", crash["id"], unit)
        return _Outcome.STARTED, ""

    async def _run_child(
        self, crash_id: str, argv: Sequence[str], env: Mapping[str, str], why: str
    ) -> bool:
        logger.info(
            "starting %s %s for %s as a %s (%s)",
            self._options.drkonqi, " ".join(argv), crash_id, Start.CHILD.value, why,
        )  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                self._options.drkonqi,
                *argv,
                env=dict(env),
                cwd=tempfile.gettempdir(),
                stdin=asyncio.subprocess.DEVNULL,
                # Outlives our exit, but not a stop of our unit (that kills our whole cgroup):
                # hence the transient service whenever a user manager runs.
                start_new_session=True,
            )
        except OSError as exc:
            logger.error("cannot start %s: %s", self._options.drkonqi, exc)
            return False
        self.launched += 1
        code = await proc.wait()
        logger.info("DrKonqi for %s exited with %s", crash_id, code)
        return True


async def _wait_for_daemon(client: BrokerClient) -> None:
    while not await client.daemon_running():
        logger.info("waiting for org.kde.crashbroker1 to appear on the bus")
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    path = args.drkonqi or find_drkonqi(env)
    if path is None:
        logger.error("DrKonqi is not installed (no drkonqi in $LIBEXEC_PATH or %s)", LIBEXEC_DIRS)
        return 1
    flavor = Flavor(args.drkonqi_version) if args.drkonqi_version else detect_flavor(path)
    options = Options(
        drkonqi=path,
        flavor=flavor,
        rate_limit_s=args.rate_limit,
        journal_dir=args.journal_dir,
        cache_home=args.cache_home or xdg_dir(env, "XDG_CACHE_HOME", ".cache"),
        env=env,
        on_request_only=args.on_request_only,
        start_via=StartVia(args.start_via),
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
            stack.callback(loop.remove_signal_handler, signum)
        bus: MessageBus = await connect_bus(args.bus_address)
        stack.callback(bus.disconnect)
        client = BrokerClient(bus)
        await client.subscribe()  # before anything is read: no crash slips between
        async with asyncio.TaskGroup() as tg:
            launcher = Launcher(client, options, tg)
            service = LauncherInterface(launcher.launch_request)
            bus.export(LAUNCHER_OBJECT_PATH, service)
            stack.callback(bus.unexport, LAUNCHER_OBJECT_PATH, service)
            reply = await bus.request_name(LAUNCHER_BUS_NAME, NameFlag.DO_NOT_QUEUE)
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                # Another launcher serves Launch(); claims still keep us from double launches.
                logger.warning("%s is owned by another launcher", LAUNCHER_BUS_NAME)
            logger.info("launching %s (DrKonqi %s) for KCrash crashes", path, flavor)

            async def pump() -> None:
                await _wait_for_daemon(client)
                await launcher.reclaim_open_windows()
                async for event in client.events():
                    await launcher.on_event(event)

            tasks = [
                tg.create_task(pump(), name="signals"),
                tg.create_task(stop.wait(), name="stop"),
                tg.create_task(bus.wait_for_disconnect(), name="bus"),  # type: ignore[no-untyped-call]
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            bus_lost = tasks[2].done()
            # DrKonqi windows are the user's and stay open: stop only our waits for them.
            for task in [*tasks, *launcher.children]:
                task.cancel()
    if bus_lost:
        logger.error("lost the session bus; exiting so the service manager restarts us")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crashbroker-launcher", description="Start DrKonqi for KCrash crashes."
    )
    p.add_argument("--bus-address", help="D-Bus address (default: the session bus)")
    p.add_argument("--drkonqi", help="the DrKonqi command (default: libexec drkonqi)")
    p.add_argument("--drkonqi-version", choices=[f.value for f in Flavor], help="default: detect")
    p.add_argument(
        "--rate-limit",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="at most one automatic launch per signature in this time (default 60)",
    )
    p.add_argument(
        "--on-request-only",
        action="store_true",
        help="start DrKonqi only when asked (Launch, the notifier's Report…), never by itself",
    )
    p.add_argument(
        "--start-via",
        choices=[v.value for v in StartVia],
        default=StartVia.AUTO.value,
        help="service: a transient service of the user manager (outside our sandbox); child: "
        "our own child; auto (default): service when a user manager runs, else child",
    )
    p.add_argument("--journal-dir", type=Path, help="the journal directory the daemon follows")
    p.add_argument("--cache-home", type=Path, help="default: $XDG_CACHE_HOME")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crashbroker import logs

    logs.configure(args.log_level)
    try:
        return asyncio.run(run(args))
    except OSError as exc:
        logger.error("cannot connect to the session bus: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
