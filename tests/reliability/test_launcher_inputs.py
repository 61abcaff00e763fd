"""What the launcher hands DrKonqi, and what Dismiss removes, when the journal or the metadata
files are not what the crash record says (issue 14, items 3, 6 and 8): real daemon on a private
bus, journals written by systemd-journal-remote, real files, the launcher as a process and a
stand-in DrKonqi that records how it was started."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import MessageType

from conftest import (
    Daemon,
    DrKonqiRecorder,
    LauncherProc,
    RemoteJournal,
    bus_call,
    write_ini,
    written_at_crash,
)
from crashbroker.adapters.dbus_names import (
    LAUNCHER_BUS_NAME,
    LAUNCHER_INTERFACE,
    LAUNCHER_OBJECT_PATH,
)
from crashbroker.adapters.metadata_dir import private_groups, read_file
from crashbroker.domain.errors import MetadataError, MetadataReason

DAY_US = 86_400 * 1_000_000


async def launch(daemon: Daemon, crash_id: str) -> bool:
    """The notifier's "Report…": Launch(id) on the launcher."""
    reply = await bus_call(
        daemon.client.bus, "Launch", "s", [crash_id],
        destination=LAUNCHER_BUS_NAME, path=LAUNCHER_OBJECT_PATH, interface=LAUNCHER_INTERFACE,
    )  # fmt: skip
    assert reply.message_type == MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return bool(reply.body[0])


def kcrash_entry(
    daemon: Daemon, rj: RemoteJournal, core: Path, extra: str = "", **overrides: str
) -> tuple[Any, Path]:
    """A replayed kronometer entry with a KF5 ``<pid>.ini`` written at the crash."""
    entry = rj.coredump("kronometer-sigsegv.export", COREDUMP_FILENAME=str(core), **overrides)
    pid = int(entry["COREDUMP_PID"])
    ini = write_ini(
        daemon.kcrash_dir / f"{pid}.ini",
        f"[KCrash]\nexe={entry['COREDUMP_EXE'].decode()}\nappname=kronometer\n"
        f"programname=Kronometer\nsignal=11\npid={pid}\n{extra}",
    )
    return entry, written_at_crash(ini, entry)


async def state(daemon: Daemon, crash_id: str) -> tuple[str, str]:
    record = await daemon.call("GetCrash", "s", crash_id)
    return record["state"], record["claimed_by"]


@pytest.fixture
def core(tmp_path: Path) -> Path:
    path = tmp_path / "core.zst"
    path.write_bytes(b"not really a core, but a file that exists")
    return path


async def start(daemon: Daemon, rj: RemoteJournal) -> None:
    daemon.args = [f"--journal-dir={rj.directory}", "--grace-ms=300"]
    await daemon.start()
    await daemon.caught_up()


# ---- item 3: the entry at the crash's cursor, or nothing ----------------------------------------


async def test_entry_missing_at_its_cursor_gives_no_drkonqi_and_the_claim_back(
    daemon: Daemon,
    launcher: LauncherProc,
    remote_journal: RemoteJournal,
    recorder: DrKonqiRecorder,
    core: Path,
    tmp_path: Path,
):
    """The launcher reads a journal that lacks the crash's entry (vacuumed, rotated, another
    directory): seek_cursor lands on a neighbour — here forged entries of another program, one
    by an ordinary uid — which must not become DrKonqi's [Journal] group."""
    await start(daemon, remote_journal)
    entry, _ = kcrash_entry(daemon, remote_journal, core)
    remote_journal.append(entry)
    crash = await daemon.client.crash(int(entry["COREDUMP_PID"]))

    other = RemoteJournal(tmp_path / "other-journal")
    try:
        forged = [
            other.coredump(
                "kronometer-sigsegv.export",
                COREDUMP_EXE="/usr/bin/planted",
                COREDUMP_FILENAME=str(core),
                _UID=uid,
                _EXE="/usr/bin/python3",
            )
            for uid in ("0", "65534", "0")
        ]
        other.append(*forged)
        other.wait_written(len(forged))
    finally:
        other.close()
    await launcher.start(recorder.dir, f"--journal-dir={other.directory}", "--drkonqi-version=5")

    assert await launch(daemon, crash["id"]) is False
    await launcher.wait_log("released crash")
    assert "has no entry at" in launcher.text()
    assert recorder.launches() == []
    assert "planted" not in Path(crash["metadata_path"]).read_text()
    assert await state(daemon, crash["id"]) == ("new", "")  # not held by a launch that failed

    # Given back, the crash can be handled by someone else.
    assert await daemon.call("Claim", "ss", crash["id"], "another-handler") is True


