"""The member's one way into the broker: every core call handed to the event loop's thread.

The core is single-threaded and lives on the loop; the member thread must never
touch it.  :class:`CoreSeat` turns each of the member's decisions into a
callable run on the loop (``loop.call_soon_threadsafe``), stamped with the
broker's clock there, followed by the transport's flush so that the frames it
produced (acknowledgements, redirects) and the store work leave at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from bbmq.core import Broker
from bbmq.store.base import GroupRecord, RecoveredMessage
from bbmq.store.worker import StoreWorker

T = TypeVar("T")


class CoreSeat:
    """Where the member sits at the core's table: on the loop, one call at a time."""

    def __init__(self, broker: Broker, clock: Callable[[], int]) -> None:
        self.broker = broker
        self.clock = clock
        #: The store thread, set once it is made (it is made with the member's fence).
        self.worker: StoreWorker | None = None
        self.flush: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]) -> None:
        """The loop the core runs on, and the transport's flush (frames out, store work in);
        a call before this is a bug."""
        self._loop, self.flush = loop, flush

    def _on_loop(self, action: Callable[[], object]) -> None:
        assert self._loop is not None, "attach() the seat to the broker's loop first"

        def run() -> None:
            action()
            self.flush()

        self._loop.call_soon_threadsafe(run)

    def topic_acquired(self, topic: str, epoch: int, groups: list[GroupRecord],
                       messages: list[RecoveredMessage]) -> None:
        self._on_loop(lambda: self.broker.topic_acquired(topic, epoch, groups, messages,
                                                         self.clock()))

    def topic_elsewhere(self, topic: str, owner: str | None, epoch: int | None,
                        retry_ms: int | None) -> None:
        self._on_loop(lambda: self.broker.topic_elsewhere(topic, owner, epoch, retry_ms,
                                                          self.clock()))

    def topic_lost(self, topic: str, owner: str | None, epoch: int | None,
                   retry_ms: int | None) -> None:
        self._on_loop(lambda: self.broker.topic_lost(topic, owner, epoch, retry_ms,
                                                     self.clock()))

    def hand_off(self, topic: str, target: str | None, committed: Callable[[], None]) -> None:
        """Drop ``topic`` (its clients are sent to ``target``), hand the store what that left,
        then call ``committed`` (on the store thread) once every write of it submitted so far
        has committed or failed."""
        def drop() -> None:
            self.broker.topic_lost(topic, target, None, None, self.clock())
            self.flush()
            assert self.worker is not None, "give the seat its worker first"
            self.worker.barrier(committed)

        self._on_loop(drop)

    def set_cluster_brokers(self, addresses: tuple[str, ...]) -> None:
        self._on_loop(lambda: self.broker.set_cluster_brokers(addresses))

    def set_draining(self, draining: bool) -> None:
        def apply() -> None:
            self.broker.draining = draining

        self._on_loop(apply)

    def call_store(self, fn: Callable[[], T], timeout_s: float) -> T:
        """Run ``fn`` on the store thread and wait for its result (from the member's thread)."""
        assert self.worker is not None, "give the seat its worker first"
        return self.worker.call(fn).result(timeout_s)
