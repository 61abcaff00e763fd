"""The ``crashbroker`` command: the daemon, and a client of its session-bus interface.

Exit codes: 0 success; 1 the request failed (e.g. no such crash); 2 usage error; 3 the daemon
is not on the bus (or there is no session bus).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import io
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from dbus_fast import Variant

from crashbroker import __version__
from crashbroker.adapters.dbus_names import BUS_NAME
from crashbroker.client import BACKTRACE_WAIT_S, BrokerClient, ClientError, connect_bus
from crashbroker.domain.cursor import CatchUp
from crashbroker.domain.matches import MatchError, parse_matches
from crashbroker.domain.text import escape_for_terminal

if TYPE_CHECKING:  # imported only when install runs (start-up of every command)
    from crashbroker.ops.install import Result

# Every command starts by importing this module: what only some commands use (json: --json and
# watch; timespec and datetime: -S/-U; the daemon, install, cleanup, doctor, the pager) is
# imported where it is used. tests/test_cli_imports.py keeps them out.

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3


def _fmt_time(usec: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(usec / 1_000_000))


# Everything printed for people goes through escape_for_terminal: exe paths, hostnames, command
# lines, KCrash values and gdb output come from whoever crashed (or uploaded the entry), and an
# escape sequence in them would reach the terminal (OSC 52 writes the clipboard). JSON output
# stays exact: json.dumps escapes control characters itself.


def print_table(crashes: list[dict[str, Any]], out: TextIO, *, legend: bool = True) -> None:
    """The crashes as columns; ``legend``: with the header line (and "No crashes.")."""
    if not crashes:
        if legend:
            print("No crashes.", file=out)
        return
    # A fleet's list (crashes of more than one machine) says whose each crash is.
    fleet = len({c.get("machine_id", "") for c in crashes}) > 1
    rows: list[tuple[str, ...]] = [
        (
            "ID",
            "TIME",
            *(("HOST",) if fleet else ()),
            "PID",
            "SIGNAL",
            "APP",
            "EXE",
            "STATE",
            "KCRASH",
        )
    ]
    for c in crashes:
        row = (
            c["id"],
            _fmt_time(c["timestamp"]),
            *((c.get("hostname") or c.get("machine_id", "")[:12],) if fleet else ()),
            str(c["pid"]),
            c["signal_name"],
            c["app_name"],
            c["exe"],
            c["state"] + (" (past)" if c["past"] else ""),
            "yes" if c["kcrash_source"] else "-",
        )
        rows.append(tuple(escape_for_terminal(v) for v in row))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows if legend else rows[1:]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=out)


def print_crash(c: dict[str, Any], out: TextIO) -> None:
    lines = [
        ("Crash", c["id"]),
        ("Application", c["app_name"]),
        ("Executable", c["exe"]),
        ("Command line", c["cmdline"]),
        ("PID / UID", f"{c['pid']} / {c['uid']}"),
        ("Signal", f"{c['signal']} ({c['signal_name']})"),
        ("Time", _fmt_time(c["timestamp"])),
        ("Boot", c["boot_id"]),
        ("Host", c["hostname"]),
        ("Unit", c["unit"] or c["user_unit"] or "-"),
        ("Core", c["core_filename"] or ("in the journal" if c["core_available"] else "none")),
        ("State", c["state"] + (f" by {c['claimed_by']}" if c["claimed_by"] else "")),
        ("Signature", f"{c['signature']} (seen {c['occurrences']}x)"),
        ("Bug address", c["bug_address"] or "-"),
        ("Journal cursor", c["journal_cursor"]),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k.rjust(width)}: {escape_for_terminal(v)}", file=out)
    if c["kcrash"]:
        # KF5 (v1 files) never writes [KCrashComplete]; only a v2 file without it is incomplete.
        incomplete = not c["kcrash_complete"] and c["kcrash_source"] == "kcrash-v2"
        source = c["kcrash_source"] + (", incomplete" if incomplete else "")
        path = escape_for_terminal(c["metadata_path"])
        print(f"{'KCrash'.rjust(width)}: ({source}) {path}", file=out)
        for k, v in sorted(c["kcrash"].items()):
            filled = " (from journal)" if k in c["kcrash_filled"] else ""
            pair = escape_for_terminal(f"{k}={v}")
            print(f"{'':>{width}}  {pair}{filled}", file=out)


async def client_main(args: argparse.Namespace) -> int:
    try:
        bus = await connect_bus(args.bus_address)
    except Exception as exc:  # any reason we cannot reach a bus means the same to a user
        print(f"crashbroker: cannot connect to the session bus: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    client = BrokerClient(bus)
    try:
        return int(await args.handler(client, args))
    except ClientError as exc:
        if exc.not_running:
            print(
                f"crashbroker: the daemon is not running ({BUS_NAME} has no owner on the "
                "session bus). Start it with 'crashbroker daemon' or "
                "'systemctl --user start crashbroker'.",
                file=sys.stderr,
            )
            return EXIT_NO_DAEMON
        print(f"crashbroker: {exc.short_name}: {exc.text}", file=sys.stderr)
        return EXIT_USAGE if exc.short_name == "InvalidArgs" else EXIT_FAILED
    finally:
        bus.disconnect()


def _print_json(value: Any, out: TextIO | None = None, mode: str = "short") -> None:
    """``--json=short`` (one line) or ``--json=pretty`` (indented), as systemd's tools."""
    import json

    # dumps, not dump: json.dump feeds the file from the pure-Python encoder, 3x slower.
    text = json.dumps(value, indent=2) if mode == "pretty" else json.dumps(value)
    (out or sys.stdout).write(text + "\n")


