"""KCrash metadata: the INI and DrKonqi JSON parsers, cross-checks, gap filling and file names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import export_format
from conftest import make_entry as shared_entry
from crashbroker.domain.entry import TrustPolicy, Verdict, classify
from crashbroker.domain.errors import MetadataError, MetadataReason
from crashbroker.domain.metadata import (
    MAX_FILE_BYTES,
    MAX_KEY_CHARS,
    MAX_KEYS_PER_GROUP,
    MAX_VALUE_CHARS,
    check_belongs,
    drkonqi_name,
    fill_gaps,
    parse_drkonqi_json,
    parse_ini,
    private_file,
    safe_name,
    v1_name,
    v1_written_for,
    v2_name,
)
from crashbroker.domain.model import CoredumpEntry, KCrashLib, KCrashMetadata, MetadataSource

DATA = Path(__file__).parent.parent / "data"
BOOT = "e04ff1c3b3f8438a9752aa220502ee22"
PATH = "/home/u/.cache/kcrash-metadata/test.ini"
V1, V2, DRKONQI = MetadataSource.KCRASH_V1, MetadataSource.KCRASH_V2, MetadataSource.DRKONQI


def make_entry(
    exe: str = "/usr/bin/kronometer",
    pid: int = 5461,
    comm: str = "kronometer",
    timestamp: int = 1795398271000000,
) -> CoredumpEntry:
    return shared_entry(
        pid,
        timestamp,
        exe,
        realtime=timestamp + 473510,
        kcrash_lib=KCrashLib.KF5,
        cursor="s=1",
        comm=comm,
        cmdline=comm,
    )


def meta(source: MetadataSource = V2, **kcrash: str) -> KCrashMetadata:
    return KCrashMetadata(kcrash=kcrash, source=source, path=PATH)


def ini(text: str) -> KCrashMetadata:
    return parse_ini(text.encode(), PATH, V2)


def is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def all_strings(m: KCrashMetadata) -> list[str]:
    return [s for group in (m.kcrash, m.tags, m.extra, m.gpu) for kv in group.items() for s in kv]


# --- parse_ini ------------------------------------------------------------------------------


def test_real_kf5_file_parses_with_every_key() -> None:
    path = str(DATA / "kronometer.ini")
    m = parse_ini((DATA / "kronometer.ini").read_bytes(), path, V1)

    assert dict(m.kcrash) == {
        "exe": "/usr/bin/kronometer",
        "platform": "offscreen",
        "appname": "kronometer",
        "apppath": "/usr/bin",
        "signal": "11",
        "pid": "5461",
        "appversion": "2.3.0",
        "programname": "Kronometer",
        "bugaddress": "submit@bugs.kde.org",
    }
    assert (dict(m.tags), dict(m.extra), dict(m.gpu)) == ({}, {}, {})
    assert m.complete is False
    assert m.source is V1
    assert m.path == path


KF6_FILE = """\
[KCrash]
exe=/usr/bin/kate
appname=kate
programname=Kate
signal=6
pid=777
bugaddress=https://bugs.kde.org
[KCrashTags]
session=wayland
[KCrashExtra]
log=line one\\nline two
[KCrashGPU]
name=Mesa Intel(R) Graphics (ADL GT2)
vendor=Intel
[KCrashComplete]
"""


def test_kf6_file_with_every_group_and_the_complete_marker() -> None:
    m = parse_ini(KF6_FILE.encode(), PATH, V2)

    assert dict(m.kcrash) == {
        "exe": "/usr/bin/kate",
        "appname": "kate",
        "programname": "Kate",
        "signal": "6",
        "pid": "777",
        "bugaddress": "https://bugs.kde.org",
    }
    assert dict(m.tags) == {"session": "wayland"}
    assert dict(m.extra) == {"log": "line one\nline two"}
    assert dict(m.gpu) == {"name": "Mesa Intel(R) Graphics (ADL GT2)", "vendor": "Intel"}
    assert m.complete is True
    assert m.source is V2


def test_complete_marker_anywhere_counts_and_keys_under_it_are_ignored() -> None:
    m = ini("[KCrashComplete]\nexe=/evil\n[KCrash]\nappname=a\n")
    assert m.complete is True
    assert dict(m.kcrash) == {"appname": "a"}


def test_file_without_marker_is_incomplete() -> None:
    assert ini(KF6_FILE.replace("[KCrashComplete]\n", "")).complete is False


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("line one\\nline two", "line one\nline two"),
        ("a\\tb", "a\tb"),
        ("back\\\\slash", "back\\slash"),
        ("\\\\n", "\\n"),  # an escaped backslash followed by n is not a newline
        ("\\sleading space", " leading space"),
        ("a\\;b\\,c", "a;b,c"),
        ("\\x41\\x62", "Ab"),
        ("\\xe9", "\xe9"),
        ("\\x4g", "\\x4g"),  # not a hex escape: left alone
        ("\\q", "\\q"),  # unknown escape: left alone
        ("trailing\\", "trailing\\"),
        ("\\x00nul", "\ufffdnul"),  # an escaped NUL must not reach D-Bus
        ("\\r", "\ufffd"),  # control characters other than \n and \t are replaced
        ("no escapes at all", "no escapes at all"),
    ],
)
def test_kconfig_escapes_are_undone(raw: str, value: str) -> None:
    assert ini(f"[KCrash]\nkey={raw}\n").kcrash["key"] == value


def test_crlf_line_endings() -> None:
    m = parse_ini(KF6_FILE.replace("\n", "\r\n").encode(), PATH, V2)
    assert m.kcrash["exe"] == "/usr/bin/kate"
    assert m.gpu["vendor"] == "Intel"
    assert m.complete is True
    assert not any("\r" in s for s in all_strings(m))


def test_keys_before_any_group_are_ignored() -> None:
    m = ini("exe=/usr/bin/evil\nappname=evil\n[KCrash]\nappname=good\n")
    assert dict(m.kcrash) == {"appname": "good"}


def test_unknown_groups_are_ignored_and_end_the_previous_group() -> None:
    m = ini(
        "[KCrash]\nappname=good\n[Evil]\nexe=/usr/bin/evil\n"
        "[KCrash][$i]\npid=1\n[kcrash]\nsignal=9\n[KCrashTags]\nt=1\n"
    )
    assert dict(m.kcrash) == {"appname": "good"}
    assert dict(m.tags) == {"t": "1"}


def test_duplicate_keys_last_wins_across_repeated_groups() -> None:
    m = ini(
        "[KCrash]\nappname=first\nexe=/a\nappname=second\n[KCrashTags]\nx=1\n[KCrash]\nexe=/b\n"
    )
    assert dict(m.kcrash) == {"appname": "second", "exe": "/b"}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("  appname  =  padded  ", {"appname": "padded"}),
        ("url=https://x/?a=b&c=d", {"url": "https://x/?a=b&c=d"}),
        ("empty=", {"empty": ""}),
        ("=novalue", {}),
        ("no equals sign", {}),
        ("# comment=not a key", {}),
        ("k" * MAX_KEY_CHARS + "=kept", {"k" * MAX_KEY_CHARS: "kept"}),
        ("k" * (MAX_KEY_CHARS + 1) + "=dropped", {}),
    ],
)
def test_line_forms(line: str, expected: dict[str, str]) -> None:
    assert dict(ini(f"[KCrash]\n{line}\n").kcrash) == expected


def test_long_values_are_capped() -> None:
    m = ini("[KCrash]\nappname=" + "v" * (MAX_VALUE_CHARS * 2) + "\n")
    assert m.kcrash["appname"] == "v" * MAX_VALUE_CHARS


def test_invalid_utf8_is_replaced() -> None:
    m = parse_ini(b"[KCrash]\nappname=k\xffate\n\xfe\xfekey=v\n", PATH, V2)
    assert m.kcrash["appname"] == "k\ufffdate"
    assert m.kcrash["\ufffd\ufffdkey"] == "v"


def test_nul_bytes_never_reach_the_output() -> None:
    data = b"[KCrash]\nappname=a\x00b\nk\x00ey=v\n[KCrashTags]\nt=\x00\n\x00[KCrashGPU]\n"
    m = parse_ini(data, PATH, V2)
    assert m.kcrash["appname"] == "a\ufffdb"
    assert m.kcrash["k\ufffdey"] == "v"
    assert m.tags["t"] == "\ufffd"
    assert not any("\x00" in s for s in all_strings(m))


def test_file_of_exactly_the_maximum_size_is_read() -> None:
    head = b"[KCrash]\nappname=x\n#"
    data = head + b"p" * (MAX_FILE_BYTES - len(head))
    assert len(data) == MAX_FILE_BYTES
    assert parse_ini(data, PATH, V2).kcrash["appname"] == "x"


def test_oversize_file_is_refused() -> None:
    data = b"[KCrash]\nappname=x\n" + b"#" * MAX_FILE_BYTES
    with pytest.raises(MetadataError) as info:
        parse_ini(data, PATH, V2)
    assert info.value.reason is MetadataReason.TOO_LARGE
    assert info.value.path == PATH


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"appname=x\n",
        b"[KCrashTags]\na=b\n[KCrashComplete]\n",
        b"[KCrash\nappname=x\n",
        b"[kcrash]\nappname=x\n",
        b" [ KCrash ] \nappname=x\n",
        b"#[KCrash]\n",
        b"\x00\xff\xfe garbage",
    ],
)
def test_file_without_kcrash_group_is_malformed(data: bytes) -> None:
    with pytest.raises(MetadataError) as info:
        parse_ini(data, PATH, V2)
    assert info.value.reason is MetadataReason.MALFORMED
    assert info.value.path == PATH


def test_empty_kcrash_group_is_enough() -> None:
    m = ini("  [KCrash]  \n")
    assert dict(m.kcrash) == {}


def test_keys_per_group_are_capped_but_known_keys_still_update() -> None:
    lines = [f"k{i}=v{i}" for i in range(MAX_KEYS_PER_GROUP + 50)]
    text = "[KCrash]\n" + "\n".join(lines) + "\nk0=updated\n[KCrashTags]\n" + "\n".join(lines)
    m = ini(text)

    assert len(m.kcrash) == MAX_KEYS_PER_GROUP
    assert f"k{MAX_KEYS_PER_GROUP - 1}" in m.kcrash
    assert f"k{MAX_KEYS_PER_GROUP}" not in m.kcrash
    assert m.kcrash["k0"] == "updated"
    assert len(m.tags) == MAX_KEYS_PER_GROUP  # each group has its own cap


# --- parse_drkonqi_json ---------------------------------------------------------------------


def test_drkonqi_record_parses() -> None:
    record = {
        "kcrash": {
            "exe": "/usr/bin/kate",
            "signal": 11,
            "pid": 777,
            "ratio": 1.5,
            "restarted": True,
            "dropped_null": None,
            "dropped_list": [1, 2],
            "dropped_object": {"a": "b"},
        },
        "kcrash-tags": {"session": "wayland"},
        "kcrash-extra-data": {"log": "a\nb"},
        "kcrash-gpu": {"vendor": "Intel"},
        "kcrash-complete": True,
        "unrelated": [1, 2, 3],
    }
    m = parse_drkonqi_json(json.dumps(record).encode(), PATH)

    assert dict(m.kcrash) == {
        "exe": "/usr/bin/kate",
        "signal": "11",
        "pid": "777",
        "ratio": "1.5",
        "restarted": "true",
    }
    assert dict(m.tags) == {"session": "wayland"}
    assert dict(m.extra) == {"log": "a\nb"}
    assert dict(m.gpu) == {"vendor": "Intel"}
    assert m.complete is True
    assert m.source is DRKONQI
    assert m.path == PATH


@pytest.mark.parametrize("complete", [False, "true", 1, None, {}])
def test_drkonqi_complete_only_when_literally_true(complete: object) -> None:
    doc = {"kcrash": {}, "kcrash-complete": complete}
    assert parse_drkonqi_json(json.dumps(doc).encode(), PATH).complete is False


def test_drkonqi_groups_of_the_wrong_type_are_empty() -> None:
    doc = {"kcrash": {"a": "b"}, "kcrash-tags": ["x"], "kcrash-extra-data": "s", "kcrash-gpu": 3}
    m = parse_drkonqi_json(json.dumps(doc).encode(), PATH)
    assert dict(m.kcrash) == {"a": "b"}
    assert (dict(m.tags), dict(m.extra), dict(m.gpu)) == ({}, {}, {})


def test_drkonqi_nul_and_controls_are_replaced() -> None:
    doc = {"kcrash": {"app\u0000name": "a\u0000b\u0007c\td\ne"}}
    m = parse_drkonqi_json(json.dumps(doc).encode(), PATH)
    assert dict(m.kcrash) == {"app\ufffdname": "a\ufffdb\ufffdc\td\ne"}


def test_drkonqi_keys_are_capped() -> None:
    doc = {"kcrash": {f"k{i}": i for i in range(MAX_KEYS_PER_GROUP * 2)}}
    assert len(parse_drkonqi_json(json.dumps(doc).encode(), PATH).kcrash) == MAX_KEYS_PER_GROUP


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[KCrash]\nexe=/usr/bin/kate\n", id="ini-not-json"),
        pytest.param(b'{"kcrash": {', id="truncated"),
        pytest.param(b"\xff\xfe{}", id="binary"),
        pytest.param(b"[" * 4000 + b"]" * 4000, id="deeply-nested"),
        pytest.param(b'{"kcrash": {"pid": ' + b"9" * 5000 + b"}}", id="huge-integer"),
    ],
)
def test_drkonqi_non_json_is_malformed(data: bytes) -> None:
    with pytest.raises(MetadataError) as info:
        parse_drkonqi_json(data, PATH)
    assert info.value.reason is MetadataReason.MALFORMED
    assert info.value.path == PATH


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param([], id="list"),
        pytest.param("kcrash", id="string"),
        pytest.param(None, id="null"),
        pytest.param({}, id="no-kcrash"),
        pytest.param({"kcrash": "exe=/usr/bin/kate"}, id="kcrash-string"),
        pytest.param({"kcrash": ["exe", "/usr/bin/kate"]}, id="kcrash-list"),
        pytest.param({"kcrash": None}, id="kcrash-null"),
        pytest.param({"KCrash": {"exe": "/usr/bin/kate"}}, id="ini-group-name"),
    ],
)
def test_drkonqi_json_without_kcrash_object_is_malformed(doc: object) -> None:
    with pytest.raises(MetadataError) as info:
        parse_drkonqi_json(json.dumps(doc).encode(), PATH)
    assert info.value.reason is MetadataReason.MALFORMED


def test_drkonqi_oversize_record_is_refused() -> None:
    data = json.dumps({"kcrash": {}, "pad": "x" * MAX_FILE_BYTES}).encode()
    with pytest.raises(MetadataError) as info:
        parse_drkonqi_json(data, PATH)
    assert info.value.reason is MetadataReason.TOO_LARGE


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"kcrash": {"appname": "\\ud800kate"}}', id="lone-high-surrogate-value"),
        pytest.param(b'{"kcrash": {"\\udc00": "x"}}', id="lone-low-surrogate-key"),
        pytest.param(b'{"kcrash": {}, "kcrash-tags": {"t": "\\udfff"}}', id="tag-value"),
    ],
)
def test_drkonqi_strings_are_valid_utf8_for_dbus(data: bytes) -> None:
    """JSON may spell lone surrogates (``\\ud800``); D-Bus strings must be valid UTF-8."""
    m = parse_drkonqi_json(data, PATH)
    bad = [s for s in all_strings(m) if not is_utf8(s)]
    assert bad == [], "strings that cannot be sent over D-Bus"


# --- check_belongs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "entry"),
    [
        pytest.param(meta(V2, exe="/usr/bin/kronometer"), make_entry(), id="v2-same-exe"),
        pytest.param(meta(V1, exe="/usr/bin/kronometer"), make_entry(), id="v1-same-exe"),
        pytest.param(meta(V2), make_entry(), id="v2-without-exe"),
        pytest.param(meta(DRKONQI), make_entry(), id="drkonqi-without-exe"),
        pytest.param(
            meta(V1, exe="/usr/bin/kronometer", pid="5461"), make_entry(), id="v1-same-pid"
        ),
        pytest.param(
            meta(V1, exe="/usr/bin/kronometer", pid=" 5461 "), make_entry(), id="padded-pid"
        ),
        pytest.param(
            meta(V2, exe="/usr/bin/kronometer"),
            make_entry(exe="/usr/bin/kronometer (deleted)"),
            id="deleted-exe",
        ),
    ],
)
def test_metadata_that_matches_the_entry_belongs(m: KCrashMetadata, entry: CoredumpEntry) -> None:
    check_belongs(m, entry)  # does not raise


@pytest.mark.parametrize(
    ("m", "entry"),
    [
        pytest.param(meta(V2, exe="/usr/bin/kate"), make_entry(), id="v2-other-exe"),
        pytest.param(meta(V1, exe="/usr/bin/kate"), make_entry(), id="v1-other-exe"),
        pytest.param(meta(DRKONQI, exe="/usr/bin/kate"), make_entry(), id="drkonqi-other-exe"),
        pytest.param(meta(V1), make_entry(), id="v1-without-exe"),
        pytest.param(meta(V1, appname="kronometer"), make_entry(), id="v1-appname-only"),
        pytest.param(meta(V2, exe="kronometer"), make_entry(), id="basename-only"),
        pytest.param(meta(V2, exe=""), make_entry(), id="empty-exe"),
        pytest.param(
            meta(V1, exe="/usr/bin/kronometer", pid="5462"), make_entry(), id="v1-other-pid"
        ),
        pytest.param(meta(V2, pid="5462"), make_entry(), id="v2-other-pid"),
        pytest.param(meta(DRKONQI, pid="x"), make_entry(), id="garbage-pid"),
        pytest.param(
            meta(V2, exe="/usr/bin/kronometer (deleted)"),
            make_entry(exe="/usr/bin/kronometer"),
            id="deleted-suffix-only-in-file",
        ),
    ],
)
def test_metadata_naming_another_process_is_refused(
    m: KCrashMetadata, entry: CoredumpEntry
) -> None:
    with pytest.raises(MetadataError) as info:
        check_belongs(m, entry)
    assert info.value.reason is MetadataReason.EXE_MISMATCH
    assert info.value.path == PATH


def test_real_kf5_file_belongs_to_the_real_entry_only() -> None:
    fields = {
        k: v.decode(errors="replace")
        for k, v in export_format.load("kronometer-sigsegv.export").items()
    }
    verdict, entry = classify(fields, TrustPolicy(frozenset({0, 995}), None))
    assert verdict is Verdict.ACCEPT
    assert entry is not None
    m = parse_ini((DATA / "kronometer.ini").read_bytes(), "5461.ini", V1)
    assert v1_name(entry) == "5461.ini"

    check_belongs(m, entry)
    with pytest.raises(MetadataError):
        check_belongs(m, dataclasses.replace(entry, pid=5462))
    with pytest.raises(MetadataError):
        check_belongs(m, dataclasses.replace(entry, exe="/usr/bin/sleep"))


# --- fill_gaps ------------------------------------------------------------------------------


def test_fill_gaps_fills_every_missing_key_from_the_journal() -> None:
    filled, added = fill_gaps({}, make_entry())
    assert filled == {
        "signal": "11",
        "pid": "5461",
        "appname": "kronometer",
        "exe": "/usr/bin/kronometer",
    }
    assert added == ("signal", "pid", "appname", "exe")


def test_fill_gaps_keeps_what_the_file_says() -> None:
    kcrash = {"signal": "6", "pid": "1", "appname": "Other", "exe": "/x", "bugaddress": "b"}
    filled, added = fill_gaps(kcrash, make_entry())
    assert filled == kcrash
    assert added == ()


def test_fill_gaps_reports_only_the_keys_it_filled() -> None:
    kcrash = {"appname": "kronometer", "exe": "/usr/bin/kronometer", "signal": ""}
    filled, added = fill_gaps(kcrash, make_entry())
    assert added == ("signal", "pid")
    assert filled == {**kcrash, "signal": "11", "pid": "5461"}
    assert kcrash["signal"] == ""  # the input is not modified


@pytest.mark.parametrize(
    ("exe", "comm", "expected"),
    [
        (
            "/usr/bin/kronometer (deleted)",
            "kronometer",
            {"appname": "kronometer", "exe": "/usr/bin/kronometer"},
        ),
        ("", "kronometer", {"appname": "kronometer"}),
        ("/opt/x/real-name", "short", {"appname": "real-name", "exe": "/opt/x/real-name"}),
    ],
)
def test_fill_gaps_takes_names_from_exe_then_comm(
    exe: str, comm: str, expected: dict[str, str]
) -> None:
    filled, added = fill_gaps({}, make_entry(exe=exe, comm=comm))
    assert filled == {"signal": "11", "pid": "5461", **expected}
    assert set(added) == set(filled)


# --- file names -----------------------------------------------------------------------------


def test_file_names() -> None:
    entry = make_entry()
    assert v1_name(entry) == "5461.ini"
    assert v2_name(entry) == f"kronometer.{BOOT}.5461.ini"
    assert drkonqi_name(entry) == f"kronometer.{BOOT}.5461.1795398271000000.ini"


def test_file_names_use_the_exe_without_deleted_suffix() -> None:
    entry = make_entry(exe="/usr/bin/kate (deleted)", pid=9, timestamp=42)
    assert v2_name(entry) == f"kate.{BOOT}.9.ini"
    assert drkonqi_name(entry) == f"kate.{BOOT}.9.42.ini"


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("5461.ini", True),
        (f"kronometer.{BOOT}.5461.ini", True),
        (".hidden", True),
        ("...", True),
        ("", False),
        (".", False),
        ("..", False),
        ("a/b", False),
        ("/etc/passwd", False),
        ("../5461.ini", False),
        ("a\0b", False),
    ],
)
def test_safe_name(name: str, safe: bool) -> None:
    assert safe_name(name) is safe


@pytest.mark.parametrize("exe", ["/usr/bin/kate", "/usr/bin/..", "/", "", "/a/b/ (deleted)"])
def test_generated_names_are_always_safe(exe: str) -> None:
    entry = make_entry(exe=exe)
    for name in (v1_name(entry), v2_name(entry), drkonqi_name(entry)):
        assert safe_name(name), name


# --- totality (property tests) --------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None, database=None)
FEWER = settings(max_examples=150, deadline=None, database=None)


def assert_clean(m: KCrashMetadata) -> None:
    assert isinstance(m, KCrashMetadata)
    assert isinstance(m.complete, bool)
    for group in (m.kcrash, m.tags, m.extra, m.gpu):
        assert len(group) <= MAX_KEYS_PER_GROUP
        for key, value in group.items():
            assert isinstance(key, str)
            assert isinstance(value, str)
            assert "\x00" not in key
            assert "\x00" not in value


def parse_ini_or_error(data: bytes) -> KCrashMetadata | None:
    """parse_ini's result, or None for a MetadataError; any other exception propagates."""
    try:
        m = parse_ini(data, PATH, V2)
    except MetadataError as exc:
        refused: MetadataError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.reason in (MetadataReason.MALFORMED, MetadataReason.TOO_LARGE)
        return None
    assert_clean(m)
    assert all(is_utf8(s) for s in all_strings(m))
    return m


