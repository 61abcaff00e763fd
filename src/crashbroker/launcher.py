"""``crashbroker-launcher``: starts DrKonqi for KCrash crashes announced by the daemon.

A subscriber of ``org.kde.crashbroker1``. For each live crash of a KDE application it claims
the crash over D-Bus (so two launchers never start two DrKonqis) and then starts DrKonqi exactly
as DrKonqi's own ``drkonqi-coredump-launcher`` would (see ``domain/drkonqi.py``). It also exports
``org.kde.crashbroker1.Launcher.Launch(s id) → b`` for a user's explicit "Report…".

Composition root of its own: one TaskGroup (signal pump, DrKonqi children), signals only set an
event, exits non-zero when the bus goes away so the service manager restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
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

from crashbroker.adapters.dbus_names import LAUNCHER_BUS_NAME, LAUNCHER_OBJECT_PATH
from crashbroker.adapters.journal import field_text
from crashbroker.adapters.launcher_service import LauncherInterface
from crashbroker.adapters.metadata_dir import read_capped
from crashbroker.client import BrokerClient, ClientError, CrashEvent, connect_bus
from crashbroker.config import xdg_dir
from crashbroker.domain import drkonqi
from crashbroker.domain.drkonqi import Flavor, KCrashGroups, RateLimit, Skip
from crashbroker.domain.errors import CrashBrokerError, MetadataError
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


def journal_fields(cursor: str, journal_dir: Path | None) -> dict[str, str]:
    """The entry's fields as text (without the core itself and journald's ``__`` fields)."""
    from systemd import journal

    reader = journal.Reader(path=str(journal_dir)) if journal_dir else journal.Reader()
    try:
        reader.seek_cursor(cursor)
        entry = reader.get_next()
    finally:
        reader.close()
    return {
        k: field_text(v) for k, v in entry.items() if not k.startswith("__") and k != "COREDUMP"
    }


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` (never following a link there) with ``text``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".crashbroker-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True, slots=True)
class Options:
    drkonqi: str
    flavor: Flavor
    rate_limit_s: float
    journal_dir: Path | None
    cache_home: Path
    env: Mapping[str, str]
    on_request_only: bool = False


class Launcher:
    """Decides, claims, writes DrKonqi's metadata file and starts DrKonqi."""

    def __init__(self, client: BrokerClient, options: Options, tg: asyncio.TaskGroup) -> None:
        self._client = client
        self._options = options
        self._tg = tg
        self._limit = RateLimit(int(options.rate_limit_s * 1_000_000))
        self.launched = 0
        self.children: set[asyncio.Task[None]] = set()

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
        if skip is None and not explicit:
            now = time.monotonic_ns() // 1000
            if not self._limit.allow(str(crash["signature"]), now):
                skip = Skip.RATE_LIMITED
        argv = drkonqi.arguments(crash["kcrash"], self._options.flavor)
        if skip is None and argv is None:
            skip = Skip.NO_ARGUMENTS
        if skip is not None or argv is None:
            logger.info("not launching DrKonqi for %s (%s): %s", crash["id"], crash["exe"], skip)
            return False
        if crash["state"] == "new" and not await self._client.claim(crash["id"], drkonqi.HANDLER):
            logger.info("crash %s was claimed by another handler", crash["id"])
            return False
        try:
            metadata = await self._metadata_file(crash)
        except (OSError, MetadataError, CrashBrokerError) as exc:
            logger.error("cannot prepare DrKonqi's metadata for %s: %s", crash["id"], exc)
            return False
        env = drkonqi.child_environment(self._options.env, str(metadata))
        child = self._tg.create_task(self._run(crash["id"], argv, env), name="drkonqi")
        self.children.add(child)
        child.add_done_callback(self.children.discard)
        return True

    async def _metadata_file(self, crash: Mapping[str, Any]) -> Path:
        fields = await asyncio.to_thread(
            journal_fields, crash["journal_cursor"], self._options.journal_dir
        )
        ini_path = Path(crash["metadata_path"])
        raw = await read_capped(ini_path)
        if self._options.flavor is Flavor.V5:
            text = drkonqi.v5_metadata(raw.decode("utf-8", errors="replace"), fields)
            await asyncio.to_thread(_write_atomically, ini_path, text)
            return ini_path
        source = MetadataSource(crash["kcrash_source"])
        meta = parse_ini(raw, str(ini_path), source)
        groups = KCrashGroups(meta.kcrash, meta.tags, meta.extra, meta.gpu, meta.complete)
        name = drkonqi.v6_metadata_name(
            crash["exe"], crash["boot_id"], crash["pid"], crash["timestamp"]
        )
        crashes_dir = self._options.cache_home / "drkonqi" / "crashes"
        await asyncio.to_thread(crashes_dir.mkdir, parents=True, exist_ok=True)
        path = crashes_dir / name
        text = drkonqi.v6_metadata(groups, fields, crash["journal_cursor"])
        await asyncio.to_thread(_write_atomically, path, text)
        return path

    async def _run(self, crash_id: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        logger.info("starting %s %s for %s", self._options.drkonqi, " ".join(argv), crash_id)
        try:
            proc = await asyncio.create_subprocess_exec(
                self._options.drkonqi,
                *argv,
                env=dict(env),
                cwd=tempfile.gettempdir(),
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # DrKonqi outlives us if we are restarted
            )
        except OSError as exc:
            logger.error("cannot start %s: %s", self._options.drkonqi, exc)
            return
        self.launched += 1
        code = await proc.wait()
        logger.info("DrKonqi for %s exited with %s", crash_id, code)


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
    p.add_argument("--journal-dir", type=Path, help="the journal directory the daemon follows")
    p.add_argument("--cache-home", type=Path, help="default: $XDG_CACHE_HOME")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return asyncio.run(run(args))
    except OSError as exc:
        logger.error("cannot connect to the session bus: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
