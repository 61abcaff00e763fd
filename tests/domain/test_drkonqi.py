"""DrKonqi's argv, environment and metadata files as DrKonqi's own launcher builds them (pure)."""

from __future__ import annotations

import json

import pytest

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

KCRASH = {
    "exe": "/usr/bin/kronometer",
    "signal": "11",
    "appname": "kronometer",
    "safer": "true",
    "restarted": "false",
    "programname": 'Kronometer ✓ "quoted"',
}


def test_v5_sorts_keys_skips_exe_and_makes_true_false_bare_flags() -> None:
    assert drkonqi.arguments(KCRASH, Flavor.V5) == [
        "--appname", "kronometer",
        "--programname", "Kronometer ✓ \"quoted\"",
        "--restarted",
        "--safer",
        "--signal", "11",
    ]  # fmt: skip


def test_v6_keeps_the_record_order() -> None:
    argv = drkonqi.arguments(KCRASH, Flavor.V6)
    assert argv is not None
    assert argv[:2] == ["--signal", "11"]


@pytest.mark.parametrize("flavor", list(Flavor))
def test_a_crash_of_drkonqi_itself_gets_no_arguments(flavor: Flavor) -> None:
    assert drkonqi.arguments({"exe": "/usr/libexec/drkonqi", "pid": "1"}, flavor) is None


def test_environment_drops_activation_variables_and_adds_the_backend() -> None:
    env = drkonqi.child_environment(
        {"HOME": "/h", "LISTEN_FDS": "1", "LISTEN_PID": "2", "INVOCATION_ID": "x",
         "JOURNAL_STREAM": "8:9", "NOTIFY_SOCKET": "/run/n", "DISPLAY": ":0"},
        "/h/.cache/kcrash-metadata/1.ini",
    )  # fmt: skip
    assert env == {
        "HOME": "/h",
        "DISPLAY": ":0",
        "DRKONQI_BACKEND": "COREDUMPD",
        "DRKONQI_METADATA_FILE": "/h/.cache/kcrash-metadata/1.ini",
    }


def test_v5_metadata_keeps_the_ini_and_appends_an_escaped_journal_group() -> None:
    text = drkonqi.v5_metadata(
        "[KCrash]\nexe=/usr/bin/k\n",
        {"COREDUMP_PID": "42", "MESSAGE": 'a\nb "c" \\ d', "LIST": "x,y", "bad key": "z"},
    )
    lines = text.splitlines()
    assert lines[:3] == ["[KCrash]", "exe=/usr/bin/k", ""]
    assert lines[3] == "[Journal]"
    assert "COREDUMP_PID=@ByteArray(42)" in lines
    assert 'MESSAGE=@ByteArray(a\\nb \\"c\\" \\\\ d)' in lines
    assert 'LIST="@ByteArray(x,y)"' in lines
    assert not any(line.startswith("bad key") for line in lines)


def test_v6_metadata_is_drkonqis_json_record_picked_up() -> None:
    doc = json.loads(
        drkonqi.v6_metadata(
            KCrashGroups({"appname": "k"}, tags={"t": "1"}, complete=True),
            {"COREDUMP_PID": "42"},
            "s=cursor",
        )
    )
    assert doc["version"] == 2
    assert doc["kcrash"] == {"appname": "k"}
    assert doc["kcrash-tags"] == {"t": "1"}
    assert doc["kcrash-complete"] is True
    assert doc["journal"] == {"COREDUMP_PID": "42", "_DRKONQI_SD_CURSOR": "s=cursor"}
    assert doc["drkonqi"] == {"PickedUp": True}
    assert doc["crashbroker"] == {"handler": "crashbroker-launcher"}  # tells ours from theirs
    assert (
        drkonqi.v6_metadata_name("/usr/bin/k (deleted)", "b" * 32, 42, 7)
        == f"k.{'b' * 32}.42.7.ini"
    )


@pytest.mark.parametrize(
    ("exe", "cmdline", "comm", "own"),
    [
        ("/usr/libexec/drkonqi", "drkonqi --pid 1", "drkonqi", True),
        (
            "/usr/bin/python3.11",
            "/usr/bin/python3 /usr/bin/crashbroker-launcher",
            "crashbroker-lau",
            True,
        ),
        ("/usr/bin/python3.11", "python3 -m crashbroker daemon", "python3", True),
        ("/usr/bin/python3.11", "python3 myscript.py crashbroker", "python3", False),
        ("/usr/bin/kronometer", "kronometer", "kronometer", False),
    ],
)
def test_own_processes(exe: str, cmdline: str, comm: str, own: bool) -> None:
    assert drkonqi.own_process(exe, cmdline, comm) is own


