"""Text from untrusted sources: what D-Bus can carry, and what a terminal may be shown.

Journal fields, KCrash files and gdb output are written by whoever crashed (or, in a journal
directory, whoever uploaded). Two rules follow, both pure functions here:

* every string in a record must be a valid D-Bus string — valid UTF-8 without NUL (the
  specification's rule; dbus-daemon drops a connection that sends anything else, and our own
  marshalling does not check). :func:`dbus_string_ok` tests it, :func:`clean_text` makes free text
  satisfy it;
* a terminal must never receive control characters from that text (an OSC 52 sequence writes the
  clipboard, others retitle the window or hide lines): :func:`escape_for_terminal`, as systemd's
  tools escape what they print.
"""

from __future__ import annotations

import re

U32_MAX = 2**32 - 1  # D-Bus 'u'
# D-Bus 't' holds 2**64 - 1, but the store keeps timestamps as SQLite INTEGERs (signed 64-bit).
TIMESTAMP_LIMIT = 2**63

_SURROGATE = re.compile("[\ud800-\udfff]")
# What free text may not keep: NUL (no D-Bus string holds it), the other C0 controls but tab and
# newline, DEL and the C1 controls (0x9b is a CSI on terminals that take 8-bit controls), and
# lone surrogates (no UTF-8 holds them).
_UNCLEAN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
}
REPLACEMENT = "\ufffd"


def dbus_string_ok(text: str) -> bool:
    """True when ``text`` can be sent as a D-Bus string: no NUL, and UTF-8-encodable (no lone
    surrogates, which a JSON ``\\ud800`` escape or ``surrogateescape`` decoding can produce)."""
    if "\0" in text:
        return False
    return text.isascii() or _SURROGATE.search(text) is None


def clean_text(text: str) -> str:
    """Free text made a valid D-Bus string with no control characters but tab and newline:
    each other one becomes U+FFFD (so a reader sees that something was there)."""
    if text.isprintable():  # the common case, at C speed
        return text
    return _UNCLEAN.sub(REPLACEMENT, text)


def _escape_char(ch: str) -> str:
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_for_terminal(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every non-printable character written as an escape (``\\x1b``, ``\\n``,
    ``\\u202e``), like systemd's ``cescape``: C0 and C1 controls, ESC, DEL, bidi overrides and
    isolates (format characters, which reorder what the terminal shows), line and paragraph
    separators, lone surrogates, private-use and unassigned code points. Printable text,
    including non-ASCII letters and the space, is left as it is; so is the backslash (the
    result is for eyes, not to be parsed back).

    Args:
        text: untrusted text (a path, a hostname, gdb output).
        keep_newlines: leave ``\\n`` alone, for multi-line text such as a backtrace.
    """
    if text.isprintable():
        return text
    if keep_newlines:
        return "\n".join(escape_for_terminal(line) for line in text.split("\n"))
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)