async def cmd_list(client: BrokerClient, args: argparse.Namespace) -> int:
    """The matching crashes, asked for in pages (:meth:`BrokerClient.list_all`): not a
    snapshot, as crashes arriving or dismissed while it pages shift the pages."""
    try:
        matches = parse_matches(args.matches)
    except MatchError as exc:
        print(f"crashbroker list: {exc}", file=sys.stderr)
        return EXIT_USAGE
    server = matches.server_filter()
    # An option and a match on the same key: the option goes to the daemon, the match is
    # checked here.
    given = {"exe": args.exe, "state": args.state, "machine": args.machine}
    by_client = matches.client_side or any(given[k] for k in server)
    flt: dict[str, Variant] = {}
    if args.all or matches.wants_dismissed:
        flt["include_dismissed"] = Variant("b", True)
    for key in ("exe", "machine", "state"):
        value = given[key] or server.get(key)
        if value:
            flt[key] = Variant("s", value)
    if args.since is not None:
        flt["since"] = Variant("t", max(args.since, 0))
    if args.until is not None:
        flt["until"] = Variant("t", max(args.until, 0))
    if args.full or matches.full:
        flt["full"] = Variant("b", True)
    # A match checked here needs every crash the daemon selects: the limit comes after it.
    want = None if by_client else args.limit or None
    crashes = await client.list_all(want, **flt)
    if matches.fields:
        crashes = [c for c in crashes if matches.accepts(c)]
    if args.limit:
        crashes = crashes[: args.limit]  # the newest N, whatever order they are shown in
    if args.reverse:
        crashes.reverse()
    if args.json:
        _print_json(crashes, args.out, args.json)
    else:
        print_table(crashes, args.out, legend=not args.no_legend)
    return EXIT_OK


async def cmd_show(client: BrokerClient, args: argparse.Namespace) -> int:
    crash = await client.get_crash(await client.resolve(args.id))
    if args.json:
        _print_json(crash, args.out, args.json)
    else:
        print_crash(crash, args.out)
    return EXIT_OK