def record(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "kcrash": {"appname": "k"}, "exe": "/usr/bin/k", "cmdline": "k", "comm": "k",
        "kcrash_source": "kcrash-v1", "core_available": True, "past": False, "state": "new",
    }  # fmt: skip
    return {**base, **changes}


@pytest.mark.parametrize(
    ("changes", "kde_debug", "explicit", "expected"),
    [
        ({}, False, False, None),
        ({"kcrash": {}}, False, False, Skip.NO_KCRASH),
        ({"exe": "/usr/libexec/drkonqi"}, False, False, Skip.OWN),
        ({}, True, False, Skip.KDE_DEBUG),
        ({}, True, True, Skip.KDE_DEBUG),
        ({"kcrash_source": "drkonqi"}, False, False, Skip.DRKONQI_SEEN),
        ({"core_available": False}, False, False, Skip.NO_CORE),
        ({"past": True}, False, False, Skip.PAST),
        ({"past": True}, False, True, None),
        ({"state": "claimed"}, False, False, Skip.NOT_NEW),
        ({"state": "claimed"}, False, True, None),
    ],
)
def test_launch_decision(
    changes: dict[str, object], kde_debug: bool, explicit: bool, expected: Skip | None
) -> None:
    assert (
        drkonqi.should_launch(record(**changes), kde_debug=kde_debug, explicit=explicit) == expected
    )


def test_rate_limit_is_per_key_and_time_passed_in() -> None:
    limit = RateLimit(60_000_000)
    assert limit.allow("a", 0)
    assert not limit.allow("a", 59_999_999)
    assert limit.allow("b", 1)
    assert limit.allow("a", 60_000_000)


# ---- DrKonqi 6's record: never replaced, PickedUp respected -------------------------------------

OURS = drkonqi.v6_metadata(KCrashGroups({"appname": "k"}), {}, "s=c").encode()


@pytest.mark.parametrize(
    ("existing", "explicit", "expected"),
    [
        (None, False, RecordAction.CREATE),
        (None, True, RecordAction.CREATE),
        (b'{"version": 2, "kcrash": {}, "drkonqi": {"PickedUp": true}}', False, Skip.DRKONQI_SEEN),
        (b'{"version": 2, "kcrash": {}, "drkonqi": {"PickedUp": true}}', True, Skip.DRKONQI_SEEN),
        (b'{"version": 2, "kcrash": {}, "drkonqi": {}}', True, Skip.RECORD_EXISTS),
        (b'{"drkonqi": {"PickedUp": "true"}}', False, Skip.RECORD_EXISTS),  # not JSON true
        (b"", False, Skip.RECORD_EXISTS),  # truncated mid-write by DrKonqi: still theirs
        (b"[1]", False, Skip.RECORD_EXISTS),
        (OURS, False, Skip.LAUNCHED_BEFORE),
        (OURS, True, RecordAction.REUSE),  # "Report…" again: DrKonqi on the same record
    ],
)
def test_an_existing_record_is_never_ours_to_replace(
    existing: bytes | None, explicit: bool, expected: RecordAction | Skip
) -> None:
    assert drkonqi.record_verdict(existing, explicit=explicit) == expected


# ---- how DrKonqi is started ----------------------------------------------------------------------

SOCK = "/run/user/1000/systemd/private"


@pytest.mark.parametrize(
    ("via", "sock", "running", "systemd_run", "start", "why"),
    [
        (StartVia.AUTO, SOCK, True, "/usr/bin/systemd-run", Start.SERVICE, "user manager at"),
        (StartVia.AUTO, SOCK, False, "/usr/bin/systemd-run", Start.CHILD, "does not exist"),
        (StartVia.AUTO, "", False, "/usr/bin/systemd-run", Start.CHILD, "XDG_RUNTIME_DIR"),
        (StartVia.AUTO, SOCK, True, None, Start.CHILD, "systemd-run is not installed"),
        (StartVia.SERVICE, SOCK, False, "/usr/bin/systemd-run", None, "does not exist"),
        (StartVia.SERVICE, SOCK, True, "/usr/bin/systemd-run", Start.SERVICE, "user manager"),
        (StartVia.CHILD, SOCK, True, "/usr/bin/systemd-run", Start.CHILD, "--start-via=child"),
    ],
)
def test_choose_start(
    via: StartVia, sock: str, running: bool, systemd_run: str | None, start: Start | None, why: str
) -> None:
    got, reason = drkonqi.choose_start(
        via, manager_socket=sock, manager_running=running, systemd_run=systemd_run
    )
    assert got is start
    assert why in reason


def run_command(env: dict[str, str], argv: list[str]) -> list[str] | None:
    return drkonqi.systemd_run_command(
        "/usr/bin/systemd-run",
        unit=drkonqi.unit_name("0123abcd"),
        description="DrKonqi for the crash of k (x)",
        drkonqi="/usr/libexec/drkonqi",
        argv=argv,
        env=env,
        cwd="/tmp",
    )