# ---- item 6: only DrKonqi's options, only from private files -----------------------------------


async def test_only_drkonqis_own_options_reach_its_argv(
    daemon: Daemon,
    launcher: LauncherProc,
    remote_journal: RemoteJournal,
    recorder: DrKonqiRecorder,
    core: Path,
):
    await start(daemon, remote_journal)
    journal_dir = f"--journal-dir={remote_journal.directory}"
    await launcher.start(recorder.dir, journal_dir, "--drkonqi-version=5")
    hostile = (
        "platformpluginpath=/tmp/evil-plugins\nplatformtheme=evil\nplugin=evdevmouse\n"
        "qwindowgeometry=1x1+0+0\nplatform=vnc:port=5900\ndisplay=evil.example:0\n"
        "bugaddress=-platformpluginpath\nappversion=2.3.0\n"
    )
    entry, _ = kcrash_entry(daemon, remote_journal, core, hostile)
    remote_journal.append(entry)
    crash = await daemon.client.crash(int(entry["COREDUMP_PID"]))
    assert crash["kcrash"]["platformpluginpath"] == "/tmp/evil-plugins"  # stored as written
    [run] = await recorder.wait()
    argv = run["argv"]
    pid = str(crash["pid"])
    assert argv == [
        "--appname", "kronometer", "--appversion", "2.3.0", "--pid", pid,
        "--programname", "Kronometer", "--signal", "11",
    ]  # fmt: skip
    assert not any("platform" in a or "evil" in a or a.startswith("-p") for a in argv[1::2])
    await launcher.wait_log("KCrash keys not passed")

    # A platform DrKonqi can run on, and a local display, are still passed (KCrash does).
    entry, _ = kcrash_entry(
        daemon, remote_journal, core, "platform=xcb\ndisplay=:0\n", COREDUMP_EXE="/usr/bin/kx"
    )
    remote_journal.append(entry)
    await daemon.client.crash(int(entry["COREDUMP_PID"]))
    [_, run] = await recorder.wait(2)
    assert run["argv"][run["argv"].index("--platform") + 1] == "xcb"
    assert run["argv"][run["argv"].index("--display") + 1] == ":0"


