"""install, cleanup and doctor on real files, the real systemd-analyze and a real daemon."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Daemon, RemoteJournal, as_user, missing_rig, write_ini, written_at_crash
from crashbroker.domain.cleanup import DAY_S, FileInfo, stale_files
from crashbroker.domain.doctor import (
    UNITS,
    Facts,
    Status,
    UnitState,
    checks,
    dump_only_active,
    exit_code,
    parse_show_environment,
    parse_unit_states,
)
from crashbroker.launcher import find_drkonqi
from crashbroker.ops.doctor import find_kf5_kcrash
from crashbroker.ops.install import MARKER

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


async def run(*args: str, env: dict[str, str], user: str | None = None) -> tuple[int, str, str]:
    cmd = [str(BIN / "crashbroker"), *args]
    if user:
        cmd = [*as_user(user), "-m", "crashbroker", *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    h = tmp_path / "home"
    run_dir = tmp_path / "run"
    for d in (h, run_dir):
        d.mkdir()
    run_dir.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DBUS_"))}
    env.update(HOME=str(h), XDG_RUNTIME_DIR=str(run_dir), PATH=f"{BIN}:/usr/bin:/bin")
    return env


# ---- install + systemd-analyze verify --------------------------------------------------------


async def test_install_writes_units_that_systemd_analyze_verifies_clean(home: dict[str, str]):
    if shutil.which("systemd-analyze") is None:
        missing_rig("systemd-analyze missing (package systemd)")
    rc, _, err = await run("install", env=home)
    assert rc == 0, err
    units = Path(home["HOME"]) / ".config" / "systemd" / "user"
    activation = Path(home["HOME"]) / ".local/share/dbus-1/services/org.kde.crashbroker1.service"
    names = sorted(p.name for p in units.iterdir())
    assert names == sorted(
        [
            "crashbroker.service",
            "crashbroker-launcher.service",
            "crashbroker-notifier.service",
            "crashbroker-cleanup.service",
            "crashbroker-cleanup.timer",
        ]
    )
    assert f"Exec={BIN}/crashbroker daemon" in activation.read_text()
    assert "SystemdService=crashbroker.service" in activation.read_text()
    for unit in sorted(units.iterdir()):
        text = unit.read_text()
        assert "@BINDIR@" not in text
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--user", "--man=no", str(unit)],
            env=home,
            capture_output=True,
            text=True,
            check=False,
        )
        # Any diagnostic about our unit fails the test (unknown keys, bad paths, bad values).
        assert verify.returncode == 0 and verify.stderr.strip() == "", (unit.name, verify.stderr)
    daemon_unit = (units / "crashbroker.service").read_text()
    for directive in ("Type=dbus", "BusName=org.kde.crashbroker1", "NoNewPrivileges=yes",
                      "ProtectSystem=strict", "StateDirectory=crashbroker"):  # fmt: skip
        assert directive in daemon_unit
    for unit in ("crashbroker-launcher.service", "crashbroker-notifier.service"):
        text = (units / unit).read_text()
        assert "PartOf=graphical-session.target" in text
        assert "WantedBy=graphical-session.target" in text

    # The verifier is not vacuous: a broken unit is reported.
    broken = units.parent / "broken.service"
    broken.write_text(daemon_unit.replace("Type=dbus", "Type=dbus\nBogusKey=1"))
    bad = subprocess.run(
        ["systemd-analyze", "verify", "--user", "--man=no", str(broken)],
        env=home, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "BogusKey" in bad.stderr


async def test_install_is_idempotent_respects_foreign_files_and_uninstalls(
    home: dict[str, str],
):
    assert (await run("install", env=home))[0] == 0
    rc, out, _ = await run("install", env=home)
    assert rc == 0 and "wrote" not in out and out.count("unchanged") == 14
    units = Path(home["HOME"]) / ".config/systemd/user"
    mine = units / "crashbroker-notifier.service"
    mine.write_text("[Service]\nExecStart=/bin/true\n")  # the user's own file now
    rc, _, err = await run("install", env=home)
    assert rc == 1 and "was not written by crashbroker" in err
    assert mine.read_text() == "[Service]\nExecStart=/bin/true\n"
    rc, out, _ = await run("install", "--uninstall", env=home)
    assert rc == 0 and out.count("removed") == 13
    assert mine.exists()  # not ours: left alone
    assert (await run("install", "--force", env=home))[0] == 0
    assert "crashbroker-notifier" in mine.read_text()


def _needs(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            missing_rig(f"{tool} missing (scripts/setup installs man-db, groff-base, zsh)")


def _man_warnings(page: Path) -> str:
    """What man-db and groff say when rendering ``page`` (empty: no warning)."""
    man = subprocess.run(
        ["man", "--warnings", "-l", str(page)], env={**os.environ, "MANWIDTH": "80",
        "LC_ALL": "C.UTF-8", "MANPAGER": "cat"}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    groff = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True, check=True
    )
    return man.stderr + groff.stderr


def _bash_complete(script: Path, line: list[str], *, library: bool) -> list[str]:
    """The words bash offers for the last word of ``line`` with the completion ``script``
    (after bash-completion's own library, or without it)."""
    words = " ".join(f"'{w}'" for w in line)
    lib = "source /usr/share/bash-completion/bash_completion; " if library else ""
    probe = (
        f"{lib}source {script}; complete -p crashbroker >&2; "
        f'COMP_WORDS=({words}); COMP_CWORD={len(line) - 1}; COMP_LINE="${{COMP_WORDS[*]}}"; '
        'COMP_POINT=${#COMP_LINE}; _crashbroker; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "complete -F _crashbroker crashbroker", done.stderr
    return [w for w in done.stdout.splitlines() if w]


async def test_install_writes_man_pages_and_completions_made_from_the_parser(
    home: dict[str, str], tmp_path: Path
):
    _needs("man", "groff", "bash", "zsh")
    rc, out, err = await run("install", env=home)
    assert rc == 0, err
    share = Path(home["HOME"]) / ".local/share"
    pages = [share / "man/man1/crashbroker.1"] + [
        share / f"man/man8/crashbroker-{p}.8" for p in ("launcher", "notifier")
    ]
    bash = share / "bash-completion/completions/crashbroker"
    zsh = share / "zsh/site-functions/_crashbroker"
    for path in [*pages, bash, zsh]:
        assert f"wrote {path}" in out
    assert f"fpath=({share}/zsh/site-functions $fpath)" in out

    for page in pages:
        assert _man_warnings(page) == "", page
    rendered = subprocess.run(
        ["man", "-l", str(pages[0])], env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for option in ("-S, --since TIME", "--json[=short|pretty]", "--no-legend", "--no-pager",
                   "list [OPTIONS] [MATCH...]", "SYSTEMD_PAGER", "EXIT STATUS"):  # fmt: skip
        assert option in rendered, option
    # The check is not vacuous: a broken request is reported.
    broken = tmp_path / "broken.1"
    broken.write_text(pages[0].read_text() + ".bogus\n\\fBunclosed\n.TP 3q\n")
    assert _man_warnings(broken) != ""

    for library in (True, False):
        assert "list" in _bash_complete(bash, ["crashbroker", "li"], library=library)
        assert _bash_complete(bash, ["crashbroker", "list", "--state", ""], library=library) == [
            "new", "claimed", "dismissed"
        ]  # fmt: skip
        offered = _bash_complete(bash, ["crashbroker", "list", "-"], library=library)
        assert {"-S", "--since", "-U", "--until", "-1", "-r", "--no-legend"} <= set(offered)
        assert _bash_complete(bash, ["crashbroker", "list", "--json=p"], library=library) == [
            "--json=pretty"
        ]

    assert subprocess.run(["zsh", "-n", str(zsh)], capture_output=True, check=False).returncode == 0
    lines = zsh.read_text().splitlines()
    assert lines[0] == "#compdef crashbroker" and lines[1] == MARKER
    assert "'(-S --since)-S+[crashes from TIME on]:time: ' \\" in [x.strip() for x in lines]
    # zsh itself loads the function and knows what it completes.
    probe = subprocess.run(
        ["zsh", "-f", "-c", f"fpath=({zsh.parent} $fpath); autoload -Uz compinit; "
         # -D: no dump file (compinit writes one by renaming over its name: as root, "-d
         # /dev/null" replaced the machine's /dev/null with a regular file).
         "compinit -u -D; print -r -- $_comps[crashbroker]"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert probe.stdout.strip() == "_crashbroker", probe.stderr

    rc, out, _ = await run("install", "--uninstall", env=home)
    assert rc == 0 and not any(p.exists() for p in [*pages, bash, zsh])


async def test_install_system_puts_man_pages_and_completions_where_distributions_do(
    tmp_path: Path, home: dict[str, str]
):
    for prefix, zsh_dir in (("/usr", "vendor-completions"), ("/usr/local", "site-functions")):
        dest = tmp_path / prefix.strip("/").replace("/", "-")
        rc, _, err = await run(
            "install", "--system", f"--prefix={prefix}", f"--destdir={dest}", env=home
        )
        assert rc == 0, err
        share = dest / prefix.strip("/") / "share"
        zsh = share / "zsh" / zsh_dir / "_crashbroker"
        assert zsh.read_text().startswith("#compdef crashbroker\n# zsh completion")
        bash = share / "bash-completion/completions/crashbroker"
        assert bash.read_text().rstrip().endswith("complete -F _crashbroker crashbroker")
        page = share / "man/man1/crashbroker.1"
        assert page.read_text().startswith('.\\" Generated by crashbroker.docgen')
        assert (share / "man/man8/crashbroker-launcher.8").is_file()
        for f in (zsh, bash, page):
            assert MARKER not in f.read_text()


ENV_GENERATOR = "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"


async def test_install_kcrash_dump_only_writes_a_dropin_systemd_reads_and_uninstall_removes_it(
    home: dict[str, str],
):
    if not os.access(ENV_GENERATOR, os.X_OK):
        missing_rig(f"{ENV_GENERATOR} missing (package systemd)")
    dropin = Path(home["HOME"]) / ".config/environment.d/60-crashbroker-kcrash.conf"
    rc, out, err = await run("install", "--kcrash-dump-only", env=home)
    assert rc == 0, err
    assert f"wrote {dropin}" in out
    assert dropin.read_text().splitlines()[0] == MARKER
    # systemd's own environment.d reader (what the user manager runs at start) gets it.
    generated = subprocess.run(
        [ENV_GENERATOR], env={**home, "XDG_CONFIG_HOME": str(Path(home["HOME"]) / ".config")},
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert "KCRASH_DUMP_ONLY=1" in generated

    rc, out, _ = await run("install", "--kcrash-dump-only", env=home)
    assert rc == 0 and "wrote" not in out and out.count("unchanged") == 15
    rc, out, _ = await run("install", env=home)  # a plain install leaves the drop-in alone
    assert rc == 0 and dropin.exists() and str(dropin) not in out
    rc, out, _ = await run("install", "--uninstall", env=home)
    assert rc == 0 and f"removed {dropin}" in out and out.count("removed") == 15
    assert not dropin.exists()

    # The user's own file of that name is neither replaced nor removed.
    dropin.write_text("KCRASH_DUMP_ONLY=0\n")
    rc, _, err = await run("install", "--kcrash-dump-only", env=home)
    assert rc == 1 and "was not written by crashbroker" in err
    rc, out, _ = await run("install", "--uninstall", env=home)
    assert rc == 0 and str(dropin) not in out
    assert dropin.read_text() == "KCRASH_DUMP_ONLY=0\n"


async def test_plain_install_points_at_kcrash_dump_only_where_kcrash_would_bypass_the_feed(
    home: dict[str, str],
):
    if find_kf5_kcrash() is None or find_drkonqi(os.environ) is None:
        missing_rig("KF5's KCrash and DrKonqi not installed (scripts/setup installs them)")
    home.pop("KCRASH_DUMP_ONLY", None)
    rc, out, err = await run("install", env=home)
    assert rc == 0, err
    assert "KDE crashes bypass crashbroker" in out and "install --kcrash-dump-only" in out
    # Set in the session already, or our drop-in there: nothing to point at.
    rc, out, _ = await run("install", env={**home, "KCRASH_DUMP_ONLY": "1"})
    assert rc == 0 and "bypass" not in out
    assert (await run("install", "--kcrash-dump-only", env=home))[0] == 0
    rc, out, _ = await run("install", env=home)
    assert rc == 0 and "bypass" not in out


# ---- cleanup ------------------------------------------------------------------------------------


def test_stale_files_decision() -> None:
    now = 1_000 * DAY_S
    files = [
        FileInfo("old.ini", now - 8 * DAY_S, True),
        FileInfo("young.ini", now - 6 * DAY_S, True),
        FileInfo("pending.ini", now - 9 * DAY_S, True),
        FileInfo("link.ini", now - 9 * DAY_S, False),
        FileInfo("notes.txt", now - 99 * DAY_S, True),
        FileInfo(".hidden.ini", now - 99 * DAY_S, True),
    ]
    v = stale_files(files, now=now, max_age_s=7 * DAY_S, pending=frozenset({"pending.ini"}))
    assert v.remove == ("old.ini",)
    assert v.keep_pending == ("pending.ini",)
    assert v.skipped == ("link.ini",)


def age(path: Path, days: float) -> Path:
    t = time.time() - days * DAY_S
    os.utime(path, (t, t), follow_symlinks=False)
    return path


async def test_cleanup_removes_only_old_regular_files_inside_its_dirs(
    daemon: Daemon, remote_journal: RemoteJournal, tmp_path: Path
):
    kdir = daemon.kcrash_dir
    outside = tmp_path / "precious.ini"
    outside.write_text("not ours")
    age(outside, 30)
    old = age(write_ini(kdir / "111.ini", "[KCrash]\nexe=/usr/bin/x\n"), 8)
    young = age(write_ini(kdir / "112.ini", "[KCrash]\nexe=/usr/bin/x\n"), 2)
    (kdir / "113.ini").symlink_to(outside)
    os.mkfifo(kdir / "114.ini")
    age(kdir / "114.ini", 30)
    (kdir / "115.ini").mkdir()
    age(kdir / "115.ini", 30)
    # A crash still shown keeps its INI, however old.
    entry = remote_journal.coredump("kronometer-sigsegv.export")
    pid = int(entry["COREDUMP_PID"])
    pending = write_ini(
        kdir / f"{pid}.ini", f"[KCrash]\nexe=/usr/bin/kronometer\nappname=kronometer\npid={pid}\n"
    )
    written_at_crash(pending, entry)
    remote_journal.append(entry)
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    await daemon.client.crash(pid)
    age(pending, 20)
    drkonqi_dir = daemon.cache_home / "drkonqi" / "crashes"
    drkonqi_dir.mkdir(parents=True)
    old_record = drkonqi_dir / "k.b.1.2.ini"
    old_record.write_text("{}")
    age(old_record, 40)

    env = daemon.env()
    rc, out, err = await run("cleanup", "--dry-run", "--json", env=env)
    assert rc == 0, err
    dry = json.loads(out)
    assert dry["removed"] == [str(old), str(old_record)] and old.exists()
    rc, out, err = await run("cleanup", "--json", env=env)
    assert rc == 0, err
    report = json.loads(out)
    assert report["removed"] == [str(old), str(old_record)]
    assert report["kept_pending"] == [str(pending)]
    assert sorted(report["skipped"]) == [str(kdir / n) for n in ("113.ini", "114.ini", "115.ini")]
    assert report["expired"] == 0  # the replayed crash is an hour old
    assert not old.exists() and young.exists() and pending.exists()
    assert outside.read_text() == "not ours" and (kdir / "113.ini").is_symlink()


async def test_cleanup_expires_old_rows_through_the_daemon(
    daemon: Daemon, remote_journal: RemoteJournal
):
    old = remote_journal.coredump()
    old["COREDUMP_TIMESTAMP"] = str(int((time.time() - 40 * DAY_S) * 1_000_000)).encode()
    new = remote_journal.coredump()
    remote_journal.append(old, new)
    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    for e in (old, new):
        await daemon.client.crash(int(e["COREDUMP_PID"]))
    rc, out, err = await run("cleanup", "--json", env=daemon.env())
    assert rc == 0, err
    assert json.loads(out)["expired"] == 1
    listed = await daemon.call("ListCrashes", "a{sv}", {})
    assert [c["pid"] for c in listed] == [int(new["COREDUMP_PID"])]


async def test_cleanup_refuses_a_metadata_dir_that_is_a_link(home: dict[str, str], tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    victim = age(write_ini(target / "1.ini", "[KCrash]\n"), 30)
    cache = Path(home["HOME"]) / ".cache"
    cache.mkdir()
    (cache / "kcrash-metadata").symlink_to(target)
    rc, _, err = await run("cleanup", env=home)
    assert rc == 1 and "refused" in err
    assert victim.exists()


# ---- doctor -------------------------------------------------------------------------------------

UNITS_RUNNING = tuple(UnitState(n, "loaded", "active", "enabled", "running") for n in UNITS)
DROPIN = "/home/u/.config/environment.d/60-crashbroker-kcrash.conf"


def facts(**changes: object) -> Facts:
    """An ordinary user on a persistent journal, everything in order."""
    base = Facts(
        core_pattern="|/lib/systemd/systemd-coredump %P", uid=1000, user="u",
        journal_groups=(), journal_readable=False,
        persistent_journal="/var/log/journal/m", volatile_journal=None,
        user_journal="/var/log/journal/m/user-1000.journal", user_journal_readable=True,
        zstd="/usr/bin/zstd", gdb="/usr/bin/gdb", coredump_processor="/p", drkonqi="/d",
        drkonqi_version="5", drkonqi_launcher_enabled=None, bus_error=None,
        daemon_owner=":1.2", daemon_version="0.1.0", state_dir="/s", state_writable=True,
        kf5_kcrash="/usr/lib/x86_64-linux-gnu/libKF5Crash.so.5",
        session_env_source="systemctl --user show-environment", kcrash_dump_only="1",
        kcrash_dropin=DROPIN, user_manager="/run/user/1000/systemd/private",
        units=UNITS_RUNNING, units_error=None,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def unit(
    name: str, load: str, active: str, file_state: str, sub: str = ""
) -> tuple[UnitState, ...]:
    """Our running units, with ``name`` in the given state."""
    return tuple(
        UnitState(name, load, active, file_state, sub) if u.name == name else u
        for u in UNITS_RUNNING
    )


def test_doctor_all_well_is_one_ok_line_per_check_and_per_unit() -> None:
    results = checks(facts())
    assert [c.name for c in results if c.status is not Status.OK] == []
    assert [c.name for c in results if c.name in UNITS] == list(UNITS)
    assert exit_code(results) == 0


LAUNCHER, NOTIFIER, TIMER = UNITS[1:]


@pytest.mark.parametrize(
    ("changes", "name", "status", "says"),
    [
        # journal: on a persistent journal an ordinary user reads its own crashes, no group
        ({}, "journal", Status.OK, "no group needed"),
        ({"user_journal": None}, "journal", Status.OK, "no group needed"),
        ({"user_journal_readable": False}, "journal", Status.FAIL, "usermod -aG systemd-journal"),
        ({"persistent_journal": None, "user_journal": None, "volatile_journal": "/run/log/j/m"},
         "journal", Status.FAIL, "usermod -aG systemd-journal u"),
        ({"persistent_journal": None, "volatile_journal": "/run/log/j/m",
          "journal_groups": ("adm",)}, "journal", Status.OK, "adm"),
        ({"persistent_journal": None, "volatile_journal": "/run/log/j/m",
          "journal_readable": True}, "journal", Status.OK, "ACL"),
        # not flushed to /var yet: journald writes to /run, no per-user files there
        ({"volatile_journal": "/run/log/j/m"}, "journal", Status.FAIL, "volatile"),
        ({"persistent_journal": None, "user_journal": None}, "journal", Status.FAIL, "journald"),
        ({"persistent_journal": None, "uid": 0}, "journal", Status.OK, "root"),
        ({"core_pattern": "core"}, "core_pattern", Status.FAIL, "not to systemd-coredump"),
        ({"zstd": None}, "zstd", Status.WARN, "no backtraces"),
        ({"gdb": None}, "gdb", Status.WARN, "GetBacktrace"),
        ({"coredump_processor": None}, "kcrash-metadata", Status.WARN, "apt install drkonqi"),
        ({"bus_error": "no bus"}, "session-bus", Status.FAIL, "no bus"),
        ({"daemon_owner": None}, "daemon", Status.WARN, "no owner"),
        ({"state_writable": False}, "state", Status.FAIL, "not writable"),
        # KF5 KCrash + DrKonqi without KCRASH_DUMP_ONLY in the session: KDE crashes bypass us
        ({"kcrash_dump_only": None, "kcrash_dropin": None}, "kcrash-dump-only", Status.WARN,
         "crashbroker install --kcrash-dump-only"),
        ({"kcrash_dump_only": "0", "kcrash_dropin": None}, "kcrash-dump-only", Status.WARN,
         "bypass the feed"),
        ({"kcrash_dump_only": None}, "kcrash-dump-only", Status.WARN, "log out and in again"),
        ({"kcrash_dump_only": None, "kf5_kcrash": None}, "kcrash-dump-only", Status.OK, "KF6"),
        ({"kcrash_dump_only": None, "drkonqi": None}, "kcrash-dump-only", Status.OK, "dump"),
        ({}, "kcrash-dump-only", Status.OK, "KCRASH_DUMP_ONLY=1 in the session environment"),
        # DrKonqi's own launcher: the user manager's word first, else the links on disk
        ({"drkonqi_launcher_enabled": "/etc/x"}, "double-launch", Status.WARN, "/etc/x"),
        ({"units": (*UNITS_RUNNING, UnitState("drkonqi-coredump-launcher.socket", "loaded",
                                              "active", "enabled"))},
         "double-launch", Status.WARN, "mask drkonqi-coredump-launcher.socket"),
        # the units under the user manager
        ({"user_manager": None, "units": ()}, "user-manager", Status.WARN, "not checked"),
        ({"units": (), "units_error": "Failed to connect to bus"}, "user-manager", Status.WARN,
         "Failed to connect to bus"),
        ({"units": unit(UNITS[0], "not-found", "inactive", ""), "daemon_owner": None},
         UNITS[0], Status.FAIL, "crashbroker install"),
        ({"units": unit(UNITS[0], "not-found", "inactive", "")}, UNITS[0], Status.WARN,
         "not installed"),
        ({"units": unit(UNITS[0], "loaded", "inactive", "enabled", "dead")}, UNITS[0],
         Status.WARN, "enable --now crashbroker.service"),
        ({"units": unit(UNITS[0], "loaded", "active", "disabled", "running")}, UNITS[0],
         Status.OK, "active"),  # D-Bus activated: running is what counts
        ({"units": unit(LAUNCHER, "loaded", "failed", "enabled", "failed")}, LAUNCHER,
         Status.FAIL, "systemctl --user status"),
        ({"units": unit(NOTIFIER, "loaded", "activating", "enabled", "auto-restart")}, NOTIFIER,
         Status.FAIL, "restarting"),
        ({"units": unit(LAUNCHER, "loaded", "inactive", "disabled", "dead")}, LAUNCHER,
         Status.WARN, "enable --now crashbroker-launcher.service"),
        ({"units": unit(LAUNCHER, "loaded", "active", "disabled", "running")}, LAUNCHER,
         Status.WARN, "next login"),
        ({"units": unit(TIMER, "masked", "inactive", "masked")}, TIMER, Status.WARN, "unmask"),
        ({"units": unit(TIMER, "bad-setting", "inactive", "enabled")}, TIMER, Status.FAIL,
         "bad-setting"),
    ],
)  # fmt: skip
def test_doctor_verdicts(changes: dict[str, object], name: str, status: Status, says: str) -> None:
    results = checks(facts(**changes))
    [check] = [c for c in results if c.name == name]
    assert check.status is status, check
    assert says in f"{check.detail} {check.hint}", check
    assert exit_code(results) == (1 if status is Status.FAIL else 0)


def test_doctor_reads_systemctl_output() -> None:
    # As systemd 252's `systemctl --user show -p Id,LoadState,ActiveState,SubState,UnitFileState`
    # prints it, one block per unit.
    shown = (
        "Id=crashbroker.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n"
        "UnitFileState=\n\n"
        "Id=drkonqi-coredump-launcher.socket\nLoadState=loaded\nActiveState=active\n"
        "SubState=listening\nUnitFileState=enabled\n"
    )
    assert parse_unit_states(shown) == (
        UnitState("crashbroker.service", "not-found", "inactive", "", "dead"),
        UnitState("drkonqi-coredump-launcher.socket", "loaded", "active", "enabled", "listening"),
    )
    env = parse_show_environment("HOME=/h\nKCRASH_DUMP_ONLY=1\nWEIRD=$'a\\nb'\n")
    assert env == {"HOME": "/h", "KCRASH_DUMP_ONLY": "1", "WEIRD": "$'a\\nb'"}


@pytest.mark.parametrize(
    ("value", "active"),
    [(None, False), ("", False), ("0", False), ("1", True), (" 1", True), ("yes", False)],
)
def test_kcrash_reads_kcrash_dump_only_as_a_number(value: str | None, active: bool) -> None:
    assert dump_only_active(value) is active


async def test_doctor_on_this_machine(
    daemon: Daemon, remote_journal: RemoteJournal, tmp_path: Path
):
    env = daemon.env()
    env.pop("XDG_RUNTIME_DIR", None)  # no user manager for this one
    rc, out, _ = await run("doctor", "--json", env=env)
    by_name = {c["name"]: c for c in json.loads(out)}
    assert by_name["session-bus"]["status"] == "ok"
    assert by_name["daemon"]["status"] == "warn"  # not started yet
    assert by_name["user-manager"]["status"] == "warn"
    assert rc == 0

    daemon.args = [f"--journal-dir={remote_journal.directory}"]
    await daemon.start()
    rc, out, _ = await run("doctor", "--json", env=env)
    by_name = {c["name"]: c for c in json.loads(out)}
    assert by_name["daemon"]["status"] == "ok" and "0.1.0" in by_name["daemon"]["detail"]

    libexec = tmp_path / "libexec-empty"
    libexec.mkdir()
    no_bus = {k: v for k, v in env.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    no_bus.update(LIBEXEC_PATH=str(libexec), DISPLAY="")
    rc, out, _ = await run("doctor", env=no_bus)
    assert rc == 1 and "FAIL  session-bus" in out


async def test_doctor_says_when_the_user_manager_does_not_answer(
    home: dict[str, str], tmp_path: Path
):
    """The real systemctl against a socket nobody listens on: one warning, no crash, no hang;
    the session environment then comes from doctor's own."""
    if shutil.which("systemctl") is None:
        missing_rig("systemctl missing (package systemd)")
    runtime = Path(home["XDG_RUNTIME_DIR"])
    (runtime / "systemd").mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(runtime / "systemd" / "private"))
    _, out, err = await run("doctor", "--json", env={**home, "KCRASH_DUMP_ONLY": "1"})
    by_name = {c["name"]: c for c in json.loads(out)}
    assert by_name["user-manager"]["status"] == "warn", err
    assert "cannot ask the user manager" in by_name["user-manager"]["detail"]
    assert not set(UNITS) & set(by_name)
    if find_kf5_kcrash() and find_drkonqi(home):
        detail = by_name["kcrash-dump-only"]["detail"]
        assert by_name["kcrash-dump-only"]["status"] == "ok", detail
        assert "this process's environment: systemctl --user failed" in detail


JOURNAL_PROBE = """
import dataclasses, json, os, sys
from pathlib import Path
from crashbroker.ops.doctor import journal_facts
root = Path(sys.argv[1])
facts = journal_facts(os.getuid(), "m", root / "var", root / "run")
print(json.dumps(dataclasses.asdict(facts)))
"""


async def test_journal_access_is_judged_by_what_an_ordinary_user_can_open(tmp_path: Path):
    """Real files, real permissions, a real ordinary user (nobody, no groups): its own
    user-UID.journal readable, a system journal it cannot read, a volatile journal."""
    import pwd

    prefix = as_user("nobody")
    nobody = pwd.getpwnam("nobody").pw_uid
    root = Path(tempfile.mkdtemp(prefix="crashbroker-journal-"))  # pytest's tmp is root-only

    def probe(layout: dict[str, int | None], closed: tuple[str, ...] = ()) -> Facts:
        shutil.rmtree(root / "var", ignore_errors=True)
        shutil.rmtree(root / "run", ignore_errors=True)
        for rel, owner in layout.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"LPKSHHRH")
            os.chmod(path, 0o640)  # journald's mode; an ACL or the owner grants the user
            if owner is not None:
                os.chown(path, owner, 0)
        for d in (root, *root.rglob("*")):
            if d.is_dir():
                d.chmod(0o750 if d.relative_to(root).as_posix() in closed else 0o755)
        done = subprocess.run(
            [*prefix, "-c", JOURNAL_PROBE, str(root)], capture_output=True, text=True, check=True
        )
        found = json.loads(done.stdout)
        return facts(uid=nobody, user="nobody", **found)

    try:
        own = probe({"var/m/system.journal": None, f"var/m/user-{nobody}.journal": nobody})
        [check] = [c for c in checks(own) if c.name == "journal"]
        assert (check.status, own.user_journal_readable, own.journal_readable) == (
            Status.OK, True, False,
        )  # fmt: skip
        assert "no group needed" in check.detail

        not_yet = probe({"var/m/system.journal": None})
        [check] = [c for c in checks(not_yet) if c.name == "journal"]
        assert (check.status, not_yet.user_journal) == (Status.OK, None)

        unreadable = probe({"var/m/system.journal": None, f"var/m/user-{nobody}.journal": None})
        [check] = [c for c in checks(unreadable) if c.name == "journal"]
        assert (check.status, unreadable.user_journal_readable) == (Status.FAIL, False)

        # A root-only runtime directory (journald's after a relinquish): Python 3.11's
        # exists() raised PermissionError there and doctor died with a traceback.
        hidden = probe(
            {"var/m/system.journal": None, f"var/m/user-{nobody}.journal": nobody,
             "run/m/system.journal": None},
            closed=("run/m",),
        )  # fmt: skip
        assert hidden.volatile_journal == str(root / "run" / "m"), hidden
        assert (hidden.user_journal_readable, hidden.journal_readable) == (True, False), hidden

        volatile = probe({"run/m/system.journal": None})
        [check] = [c for c in checks(volatile) if c.name == "journal"]
        assert (check.status, volatile.persistent_journal) == (Status.FAIL, None)
        assert "usermod -aG systemd-journal nobody" in check.hint
    finally:
        shutil.rmtree(root, ignore_errors=True)


def machine_journal() -> str:
    """What journald does on this machine right now: persistent, volatile or none."""
    mid = Path("/etc/machine-id").read_text().strip()
    if Path(f"/run/log/journal/{mid}/system.journal").exists():
        return "volatile"
    if Path(f"/var/log/journal/{mid}/system.journal").exists():
        return "persistent"
    return "none"


async def test_doctor_tells_an_ordinary_user_the_truth_about_journal_access():
    prefix = as_user("nobody")
    home = Path(tempfile.mkdtemp(prefix="crashbroker-nobody-"))  # pytest's tmp is root-only
    try:
        home.chmod(0o777)
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
        proc = await asyncio.create_subprocess_exec(
            *prefix, "-m", "crashbroker", "doctor", "--json", env=env, cwd=home,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        state = machine_journal()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 1, err.decode()  # no session bus for nobody here
    [journal] = [c for c in json.loads(out) if c["name"] == "journal"]
    if state == "persistent":
        # journald gives each user its own file and an ACL on it: no group is needed.
        assert journal["status"] == "ok" and "no group needed" in journal["detail"], journal
        assert "usermod" not in journal["hint"]
    elif state == "volatile":
        assert (
            journal["status"] == "FAIL"
            and "usermod -aG systemd-journal nobody" in (journal["hint"])
        ), journal
    else:
        assert journal["status"] == "FAIL" and "journald" in journal["hint"], journal