@PROPERTY
@given(st.binary(max_size=4096))
def test_parse_ini_is_total_on_arbitrary_bytes(data: bytes) -> None:
    parse_ini_or_error(data)


_INI_LINE = st.one_of(
    st.sampled_from(
        [
            "[KCrash]",
            "[KCrashTags]",
            "[KCrashExtra]",
            "[KCrashGPU]",
            "[KCrashComplete]",
            "[Other]",
            "",
            "#",
            "\\",
        ]
    ),
    st.builds(lambda k, v: f"{k}={v}", st.text(max_size=20), st.text(max_size=40)),
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from(["exe", "pid", "appname", "signal"]),
        st.text(alphabet="\\xntrs0aF;,\x00\t =", max_size=20),
    ),
    st.text(max_size=60),
)


@PROPERTY
@given(st.lists(_INI_LINE, max_size=40), st.sampled_from(["\n", "\r\n"]))
def test_parse_ini_is_total_on_ini_like_text(lines: list[str], newline: str) -> None:
    m = parse_ini_or_error(newline.join(lines).encode("utf-8", errors="surrogatepass"))
    if "[KCrash]" in lines:
        assert m is not None
        if "[KCrashComplete]" in lines:
            assert m.complete


def parse_json_or_error(data: bytes) -> KCrashMetadata | None:
    """parse_drkonqi_json's result, or None for a MetadataError; anything else propagates."""
    try:
        m = parse_drkonqi_json(data, PATH)
    except MetadataError as exc:
        refused: MetadataError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.reason in (MetadataReason.MALFORMED, MetadataReason.TOO_LARGE)
        return None
    assert m.source is DRKONQI
    assert_clean(m)
    return m


