"""Fleet mode: two machines' coredump entries uploaded through systemd-journal-remote into one
directory (a file per machine, as ``--output=DIR/remote-X.journal`` per uploader or
``--split-mode=host`` write them), followed with ``--journal-dir DIR --all-users``.

sd-journal reading the whole directory interleaves the machines by time and steps over any
entry older than where it is: a machine's late upload was never read, live or after a restart
(docs/reliability.md). Each machine is followed from its own position now.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from conftest import Daemon, RemoteJournal, cli, variant_filter
from export_format import Entry

HOUR_US = 3_600_000_000


class Machine:
    """One uploader: its own journal-remote writer (file), machine id, host name and boot id."""

    def __init__(self, directory: Path, host: str, base_us: int) -> None:
        self.directory = directory
        self.host = host
        self.machine_id = uuid.uuid4().hex
        self.boot_id = uuid.uuid4().hex
        self.base_us = base_us
        self.files = 0
        self.writer = self._writer()

    def _writer(self) -> RemoteJournal:
        self.files += 1
        return RemoteJournal(self.directory, f"remote-{self.host}-{self.files}")

    def rotate(self) -> None:
        """The machine's file is closed and a new one begins (journal-remote rotating)."""
        self.writer.close()
        self.writer = self._writer()

    def crash(self, pid: int, minute: int) -> Entry:
        """A regular user's crash on this machine, ``minute`` minutes after the base time
        (crashes 10 minutes apart never form a loop)."""
        ts = self.base_us + minute * 60_000_000
        return self.writer.coredump(
            "user-sleep-sigsegv.export",
            pid=pid,
            _MACHINE_ID=self.machine_id,
            _BOOT_ID=self.boot_id,
            _HOSTNAME=self.host,
            COREDUMP_HOSTNAME=self.host,
            _UID="1001",
            _GID="1001",
            COREDUMP_UID="1001",
            COREDUMP_GID="1001",
            COREDUMP_TIMESTAMP=str(ts),
            __REALTIME_TIMESTAMP=str(ts + 400_000),
        )

    def upload(self, *entries: Entry) -> None:
        self.writer.append(*entries)

    def close(self) -> None:
        self.writer.close()


async def listed_pids(daemon: Daemon, **flt: object) -> list[int]:
    crashes = await daemon.call("ListCrashes", "a{sv}", variant_filter(**flt))
    return sorted(int(c["pid"]) for c in crashes)


async def test_two_machines_late_uploads_rotation_and_restart(daemon: Daemon, tmp_path: Path):
    directory = tmp_path / "remote"
    directory.mkdir()
    base = time.time_ns() // 1000 - 10 * HOUR_US
    a = Machine(directory, "alpha", base)
    b = Machine(directory, "beta", base)
    try:
        a.upload(a.crash(1001, 0))
        b.upload(b.crash(2001, 10))
        a.writer.wait_written(2)  # journalctl --directory: both machines' files
        daemon.args = [f"--journal-dir={directory}", "--all-users", "--grace-ms=0"]
        await daemon.start()
        await daemon.caught_up()
        one_a = await daemon.client.crash(1001)
        one_b = await daemon.client.crash(2001)
        assert (one_a["machine_id"], one_a["hostname"]) == (a.machine_id, "alpha")
        assert (one_b["machine_id"], one_b["hostname"]) == (b.machine_id, "beta")

        # b stops uploading; a goes on (live), far ahead of b's newest.
        a.upload(a.crash(1002, 600))
        assert (await daemon.client.crash(1002))["past"] is False
        # b comes back with what it logged meanwhile: older than a's newest.
        b.upload(b.crash(2002, 300))
        late = await daemon.client.crash(2002)
        assert late["machine_id"] == b.machine_id

        # Each machine's own crashes, by machine id or host name, on the bus and in the CLI.
        assert await listed_pids(daemon, machine=a.machine_id) == [1001, 1002]
        assert await listed_pids(daemon, machine="beta") == [2001, 2002]
        assert await listed_pids(daemon) == [1001, 1002, 2001, 2002]
        rc, out, err = await cli(daemon.bus_address, "list", "--machine", "alpha", "--json")
        assert rc == 0, err
        assert sorted(c["pid"] for c in json.loads(out)) == [1001, 1002]
        rc, out, err = await cli(daemon.bus_address, "list", "--machine", b.machine_id, "--json")
        assert rc == 0, err
        assert sorted(c["pid"] for c in json.loads(out)) == [2001, 2002]

        # a's file rotates: a new file for the machine; then b is late again.
        a.rotate()
        a.upload(a.crash(1003, 900))
        assert (await daemon.client.crash(1003))["past"] is False
        b.upload(b.crash(2003, 400))
        await daemon.client.crash(2003)

        # Stopped: b uploads a late crash meanwhile; a restart reads it and repeats nothing.
        await daemon.stop()
        b.upload(b.crash(2004, 500))
        b.writer.wait_written(7)
        daemon.client.signals.clear()
        await daemon.start()
        await daemon.caught_up()
        assert (await daemon.client.crash(2004))["machine_id"] == b.machine_id
        stats = await daemon.stats()
        assert (stats["entries"], stats["already_known"], stats["published"]) == (1, 0, 1)
        assert [c["pid"] for c in daemon.client.detected()] == [2004]
        assert await listed_pids(daemon, machine="beta") == [2001, 2002, 2003, 2004]
        assert await listed_pids(daemon, machine="alpha") == [1001, 1002, 1003]

        # And again: nothing new, nothing read.
        await daemon.stop()
        daemon.client.signals.clear()
        await daemon.start()
        await daemon.caught_up()
        stats = await daemon.stats()
        assert (stats["entries"], stats["already_known"]) == (0, 0)
        assert daemon.client.detected() == []
    finally:
        a.close()
        b.close()
