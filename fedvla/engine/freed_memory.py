"""Handing the memory a process has freed back to the system.

glibc's malloc keeps freed blocks for reuse, in one arena per thread that allocated them (up to
eight per CPU): Ray's and Flower's threads deserialise every update a process receives, and a
round frees a hundred megabytes per client in blocks below the size that malloc maps on its own.
Kept, that memory counts against the process until the next round happens to reuse it; the more
clients a process serves, the more of its arenas fill. malloc_trim releases the free pages of
every arena, at the cost of a walk over them (milliseconds), so it is called between messages
and rounds, never inside training.
"""

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Return the free pages of every malloc arena to the system; False where the C library
    has no malloc_trim (not glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
