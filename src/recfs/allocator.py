"""The C allocator's part in the daemon's memory (issue 20, T7 in tree.py).

Measured over B9's generated trees (`python -m bench.memprobe`): the Python objects a
bounded tree keeps stay level, yet the RSS went on growing with every listing, by up to
two thirds above what was live. The cause is glibc's dynamic mmap threshold: a listing
page's body (a few hundred kB of JSON) is first given its own mapping, and once such a
mapping is freed glibc raises the threshold to its size, so every later body, and the
pickles of folders, come from the heap, between long-lived nodes, and what they leave
free there is not given back. Fixing the threshold at glibc's own default (128 KiB)
keeps them in mappings that are returned when freed (Kazoo's 248,000 entries: peak
240 MB -> 175 MB, the same time). What the heap still holds free is handed back after
evictions (`release_freed_memory`). Both are no-ops where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("recfs.allocator")

M_MMAP_THRESHOLD = -3       # mallopt(3)
MMAP_THRESHOLD = 128 << 10  # glibc's default, kept fixed instead of raised


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim       # glibc's
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


_LIBC = _libc()


def keep_large_blocks_mapped() -> None:
    """Blocks of MMAP_THRESHOLD or more get mappings of their own, given back when
    freed, for the life of the process (the daemon calls it at start)."""
    if _LIBC is not None and not _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
