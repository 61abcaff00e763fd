"""Backtraces come from exactly the trusted entry's core, and a root daemon reads another user's
core only as that user: real cores (``gcore`` of a real ``sleep``), real journal files written by
systemd-journal-remote, real gdb, zstd, xz, lz4 and setpriv (issue 14, items 1 and 7)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd import journal

from conftest import COREDUMP_MESSAGE_ID, Daemon, RemoteJournal, missing_rig
from crashbroker.adapters.backtrace import GdbBacktracer
from crashbroker.adapters.core_file import open_core
from crashbroker.adapters.journal import entry_fields
from crashbroker.config import coredump_writer_uids, local_machine_id
from crashbroker.domain.entry import TrustPolicy, Verdict, classify
from crashbroker.domain.errors import NoCore
from crashbroker.domain.model import CoredumpEntry
from real_process import wait_asleep, wait_exec

NOBODY = 65534
# gdb as another user: records who it runs as, then is the real gdb.
WRAPPER = """#!/bin/sh
core=$(for a in "$@"; do case $a in --core=*) echo "${{a#--core=}}";; esac; done)
{{
  echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
  grep -E '^(NoNewPrivs|CapEff|CapBnd):' /proc/self/status | tr '\\t' ' '
  echo "core=$(stat -L -c '%u %a' "$core")"
  printf 'arg=%s\\n' "$@"
}} >> {log}
exec /usr/bin/gdb "$@"
"""


async def gcore(title: str, *, uid: int | None = None) -> tuple[str, bytes]:
    """A real core of a sleeping ``sleep <title>`` (run as ``uid``), made by gdb's gcore, and
    what gdb says of it first (gcore keeps no arguments: the process id tells cores apart)."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid else []
    proc = await asyncio.create_subprocess_exec(*prefix, "sleep", title)
    try:
        await wait_exec(proc.pid, "/usr/bin/sleep")
        await wait_asleep(proc.pid)
        with tempfile.TemporaryDirectory() as tmp:
            done = await asyncio.create_subprocess_exec(
                "gcore", "-o", f"{tmp}/core", str(proc.pid),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await done.wait()
            return f"[New LWP {proc.pid}]", Path(f"{tmp}/core.{proc.pid}").read_bytes()
    finally:
        proc.kill()
        await proc.wait()


def policy(core_dir: Path | None = None) -> TrustPolicy:
    extra = {"core_dir": str(core_dir)} if core_dir else {}
    return TrustPolicy(
        writer_uids=coredump_writer_uids(), own_uid=None, machine_id=local_machine_id(), **extra
    )


def stored_entry(rj: RemoteJournal, pid: int, pol: TrustPolicy) -> CoredumpEntry:
    """The trusted entry of ``pid`` as the daemon stores it (its cursor included)."""
    reader = journal.Reader(path=str(rj.directory))
    try:
        reader.add_match(MESSAGE_ID=COREDUMP_MESSAGE_ID, COREDUMP_PID=str(pid))
        while reader._next(1):
            verdict, entry = classify(entry_fields(reader, None)[0], pol)
            if verdict is Verdict.ACCEPT and entry is not None:
                return entry
    finally:
        reader.close()
    raise AssertionError(f"no trusted entry of {pid}")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that nobody can enter (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="cb-shared-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def gdb_wrapper(shared_dir: Path) -> tuple[Path, Path]:
    """(a directory whose ``gdb`` records its credentials, the record)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        missing_rig("running gdb as another user needs root and setpriv")
    bindir = shared_dir / "bin"
    bindir.mkdir(mode=0o755)
    log = shared_dir / "gdb.log"
    log.touch()
    log.chmod(0o666)
    gdb = bindir / "gdb"
    gdb.write_text(WRAPPER.format(log=log))
    gdb.chmod(0o755)
    return bindir, log


@pytest.fixture
async def core_61() -> tuple[str, bytes]:
    return await gcore("61")


# ---- item 1: exactly the trusted entry's core --------------------------------------------------


async def test_backtrace_uses_the_trusted_entrys_journal_core_not_a_forged_one(
    daemon: Daemon, remote_journal: RemoteJournal, core_61: tuple[str, bytes], tmp_path: Path
):
    """A forged entry logged after the real one, with the same pid, timestamp and boot id (what
    ``coredumpctl dump`` matches, taking the newest): one carries another real core, one names
    a FIFO. The backtraces are of the trusted entries' cores, and neither waits on the FIFO."""
    mark, core = core_61
    other_mark, other = await gcore("62")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    forged_fields = {"_UID": "0", "_EXE": "/usr/bin/python3", "_COMM": "python3"}
    real_a = remote_journal.coredump(COREDUMP=core)
    forged_a = dict(real_a, COREDUMP=other, **{k: v.encode() for k, v in forged_fields.items()})
    real_b = remote_journal.coredump(COREDUMP=core)
    forged_b = {k: v for k, v in real_b.items() if k != "COREDUMP"}
    forged_b.update({k: v.encode() for k, v in forged_fields.items()})
    forged_b["COREDUMP_FILENAME"] = str(fifo).encode()
    remote_journal.append(real_a, forged_a, real_b, forged_b)
    daemon.args = [f"--journal-dir={remote_journal.directory}", "--backtrace-timeout=60"]
    await daemon.start()
    a = await daemon.client.crash(int(real_a["COREDUMP_PID"]))
    b = await daemon.client.crash(int(real_b["COREDUMP_PID"]))
    assert (await daemon.stats())["forged"] == 2

    text = await daemon.backtrace(a["id"])
    assert mark in text and "#0 " in text
    assert other_mark not in text
    started = time.monotonic()
    text = await daemon.backtrace(b["id"])
    assert time.monotonic() - started < 15
    assert mark in text and "#0 " in text
    assert list(daemon.tmpdir.iterdir()) == []  # no copy of a core left behind


@pytest.mark.parametrize("suffix", ["", ".zst", ".xz", ".lz4"])
async def test_an_external_core_is_read_from_its_proven_file(
    remote_journal: RemoteJournal, core_61: tuple[str, bytes], tmp_path: Path, suffix: str
):
    """``Storage=external``: the file the trusted entry names, proven again on the descriptor
    that is read, decompressed by zstd/xz/lz4 (no coredumpctl choosing among entries)."""
    tool = {".zst": "zstd", ".xz": "xz", ".lz4": "lz4"}.get(suffix)
    if tool and shutil.which(tool) is None:
        missing_rig(f"{tool} is not installed (scripts/setup installs it)")
    core_dir = tmp_path / "coredump"
    core_dir.mkdir()
    entry = remote_journal.coredump()
    pid, ts = entry["COREDUMP_PID"].decode(), entry["COREDUMP_TIMESTAMP"].decode()
    core = core_dir / f"core.sleep.0.{remote_journal.boot_id}.{pid}.{ts}{suffix}"
    mark, data = core_61
    if tool:
        data = subprocess.run([tool, "-c", "-q"], input=data, capture_output=True).stdout
    core.write_bytes(data)
    core.chmod(0o640)
    entry["COREDUMP_FILENAME"] = str(core).encode()
    remote_journal.append(entry)
    remote_journal.wait_written(1)
    pol = policy(core_dir)
    tracer = GdbBacktracer(policy=pol, journal_dir=remote_journal.directory)
    text = await tracer.backtrace(stored_entry(remote_journal, int(pid), pol))
    assert mark in text and "#0 " in text

    # A FIFO swapped in for the file is refused at once, without waiting for a writer.
    core.unlink()
    os.mkfifo(core)
    with pytest.raises(NoCore):
        await asyncio.wait_for(tracer.backtrace(stored_entry(remote_journal, int(pid), pol)), 5)


def test_open_core_never_blocks_on_a_fifo_swapped_in(tmp_path: Path):
    """The path flips between a regular file and a FIFO (rename) while it is opened: every
    open returns at once, and only a descriptor of a regular file is ever handed out."""
    path = tmp_path / "core"
    path.write_bytes(b"\x7fELF")
    stop = threading.Event()

    def swap() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            spare = tmp_path / f"spare{n}"
            if n % 2:
                os.mkfifo(spare)
            else:
                spare.write_bytes(b"\x7fELF")
            os.replace(spare, path)

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen = {True: 0, False: 0}
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            opened = open_core(str(path))
            seen[opened is not None] += 1
            if opened is not None:
                fd, facts = opened
                try:
                    assert facts.regular and stat.S_ISREG(os.fstat(fd).st_mode)
                finally:
                    os.close(fd)
    finally:
        stop.set()
        swapper.join()
    assert seen[True] and seen[False]


# ---- item 7: as root, another user's core is read as that user --------------------------------


async def test_root_runs_gdb_as_the_crashed_user_without_privileges(
    remote_journal: RemoteJournal, gdb_wrapper: tuple[Path, Path]
):
    bindir, log = gdb_wrapper
    mark, core = await gcore("63", uid=NOBODY)
    entry = remote_journal.coredump(
        COREDUMP=core, COREDUMP_UID=str(NOBODY), COREDUMP_GID=str(NOBODY)
    )
    setuid = remote_journal.coredump(
        COREDUMP=core, COREDUMP_UID=str(NOBODY), COREDUMP_GID=str(NOBODY), COREDUMP_DUMPABLE="2"
    )
    remote_journal.append(entry, setuid)
    remote_journal.wait_written(2)
    pol = policy()
    tracer = GdbBacktracer(
        policy=pol, journal_dir=remote_journal.directory, gdb=str(bindir / "gdb")
    )
    text = await tracer.backtrace(stored_entry(remote_journal, int(entry["COREDUMP_PID"]), pol))
    assert mark in text and "#0 " in text  # the real gdb, as nobody
    record = log.read_text().splitlines()
    assert record[0] == f"uid={NOBODY} gid={NOBODY} groups={NOBODY}"
    assert "NoNewPrivs: 1" in record
    assert "CapEff: 0000000000000000" in record and "CapBnd: 0000000000000000" in record
    assert f"core={NOBODY} 400" in record  # the copy: the user's, readable by it only
    args = [line.removeprefix("arg=") for line in record if line.startswith("arg=")]
    assert "--se=/usr/bin/sleep" in args
    assert [a for a in args if a.startswith("--core=/proc/self/fd/")]
    assert not [a for a in args if not a.startswith("-") and a.startswith("/")]  # no bare path

    # A setuid program's core (COREDUMP_DUMPABLE=2) is not given to its user at all.
    log.write_text("")
    with pytest.raises(NoCore, match="other credentials"):
        await tracer.backtrace(stored_entry(remote_journal, int(setuid["COREDUMP_PID"]), pol))
    assert log.read_text() == ""


async def test_all_users_daemon_as_root_backtraces_another_users_crash_as_that_user(
    daemon: Daemon, remote_journal: RemoteJournal, gdb_wrapper: tuple[Path, Path]
):
    bindir, log = gdb_wrapper
    mark, core = await gcore("64", uid=NOBODY)
    entry = remote_journal.coredump(
        COREDUMP=core, COREDUMP_UID=str(NOBODY), COREDUMP_GID=str(NOBODY)
    )
    remote_journal.append(entry)
    daemon.env_extra = {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    daemon.args = [f"--journal-dir={remote_journal.directory}", "--all-users"]
    await daemon.start()
    crash = await daemon.client.crash(int(entry["COREDUMP_PID"]))
    assert crash["uid"] == NOBODY
    text = await daemon.backtrace(crash["id"])
    assert mark in text and "#0 " in text
    assert log.read_text().splitlines()[0] == f"uid={NOBODY} gid={NOBODY} groups={NOBODY}"
