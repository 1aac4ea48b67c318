"""Freed memory goes back to the system when release_freed_memory is called."""

import threading

import psutil
import pytest

from fedvla.engine.freed_memory import release_freed_memory

BLOCK = 64 * 1024  # under malloc's own mapping size: kept in the thread's arena once freed
BLOCKS = 3000  # about 190 MB


def _resident() -> int:
    return int(psutil.Process().memory_info().rss)


def test_what_a_thread_freed_is_returned_to_the_system() -> None:
    kept: list[bytearray] = []

    def allocate_then_free() -> None:
        blocks = [bytearray(BLOCK) for _ in range(BLOCKS)]  # written: resident
        kept.append(bytearray(BLOCK))  # the arena's top stays in use: malloc keeps the rest
        del blocks

    thread = threading.Thread(target=allocate_then_free)
    thread.start()
    thread.join()
    freed = BLOCK * BLOCKS
    before = _resident()
    if not release_freed_memory():
        pytest.skip("not glibc: no malloc_trim")
    assert before - _resident() > freed // 2
