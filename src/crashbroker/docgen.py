"""Man pages and shell completions generated from an ``argparse`` parser (pure: a parser in,
text out). ``crashbroker install`` writes them (docs/operations.md), so they always describe the
options of the code that is installed.

An action may carry ``complete`` (``"crash-id"``, ``"file"``, ``"dir"``) to say what its value
is (cli.py sets it, without importing this module: only ``install`` needs it); a
``pathlib.Path`` type means a file (a ``DIR`` metavar a directory), choices complete as
themselves.

argparse keeps its actions and sub-parsers in attributes without a public accessor
(``_actions``, ``_SubParsersAction``); argparse-manpage and shtab read the same ones.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# How the shells list crash ids: the first column of the table.
CRASH_IDS_COMMAND = "crashbroker list --all --no-legend --no-pager 2>/dev/null | cut -d' ' -f1"


@dataclass(frozen=True, slots=True)
class Section:
    """An extra man page section: a title and paragraphs (plain text)."""

    title: str
    paragraphs: tuple[str, ...]


# ---- reading the parser ----------------------------------------------------------------------


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each sub-command, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % {**vars(action), "prog": prog}
    return text.replace("%%", "%")


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices is not None:
        return "|".join(str(c) for c in action.choices)
    return action.dest.upper() if action.option_strings else action.dest


def completes(action: argparse.Action) -> str:
    """What a value of ``action`` is: "choices", "crash-id", "file", "dir" or "" (anything)."""
    explicit = getattr(action, "complete", None)
    if isinstance(explicit, str):
        return explicit
    if action.choices is not None:
        return "choices"
    if action.type is Path:
        return "dir" if action.metavar == "DIR" or action.dest.endswith("dir") else "file"
    return ""


# ---- roff ------------------------------------------------------------------------------------


def _roff(text: str) -> str:
    """Plain text as roff: backslashes, hyphens, leading dots and non-ASCII escaped."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    out = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in out)
    return re.sub(r"(?m)^([.'])", r"\\&\1", out)