@PROPERTY
@given(st.binary(max_size=4096))
def test_parse_drkonqi_json_is_total_on_arbitrary_bytes(data: bytes) -> None:
    parse_json_or_error(data)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
_GROUP_KEYS = st.sampled_from(
    ["kcrash", "kcrash-tags", "kcrash-extra-data", "kcrash-gpu", "kcrash-complete", "other"]
)


@FEWER
@given(st.one_of(_JSON, st.dictionaries(_GROUP_KEYS, _JSON, max_size=6)))
def test_parse_drkonqi_json_is_total_on_json_documents(doc: object) -> None:
    m = parse_json_or_error(json.dumps(doc).encode())
    if isinstance(doc, dict) and isinstance(doc.get("kcrash"), dict):
        assert m is not None
        assert m.complete is (doc.get("kcrash-complete") is True)
    else:
        assert m is None


def test_a_v1_ini_counts_only_if_written_at_the_time_of_the_crash() -> None:
    ts = 1_700_000_000_000_000
    assert v1_written_for(ts - 1_000_000, ts)  # in the handler, just before the dump
    assert v1_written_for(ts + 999_999, ts)  # COREDUMP_TIMESTAMP is whole seconds
    assert not v1_written_for(ts - 86_400_000_000, ts)  # a day before: another boot's
    assert not v1_written_for(ts + 60_000_000, ts)  # after the dump: not KCrash's


def test_private_file_is_ours_and_writable_by_no_one_else() -> None:
    assert private_file(1000, 0o100600, 1000) and private_file(1000, 0o40755, 1000)
    assert not private_file(1001, 0o100600, 1000)
    assert not private_file(1000, 0o100620, 1000) and not private_file(1000, 0o40777, 1000)


def test_a_private_group_may_write_but_no_other_group_or_anyone_else() -> None:
    """umask 002 (Debian's for user private groups) makes every KCrash file group-writable:
    refused only when that group is not the user's own."""
    own = frozenset({1001})
    assert private_file(1001, 0o100600, 1001)
    assert private_file(1001, 0o100664, 1001, gid=1001, private_gids=own)
    assert not private_file(1001, 0o100664, 1001, gid=100, private_gids=own)  # users
    assert not private_file(1001, 0o100664, 1001)  # no private group known
    assert not private_file(1001, 0o100646, 1001, gid=1001, private_gids=own)  # world
    assert not private_file(0, 0o100600, 1001, gid=1001, private_gids=own)  # not its own
