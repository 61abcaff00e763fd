"""The trust rule for an ordinary user's crashes (design.md §2), on entries recorded from real
crashes of a real ordinary user (uid 1001, tests/data/record-user.sh): systemd-coredump logged
them as that user, with and without its ``_EXE``. The core file facts are what
adapters/core_file.py reads off a real core (its test checks that on real files)."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

import export_format
from crashbroker.adapters.core_file import inspect_core
from crashbroker.domain.entry import (
    REPEATED,
    CoreFile,
    TrustPolicy,
    Verdict,
    classify,
    core_to_check,
    written_by_coredump,
)

WITH_EXE = "user-sleep-sigsegv.export"
NO_EXE = "user-sleep-sigsegv-no-exe.export"
USER = 1001
WRITERS = frozenset({0, 995})


def real_fields(name: str) -> dict[str, str]:
    fields = {k: v.decode(errors="replace") for k, v in export_format.load(name).items()}
    fields.setdefault("__CURSOR", f"s=recorded;name={name}")
    return fields


def policy(name: str, **kw: object) -> TrustPolicy:
    fields = real_fields(name)
    defaults: dict[str, object] = {
        "writer_uids": WRITERS,
        "own_uid": USER,
        "machine_id": fields["_MACHINE_ID"],
    }
    return TrustPolicy(**{**defaults, **kw})  # type: ignore[arg-type]


def true_core(fields: dict[str, str]) -> CoreFile:
    """The facts of the core systemd-coredump stored for this entry (root, 0640, its xattrs)."""
    return CoreFile(
        path=fields["COREDUMP_FILENAME"],
        owner_uid=0,
        regular=True,
        others_write=False,
        links=1,
        xattrs={
            "pid": fields["COREDUMP_PID"],
            "uid": fields["COREDUMP_UID"],
            "timestamp": fields["COREDUMP_TIMESTAMP"],
            "exe": fields["COREDUMP_EXE"],
        },
    )


def decide(fields: dict[str, str], pol: TrustPolicy, core: CoreFile | None) -> Verdict:
    return classify(fields, pol, core)[0]


@pytest.mark.parametrize("name", [WITH_EXE, NO_EXE])
def test_recorded_entries_are_a_regular_users_own(name: str) -> None:
    fields = real_fields(name)
    assert fields["_UID"] == fields["COREDUMP_UID"] == str(USER)
    assert ("_EXE" in fields) == (name == WITH_EXE)


@pytest.mark.parametrize("name", [WITH_EXE, NO_EXE])
def test_a_regular_users_real_crash_is_accepted_with_its_core(name: str) -> None:
    fields = real_fields(name)
    pol = policy(name)
    assert core_to_check(fields, pol) == fields["COREDUMP_FILENAME"]
    verdict, entry = classify(fields, pol, true_core(fields))
    assert verdict is Verdict.ACCEPT
    assert entry is not None
    assert (entry.uid, entry.exe) == (USER, "/usr/bin/sleep")


@pytest.mark.parametrize("name", [WITH_EXE, NO_EXE])
def test_the_system_writer_rule_alone_rejects_them(name: str) -> None:
    """What 499 root-run tests missed: a rule of writer uids (root, systemd-coredump) alone
    counts every real crash of an ordinary user as forged."""
    assert not written_by_coredump(real_fields(name), WRITERS)


@pytest.mark.parametrize("name", [WITH_EXE, NO_EXE])
def test_a_named_core_that_cannot_be_checked_rejects_the_entry(name: str) -> None:
    # _EXE does not vouch for a named core: gdb would parse whatever file the entry names.
    fields = real_fields(name)
    assert decide(fields, policy(name), None) is Verdict.FORGED


def test_without_a_core_only_systemd_coredumps_exe_vouches() -> None:
    with_exe = real_fields(WITH_EXE)
    del with_exe["COREDUMP_FILENAME"]
    assert decide(with_exe, policy(WITH_EXE), None) is Verdict.ACCEPT
    no_exe = real_fields(NO_EXE)
    del no_exe["COREDUMP_FILENAME"]
    # A process that exits at once has no _EXE either: no evidence, no crash.
    assert decide(no_exe, policy(NO_EXE), None) is Verdict.FORGED
    python = {**with_exe, "_EXE": "/usr/bin/python3.11"}
    assert decide(python, policy(WITH_EXE), None) is Verdict.FORGED


@pytest.mark.parametrize(
    "change",
    [
        {"owner_uid": USER},  # a file of the user's own
        {"regular": False},  # a FIFO, a symlink, a directory
        {"others_write": True},
        {"links": 2},  # a second name for a root file
        {"path": "/var/lib/systemd/coredump/../../../home/u/core.sleep.1001.b.1.1.zst"},
    ],
)
def test_a_core_that_systemd_coredump_did_not_store_proves_nothing(
    change: dict[str, object],
) -> None:
    fields = real_fields(NO_EXE)
    core = dataclasses.replace(true_core(fields), **change)  # type: ignore[arg-type]
    assert decide(fields, policy(NO_EXE), core) is Verdict.FORGED


@pytest.mark.parametrize(
    "field",
    ["COREDUMP_PID", "COREDUMP_TIMESTAMP", "_BOOT_ID", "COREDUMP_UID", "COREDUMP_EXE"],
)
def test_naming_another_crashs_core_is_forged(field: str) -> None:
    """A forger of the same user names the real core of another crash, with its own fields."""
    real = real_fields(NO_EXE)
    core = true_core(real)
    forged = dict(real)
    forged[field] = {
        "COREDUMP_PID": "4242",
        "COREDUMP_TIMESTAMP": "1796052663000001",
        "_BOOT_ID": "0" * 32,
        "COREDUMP_UID": "1002",
        "COREDUMP_EXE": "/usr/bin/firefox",
    }[field]
    if field == "COREDUMP_UID":
        forged["_UID"] = "1002"
    assert decide(forged, policy(NO_EXE, own_uid=None), core) is Verdict.FORGED


def test_the_exe_attribute_binds_the_program_even_where_the_name_does_not() -> None:
    real = real_fields(NO_EXE)
    forged = {**real, "COREDUMP_EXE": "/usr/bin/firefox", "COREDUMP_COMM": "firefox"}
    assert decide(forged, policy(NO_EXE), true_core(real)) is Verdict.FORGED
    # Without xattrs (a file system that keeps none) the name still binds uid/boot/pid/time.
    bare = dataclasses.replace(true_core(real), xattrs={})
    assert decide(real, policy(NO_EXE), bare) is Verdict.ACCEPT


def test_uid_and_coredump_uid_must_agree() -> None:
    fields = {**real_fields(WITH_EXE), "COREDUMP_UID": "1002"}
    assert core_to_check(fields, policy(WITH_EXE, own_uid=None)) is None
    assert decide(fields, policy(WITH_EXE, own_uid=None), None) is Verdict.FORGED


def test_a_system_uid_sender_is_not_a_regular_user() -> None:
    # uid 100 logging "its own" crash: neither a writer uid nor a regular user.
    fields = {**real_fields(WITH_EXE), "_UID": "100", "COREDUMP_UID": "100"}
    assert decide(fields, policy(WITH_EXE, own_uid=None), true_core(fields)) is Verdict.FORGED


def test_a_repeated_crash_field_is_forged() -> None:
    """systemd-coredump --backtrace (any user may run it) appends stdin's fields to its own
    entry: a second MESSAGE_ID or COREDUMP_EXE then rides on its _EXE."""
    fields = real_fields(WITH_EXE)
    for repeated in ("MESSAGE_ID", "COREDUMP_EXE", "_UID,COREDUMP_FILENAME"):
        marked = {**fields, REPEATED: repeated}
        assert decide(marked, policy(WITH_EXE), true_core(fields)) is Verdict.FORGED
    assert decide({**fields, REPEATED: "MESSAGE"}, policy(WITH_EXE), true_core(fields)) is (
        Verdict.ACCEPT
    )


def test_another_machines_entry_rests_on_its_uploader() -> None:
    fields = {**real_fields(NO_EXE), "_MACHINE_ID": "f" * 32}
    pol = policy(NO_EXE, own_uid=None)
    assert core_to_check(fields, pol) is None  # its core is on that machine
    assert decide(fields, pol, None) is Verdict.ACCEPT
    assert decide({**fields, "_EXE": "/usr/bin/python3.11"}, pol, None) is Verdict.FORGED


# --- the adapter on real files ---------------------------------------------------------------


def test_inspect_core_reads_real_files(tmp_path: Path) -> None:
    plain = tmp_path / "core.sleep.1001.x.1.1.zst"
    plain.write_bytes(b"core")
    plain.chmod(0o640)
    facts = inspect_core(str(plain))
    assert facts is not None
    assert (facts.owner_uid, facts.regular, facts.others_write, facts.links) == (
        os.getuid(), True, False, 1,
    )  # fmt: skip
    try:
        os.setxattr(plain, "user.coredump.exe", b"/usr/bin/sleep")
    except OSError as e:
        pytest.skip(f"no user xattrs on {tmp_path}: {e}")
    assert inspect_core(str(plain)).xattrs == {"exe": "/usr/bin/sleep"}  # type: ignore[union-attr]

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(plain)
    hard = tmp_path / "hard"
    os.link(plain, hard)
    assert inspect_core(str(fifo)).regular is False  # type: ignore[union-attr]
    assert inspect_core(str(link)).regular is False  # type: ignore[union-attr]
    assert inspect_core(str(hard)).links == 2  # type: ignore[union-attr]
    plain.chmod(0o660)
    assert inspect_core(str(plain)).others_write is True  # type: ignore[union-attr]
    assert inspect_core(str(tmp_path / "gone")) is None
    assert inspect_core("/x\0y") is None
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