def _option_heading(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{_roff(s)}\\fR" for s in action.option_strings)
    if not _takes_value(action):
        return names
    meta = f"\\fI{_roff(_metavar(action))}\\fR"
    if action.nargs == "?":
        return f"{names}[={meta}]"
    return f"{names} {meta}"


def _usage_line(prog: str, parser: argparse.ArgumentParser) -> str:
    words = [f"\\fB{_roff(prog)}\\fR"]
    if _options(parser):
        words.append("[\\fIOPTIONS\\fR]")
    for p in _positionals(parser):
        meta = f"\\fI{_roff(_metavar(p).upper())}\\fR"
        if p.nargs in ("*", "?"):
            words.append(f"[{meta}{'...' if p.nargs == '*' else ''}]")
        elif p.nargs == "+":
            words.append(f"{meta}...")
        else:
            words.append(meta)
    return " ".join(words)


def _option_list(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    lines: list[str] = []
    for p in _positionals(parser):
        if p.help:
            lines += [".TP", f"\\fI{_roff(_metavar(p).upper())}\\fR", _roff(_help(p, prog))]
    for action in _options(parser):
        lines += [".TP", _option_heading(action)]
        lines.append(_roff(_help(action, prog)) or ".")
    return [line for line in lines if line != "."]


def man_page(
    parser: argparse.ArgumentParser,
    *,
    section: int,
    version: str,
    summary: str,
    sections: Sequence[Section] = (),
) -> str:
    """A man(7) page of ``parser`` and its sub-commands, with ``sections`` after them."""
    prog = parser.prog
    lines = [
        f'.\\" Generated by crashbroker.docgen from the argument parser of {prog}.',
        f'.TH "{prog.upper()}" "{section}" "" "crashbroker {version}" "crashbroker"',
        ".SH NAME",
        f"{_roff(prog)} \\- {_roff(summary)}",
        ".SH SYNOPSIS",
    ]
    subs = subcommands(parser)
    if subs:
        lines.append(f"\\fB{_roff(prog)}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]")
        for name, _, sub in subs:
            lines += [".br", _usage_line(f"{prog} {name}", sub)]
    else:
        lines.append(_usage_line(prog, parser))
    lines += [".SH DESCRIPTION", _roff(parser.description or summary)]
    if _options(parser):
        lines.append(".SH OPTIONS")
        lines += _option_list(parser, prog)
    if subs:
        lines.append(".SH COMMANDS")
        for name, help_text, sub in subs:
            lines += [".SS " + _usage_line(f"{prog} {name}", sub).replace('"', "")]
            if help_text:
                lines.append(_roff(help_text[0].upper() + help_text[1:] + "."))
            if sub.description:
                lines += [".PP", _roff(sub.description)]
            lines += _option_list(sub, f"{prog} {name}")
    for extra in sections:
        lines.append(f".SH {_roff(extra.title.upper())}")
        for i, paragraph in enumerate(extra.paragraphs):
            if i:
                lines.append(".PP")
            lines.append(_roff(paragraph))
    return "\n".join(lines) + "\n"


# ---- bash ------------------------------------------------------------------------------------


def _bash_value_case(parser: argparse.ArgumentParser, indent: str) -> list[str]:
    """``case $prev`` arms completing the values of ``parser``'s options."""
    arms: list[str] = []
    for action in _options(parser):
        if not _takes_value(action) or action.nargs == "?":
            continue
        names = "|".join(action.option_strings)
        kind = completes(action)
        if kind == "choices":
            words = " ".join(str(c) for c in action.choices or ())
            body = f'COMPREPLY=($(compgen -W "{words}" -- "$cur"))'
        elif kind == "file":
            body = 'COMPREPLY=($(compgen -f -- "$cur"))'
        elif kind == "dir":
            body = 'COMPREPLY=($(compgen -d -- "$cur"))'
        else:
            body = "COMPREPLY=()"
        arms.append(f"{indent}{names}) {body}; return ;;")
    return arms


def _bash_words(parser: argparse.ArgumentParser) -> str:
    words = []
    for action in _options(parser):
        for s in action.option_strings:
            words.append(f"{s}=" if action.nargs == "?" and s.startswith("--") else s)
    return " ".join(words)


def _bash_optional_values(parser: argparse.ArgumentParser, indent: str) -> list[str]:
    arms = []
    for action in _options(parser):
        if action.nargs == "?" and action.choices is not None:
            long = [s for s in action.option_strings if s.startswith("--")]
            for s in long:
                words = " ".join(f"{s}={c}" for c in action.choices)
                arms.append(
                    f'{indent}{s}=*) COMPREPLY=($(compgen -W "{words}" -- "$cur")); return ;;'
                )
    return arms


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser`` (its sub-commands, options and their values)."""
    prog = parser.prog
    fn = "_" + re.sub(r"\W", "_", prog)
    subs = subcommands(parser)
    global_values = [a for a in _options(parser) if _takes_value(a)]
    skip = "|".join(s for a in global_values for s in a.option_strings)
    lines = [
        f"# bash completion for {prog}; generated by crashbroker.docgen from its argument parser.",
        f"{fn}_crash_ids() {{",
        f"    {CRASH_IDS_COMMAND}",
        "}",
        f"{fn}() {{",
        "    local cur prev words cword",
        "    if declare -F _init_completion >/dev/null; then",
        "        _init_completion -n = || return",
        "    else",
        "        cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}",
        '        words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD',
        "    fi",
        '    local i cmd="" npos=0',
        "    for ((i = 1; i < cword; i++)); do",
        "        case ${words[i]} in",
        *([f"            {skip}) ((i++)) ;;"] if skip else []),
        "            -*) ;;",
        "            *) if [[ -z $cmd ]]; then cmd=${words[i]}; else ((npos++)); fi ;;",
        "        esac",
        "    done",
        "    case $cmd in",
    ]
    commands = " ".join(name for name, _, _ in subs)
    lines += [
        '        "")',
        "            case $prev in",
        *_bash_value_case(parser, "                "),
        "            esac",
        "            if [[ $cur == -* ]]; then",
        f'                COMPREPLY=($(compgen -W "{_bash_words(parser)}" -- "$cur"))',
        "            else",
        f'                COMPREPLY=($(compgen -W "{commands}" -- "$cur"))',
        "            fi",
        "            ;;",
    ]
    for name, _, sub in subs:
        positional = _positionals(sub)
        pos_kind = completes(positional[0]) if positional else ""
        if pos_kind == "crash-id":
            pos_body = f'COMPREPLY=($(compgen -W "$({fn}_crash_ids)" -- "$cur"))'
        elif pos_kind in ("file", "dir"):
            pos_body = f'COMPREPLY=($(compgen -{pos_kind[0]} -- "$cur"))'
        else:
            pos_body = "COMPREPLY=()"
        lines += [
            f"        {name})",
            "            case $prev in",
            *_bash_value_case(sub, "                "),
            "            esac",
            "            case $cur in",
            *_bash_optional_values(sub, "                "),
            f'                -*) COMPREPLY=($(compgen -W "{_bash_words(sub)}" -- "$cur")) ;;',
            f"                *) {pos_body} ;;",
            "            esac",
            "            ;;",
        ]
    lines += [
        "    esac",
        "    [[ ${COMPREPLY-} == *= ]] && compopt -o nospace 2>/dev/null",
        "    return 0",
        "}",
        f"complete -F {fn} {prog}",
    ]
    return "\n".join(lines) + "\n"


# ---- zsh -------------------------------------------------------------------------------------


def _zq(text: str) -> str:
    """Inside a single-quoted ``_arguments`` spec: quotes and brackets escaped."""
    text = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return text.replace("'", "'\\''")


def _zsh_action(action: argparse.Action, fn: str) -> str:
    kind = completes(action)
    if kind == "choices":
        return f"({' '.join(_zq(str(c)) for c in action.choices or ())})"
    if kind == "file":
        return "_files"
    if kind == "dir":
        return "_files -/"
    if kind == "crash-id":
        return f"{fn}_crash_ids"
    return " "


def _zsh_value(action: argparse.Action, fn: str) -> str:
    meta = _zq(_metavar(action).lower()).replace(":", "\\:")
    return f":{meta}:{_zsh_action(action, fn)}"


def _zsh_specs(parser: argparse.ArgumentParser, fn: str) -> list[str]:
    specs: list[str] = []
    for action in _options(parser):
        desc = _zq(_help(action, parser.prog).split(". ")[0])
        names = action.option_strings
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            excl = "(- *)"
        else:
            excl = f"({' '.join(names)})" if len(names) > 1 else ""
        if not _takes_value(action):
            forms = [f"{n}[{desc}]" for n in names]
        elif action.nargs == "?":
            forms = [f"{n}=-[{desc}]{_zsh_value(action, fn)}" for n in names if n.startswith("--")]
        else:
            forms = [
                f"{n}{'=' if n.startswith('--') else '+'}[{desc}]{_zsh_value(action, fn)}"
                for n in names
            ]
        specs += [f"'{excl}{form}'" for form in forms]
    for p in _positionals(parser):
        prefix = "*" if p.nargs in ("*", "+") else ""
        optional = ":" if p.nargs == "?" else ""
        meta = _zq(_metavar(p)).replace(":", "\\:")
        specs.append(f"'{prefix}{optional}:{meta}:{_zsh_action(p, fn)}'")
    return specs


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    """A zsh completion function file (``_prog``, ``#compdef prog``) for ``parser``."""
    prog = parser.prog
    fn = "_" + re.sub(r"\W", "_", prog)
    subs = subcommands(parser)
    lines = [
        f"#compdef {prog}",
        f"# zsh completion for {prog}; generated by crashbroker.docgen from its argument parser.",
        "",
        f"{fn}_crash_ids() {{",
        "    local -a ids",
        f'    ids=(${{(f)"$({CRASH_IDS_COMMAND})"}})',
        "    _wanted crash-ids expl 'crash id' compadd -a ids",
        "}",
        "",
        f"{fn}() {{",
        '    local curcontext="$curcontext" state line ret=1',
        "    typeset -A opt_args",
    ]
    top = _zsh_specs(parser, fn)
    if not subs:
        lines += ["    _arguments -s \\", *(f"        {s} \\" for s in top), "        && ret=0"]
        lines += ["    return ret", "}", "", f'{fn} "$@"']
        return "\n".join(lines) + "\n"
    lines += [
        "    _arguments -C \\",
        *(f"        {s} \\" for s in top),
        "        ':command:->command' \\",
        "        '*::argument:->argument' && ret=0",
        "    case $state in",
        "        command)",
        "            local -a commands",
        "            commands=(",
        *(f"                '{_zq(name)}:{_zq(h)}'" for name, h, _ in subs),
        "            )",
        "            _describe -t commands command commands && ret=0",
        "            ;;",
        "        argument)",
        '            curcontext="${curcontext%:*:*}:' + prog + '-$words[1]:"',
        "            case $words[1] in",
    ]
    for name, _, sub in subs:
        specs = _zsh_specs(sub, fn)
        lines.append(f"                {name})")
        lines.append("                    _arguments -s \\")
        lines += [f"                        {s} \\" for s in specs]
        lines += ["                        && ret=0", "                    ;;"]
    lines += [
        "            esac",
        "            ;;",
        "    esac",
        "    return ret",
        "}",
        "",
        f'{fn} "$@"',
    ]
    return "\n".join(lines) + "\n"
