"""crashbroker-launcher on real parts: real KCrash crashes through the real daemon, the real
Debian drkonqi-coredump-launcher for a differential check, a stand-in DrKonqi that records how it
was started, DrKonqi 6's records as real files, the real systemd-run (and a real user manager,
when one is reachable)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import MessageType
from dbus_fast.introspection import Node

from conftest import (
    Daemon,
    DrKonqiRecorder,
    LauncherProc,
    RemoteJournal,
    bus_call,
    crash_kronometer,
    missing_rig,
    write_ini,
    written_at_crash,
)
from crashbroker.adapters.dbus_names import (
    LAUNCHER_BUS_NAME,
    LAUNCHER_INTERFACE,
    LAUNCHER_OBJECT_PATH,
)
from crashbroker.domain.errors import MetadataError, MetadataReason
from crashbroker.launcher import create_exclusively, read_record


def ini_groups(text: str) -> dict[str, dict[str, str]]:
    """A small INI reader for comparing files (groups → key → raw value)."""
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1], {})
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current[key] = value
    return groups


DEBIAN_LAUNCHER = "/usr/lib/x86_64-linux-gnu/libexec/drkonqi-coredump-launcher"
ACTIVATION = {"INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}
CONTRACT = Path(__file__).resolve().parents[2] / "dbus" / "org.kde.crashbroker1.Launcher.xml"


async def launch(daemon: Daemon, crash_id: str) -> bool:
    reply = await bus_call(
        daemon.client.bus,
        "Launch",
        "s",
        [crash_id],
        destination=LAUNCHER_BUS_NAME,
        path=LAUNCHER_OBJECT_PATH,
        interface=LAUNCHER_INTERFACE,
    )
    assert reply.message_type == MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return bool(reply.body[0])


async def start_local(daemon: Daemon) -> None:
    daemon.args = ["--catch-up=none", "--grace-ms=2000"]
    await daemon.start()
    await daemon.caught_up()


def need_kronometer() -> None:
    if shutil.which("kronometer") is None:
        missing_rig("kronometer is not installed (scripts/setup installs it)")


@pytest.mark.rig
@pytest.mark.usefixtures("rig")
async def test_real_kcrash_crash_is_claimed_and_drkonqi_started_like_drkonqi_5_does(
    daemon: Daemon, launcher: LauncherProc, recorder: DrKonqiRecorder, kcrash_env: dict[str, str]
):
    need_kronometer()
    kcrash_env["XDG_CACHE_HOME"] = str(daemon.cache_home)
    await start_local(daemon)
    await launcher.start(recorder.dir, "--drkonqi-version=5")
    pid = await crash_kronometer(kcrash_env)
    crash = await daemon.client.crash(pid, timeout=30)
    [run] = await recorder.wait()

    kcrash = crash["kcrash"]
    expected: list[str] = []
    for key in sorted(k for k in kcrash if k != "exe"):
        expected += [f"--{key}", kcrash[key]]
    assert run["argv"] == expected
    assert run["argv"][:2] == ["--appname", "kronometer"]
    env = run["env"]
    assert env["DRKONQI_BACKEND"] == "COREDUMPD"
    assert env["DRKONQI_METADATA_FILE"] == crash["metadata_path"]
    assert not ACTIVATION & set(env)
    groups = ini_groups(run["metadata"])
    assert groups["KCrash"]["programname"] == "Kronometer"
    assert groups["Journal"]["COREDUMP_PID"] == f"@ByteArray({pid})"
    assert groups["Journal"]["COREDUMP_EXE"] == "@ByteArray(/usr/bin/kronometer)"

    record = await daemon.call("GetCrash", "s", crash["id"])
    assert (record["state"], record["claimed_by"]) == ("claimed", "crashbroker-launcher")


def journal_json(cursor: str) -> dict[str, str]:
    """The entry as drkonqi-coredump-processor sends it: every field as a string."""
    out = subprocess.run(
        ["journalctl", "-o", "json", "--all", f"--cursor={cursor}", "-n", "1", "--no-pager"],
        capture_output=True,
        check=True,
    )
    doc = json.loads(out.stdout.splitlines()[0])
    fields: dict[str, str] = {}
    for key, value in doc.items():
        if key.startswith("__") or key == "COREDUMP":
            continue
        if isinstance(value, list):  # binary: journalctl gives the bytes
            value = bytes(value).decode("utf-8", errors="replace")
        fields[key] = "" if value is None else str(value)
    return fields


async def run_debian_launcher(
    tmp: Path, fields: dict[str, str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """DrKonqi's own launcher, socket-activated as its .socket unit would (rig-notes §3)."""
    sock = tmp / "drkonqi-coredump-launcher"
    passed = [a for k in env for a in ("-E", k)]
    with (tmp / "debian-launcher.log").open("wb") as log:
        activate = subprocess.Popen(
            ["systemd-socket-activate", "--seqpacket", "-a", "-l", str(sock), *passed,
             DEBIAN_LAUNCHER],
            env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )  # fmt: skip
    async with asyncio.timeout(10):
        while not sock.exists():  # noqa: ASYNC110 (a socket another process creates)
            await asyncio.sleep(0.02)
    data = json.dumps(fields).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(str(sock))
        for i in range(0, len(data), 8192):
            s.send(data[i : i + 8192])
    return activate


