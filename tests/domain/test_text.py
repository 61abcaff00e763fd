"""Text from untrusted sources: D-Bus strings, and escaping for the terminal."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crashbroker.domain.text import (
    REPLACEMENT,
    clean_text,
    dbus_string_ok,
    escape_for_terminal,
)

PROPERTY = settings(max_examples=500, deadline=None, database=None)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("/usr/bin/kate", "/usr/bin/kate"),
        ("Käte \u2013 日本", "Käte \u2013 日本"),  # printable non-ASCII stays
        ("a b", "a b"),
        ("\x1b]52;c;cHduZWQ=\x07", "\\x1b]52;c;cHduZWQ=\\a"),  # OSC 52: writes the clipboard
        ("\x1b[2J\x1b]0;title\x1b\\", "\\x1b[2J\\x1b]0;title\\x1b\\"),
        ("tab\there\nnew\rret", "tab\\there\\nnew\\rret"),
        ("\0\x7f", "\\x00\\x7f"),
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("evil\u202egpj.exe", "evil\\u202egpj.exe"),  # right-to-left override
        ("\u2066iso\u2069\u200f", "\\u2066iso\\u2069\\u200f"),  # isolates, RLM
        ("line\u2028sep", "line\\u2028sep"),
        ("\U000e0041tag", "\\U000e0041tag"),  # tag characters hide text
        ("lone\udc80", "lone\\udc80"),
    ],
)
def test_escape_for_terminal(raw: str, shown: str) -> None:
    assert escape_for_terminal(raw) == shown


def test_escape_keeps_newlines_of_multi_line_text_only_when_asked() -> None:
    text = "#0 main ()\n#1 \x1b]52;c;eA==\x07 at /tmp/x\n"
    assert escape_for_terminal(text, keep_newlines=True) == (
        "#0 main ()\n#1 \\x1b]52;c;eA==\\a at /tmp/x\n"
    )
    assert "\n" not in escape_for_terminal(text)


@PROPERTY
@given(st.text())
def test_escaped_text_is_all_printable(text: str) -> None:
    assert escape_for_terminal(text).isprintable()
    multi = escape_for_terminal(text, keep_newlines=True)
    assert all(line.isprintable() for line in multi.split("\n"))
    assert multi.count("\n") == text.count("\n")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("", True),
        ("/usr/bin/\x1b[31mred", True),  # legal in D-Bus; escaped when printed
        ("a\0b", False),
        ("\ud800", False),
        ("x\udfffy", False),
        ("\U0001f600", True),
    ],
)
def test_dbus_string_ok(text: str, ok: bool) -> None:
    assert dbus_string_ok(text) is ok


@PROPERTY
@given(st.text())
def test_dbus_string_ok_is_utf8_without_nul(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        encodable = False
    else:
        encodable = True
    assert dbus_string_ok(text) is (encodable and "\0" not in text)


@PROPERTY
@given(st.text())
def test_clean_text_is_a_dbus_string_without_controls_but_tab_and_newline(text: str) -> None:
    cleaned = clean_text(text)
    assert dbus_string_ok(cleaned)
    assert len(cleaned) == len(text)
    for before, after in zip(text, cleaned, strict=True):
        control = (before < " " and before not in "\t\n") or "\x7f" <= before <= "\x9f"
        surrogate = "\ud800" <= before <= "\udfff"
        assert after == (REPLACEMENT if control or surrogate else before)
