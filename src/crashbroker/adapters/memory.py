"""Giving memory back to the system after a burst of work (a catch-up, a large reply).

A catch-up reads hundreds of thousands of journal entries, a ListCrashes of 10,000 crashes builds
a reply of several MB; CPython frees their objects, but glibc keeps freed heap pages for reuse,
so a daemon that then idles for days would hold tens of MB it will not need again (the idle-RSS
benchmark: 60 MiB after a few list calls, 43 after a trim). Everything here is glibc-only and
does nothing elsewhere.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
from typing import Any

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 256 * 1024


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        logger.debug("no malloc_trim/mallopt in this C library")
        return None
    return libc


def keep_large_buffers_out_of_the_heap() -> bool:
    """Allocate blocks of :data:`MMAP_THRESHOLD` and more as their own mappings, always.

    glibc raises this threshold each time such a block is freed (up to 32 MiB), after which a
    reply's buffers land in the heap and stay there as free pages. Fixed, they are unmapped when
    freed. Returns False where this is not glibc.
    """
    libc = _libc()
    return libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


def trim_heap() -> bool:
    """Return the heap's free pages to the kernel (``malloc_trim(0)``, ~1 ms); False where
    this is not glibc."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def release_free_memory() -> bool:
    """Collect garbage, then :func:`trim_heap`: after a catch-up."""
    gc.collect()
    return trim_heap()
