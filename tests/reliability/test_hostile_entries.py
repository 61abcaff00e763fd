"""Crafted coredump entries in a journal directory (whose ``_`` fields are whatever the uploader
sent) next to valid crashes in the same batch: the daemon keeps running, publishes the valid ones,
counts the rest, starts again without choking, and the CLI prints no terminal escape raw."""

from __future__ import annotations

import json

from conftest import Daemon, RemoteJournal, cli

OSC52 = "\x1b]52;c;cHduZWQ=\x07"  # "write 'pwned' to the clipboard", ended by BEL


def hostile_batch(rj: RemoteJournal) -> tuple[list[dict[str, bytes]], list[int], int]:
    """Valid crashes around crafted ones; returns (entries, valid pids, crafted count)."""
    first = rj.coredump()
    crafted = [
        rj.coredump(pid=2**32 + 5),
        rj.coredump(COREDUMP_TIMESTAMP=str(2**63 + 1)),
        rj.coredump(COREDUMP_UID="-1000"),
        rj.coredump(COREDUMP_GID="-5"),
        rj.coredump(COREDUMP_EXE=b"/usr/bin/sl\0eep"),
        rj.coredump(COREDUMP_COMM=b"sl\0eep"),
    ]
    # Accepted: a path may hold any byte but NUL (a program can be named like this); it is
    # stored as it is and only escaped when printed. The hostname is free text: cleaned.
    escapes = rj.coredump(
        COREDUMP_EXE=f"/tmp/{OSC52}evil\x9b31m\u202e",
        COREDUMP_COMM="evil",
        COREDUMP_HOSTNAME=f"{OSC52}host\r\x1b[2K",
        COREDUMP_CMDLINE=b"evil \x00\x1b[31mred",
    )
    last = rj.coredump()
    entries = [first, *crafted, escapes, last]
    valid = [int(e["COREDUMP_PID"]) for e in (first, escapes, last)]
    return entries, valid, len(crafted)


async def test_crafted_entries_are_skipped_and_the_batch_goes_on(
    daemon: Daemon, remote_journal: RemoteJournal
) -> None:
    entries, valid, crafted = hostile_batch(remote_journal)
    remote_journal.append(*entries)  # one catch-up batch
    remote_journal.wait_written(len(entries))
    daemon.args = [f"--journal-dir={remote_journal.directory}", "--grace-ms=100"]
    await daemon.start()
    await daemon.caught_up()

    for pid in valid:
        await daemon.client.crash(pid)
    stats = await daemon.stats()
    assert stats["malformed"] == crafted, daemon.log_text()
    assert stats["published"] == len(valid)
    assert stats["invalid"] == 0  # the domain caught them all; the broker's guard was not needed
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    assert sorted(c["pid"] for c in listed) == sorted(valid)
    evil = next(c for c in listed if c["pid"] == valid[1])
    assert evil["exe"] == f"/tmp/{OSC52}evil\x9b31m\u202e"  # exact over D-Bus
    record = await daemon.call("GetCrash", "s", evil["id"])
    assert "\x1b" not in record["hostname"] and "\r" not in record["hostname"]
    assert "\0" not in record["cmdline"] and "\x1b" not in record["cmdline"]

    # Live too: crafted entries after the catch-up, then a valid one.
    more, more_valid, more_crafted = hostile_batch(remote_journal)
    remote_journal.append(*more)
    for pid in more_valid:
        await daemon.client.crash(pid)
    assert (await daemon.stats())["malformed"] == crafted + more_crafted

    # A restart reads the same journal again: no choke, nothing announced twice.
    assert await daemon.stop() == 0
    before = len(daemon.client.detected())
    await daemon.start()
    await daemon.caught_up()
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    assert sorted(c["pid"] for c in listed) == sorted(valid + more_valid)
    assert len(daemon.client.detected()) == before
    assert daemon.proc is not None and daemon.proc.returncode is None

    # JSON output stays exact; the human output escapes every non-printable character.
    addr = daemon.bus_address
    rc, out, _ = await cli(addr, "list", "--json")
    assert rc == 0
    assert f"/tmp/{OSC52}evil\x9b31m\u202e" in [c["exe"] for c in json.loads(out)]
    for args in (("list",), ("show", evil["id"])):
        rc, out, err = await cli(addr, *args)
        assert rc == 0, err
        for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\r", "\0"):
            assert raw not in out, (args, out)
        assert "\\x1b]52;c;cHduZWQ=\\aevil\\x9b31m\\u202e" in out, out
