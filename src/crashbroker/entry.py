"""The programs' entry points: the console scripts and ``python -m crashbroker``.

crashbroker speaks no TLS, yet importing asyncio imports ``ssl`` and hashlib loads its OpenSSL
backend: libcrypto mapped into every process, 3.5 MiB of a daemon's resident memory (the idle-RSS
benchmark: 41 → 37 MiB without it). Before anything imports them, these entry points mark both
modules as absent, as asyncio and hashlib allow: asyncio then offers no TLS, hashlib serves BLAKE2
(our crash ids) from its built-in code — hashlib's backend only where this Python has every hash
built in (else it keeps OpenSSL rather than lose a hash). Modules a host program imported already
are left alone, so importing crashbroker as a library changes nothing.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

_TLS_MODULES = ("ssl", "_ssl")
# hashlib without its OpenSSL backend serves each hash from one of these built-in modules (any
# of the names of a group): a Python built with only some of them (--with-builtin-hashlib-hashes,
# as FIPS-minded builds do) would then lack sha512 and fail `import random`.
# (Python 3.12 merged _sha256 and _sha512 into _sha2.)
_BUILTIN_HASHES = (
    ("_md5",),
    ("_sha1",),
    ("_sha2", "_sha256"),
    ("_sha2", "_sha512"),
    ("_sha3",),
    ("_blake2",),
)


def _builtin_hashes() -> bool:
    """True when this Python has every hash hashlib needs without OpenSSL built in."""
    return all(any(find_spec(name) is not None for name in group) for group in _BUILTIN_HASHES)


def _without_openssl() -> None:
    for name in _TLS_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    if "_hashlib" not in sys.modules and _builtin_hashes():
        sys.modules["_hashlib"] = None  # type: ignore[assignment]


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
