"""Giving memory back to the system after a burst of work (a first catch-up).

A catch-up reads hundreds of thousands of journal entries; CPython frees their objects, but
glibc keeps the freed heap pages for reuse, so a daemon that then idles for days would hold tens
of MB it will not need again. ``malloc_trim`` returns free pages to the kernel.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def release_free_memory() -> bool:
    """Collect garbage, then ask glibc to return free heap pages (``malloc_trim(0)``).

    Returns:
        False where the C library has no ``malloc_trim`` (not glibc); nothing else changes then.
    """
    gc.collect()
    import ctypes  # only here: a start should not pay for it

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        logger.debug("no malloc_trim in this C library")
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
