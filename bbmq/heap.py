"""Give memory the broker no longer uses back to the operating system.

Draining a large backlog frees hundreds of megabytes of message bodies, and
closing thousands of connections frees their buffers, but glibc's malloc keeps
freed memory in its arenas: the process's RSS stays at its peak (365 MB after
draining a 200 MB backlog).  ``malloc_trim(0)`` hands the free pages of every
arena back (the middle of the heap too, with MADV_DONTNEED).  It costs a pass
over the free lists, so :class:`MemoryReleaser` calls it only after a large
drop: when what the core holds fell by TRIM_AFTER_BYTES since its peak, or
TRIM_AFTER_CLOSES connections closed.  On a libc without malloc_trim (musl,
macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import Final

log = logging.getLogger("bbmq.server")

#: Seconds between two looks (by the server) at whether a trim is worth it.
CHECK_INTERVAL_S: Final = 1.0
#: A drop of this many held bytes since the peak is worth a trim.
TRIM_AFTER_BYTES: Final = 32 * 1024 * 1024
#: So are this many closed connections.
TRIM_AFTER_CLOSES: Final = 1000


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryReleaser:
    """Decides when a trim is worth it, from what the core holds and the connections closed."""

    def __init__(self, trim: Callable[[int], int] | None = None) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self._peak_bytes = 0
        self._closes = 0
        #: Trims done, for the log and the tests.
        self.trims = 0

    def connection_closed(self) -> None:
        self._closes += 1

    def check(self, held_bytes: int) -> bool:
        """Called now and then with the bytes the core holds; trims if worth it."""
        self._peak_bytes = max(self._peak_bytes, held_bytes)
        dropped = self._peak_bytes - held_bytes
        if dropped < TRIM_AFTER_BYTES and self._closes < TRIM_AFTER_CLOSES:
            return False
        self._peak_bytes, self._closes = held_bytes, 0
        if self._trim is None:
            return False
        self._trim(0)
        self.trims += 1
        log.debug("gave freed memory back to the OS (%d MB fewer bytes held)", dropped >> 20)
        return True