def test_drkonqi_is_a_transient_service_not_a_scope_with_its_environment_passed() -> None:
    env = drkonqi.child_environment(
        {"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0", "HOME": "/h", "INVOCATION_ID": "x",
         "bad name": "1", "UNDECODABLE": "a\udcff"},
        "/h/.cache/drkonqi/crashes/k.b.1.2.ini",
    )  # fmt: skip
    cmd = run_command(env, ["--appname", "k", "--programname", "K $HOME ${X} $$", "--safer"])
    assert cmd is not None
    head, tail = cmd[: cmd.index("--")], cmd[cmd.index("--") + 1 :]
    assert head[:2] == ["/usr/bin/systemd-run", "--user"]
    # --scope would fork DrKonqi from systemd-run, our child: it would keep our sandbox.
    assert "--scope" not in head
    for option in ("--collect", "--service-type=exec", "--property=ExitType=cgroup",
                   "--slice=app.slice", "--working-directory=/tmp",
                   "--unit=app-crashbroker-org.kde.drkonqi@0123abcd.service"):  # fmt: skip
        assert option in head, option
    setenv = sorted(a.removeprefix("--setenv=") for a in head if a.startswith("--setenv="))
    assert setenv == [
        "DISPLAY=:0",
        "DRKONQI_BACKEND=COREDUMPD",
        "DRKONQI_METADATA_FILE=/h/.cache/drkonqi/crashes/k.b.1.2.ini",
        "HOME=/h",
        "WAYLAND_DISPLAY=wayland-0",
    ]
    # The manager expands $VAR in ExecStart=; "$$" is its literal "$".
    assert tail == [
        "/usr/libexec/drkonqi", "--appname", "k", "--programname", "K $$HOME $${X} $$$$",
        "--safer",
    ]  # fmt: skip


def test_no_service_when_drkonqis_metadata_path_cannot_be_passed() -> None:
    env = drkonqi.child_environment({"HOME": "/h"}, "/h/\udcff/k.ini")
    assert run_command(env, ["--appname", "k"]) is None


@pytest.mark.parametrize(
    ("key", "value", "passed"),
    [
        ("appname", "kate", True),
        ("exceptionwhat", "it broke", True),
        ("platform", "wayland", True),
        ("platform", "offscreen", True),
        ("display", ":0.0", True),
        ("platformpluginpath", "/tmp/x", False),  # Qt's, not DrKonqi's: loads plugins
        ("platformtheme", "x", False),
        ("plugin", "evdevmouse", False),
        ("qwindowgeometry", "1x1", False),
        ("platform", "vnc:port=5900", False),  # would listen on a port
        ("platform", "eglfs", False),
        ("display", "evil.example:0", False),  # another machine's X server
        ("programname", "-platformpluginpath", False),  # Qt scans all of argv for its options
        ("thread", "1", False),  # Windows only
    ],
)
def test_only_drkonqis_options_with_harmless_values_are_passed(
    key: str, value: str, passed: bool
) -> None:
    assert drkonqi.passed_option(key, value) is passed
    argv = drkonqi.arguments({"pid": "7", "signal": "11", key: value}, Flavor.V6)
    assert argv is not None
    assert (f"--{key}" in argv) is passed
    assert drkonqi.refused_options({key: value}) == ([] if passed else [key])


def test_no_arguments_without_a_numeric_pid_and_signal() -> None:
    assert drkonqi.arguments({"pid": "-platform", "signal": "11"}, Flavor.V5) is None
    assert drkonqi.arguments({"pid": "7", "signal": "x"}, Flavor.V5) is None


@pytest.mark.parametrize("flavor", list(Flavor))
def test_a_users_report_asks_for_the_dialog_at_once(flavor: Flavor) -> None:
    argv = drkonqi.arguments(KCRASH, flavor, dialog=True)
    assert argv is not None and argv[-1] == "--dialog"
    assert "--dialog" not in (drkonqi.arguments(KCRASH, flavor) or [])
    assert "--dialog" not in (drkonqi.arguments({**KCRASH, "dialog": "true"}, flavor) or [])


def test_a_drkonqi_unit_names_its_crash_for_a_restarted_launcher() -> None:
    name = drkonqi.unit_name("0123abcd", "c67beafc88c6bbe94")
    assert name == "app-crashbroker-org.kde.drkonqi@c67beafc88c6bbe94-0123abcd.service"
    assert drkonqi.crash_of_unit(name) == "c67beafc88c6bbe94"
    assert drkonqi.crash_of_unit(drkonqi.unit_name("0123abcd")) is None
    assert drkonqi.unit_name("0123abcd", "c/../x") == drkonqi.unit_name("0123abcd")
    assert drkonqi.crash_of_unit("app-other@c1-0.service") is None