async def cmd_dismiss(client: BrokerClient, args: argparse.Namespace) -> int:
    if args.all:
        await client.call("DismissAll")
        return EXIT_OK
    if not args.ids:
        print("crashbroker dismiss: give crash ids or --all", file=sys.stderr)
        return EXIT_USAGE
    for raw in args.ids:
        await client.dismiss(await client.resolve(raw))
    return EXIT_OK


async def cmd_backtrace(client: BrokerClient, args: argparse.Namespace) -> int:
    crash_id = await client.resolve(args.id)
    crash = await client.get_crash(crash_id)
    # Requests it and waits for the daemon's CrashUpdated: no call waits on gdb (a bus call
    # times out after 25 s; gdb may take up to the daemon's --backtrace-timeout).
    call = asyncio.ensure_future(client.backtrace(crash_id, wait_s=args.timeout))
    exe = escape_for_terminal(crash["exe"])
    if not crash["backtrace_available"] and sys.stderr.isatty():
        await _progress(call, f"crashbroker: running gdb on the core of {exe}")
    elif not crash["backtrace_available"]:
        print(f"crashbroker: running gdb on the core of {exe}…", file=sys.stderr)
    text = await call
    if args.json:
        _print_json({"id": crash_id, "backtrace": text}, args.out, args.json)
    else:
        text = escape_for_terminal(text.removesuffix("\n"), keep_newlines=True)
        args.out.write(text + "\n")
    return EXIT_OK


async def _progress(work: asyncio.Future[Any], label: str) -> None:
    """A spinner with elapsed seconds on the terminal until ``work`` is done."""
    started = time.monotonic()
    frames = "|/-\\"
    i = 0
    while not work.done():
        elapsed = time.monotonic() - started
        sys.stderr.write(f"\r{label} {frames[i % 4]} {elapsed:4.0f} s")
        sys.stderr.flush()
        i += 1
        await asyncio.wait([work], timeout=0.25)
    sys.stderr.write("\r\033[K")
    sys.stderr.flush()


async def cmd_stats(client: BrokerClient, args: argparse.Namespace) -> int:
    stats = await client.call("GetStats")
    if args.json:
        _print_json(stats)
    else:
        for k, v in stats.items():
            print(f"{k}: {v}")
    return EXIT_OK


