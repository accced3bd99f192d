"""Giving back memory that loading leaves behind (Linux; elsewhere these do nothing).

Measured on the 0.5B engine (probe in docs/engine.md, "Memory"): parsing tokenizer.json leaves
~55 MB of freed heap that glibc keeps, and ONNX Runtime keeps its mapping of the weight file
for tensors it has already repacked into its own buffers (the scales, ~67 MB resident) although
it never reads those pages again.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

_log = logging.getLogger(__name__)
_MADV_DONTNEED = 4


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.malloc_trim, libc.madvise  # noqa: B018 - glibc only (not musl, not macOS)
    except (OSError, AttributeError):
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


_LIBC = _libc()


def trim_heap() -> None:
    """Return the heap's free pages to the system (glibc keeps them after a large parse)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def drop_file_pages(path) -> int:
    """Drop this process's resident pages of the private mappings of `path` (bytes dropped).

    Only for a file that nothing in the process writes through its mapping (ONNX Runtime maps
    external tensor data copy-on-write and only reads it): a page read again later is faulted
    back in from the same file, so results cannot change; the resident-set size falls by what
    is not read again. test_engine checks logits bitwise across a drop.
    """
    if _LIBC is None or not os.path.exists("/proc/self/maps"):
        return 0
    target = os.path.realpath(path)
    dropped = 0
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for fields in regions:
        if len(fields) < 6 or fields[5] != target or "p" not in fields[1]:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if _LIBC.madvise(start, end - start, _MADV_DONTNEED) == 0:
            dropped += end - start
        else:
            _log.debug("madvise on %s failed: errno %d", target, ctypes.get_errno())
    return dropped