async def test_metadata_files_not_private_are_refused_by_daemon_and_launcher(
    daemon: Daemon,
    launcher: LauncherProc,
    remote_journal: RemoteJournal,
    recorder: DrKonqiRecorder,
    core: Path,
    tmp_path: Path,
):
    # The adapter on real files: another owner, group- or world-writable file or directory.
    d = tmp_path / "meta"
    d.mkdir()
    ok = write_ini(d / "ok.ini", "[KCrash]\nexe=/usr/bin/x\n")
    assert (await read_file(ok))[0].startswith(b"[KCrash]")
    # Group-writable is refused for a shared group ("users"), accepted for the user's private
    # group (umask 002); world-writable always refused.
    users = grp.getgrnam("users").gr_gid
    for mode, group in ((0o664, users), (0o646, -1)):
        bad = write_ini(d / f"m{mode:o}.ini", "[KCrash]\n")
        bad.chmod(mode)
        os.chown(bad, -1, group)
        with pytest.raises(MetadataError) as err:
            await read_file(bad)
        assert err.value.reason is MetadataReason.NOT_PRIVATE, oct(mode)
    if private_groups(os.getuid()):
        umask_002 = write_ini(d / "umask002.ini", "[KCrash]\n")
        umask_002.chmod(0o664)
        os.chown(umask_002, -1, os.getgid())
        assert (await read_file(umask_002))[0].startswith(b"[KCrash]")
    if os.getuid() == 0:
        foreign = write_ini(d / "foreign.ini", "[KCrash]\n")
        os.chown(foreign, pwd.getpwnam("nobody").pw_uid, -1)
        with pytest.raises(MetadataError) as err:
            await read_file(foreign)
        assert err.value.reason is MetadataReason.NOT_PRIVATE
    d.chmod(0o777)
    with pytest.raises(MetadataError) as err:
        await read_file(ok)
    assert err.value.reason is MetadataReason.NOT_PRIVATE

    # The daemon: a group-writable INI is not this user's crash metadata.
    await start(daemon, remote_journal)
    journal_dir = f"--journal-dir={remote_journal.directory}"
    await launcher.start(recorder.dir, journal_dir, "--drkonqi-version=5", "--on-request-only")
    shared, shared_ini = kcrash_entry(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/ka")
    shared_ini.chmod(0o666)
    written_at_crash(shared_ini, shared)
    good, good_ini = kcrash_entry(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/kb")
    remote_journal.append(shared, good)
    assert (await daemon.client.crash(int(shared["COREDUMP_PID"])))["kcrash"] == {}
    crash = await daemon.client.crash(int(good["COREDUMP_PID"]))
    assert crash["kcrash"]["appname"] == "kronometer"

    # The launcher checks again before use: made group-writable since, it is refused.
    good_ini.chmod(0o620)
    os.chown(good_ini, -1, grp.getgrnam("users").gr_gid)
    assert await launch(daemon, crash["id"]) is False
    assert recorder.launches() == []
    assert "not-private" in launcher.text()
    assert await state(daemon, crash["id"]) == ("new", "")
    good_ini.chmod(0o600)
    assert await launch(daemon, crash["id"]) is True
    await recorder.wait(1)


# ---- item 8: a <pid>.ini of this crash's time, and only the very file ---------------------------


async def test_stale_pid_ini_is_not_used_and_dismiss_removes_only_the_matched_file(
    daemon: Daemon,
    launcher: LauncherProc,
    remote_journal: RemoteJournal,
    recorder: DrKonqiRecorder,
    core: Path,
):
    await start(daemon, remote_journal)
    journal_dir = f"--journal-dir={remote_journal.directory}"
    await launcher.start(recorder.dir, journal_dir, "--drkonqi-version=5", "--on-request-only")

    # A <pid>.ini of an earlier boot (two days before), and one written after the crash.
    old, old_ini = kcrash_entry(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/kold")
    ns = (int(old["COREDUMP_TIMESTAMP"]) - 2 * DAY_US) * 1000
    os.utime(old_ini, ns=(ns, ns))
    late, late_ini = kcrash_entry(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/klate")
    ns = (int(late["COREDUMP_TIMESTAMP"]) + 600_000_000) * 1000
    os.utime(late_ini, ns=(ns, ns))
    good, good_ini = kcrash_entry(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/kgood")
    swapped, swapped_ini = kcrash_entry(daemon, remote_journal, core, COREDUMP_EXE="/usr/bin/ksw")
    remote_journal.append(old, late, good, swapped)
    got = {
        name: await daemon.client.crash(int(e["COREDUMP_PID"]))
        for name, e in (("old", old), ("late", late), ("good", good), ("swapped", swapped))
    }
    assert got["old"]["kcrash"] == {} and got["late"]["kcrash"] == {}
    assert got["good"]["kcrash_source"] == got["swapped"]["kcrash_source"] == "kcrash-v1"
    assert (got["good"]["metadata_ino"], got["good"]["metadata_dev"]) == (
        good_ini.stat().st_ino,
        good_ini.stat().st_dev,
    )

    # Another file now sits at the matched name (a new crash of a reused pid, or planted).
    planted = swapped_ini.with_name(".planted")
    write_ini(planted, "[KCrash]\nexe=/usr/bin/ksw\nappname=planted\nprogramname=Planted\n")
    os.replace(planted, swapped_ini)
    # The launcher re-checks: not the file the daemon matched, so no DrKonqi, claim given back.
    assert await launch(daemon, got["swapped"]["id"]) is False
    assert "not the file matched to the crash" in launcher.text()
    assert recorder.launches() == []
    assert await state(daemon, got["swapped"]["id"]) == ("new", "")

    # Dismiss removes only the matched file: not a stale one, not a replacement.
    for name in ("old", "swapped"):
        await daemon.call("Dismiss", "s", got[name]["id"])
    assert old_ini.exists() and "Planted" in swapped_ini.read_text()

    # The matched file: DrKonqi 5's [Journal] group is appended in place, so after a launch it
    # is still that file, and Dismiss removes it.
    assert await launch(daemon, got["good"]["id"]) is True
    [run] = await recorder.wait(1)
    assert "[Journal]" in run["metadata"] and "Kronometer" in run["metadata"]
    assert good_ini.stat().st_ino == got["good"]["metadata_ino"]
    await daemon.call("Dismiss", "s", got["good"]["id"])
    assert not good_ini.exists()