@pytest.mark.rig
@pytest.mark.usefixtures("rig")
async def test_differential_same_argv_env_and_metadata_as_debians_drkonqi_coredump_launcher(
    daemon: Daemon,
    launcher: LauncherProc,
    kcrash_env: dict[str, str],
    tmp_path: Path,
):
    need_kronometer()
    for tool in (DEBIAN_LAUNCHER, shutil.which("systemd-socket-activate") or "/nonexistent"):
        if not os.access(tool, os.X_OK):
            missing_rig(f"{tool} missing (packages drkonqi, systemd)")
    kcrash_env["XDG_CACHE_HOME"] = str(daemon.cache_home)
    await start_local(daemon)
    pid = await crash_kronometer(kcrash_env)
    crash = await daemon.client.crash(pid, timeout=30)

    # DrKonqi's launcher gets its own copy of the cache (it rewrites the INI in place).
    theirs_cache = tmp_path / "debian-cache"
    (theirs_cache / "kcrash-metadata").mkdir(parents=True)
    shutil.copy2(crash["metadata_path"], theirs_cache / "kcrash-metadata")
    theirs_rec = DrKonqiRecorder(tmp_path / "debian-libexec")
    env = {
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "XDG_CACHE_HOME": str(theirs_cache),
        "XDG_RUNTIME_DIR": kcrash_env["XDG_RUNTIME_DIR"],
        "QT_QPA_PLATFORM": "offscreen",
        "LIBEXEC_PATH": str(theirs_rec.dir),
    }
    activate = await run_debian_launcher(tmp_path, journal_json(crash["journal_cursor"]), env)
    try:
        [theirs] = await theirs_rec.wait(timeout=30)
    finally:
        activate.terminate()
        activate.wait(timeout=10)

    ours_rec = DrKonqiRecorder(tmp_path / "our-libexec")
    await launcher.start(ours_rec.dir, "--drkonqi-version=5")
    assert await launch(daemon, crash["id"]) is True
    [ours] = await ours_rec.wait()

    # Launch() is a user's "Report…": DrKonqi shows its dialog at once (--dialog) instead of
    # waiting in the tray; everything else is what Debian's launcher passes.
    assert "--dialog" in ours["argv"] and "--dialog" not in theirs["argv"]
    assert [a for a in ours["argv"] if a != "--dialog"] == theirs["argv"]
    assert ours["env"]["DRKONQI_BACKEND"] == theirs["env"]["DRKONQI_BACKEND"] == "COREDUMPD"
    ours_meta = Path(ours["env"]["DRKONQI_METADATA_FILE"]).relative_to(daemon.cache_home)
    theirs_meta = Path(theirs["env"]["DRKONQI_METADATA_FILE"]).relative_to(theirs_cache)
    assert ours_meta == theirs_meta == Path("kcrash-metadata") / f"{pid}.ini"
    assert not ACTIVATION & set(theirs["env"])
    assert not ACTIVATION & set(ours["env"])
    ours_groups, theirs_groups = ini_groups(ours["metadata"]), ini_groups(theirs["metadata"])
    assert ours_groups["KCrash"] == theirs_groups["KCrash"]
    assert set(ours_groups["Journal"]) == set(theirs_groups["Journal"])
    for key in ("COREDUMP_PID", "COREDUMP_EXE", "COREDUMP_SIGNAL", "_BOOT_ID", "COREDUMP_FILENAME"):
        assert ours_groups["Journal"][key] == theirs_groups["Journal"][key], key


