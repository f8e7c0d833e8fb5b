"""Message ids reserved in blocks, for brokers of a cluster sharing one sequence row.

A single broker reserves a batch's ids inside the batch's own transaction.  Brokers
of a cluster doing the same would serialise on the one sequence row (on Galera,
fail each other's commits on it).  A clustered store instead reserves a block of
ids (10,000 by default) in a short transaction of its own and hands them out
locally.  Ids stay unique and increase per store; a broker takes a fresh block
whenever it takes a topic, so that its ids of that topic exceed every id the
topic's previous owner gave (it had reserved them before giving them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from bbmq.store.base import StoreConflict

#: Ids a clustered store reserves at a time.
DEFAULT_ID_BLOCK: Final = 10_000
#: How often a block reservation that lost a race (Galera) is tried again at once.
_TRIES: Final = 3


class IdBlocks:
    """Hands out ids from blocks; ``reserve(n)`` reserves ``n`` ids in a transaction of
    its own and returns the last of them."""

    def __init__(self, size: int, reserve: Callable[[int], int]) -> None:
        if size <= 0:
            raise ValueError(f"an id block must hold at least one id, got {size}")
        self.size = size
        self._reserve = reserve
        #: The next id of the block and its last one; the block is used up when next > last.
        self._next, self._last = 1, 0

    def make_room(self, n: int) -> None:
        """Make sure the block holds ``n`` more ids, in a transaction of its own, before a
        transaction that will take them."""
        if n > self._last - self._next + 1:
            self._take(max(self.size, n))

    def take(self, n: int) -> int | None:
        """The first of ``n`` consecutive ids of the block; None if it has fewer left (and
        then the block is given up, so that ids reserved elsewhere meanwhile, which are
        above it, are never followed by lower ones from it)."""
        if n > self._last - self._next + 1:
            self._next, self._last = 1, 0
            return None
        first = self._next
        self._next += n
        return first

    def fresh(self) -> None:
        """Give up the rest of the block and reserve a new one now."""
        self._take(self.size)

    def _take(self, size: int) -> None:
        for attempt in range(1, _TRIES + 1):
            try:
                last = self._reserve(size)
                break
            except StoreConflict:
                if attempt == _TRIES:
                    raise
        self._next, self._last = last - size + 1, last
