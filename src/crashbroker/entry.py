"""The programs' entry points: the console scripts and ``python -m crashbroker``.

crashbroker speaks no TLS, yet importing asyncio imports ``ssl`` and hashlib loads its OpenSSL
backend: libcrypto mapped into every process, 3.5 MiB of a daemon's resident memory (the
idle-RSS benchmark: 41 → 37 MiB without it). Before anything imports them, these entry points
mark both modules as absent, as asyncio and hashlib allow: asyncio then offers no TLS, hashlib
serves BLAKE2 (our crash ids) from its built-in code. Modules a host program imported already are
left alone, so importing crashbroker as a library changes nothing.
"""

from __future__ import annotations

import sys

_OPENSSL_MODULES = ("ssl", "_ssl", "_hashlib")


def _without_openssl() -> None:
    for name in _OPENSSL_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def crashbroker() -> int:
    """``crashbroker``: the CLI, and ``crashbroker daemon``."""
    _without_openssl()
    from crashbroker.cli import main

    return main()


def launcher() -> int:
    """``crashbroker-launcher``."""
    _without_openssl()
    from crashbroker.launcher import main

    return main()


def notifier() -> int:
    """``crashbroker-notifier``."""
    _without_openssl()
    from crashbroker.notifier import main

    return main()