def remote_kcrash(daemon: Daemon, rj: RemoteJournal, core: Path, **overrides: str) -> Any:
    """A replayed kronometer entry with its KCrash INI and a core file that exists."""
    entry = rj.coredump("kronometer-sigsegv.export", COREDUMP_FILENAME=str(core), **overrides)
    pid = int(entry["COREDUMP_PID"])
    exe = entry["COREDUMP_EXE"].decode()
    ini = write_ini(
        daemon.kcrash_dir / f"{pid}.ini",
        f"[KCrash]\nexe={exe}\nappname=kronometer\nprogramname=Kronometer\nsafer=true\n"
        f"signal=11\npid={pid}\n",
    )
    written_at_crash(ini, entry)
    return entry


@pytest.fixture
def core(tmp_path: Path) -> Path:
    path = tmp_path / "core.zst"
    path.write_bytes(b"not really a core, but a file that exists")
    return path


async def test_two_launchers_launch_a_crash_once_and_loops_and_past_crashes_never(
    daemon: Daemon,
    launcher: LauncherProc,
    remote_journal: RemoteJournal,
    recorder: DrKonqiRecorder,
    core: Path,
):
    past = remote_kcrash(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/kpast")
    remote_journal.append(past)
    daemon.args = [f"--journal-dir={remote_journal.directory}", "--grace-ms=300"]
    await daemon.start("--loop-window=60")
    await daemon.caught_up()
    journal_dir = f"--journal-dir={remote_journal.directory}"
    await launcher.start(recorder.dir, journal_dir, "--drkonqi-version=5")
    await launcher.start(recorder.dir, journal_dir, "--drkonqi-version=5")

    loop = [remote_kcrash(daemon, remote_journal, core) for _ in range(4)]
    remote_journal.append(*loop)
    head = await daemon.client.crash(int(loop[0]["COREDUMP_PID"]))
    await daemon.client.wait_for(
        lambda: any(
            n == "CrashUpdated" and b[1].get("burst") == 4 for n, b in daemon.client.signals
        )
    )
    [run] = await recorder.wait()
    await asyncio.sleep(1.0)  # give a wrong second launch the chance to show
    assert len(recorder.launches()) == 1
    assert "--safer" in run["argv"] and "true" not in run["argv"]  # bare flag for true
    assert run["argv"][run["argv"].index("--pid") + 1] == str(head["pid"])
    assert "was claimed by another handler" in launcher.text() or launcher.text().count(
        "already claimed"
    )
    # The past crash is never launched on its own, but a user may ask for it.
    past_crash = next(c for c in daemon.client.detected() if c["pid"] == int(past["COREDUMP_PID"]))
    assert past_crash["past"] is True
    assert await launch(daemon, past_crash["id"]) is True
    await recorder.wait(2)


async def test_no_launch_for_kde_debug_own_processes_and_rate_limited_signatures(
    daemon: Daemon,
    launcher: LauncherProc,
    remote_journal: RemoteJournal,
    recorder: DrKonqiRecorder,
    core: Path,
):
    daemon.args = [f"--journal-dir={remote_journal.directory}", "--grace-ms=300"]
    await daemon.start()
    await daemon.caught_up()
    journal_dir = f"--journal-dir={remote_journal.directory}"
    await launcher.start(recorder.dir, journal_dir, "--drkonqi-version=5", "--rate-limit=3600")

    first, second = (remote_kcrash(daemon, remote_journal, core) for _ in range(2))
    own = remote_kcrash(
        daemon,
        remote_journal,
        core,
        COREDUMP_EXE="/usr/bin/python3.11",
        COREDUMP_COMM="crashbroker-lau",
        COREDUMP_CMDLINE="/usr/bin/python3 /usr/bin/crashbroker-launcher",
    )
    remote_journal.append(first, second, own)
    for e in (first, second, own):
        await daemon.client.crash(int(e["COREDUMP_PID"]))
    await launcher.wait_log("not launching DrKonqi", 2)
    # The launch is a process writing its record: wait for it, then check it stayed the only one.
    await recorder.wait(1)
    assert len(recorder.launches()) == 1
    log = launcher.text()
    assert "this signature was launched moments ago" in log
    assert "a crash of DrKonqi or crashbroker" in log
    own_id = next(c["id"] for c in daemon.client.detected() if c["pid"] == int(own["COREDUMP_PID"]))
    assert await launch(daemon, own_id) is False  # not even on request

    debug_rec = DrKonqiRecorder(recorder.dir.parent / "debug-libexec")
    await launcher.start(debug_rec.dir, journal_dir, "--drkonqi-version=5", env={"KDE_DEBUG": "1"})
    third = remote_kcrash(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/other")
    remote_journal.append(third)
    await launcher.wait_log("KDE_DEBUG is set")
    assert debug_rec.launches() == []


async def test_launcher_interface_matches_its_xml(
    daemon: Daemon, launcher: LauncherProc, recorder: DrKonqiRecorder
):
    await launcher.start(recorder.dir, "--drkonqi-version=5")
    reply = await bus_call(
        daemon.client.bus,
        "Introspect",
        destination=LAUNCHER_BUS_NAME,
        path=LAUNCHER_OBJECT_PATH,
        interface="org.freedesktop.DBus.Introspectable",
    )
    [live] = [i for i in Node.parse(reply.body[0]).interfaces if i.name == LAUNCHER_INTERFACE]
    [xml] = [i for i in Node.parse(CONTRACT.read_text()).interfaces if i.name == LAUNCHER_INTERFACE]

    def shape(i: Any) -> list[tuple[str, list[str], list[str]]]:
        return [
            (m.name, [a.signature for a in m.in_args], [a.signature for a in m.out_args])
            for m in i.methods
        ]

    assert shape(live) == shape(xml)


# ---- DrKonqi 6's record: created exclusively, DrKonqi's own never replaced ---------------------

THEIRS_PICKED_UP = json.dumps(
    {"version": 2, "kcrash": {"appname": "k"}, "journal": {"COREDUMP_PID": "1"},
     "drkonqi": {"PickedUp": True}}, indent=4,
)  # fmt: skip


def fingerprint(path: Path) -> tuple[bytes, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


def test_create_exclusively_writes_a_whole_new_file_and_leaves_no_temporary(tmp_path: Path):
    record = tmp_path / "k.b.1.2.ini"
    assert create_exclusively(record, '{"ours": 1}') is True
    assert record.read_text() == '{"ours": 1}'
    assert [p.name for p in tmp_path.iterdir()] == [record.name]


def test_create_exclusively_never_overwrites_a_file_that_is_there(tmp_path: Path):
    record = tmp_path / "k.b.1.2.ini"
    record.write_text(THEIRS_PICKED_UP)
    before = fingerprint(record)
    assert create_exclusively(record, '{"ours": 1}') is False
    assert fingerprint(record) == before  # same bytes, same inode: not replaced either
    assert [p.name for p in tmp_path.iterdir()] == [record.name]


def test_create_exclusively_never_writes_through_a_link(tmp_path: Path):
    target = tmp_path / "elsewhere"
    record = tmp_path / "k.b.1.2.ini"
    record.symlink_to(target)  # dangling: open(O_CREAT) without O_EXCL would create `elsewhere`
    assert create_exclusively(record, '{"ours": 1}') is False
    assert not target.exists() and record.is_symlink()


async def test_read_record_tells_nothing_there_from_something_odd(tmp_path: Path):
    assert await read_record(tmp_path / "absent.ini") is None
    (tmp_path / "theirs.ini").write_text(THEIRS_PICKED_UP)
    assert await read_record(tmp_path / "theirs.ini") == THEIRS_PICKED_UP.encode()
    (tmp_path / "link.ini").symlink_to(tmp_path / "theirs.ini")
    os.mkfifo(tmp_path / "fifo.ini")
    for name, reason in (("link.ini", MetadataReason.SYMLINK),
                         ("fifo.ini", MetadataReason.NOT_REGULAR)):  # fmt: skip
        with pytest.raises(MetadataError) as err:
            await read_record(tmp_path / name)
        assert err.value.reason is reason


def record_path(daemon: Daemon, rj: RemoteJournal, entry: Any) -> Path:
    """Where DrKonqi 6 keeps its record of the entry's crash (spec §4.4 step 3)."""
    exe = entry["COREDUMP_EXE"].decode().rsplit("/", 1)[-1]
    pid, ts = entry["COREDUMP_PID"].decode(), entry["COREDUMP_TIMESTAMP"].decode()
    return daemon.cache_home / "drkonqi" / "crashes" / f"{exe}.{rj.boot_id}.{pid}.{ts}.ini"


async def test_drkonqi_6_records_of_drkonqi_are_respected_and_ours_never_replaced(
    daemon: Daemon,
    launcher: LauncherProc,
    remote_journal: RemoteJournal,
    recorder: DrKonqiRecorder,
    core: Path,
):
    daemon.args = [f"--journal-dir={remote_journal.directory}", "--grace-ms=300"]
    await daemon.start()
    await daemon.caught_up()
    journal_dir = f"--journal-dir={remote_journal.directory}"
    await launcher.start(recorder.dir, journal_dir, "--drkonqi-version=6")

    picked = remote_kcrash(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/kpicked")
    pending = remote_kcrash(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/kpending")
    fresh = remote_kcrash(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/kfresh")
    theirs_picked = record_path(daemon, remote_journal, picked)
    theirs_pending = record_path(daemon, remote_journal, pending)
    theirs_picked.parent.mkdir(parents=True)
    theirs_picked.write_text(THEIRS_PICKED_UP)
    # Without PickedUp: DrKonqi's all the same (a pickup in progress, an older build).
    theirs_pending.write_text('{"version": 2, "kcrash": {"appname": "k"}, "journal": {}}')
    before = {p: fingerprint(p) for p in (theirs_picked, theirs_pending)}

    remote_journal.append(picked, pending, fresh)
    ids = {}
    for name, entry in (("picked", picked), ("pending", pending), ("fresh", fresh)):
        ids[name] = (await daemon.client.crash(int(entry["COREDUMP_PID"])))["id"]
    [run] = await recorder.wait(1)
    await launcher.wait_log("not launching DrKonqi", 2)
    log = launcher.text()
    assert "DrKonqi already picked it up" in log
    assert "exists without PickedUp: left as it is" in log
    assert {p: fingerprint(p) for p in before} == before

    ours = record_path(daemon, remote_journal, fresh)
    assert run["env"]["DRKONQI_METADATA_FILE"] == str(ours)
    doc = json.loads(run["metadata"])
    assert doc["drkonqi"] == {"PickedUp": True} and doc["crashbroker"]
    assert doc["kcrash"]["appname"] == "kronometer"
    ours_before = fingerprint(ours)

    # A user's "Report…": our record is started again as it is; DrKonqi's never.
    assert await launch(daemon, ids["fresh"]) is True
    runs = await recorder.wait(2)
    assert {r["env"]["DRKONQI_METADATA_FILE"] for r in runs} == {str(ours)}
    assert fingerprint(ours) == ours_before
    assert await launch(daemon, ids["picked"]) is False
    assert await launch(daemon, ids["pending"]) is False
    assert {p: fingerprint(p) for p in before} == before
    assert len(recorder.launches()) == 2
    assert sorted(p.name for p in ours.parent.iterdir()) == sorted(
        p.name for p in (theirs_picked, theirs_pending, ours)
    )  # no temporary file left


# ---- how DrKonqi is started: a transient service of the user manager, else our child ------------


def dead_manager_socket(runtime: Path) -> None:
    """A socket file where the user manager would listen, with nobody listening on it."""
    (runtime / "systemd").mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(runtime / "systemd" / "private"))


async def test_without_a_reachable_user_manager_drkonqi_is_our_child_and_the_log_says_why(
    daemon: Daemon,
    launcher: LauncherProc,
    remote_journal: RemoteJournal,
    recorder: DrKonqiRecorder,
    core: Path,
    tmp_path: Path,
):
    if shutil.which("systemd-run") is None:
        missing_rig("systemd-run missing (package systemd)")
    daemon.args = [f"--journal-dir={remote_journal.directory}", "--grace-ms=300"]
    await daemon.start()
    await daemon.caught_up()
    journal_dir = f"--journal-dir={remote_journal.directory}"
    no_manager = tmp_path / "run-no-manager"
    no_manager.mkdir(mode=0o700)
    dead = tmp_path / "run-dead-manager"
    dead.mkdir(mode=0o700)
    dead_manager_socket(dead)

    cases = [
        (["--start-via=auto"], no_manager, "/systemd/private does not exist", 1),
        # The real systemd-run, refused: it started nothing, so a child is safe.
        (["--start-via=auto"], dead, "systemd-run failed", 1),
        (["--start-via=service"], dead, "not started: systemd-run failed", 0),
    ]
    for n, (args, runtime, needle, launched) in enumerate(cases):
        rec = DrKonqiRecorder(tmp_path / f"libexec-{n}")
        proc = await launcher.start(
            rec.dir, journal_dir, "--drkonqi-version=5", *args,
            env={"XDG_RUNTIME_DIR": str(runtime)},
        )  # fmt: skip
        entry = remote_kcrash(daemon, remote_journal, core, COREDUMP_EXE=f"/usr/bin/kstart{n}")
        remote_journal.append(entry)
        await daemon.client.crash(int(entry["COREDUMP_PID"]))
        await launcher.wait_log(needle)
        if launched:
            await rec.wait(1)
            await launcher.wait_log("as a child of crashbroker-launcher", n + 1)
        await asyncio.sleep(0.5)  # a wrong launch would show by now
        assert len(rec.launches()) == launched, (needle, launcher.text())
        proc.terminate()
        await proc.wait()
