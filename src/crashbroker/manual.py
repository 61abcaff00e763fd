"""The man pages and shell completions ``crashbroker install`` writes, generated from the
programs' own argument parsers (docgen.py): ``crashbroker.1``, ``crashbroker-launcher.8``,
``crashbroker-notifier.8``, a bash completion and a zsh completion of ``crashbroker``."""

from __future__ import annotations

from crashbroker import __version__, docgen

BASH = "bash"
ZSH = "zsh"

_CRASHBROKER_SECTIONS = (
    docgen.Section(
        "Exit status",
        (
            "0 success; 1 the request failed (e.g. no such crash); 2 usage error; 3 the daemon "
            "is not on the bus, or there is no session bus. doctor: 1 when a check failed.",
        ),
    ),
    docgen.Section(
        "Environment",
        (
            "DBUS_SESSION_BUS_ADDRESS: the session bus (--bus-address overrides it).",
            "SYSTEMD_PAGER, PAGER: the pager of list, show and backtrace on a terminal, as in "
            "systemd's tools (SYSTEMD_PAGER first; empty or cat: none; unset: less). "
            "SYSTEMD_LESS: the LESS options given to it (default FRSXMK). --no-pager, or an "
            "output that is not a terminal, turns the pager off.",
            "XDG_STATE_HOME, XDG_CACHE_HOME, XDG_CONFIG_HOME, XDG_DATA_HOME: where the daemon "
            "keeps its index, where KCrash writes its metadata, and where install writes.",
        ),
    ),
    docgen.Section(
        "Examples",
        (
            "crashbroker list -S yesterday kronometer: today's and yesterday's crashes of "
            "Kronometer. crashbroker list -1 --json=pretty: the newest crash as indented JSON. "
            "crashbroker list /usr/bin/plasmashell signal_name=SIGABRT -r: plasmashell's "
            "aborts, oldest first. crashbroker show ID; crashbroker backtrace ID.",
        ),
    ),
    docgen.Section(
        "See also",
        (
            "coredumpctl(1), systemd-coredump(8), busctl(1), crashbroker-launcher(8), "
            "crashbroker-notifier(8); the D-Bus interface: docs/dbus.md of crashbroker.",
        ),
    ),
)


def generated() -> dict[str, str]:
    """Name → text: ``man1/…``, ``man8/…`` (the man pages), ``bash``, ``zsh``."""
    from crashbroker import cli, launcher, notifier

    parser = cli.build_parser()
    see_also = (docgen.Section("See also", ("crashbroker(1)",)),)
    return {
        "man1/crashbroker.1": docgen.man_page(
            parser,
            section=1,
            version=__version__,
            summary="a crash feed on the session bus, and its client",
            sections=_CRASHBROKER_SECTIONS,
        ),
        "man8/crashbroker-launcher.8": docgen.man_page(
            launcher.build_parser(),
            section=8,
            version=__version__,
            summary="start DrKonqi for KCrash crashes of the crashbroker feed",
            sections=see_also,
        ),
        "man8/crashbroker-notifier.8": docgen.man_page(
            notifier.build_parser(),
            section=8,
            version=__version__,
            summary="desktop notifications for crashes of the crashbroker feed",
            sections=see_also,
        ),
        BASH: docgen.bash_completion(parser),
        ZSH: docgen.zsh_completion(parser),
    }