async def cmd_watch(client: BrokerClient, args: argparse.Namespace) -> int:
    """Print one JSON line per signal until interrupted, the bus goes, or ``--count`` lines."""
    import json

    await client.subscribe()
    if not args.quiet:
        if not await client.daemon_running():
            print(f"crashbroker: waiting for {BUS_NAME} to appear…", file=sys.stderr)
        # Printed once the match rule is in place: from here on no signal is missed.
        print(f"crashbroker: watching {BUS_NAME} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    async def pump() -> None:
        seen = 0
        async for event in client.events():
            line: dict[str, Any] = {"signal": _SIGNALS[event.kind], "id": event.crash_id}
            if event.kind == "detected":
                line["crash"] = event.data
            elif event.kind == "updated":
                line["changed"] = event.data
            print(json.dumps(line), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                return

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks = [
        asyncio.ensure_future(pump()),
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(client.bus.wait_for_disconnect()),  # type: ignore[no-untyped-call]
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return EXIT_FAILED if tasks[2] in done else EXIT_OK


_SIGNALS = {"detected": "CrashDetected", "updated": "CrashUpdated", "removed": "CrashRemoved"}


class _Parser(argparse.ArgumentParser):
    """argparse, taking option values as systemd's getopt does: ``-S -1h`` (a value that
    starts with a dash) and ``--json`` without a value before a match (``--json kronometer``)."""

    def _parse_known_args(
        self, arg_strings: list[str], *rest: Any, **kw: Any
    ) -> tuple[argparse.Namespace, list[str]]:
        return super()._parse_known_args(self._getopt_style(arg_strings), *rest, **kw)

    def _getopt_style(self, args: list[str]) -> list[str]:
        known = self._option_string_actions
        out: list[str] = []
        i = 0
        while i < len(args):
            arg, nxt = args[i], args[i + 1] if i + 1 < len(args) else None
            action = known.get(arg)
            if arg == "--":
                out += args[i:]
                break
            if action is not None and action.nargs == "?" and action.choices is not None:
                if nxt not in action.choices:  # a bare --json: its default, not the next word
                    arg = f"{arg}={action.const}"
            elif (
                action is not None
                and action.nargs is None
                and nxt is not None
                and nxt.startswith("-")
                and nxt not in known
            ):
                arg, i = f"{arg}={nxt}", i + 1
            out.append(arg)
            i += 1
        return out


def _timespec(text: str) -> int:
    """-S/-U: a time specification (domain/timespec.py) as µs since the epoch."""
    from datetime import datetime

    from crashbroker.domain.timespec import TimeSpecError, parse_timestamp

    try:
        return parse_timestamp(text, datetime.now().astimezone())
    except TimeSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _complete(action: argparse.Action, kind: str) -> argparse.Action:
    """Mark what ``action``'s value is (``"crash-id"``, ``"file"``, ``"dir"``) for the shell
    completions (docgen.completes reads it; docgen itself is for install only)."""
    action.complete = kind  # type: ignore[attr-defined]
    return action


def _paging_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        nargs="?",
        const="short",
        choices=("short", "pretty"),
        help="JSON for scripts: short (one line; what a bare --json gives) or pretty (indented)",
    )
    p.add_argument("--no-pager", action="store_true", help="do not pipe the output into a pager")
    p.set_defaults(paged=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crashbroker", description="Crash feed on the session bus (org.kde.crashbroker1)."
    )
    parser.add_argument("--version", action="version", version=f"crashbroker {__version__}")
    parser.add_argument("--bus-address", help="D-Bus address (default: the session bus)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("daemon", help="run the broker")
    d.add_argument("--journal-dir", type=Path, help="follow journal files in this directory")
    d.add_argument("--state-dir", type=Path, help="default: $XDG_STATE_HOME/crashbroker")
    d.add_argument("--cache-home", type=Path, help="KCrash's cache home (default: $XDG_CACHE_HOME)")
    d.add_argument(
        "--catch-up",
        type=CatchUp,
        choices=list(CatchUp),
        help="first start: index this boot (default for the local journal), all, or none",
    )
    d.add_argument("--all-users", action="store_true", help="publish every user's crashes")
    d.add_argument("--grace-ms", type=int, help="wait this long for KCrash metadata (default 1000)")
    d.add_argument(
        "--loop-threshold", type=int, help="crashes of one program that make a loop (default 3)"
    )
    d.add_argument(
        "--loop-window", type=float, metavar="SECONDS", help="the loop window (default 60)"
    )
    d.add_argument(
        "--backtrace-timeout", type=float, metavar="SECONDS", help="per backtrace (default 120)"
    )
    d.add_argument(
        "--hint-core-dir",
        type=Path,
        metavar="DIR",
        help="watch DIR for new cores, a hint to read the journal at once "
        "(default /var/lib/systemd/coredump; trust still needs cores there)",
    )
    d.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    ls = sub.add_parser(
        "list",
        help="list crashes, newest first",
        description="MATCH is a PID (a number), an executable (an absolute path), a program "
        "name (comm, application name or the executable's basename) or FIELD=VALUE on a record "
        "key (pid, uid, signal_name, exe, comm, unit, user_unit, hostname, machine_id, boot_id, "
        "state, ...; COREDUMP_PID= and other journal field names work too). Matches on one "
        "field are alternatives, matches on different fields must all hold. TIME is "
        "YYYY-MM-DD [HH:MM[:SS]], HH:MM[:SS], today, yesterday, now, -1h, +30min, '2d ago', "
        "@EPOCH, or a number of seconds ago.",
    )
    ls.add_argument(
        "matches", nargs="*", metavar="MATCH", help="PID, /path/of/exe, program or FIELD=VALUE"
    )
    _paging_options(ls)
    ls.add_argument("--all", action="store_true", help="include dismissed crashes")
    ls.add_argument("--exe", help="only this executable (path or basename)")
    ls.add_argument("--machine", help="only this machine (machine id or hostname; fleet mode)")
    ls.add_argument("--state", choices=["new", "claimed", "dismissed"], help="only this state")
    ls.add_argument("-S", "--since", type=_timespec, metavar="TIME", help="crashes from TIME on")
    ls.add_argument("-U", "--until", type=_timespec, metavar="TIME", help="crashes up to TIME")
    ls.add_argument("-n", "--limit", type=int, metavar="N", help="only the newest N crashes")
    ls.add_argument("-1", dest="limit", action="store_const", const=1, help="only the newest crash")
    ls.add_argument("-r", "--reverse", action="store_true", help="oldest first")
    ls.add_argument("--no-legend", action="store_true", help="no header line")
    ls.add_argument("--full", action="store_true", help="every key of each crash (as show)")
    ls.set_defaults(handler=cmd_list)

    sh = sub.add_parser("show", help="show one crash")
    _complete(sh.add_argument("id", help="crash id (a unique prefix is enough)"), "crash-id")
    _paging_options(sh)
    sh.set_defaults(handler=cmd_show)

    w = sub.add_parser("watch", help="print one JSON line per crash signal")
    w.add_argument("--count", type=int, default=0, help="exit after this many signals")
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(handler=cmd_watch)

    dm = sub.add_parser("dismiss", help="dismiss crashes (removes their KCrash files)")
    _complete(dm.add_argument("ids", nargs="*", metavar="ID", help="crash ids"), "crash-id")
    dm.add_argument("--all", action="store_true")
    dm.set_defaults(handler=cmd_dismiss)

    bt = sub.add_parser("backtrace", help="print a crash's backtrace (gdb, cached)")
    _complete(bt.add_argument("id", help="crash id (a unique prefix is enough)"), "crash-id")
    _paging_options(bt)
    bt.add_argument(
        "--timeout",
        type=float,
        default=BACKTRACE_WAIT_S,
        metavar="SECONDS",
        help=f"how long to wait for gdb (default {BACKTRACE_WAIT_S:g})",
    )
    bt.set_defaults(handler=cmd_backtrace)

    ins = sub.add_parser(
        "install", help="install the user units, the D-Bus activation file and the desktop files"
    )
    ins.add_argument("--bindir", type=Path, help="where the crashbroker commands are")
    ins.add_argument(
        "--system",
        action="store_true",
        help="a distribution's layout under DESTDIR/PREFIX (lib/systemd/user, share/dbus-1, "
        "share/applications, share/knotifications{5,6}, libexec) instead of the user's",
    )
    ins.add_argument("--prefix", type=Path, default=Path("/usr"), help="--system: default /usr")
    ins.add_argument("--destdir", type=Path, help="--system: staging root for a package build")
    ins.add_argument("--uninstall", action="store_true")
    ins.add_argument("--force", action="store_true", help="replace files crashbroker did not write")
    ins.add_argument(
        "--kcrash-dump-only",
        action="store_true",
        help="also write ~/.config/environment.d/60-crashbroker-kcrash.conf (KCRASH_DUMP_ONLY=1), "
        "so KF5 apps dump core instead of starting DrKonqi themselves and their crashes reach "
        "the feed",
    )

    cl = sub.add_parser("cleanup", help="remove old KCrash metadata and forget old crashes")
    cl.add_argument("--max-age-days", type=float, default=7.0, help="KCrash INIs (default 7)")
    cl.add_argument(
        "--expire-days", type=float, default=30.0, help="crash records, DrKonqi records (30)"
    )
    cl.add_argument("--dry-run", action="store_true")
    cl.add_argument("--json", action="store_true")
    cl.add_argument("--cache-home", type=Path, help="default: $XDG_CACHE_HOME")

    doc = sub.add_parser("doctor", help="check that crashes can reach crashbroker")
    doc.add_argument("--json", action="store_true")

    st = sub.add_parser("stats", help="the daemon's counters (forged entries dropped, ...)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler=cmd_stats)
    return parser


def cmd_install(args: argparse.Namespace) -> int:
    from crashbroker.ops import install as ops

    if args.system:
        return _install_system(args)
    targets = ops.Targets.from_env(os.environ)
    try:
        if args.uninstall:
            result = ops.uninstall(targets, force=args.force)
            for path in result.removed:
                print(f"removed {path}")
            return EXIT_OK
        result = ops.install(
            targets,
            args.bindir or ops.default_bindir(),
            force=args.force,
            kcrash_dump_only=args.kcrash_dump_only,
        )
    except ops.InstallError as exc:
        print(f"crashbroker install: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print_installed(result)
    print(
        "next: systemctl --user daemon-reload && systemctl --user enable --now "
        "crashbroker crashbroker-notifier crashbroker-launcher crashbroker-cleanup.timer"
    )
    if targets.zsh_functions is not None:
        # zsh has no per-user completion directory in its default $fpath.
        print(f"zsh: add fpath=({targets.zsh_functions} $fpath) to ~/.zshrc before compinit")
    _kcrash_advice(targets.kcrash_dropin, dropin_written=args.kcrash_dump_only)
    return EXIT_OK


def _print_installed(result: Result) -> None:
    """What ``install`` wrote and left as it was, a line per file."""
    for path in result.written:
        print(f"wrote {path}")
    for path in result.unchanged:
        print(f"unchanged {path}")


def _install_system(args: argparse.Namespace) -> int:
    """``install --system``: the distribution layout, for a package (docs/operations.md)."""
    from crashbroker.ops import install as ops

    if args.uninstall or args.kcrash_dump_only:
        print("crashbroker install: --system takes no --uninstall or --kcrash-dump-only "
              "(the package manager removes what it installed)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    if not args.prefix.is_absolute():
        print("crashbroker install: --prefix must be absolute", file=sys.stderr)
        return EXIT_USAGE
    targets = ops.Targets.system(args.prefix, args.destdir)
    try:
        result = ops.install(
            targets, args.bindir or args.prefix / "bin", libexecdir=args.prefix / "libexec"
        )
    except ops.InstallError as exc:
        print(f"crashbroker install: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print_installed(result)
    return EXIT_OK


def _kcrash_advice(dropin: Path, *, dropin_written: bool) -> None:
    """What KF5's KCrash means for this user's sessions (docs/operations.md, KCRASH_DUMP_ONLY)."""
    from crashbroker.domain.doctor import KCRASH_DUMP_ONLY, kcrash_bypasses_feed
    from crashbroker.launcher import find_drkonqi
    from crashbroker.ops import doctor, install

    if dropin_written:
        print(
            f"{KCRASH_DUMP_ONLY}=1 applies to sessions started from now on (log out and in "
            "again). crashbroker-launcher then starts DrKonqi for KDE crashes."
        )
        if doctor.drkonqi_launcher_enabled(os.environ):
            print(
                "DrKonqi's own launcher is enabled too and would start a second DrKonqi: "
                "systemctl --user mask drkonqi-coredump-launcher.socket"
            )
        return
    if install.ours(dropin):
        return
    session_env, _ = doctor.session_environment(os.environ)
    if kcrash_bypasses_feed(
        kf5_kcrash=doctor.find_kf5_kcrash() is not None,
        drkonqi=find_drkonqi(os.environ) is not None,
        dump_only=session_env.get(KCRASH_DUMP_ONLY),
    ):
        print(
            f"note: KF5's KCrash and DrKonqi are installed and {KCRASH_DUMP_ONLY} is not set: "
            "KCrash starts DrKonqi itself and KDE crashes bypass crashbroker (the app is held "
            "without a core dump while DrKonqi waits). `crashbroker install --kcrash-dump-only` "
            "sets it for your sessions (docs/operations.md)."
        )


async def cmd_cleanup(args: argparse.Namespace) -> int:
    from crashbroker.config import xdg_dir
    from crashbroker.ops.cleanup import cleanup

    client: BrokerClient | None = None
    bus = None
    with contextlib.suppress(Exception):  # no bus: clean the files anyway
        bus = await connect_bus(args.bus_address)
        client = BrokerClient(bus)
        if not await client.daemon_running():
            client = None
    try:
        report = await cleanup(
            client,
            args.cache_home or xdg_dir(os.environ, "XDG_CACHE_HOME", ".cache"),
            max_age_days=args.max_age_days,
            expire_days=args.expire_days,
            dry_run=args.dry_run,
        )
    finally:
        if bus is not None:
            bus.disconnect()
    if args.json:
        _print_json(report.as_dict())
    else:
        verb = "would remove" if args.dry_run else "removed"
        for path in report.removed:
            print(f"{verb} {path}")
        for path in report.kept_pending:
            print(f"kept {path} (its crash is still pending)")
        for path in report.skipped:
            print(f"skipped {path} (not a regular file)")
        if report.expired is not None:
            print(f"forgot {report.expired} crash records older than {args.expire_days:g} days")
        elif not args.dry_run:
            print("daemon not running: crash records left as they are")
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
    return EXIT_FAILED if report.errors else EXIT_OK


async def cmd_doctor(args: argparse.Namespace) -> int:
    from crashbroker.domain.doctor import checks, exit_code
    from crashbroker.ops.doctor import gather

    results = checks(await gather(os.environ, args.bus_address))
    if args.json:
        _print_json([{**dataclasses.asdict(c), "status": str(c.status)} for c in results])
    else:
        width = max(len(c.name) for c in results)
        for c in results:
            print(f"{c.status.value:>4}  {c.name.ljust(width)}  {c.detail}")
            if c.hint and c.status.value != "ok":
                print(f"      {'':{width}}  → {c.hint}")
    return exit_code(results)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "install":
        return cmd_install(args)
    if args.command == "cleanup":
        return asyncio.run(cmd_cleanup(args))
    if args.command == "doctor":
        return asyncio.run(cmd_doctor(args))
    if args.command == "daemon":
        from crashbroker import daemon, logs
        from crashbroker.config import Config

        logs.configure(args.log_level)
        config = Config.from_env(
            os.environ,
            state_dir=args.state_dir,
            cache_home=args.cache_home,
            journal_dir=args.journal_dir,
            catch_up=args.catch_up or (CatchUp.ALL if args.journal_dir else None),
            all_users=args.all_users or None,
            grace_ms=args.grace_ms,
            bus_address=args.bus_address,
            loop_threshold=args.loop_threshold,
            loop_window_s=args.loop_window,
            backtrace_timeout_s=args.backtrace_timeout,
            hint_core_dir=args.hint_core_dir,
        )
        return daemon.main(config)
    if getattr(args, "paged", False):
        return _paged_client(args)
    if args.command != "watch":
        # A one-shot client keeps everything it unmarshals until it prints: the cycle collector
        # only re-scanned the growing reply (half the time of a 10,000-crash list). `watch`
        # runs for days and keeps it.
        gc.disable()
    return asyncio.run(client_main(args))


def _paged_client(args: argparse.Namespace) -> int:
    """list, show, backtrace: the output goes through a pager on a terminal (pager.py), once
    the daemon answered (the backtrace spinner stays on stderr meanwhile)."""
    from crashbroker import pager

    command = pager.pager_command(os.environ, isatty=sys.stdout.isatty(), enabled=not args.no_pager)
    args.out = io.StringIO() if command is not None else sys.stdout
    gc.disable()  # as for every one-shot client (main)
    code = asyncio.run(client_main(args))
    if command is not None and (text := args.out.getvalue()):
        pager.page(text, command)
    return code
