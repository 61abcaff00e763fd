"""Composition root: builds the adapters, wires the broker, runs until told to stop.

Order (each cleanup is registered the moment its resource exists):
store → journal (positioned) → broker → crash hints (inotify) → bus connection → exported object
→ bus name (last, so ``Type=dbus`` readiness means fully set up) → one TaskGroup with the journal
pump, the hint watcher and the timer.
SIGTERM/SIGINT only set an event. Losing the bus ends the run with a failure exit, so systemd
restarts us; the stored cursor means nothing is lost meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from contextlib import AsyncExitStack

from dbus_fast import BusType, Message, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag

from crashbroker import __version__
from crashbroker.adapters import dbus_wire
from crashbroker.adapters.backtrace import BacktraceLimits, GdbBacktracer
from crashbroker.adapters.core_file import inspect_core
from crashbroker.adapters.dbus_names import BUS_NAME, OBJECT_PATH
from crashbroker.adapters.dbus_record import unsendable
from crashbroker.adapters.dbus_service import LISTING_TAG, ManagerInterface
from crashbroker.adapters.hints import HintWatcher
from crashbroker.adapters.journal import JournalSource
from crashbroker.adapters.journal_fleet import FleetSource
from crashbroker.adapters.memory import keep_large_buffers_out_of_the_heap
from crashbroker.adapters.metadata_dir import MetadataDir
from crashbroker.adapters.store import CrashStore
from crashbroker.broker import Broker
from crashbroker.config import Config, trust_policy
from crashbroker.domain.correlator import Correlator
from crashbroker.domain.cursor import CatchUp
from crashbroker.domain.errors import CrashBrokerError
from crashbroker.domain.loops import LoopPolicy

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NAME_TAKEN = 3


class NameTaken(CrashBrokerError):
    """Another process owns the bus name."""


def _monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def _wall_us() -> int:
    return time.time_ns() // 1000


async def _ping(bus: MessageBus) -> None:
    """A round trip to the bus daemon (org.freedesktop.DBus.Peer.Ping)."""
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus.Peer",
            member="Ping",
        )
    )


async def _bus_gone(bus: MessageBus) -> None:
    """Returns when the bus connection ends, however it ends."""
    try:
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    except Exception as exc:  # the reason the connection ended, not a bug of ours
        logger.error("bus connection ended: %s", exc)


async def run(config: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT (exit 0) or until the bus goes away (exit 1)."""
    started = _monotonic_us()
    keep_large_buffers_out_of_the_heap()  # a daemon that idles for days gives them back
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
            stack.callback(loop.remove_signal_handler, signum)

        store, salvage = CrashStore.open_or_rebuild(config.database)
        stack.callback(store.close)
        catch_up = config.catch_up
        if salvage is not None:
            # The journal is the source of truth: index all of it again. What it cannot tell
            # (dismissed/claimed states beyond those salvaged, cached backtraces) is lost.
            catch_up = CatchUp.ALL
            logger.error(
                "%s; moved it to %s and rebuilding from the journal; salvaged %d crash states; "
                "cached backtraces and any state not salvaged are lost",
                salvage.reason,
                salvage.moved_to,
                len(salvage.states),
            )
        source = (
            # A directory may hold several machines' files: each machine has its own position.
            FleetSource(
                directory=config.journal_dir,
                cursor=store.cursor(),
                positions=store.positions(),
                catch_up=catch_up,
            )
            if config.journal_dir is not None
            else JournalSource(cursor=store.cursor(), catch_up=catch_up)
        )
        source.open()
        stack.callback(source.close)
        policy = trust_policy(all_users=config.all_users)
        metadata = MetadataDir(config.cache_home)
        broker = Broker(
            store=store,
            metadata=metadata,
            policy=policy,
            inspect_core=inspect_core,
            correlator=Correlator(grace_us=config.grace_ms * 1000),
            monotonic=_monotonic_us,
            wall=_wall_us,
            loops=LoopPolicy(
                threshold=config.loop_threshold,
                window_us=int(config.loop_window_s * 1_000_000),
            ),
            backtracer=GdbBacktracer(
                policy=policy,
                journal_dir=config.journal_dir,
                limits=BacktraceLimits(timeout_s=config.backtrace_timeout_s),
            ),
            restored_states=salvage.states if salvage else None,
            started=started,
            unsendable=unsendable,
        )
        if salvage is not None:
            broker.stats.store_rebuilt = 1
            broker.stats.states_salvaged = len(salvage.states)

        def hinted(pid: int | None) -> None:
            broker.stats.hints += 1
            source.read_soon(pid)

        # Watching starts before the journal is read (subscribe, then snapshot); a hint before
        # the pump runs only makes its first wait shorter.
        hints = HintWatcher(
            hinted,
            core_dir=config.hint_core_dir,
            kcrash_dir=metadata.kcrash_dir,
        )
        hints.open()
        stack.callback(hints.close)

        bus = (
            MessageBus(bus_address=config.bus_address)
            if config.bus_address
            else MessageBus(bus_type=BusType.SESSION)
        )
        # dbus-fast needs disconnect() even when connect() fails half-way (bleak's note).
        stack.callback(bus.disconnect)
        await bus.connect()
        if not dbus_wire.patient_writes(bus):
            logger.warning("dbus-fast changed: a full bus socket may end the connection")
        interface = ManagerInterface(broker, __version__, barrier=lambda: _ping(bus))
        bus.export(OBJECT_PATH, interface)
        stack.callback(bus.unexport, OBJECT_PATH, interface)
        stack.callback(interface.attach(bus))
        stack.callback(await interface.serve_claims(bus))  # before the name: no claim untied
        if dbus_wire.AVAILABLE:
            store.set_renderer(interface.list_chunk, LISTING_TAG)
        broker.publisher = interface

        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise NameTaken(f"{BUS_NAME} is already owned by another process")
        logger.info(
            "crashbroker %s on the bus as %s; journal %s; state %s",
            __version__,
            BUS_NAME,
            config.journal_dir or "local",
            config.database,
        )

        await broker.announce_pending()
        bus_lost = False
        async with asyncio.TaskGroup() as tg:
            workers = [
                tg.create_task(broker.run_journal(source.batches()), name="journal"),
                tg.create_task(hints.run(), name="hints"),
                tg.create_task(broker.run_timers(), name="timers"),
                tg.create_task(broker.run_backtraces(), name="backtraces"),
                tg.create_task(broker.run_checkpoints(), name="checkpoints"),
            ]
            stopping = tg.create_task(stop.wait(), name="stop")
            disconnected = tg.create_task(_bus_gone(bus), name="bus")
            await asyncio.wait([stopping, disconnected], return_when=asyncio.FIRST_COMPLETED)
            bus_lost = disconnected.done()
            if not bus_lost:
                # Let an announcement in flight be noted as done, so it is not repeated.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await broker.quiesce()
            for task in (*workers, stopping, disconnected):
                task.cancel()
        if bus_lost:
            logger.error("lost the session bus; exiting so the service manager restarts us")
            return EXIT_FAILURE
        logger.info("stopping")
    return EXIT_OK


def main(config: Config) -> int:
    """Run the daemon; map failures to exit codes with one clear log line."""
    try:
        return asyncio.run(run(config))
    except NameTaken as exc:
        logger.error("%s", exc)
        return EXIT_NAME_TAKEN
    except CrashBrokerError as exc:
        logger.error("%s", exc)
    except OSError as exc:
        logger.error("cannot connect to the session bus: %s", exc)
    except ExceptionGroup as group:
        # A worker failed: logged once here; the service manager restarts us.
        for failure in group.exceptions:
            logger.error("worker failed", exc_info=failure)
    return EXIT_FAILURE
