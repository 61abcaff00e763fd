"""No method call waits on gdb, and a claim lives with its claimant's connection (issue 15,
item 4). The real daemon on a private dbus-daemon, a real core (gcore) in a journal written by
systemd-journal-remote, the real gdb made slow by a wrapper on the daemon's PATH, busctl."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from test_backtrace_trust import gcore
from test_cli import cli

from conftest import Daemon, RemoteJournal, bus_call
from crashbroker.adapters.dbus_names import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH, error_name

SLOW_S = 3.0  # the gdb wrapper's delay: longer than any answer below may take
SLOW_GDB = f'#!/bin/sh\nsleep {SLOW_S}\nexec /usr/bin/gdb "$@"\n'


@pytest.fixture
def slow_gdb(tmp_path: Path) -> dict[str, str]:
    """The daemon's environment with a ``gdb`` that waits SLOW_S seconds, then is gdb."""
    bindir = tmp_path / "slow-bin"
    bindir.mkdir()
    gdb = bindir / "gdb"
    gdb.write_text(SLOW_GDB)
    gdb.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


async def busctl(daemon: Daemon, *args: str) -> tuple[int, str, str, float]:
    """``busctl call`` on the private bus with a 5 s method timeout; (rc, out, err, seconds)."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "busctl", f"--address={daemon.bus_address}", "--timeout=5", "call",
        BUS_NAME, OBJECT_PATH, MANAGER_INTERFACE, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


async def timed(daemon: Daemon, member: str, *body: str) -> tuple[Message, float]:
    started = time.monotonic()
    reply = await bus_call(daemon.client.bus, member, "s" * len(body), list(body))
    return reply, time.monotonic() - started


async def test_a_cold_backtrace_is_requested_at_once_and_announced(
    daemon: Daemon, remote_journal: RemoteJournal, slow_gdb: dict[str, str]
):
    mark, core = await gcore("71")
    a = remote_journal.coredump(COREDUMP=core)
    b = remote_journal.coredump(COREDUMP=core)
    remote_journal.append(a, b)
    daemon.env_extra = slow_gdb
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    crash_a = (await daemon.client.crash(int(a["COREDUMP_PID"])))["id"]
    crash_b = (await daemon.client.crash(int(b["COREDUMP_PID"])))["id"]

    started = time.monotonic()
    reply, took = await timed(daemon, "RequestBacktrace", crash_a)
    assert reply.message_type == MessageType.METHOD_RETURN and reply.body == [False]
    assert took < 1
    # While gdb runs, every call answers at once: GetBacktrace says it is not there yet.
    reply, took = await timed(daemon, "GetBacktrace", crash_a)
    assert reply.error_name == error_name("NotReady") and took < 1
    assert "being made" in reply.body[0]
    rc, _, err, took = await busctl(daemon, "GetBacktrace", "s", crash_a)
    assert rc != 0 and "RequestBacktrace" in err and took < 2, err
    rc, out, err, took = await busctl(daemon, "RequestBacktrace", "s", crash_a)
    assert (rc, out.strip()) == (0, "b false") and took < 2, err

    [outcome] = await daemon.client.wait_for(lambda: daemon.client.backtrace_outcomes(crash_a))
    assert time.monotonic() - started >= SLOW_S  # the answers above did not wait for gdb
    assert outcome["backtrace_available"] is True
    assert outcome["signature"].startswith("/usr/bin/sleep:SIGSEGV")
    reply, took = await timed(daemon, "GetBacktrace", crash_a)
    assert reply.message_type == MessageType.METHOD_RETURN and took < 1
    assert mark in reply.body[0] and "#0 " in reply.body[0]
    rc, out, err, took = await busctl(daemon, "GetBacktrace", "s", crash_a)
    assert rc == 0 and mark in out and took < 2, err
    assert await daemon.call("RequestBacktrace", "s", crash_a) is True  # cached
    assert (await daemon.stats())["backtraces"] == 1

    # The CLI requests, waits for the signal with its own deadline, then prints.
    t0 = time.monotonic()
    rc, _, err = await cli(daemon.bus_address, "backtrace", "--timeout=0.5", crash_b)
    assert rc == 1 and "Timeout" in err and time.monotonic() - t0 < SLOW_S
    rc, out, err = await cli(daemon.bus_address, "backtrace", crash_b[:9])
    assert rc == 0, err
    assert mark in out and "#0 " in out
    assert (await daemon.stats())["backtraces"] == 2  # the timed-out request's run, shared


async def test_a_failed_run_is_announced_and_named_by_get_backtrace(
    daemon: Daemon, remote_journal: RemoteJournal
):
    entry = remote_journal.coredump(COREDUMP_TRUNCATED="1", COREDUMP=b"\x7fELF-cut")
    remote_journal.append(entry)
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    crash_id = (await daemon.client.crash(int(entry["COREDUMP_PID"])))["id"]
    outcome = await daemon.request_backtrace(crash_id)
    assert outcome["backtrace_error"] == error_name("CoreTruncated")
    reply = await bus_call(daemon.client.bus, "GetBacktrace", "s", [crash_id])
    assert reply.error_name == error_name("CoreTruncated")
    rc, _, err = await cli(daemon.bus_address, "backtrace", crash_id)
    assert rc == 1 and "CoreTruncated" in err


# ---- claims tied to the claimant's connection ------------------------------------------------


@pytest.fixture
async def other(daemon: Daemon) -> AsyncIterator[MessageBus]:
    """A second client connection (a claimant)."""
    bus = await MessageBus(bus_address=daemon.bus_address).connect()
    try:
        yield bus
    finally:
        bus.disconnect()


async def call_on(bus: MessageBus, member: str, *body: str) -> object:
    reply = await bus_call(bus, member, "s" * len(body), list(body))
    assert reply.message_type == MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return reply.body[0]


def state_updates(daemon: Daemon, crash_id: str) -> list[dict[str, object]]:
    return [
        body[1]
        for name, body in daemon.client.signals
        if name == "CrashUpdated" and body[0] == crash_id and "state" in body[1]
    ]


async def test_a_claim_is_undone_when_its_claimant_leaves_the_bus(
    daemon: Daemon, remote_journal: RemoteJournal, other: MessageBus
):
    kept, dismissed = remote_journal.coredump(), remote_journal.coredump()
    remote_journal.append(kept, dismissed)
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    kept_id = (await daemon.client.crash(int(kept["COREDUMP_PID"])))["id"]
    dismissed_id = (await daemon.client.crash(int(dismissed["COREDUMP_PID"])))["id"]
    assert await call_on(other, "Claim", kept_id, "test-launcher") is True
    assert await call_on(other, "Claim", dismissed_id, "test-launcher") is True
    await daemon.call("Dismiss", "s", dismissed_id)
    record = await daemon.call("GetCrash", "s", kept_id)
    assert (record["state"], record["claimed_by"]) == ("claimed", "test-launcher")

    other.disconnect()
    await daemon.client.wait_for(lambda: len(state_updates(daemon, kept_id)) == 2)
    assert state_updates(daemon, kept_id)[-1] == {"state": "new", "claimed_by": ""}
    record = await daemon.call("GetCrash", "s", kept_id)
    assert (record["state"], record["claimed_by"]) == ("new", "")
    # A crash dismissed meanwhile stays dismissed.
    assert (await daemon.call("GetCrash", "s", dismissed_id))["state"] == "dismissed"
    assert [u["state"] for u in state_updates(daemon, dismissed_id)] == ["claimed"]
    # Free again: anyone may claim it.
    assert await daemon.call("Claim", "ss", kept_id, "another") is True


async def test_only_the_claimants_connection_may_release(
    daemon: Daemon, remote_journal: RemoteJournal, other: MessageBus
):
    entry, second = remote_journal.coredump(), remote_journal.coredump()
    remote_journal.append(entry, second)
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    crash_id = (await daemon.client.crash(int(entry["COREDUMP_PID"])))["id"]
    second_id = (await daemon.client.crash(int(second["COREDUMP_PID"])))["id"]
    assert await call_on(other, "Claim", crash_id, "test-launcher") is True
    # The same handler name over another connection is refused, as is another handler.
    assert await daemon.call("Release", "ss", crash_id, "test-launcher") is False
    assert await call_on(other, "Release", crash_id, "someone-else") is False
    assert (await daemon.call("GetCrash", "s", crash_id))["state"] == "claimed"
    assert await call_on(other, "Release", crash_id, "test-launcher") is True
    record = await daemon.call("GetCrash", "s", crash_id)
    assert (record["state"], record["claimed_by"]) == ("new", "")
    # Released: leaving the bus later changes nothing (the claim it still holds is undone).
    assert await daemon.call("Claim", "ss", crash_id, "mine") is True
    assert await call_on(other, "Claim", second_id, "test-launcher") is True
    other.disconnect()
    await daemon.client.wait_for(lambda: len(state_updates(daemon, second_id)) == 2)
    record = await daemon.call("GetCrash", "s", crash_id)
    assert (record["state"], record["claimed_by"]) == ("claimed", "mine")
