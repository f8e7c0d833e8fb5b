"""The store's own thread: group commit, outage handling, and the hop back to the loop.

sqlite3 and PyMySQL block, so a store is only ever used from one thread, this
one.  The event loop hands it work with :meth:`StoreWorker.submit` and never
waits on it.  Whatever piles up while a transaction commits goes into the next
one (group commit), so durable throughput grows with pipelining and with the
number of producers instead of being one commit per message.

When the database is unreachable, publishes from clients fail at once with
STORE_UNAVAILABLE (nothing is acked that was not stored), while the broker's
own changes (acks, deliveries, dead letters) are kept and retried, with
backoff, until the store is back.  A database that stops answering without
closing the connection is found out by a watchdog: once one transaction has
taken longer than ``fail_fast_after_s``, the store counts as unavailable and the
publishes queued behind it fail at once instead of waiting out the store's
I/O timeout; while it is unavailable, the retries that probe it carry only the
broker's own changes, so no client publish waits on a probe.

In a cluster, every transaction is written under the topic leases the broker
holds (a ``fence`` provider gives them).  A topic whose lease is gone (the
provider or the store raises Fenced) loses its part of the transaction: its
publishes fail ("lease lost"), its changes are dropped (the new owner redelivers
what they recorded), ``on_fenced`` is told, and the rest is written again at once.
A transaction that lost a conflict (a deadlock, or a Galera certification failure
at COMMIT) is tried once more at once before the store counts as unavailable.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bbmq.defaults import lease_topic
from bbmq.store.base import (
    Batch,
    Fence,
    Fenced,
    Store,
    StoreConflict,
    StoredId,
    StoreUnavailable,
    WriteRequest,
)

log = logging.getLogger("bbmq.store")

T = TypeVar("T")
#: The worker never looks at who asked or what they are told.
AnyWriteRequest = WriteRequest[Any, Any]
StoredCallback = Callable[[list[AnyWriteRequest], list[StoredId]], None]
FailedCallback = Callable[[list[AnyWriteRequest], str], None]
#: Hands a callable to the event loop's thread (``loop.call_soon_threadsafe``).
Scheduler = Callable[..., object]
#: Gives the leases a batch of these topics is written under; raises Fenced for the
#: topics this broker no longer holds (or no longer trusts it holds).
FenceProvider = Callable[[set[str]], Fence]
#: Told which topics lost their lease (on the store thread).
FencedCallback = Callable[[frozenset[str]], None]
#: A transaction running longer than this makes the store unavailable to new publishes.
DEFAULT_FAIL_FAST_AFTER_S = 2.0


class StoreWorker:
    """Runs one :class:`Store` on a dedicated thread.

    ``clock`` is the wall clock in milliseconds: the store reads none of its own, so
    the time it records (retention, pruning) is the time its owner decides on.  The
    worker's own waits (backoff, the prune interval) use ``time.monotonic``.
    ``fence`` and ``on_fenced`` are for a broker of a cluster (see the module docstring).
    """

    def __init__(self, store: Store, *, clock: Callable[[], int], max_batch: int = 2000,
                 prune_interval_s: float = 60.0,
                 fail_fast_after_s: float = DEFAULT_FAIL_FAST_AFTER_S,
                 fence: FenceProvider | None = None,
                 on_fenced: FencedCallback | None = None) -> None:
        self.store = store
        self._clock = clock
        # Where results go: known once the event loop runs, so given to start().
        self._schedule: Scheduler
        self._on_stored: StoredCallback
        self._on_failed: FailedCallback
        self._max_batch = max_batch
        self._prune_interval_s = prune_interval_s
        self._cond = threading.Condition()
        #: In a cluster (may be set before start()): the leases each transaction is written
        #: under, and who is told of the topics found lost.
        self.fence = fence
        self.on_fenced = on_fenced
        self._publishes: list[AnyWriteRequest] = []
        #: The changes of each submit, in order: a fenced topic's are told apart by them.
        self._changes: list[Batch] = []
        #: What the transaction now running writes (publishes and change batches).
        self._in_flight: list[object] = []
        #: Callbacks waiting for the writes submitted before them: (callback, those writes).
        self._barriers: list[tuple[Callable[[], object], list[object]]] = []
        self._calls: list[tuple[Callable[[], object], concurrent.futures.Future[object]]] = []
        self._stopping = False
        self._busy = False
        #: When the transaction now running began (monotonic), None between transactions.
        self._writing_since: float | None = None
        self._fail_fast_after_s = fail_fast_after_s
        self._thread = threading.Thread(target=self._run, name="bbmq-store", daemon=True)
        self._closed = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="bbmq-store-watchdog",
                                          daemon=True)
        self.available = True
        #: Seconds each successful commit took, for metrics (set by the server).
        self.observe_commit: Callable[[float], None] = lambda seconds: None

    def start(self, schedule: Scheduler, on_stored: StoredCallback,
              on_failed: FailedCallback) -> concurrent.futures.Future[None]:
        """Start the thread and open the store on it; the future holds what ``open`` raised.

        From then on the thread reports each transaction's outcome by handing
        ``on_stored`` or ``on_failed`` to ``schedule`` (the event loop's
        ``call_soon_threadsafe``), so they run on the loop's thread.  Nothing here
        blocks, so a caller may stop waiting (a SIGTERM while a database hangs)
        without a thread of its own stuck in the wait.
        """
        self._schedule, self._on_stored, self._on_failed = schedule, on_stored, on_failed
        self._thread.start()
        self._watchdog.start()
        return self.call(self.store.open)

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` on the store thread (recovery, admin queries)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            self._calls.append((fn, future))  # type: ignore[arg-type]
            self._cond.notify()
        return future

    def submit(self, publishes: list[AnyWriteRequest], changes: Batch) -> None:
        """Queue work for the next transaction; results come back through the callbacks."""
        if not publishes and not len(changes):
            return
        with self._cond:
            self._publishes += publishes
            if len(changes):
                own = Batch()
                own.extend(changes)  # a batch of its own, whatever the caller does with its
                self._changes.append(own)
            self._cond.notify()

    def barrier(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the store thread once every write submitted before this
        call has committed or failed (a hand-off waits for its topic's commits so)."""
        with self._cond:
            self._barriers.append(
                (callback, [*self._publishes, *self._changes, *self._in_flight]))
            self._cond.notify()

    def _ready_barriers(self) -> list[Callable[[], object]]:
        """Take the barriers whose writes are all done (called holding the lock)."""
        if not self._barriers:
            return []
        waiting = {id(item) for item in (*self._publishes, *self._changes, *self._in_flight)}
        ready = [callback for callback, before in self._barriers
                 if not any(id(item) in waiting for item in before)]
        if ready:
            self._barriers = [(callback, before) for callback, before in self._barriers
                              if any(id(item) in waiting for item in before)]
        return ready

    @property
    def backlog(self) -> int:
        """Publishes waiting for a transaction."""
        return len(self._publishes)

    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        with self._cond:
            return not (self._publishes or self._changes or self._busy or self._calls
                        or self._barriers)

    def stop(self, timeout: float = 30.0) -> bool:
        """Write what is queued, close the store, end the thread; False if it timed out."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        backoff = 0.0
        retry_at = 0.0
        next_prune = time.monotonic() + self._prune_interval_s
        while True:
            with self._cond:
                while not (self._publishes or self._changes or self._calls or self._stopping
                           or self._barriers):
                    # While the store is down, wake to probe it even if nothing is queued.
                    wake_at = next_prune if self.available else min(next_prune, retry_at)
                    self._cond.wait(timeout=max(0.05, wake_at - time.monotonic()))
                    if time.monotonic() >= wake_at:
                        break
                calls, self._calls = self._calls, []
                if not self.available:
                    # Down: fail client publishes now rather than hold them for a probe.
                    self._fail_client_publishes()
                if not self.available and time.monotonic() < retry_at:
                    if self._stopping:
                        break
                    if not calls:
                        self._cond.wait(timeout=retry_at - time.monotonic())
                        continue
                    publishes: list[AnyWriteRequest] = []
                    changes: list[Batch] = []
                    probe = False
                else:
                    publishes, changes = self._take()
                    probe = not self.available  # an empty transaction, if nothing else
                self._busy = True
                self._in_flight = [*publishes, *changes]
            for fn, future in calls:
                self._run_call(fn, future)
            if publishes or changes or probe:
                if self._write(publishes, changes):
                    backoff = 0.0
                else:
                    backoff = min(5.0, backoff * 2 or 0.1)
                    retry_at = time.monotonic() + backoff
            if time.monotonic() >= next_prune and self.available:
                next_prune = time.monotonic() + self._prune_interval_s
                self._prune()
            with self._cond:
                self._busy = False
                self._in_flight = []
                ready = self._ready_barriers()
            for callback in ready:
                self._run_barrier(callback)
            with self._cond:
                if self._stopping and not (self._publishes or self._changes):
                    break
                if self._stopping and not self.available and time.monotonic() >= retry_at + 30:
                    log.error("giving up on the store at shutdown; unwritten acks are redelivered")
                    break
        self._close()

    def _fail_client_publishes(self) -> None:
        """Answer every queued client publish STORE_UNAVAILABLE (called holding the lock)."""
        failed = [p for p in self._publishes if p.requester is not None]
        if failed:
            self._publishes = [p for p in self._publishes if p.requester is None]
            self._schedule(self._on_failed, failed, "store unavailable")

    def _watch(self) -> None:
        """The watchdog thread: a transaction that hangs makes the store unavailable."""
        period = self._fail_fast_after_s / 4
        # Its own event to wait on: a notify of the shared condition must wake the store thread.
        while not self._closed.wait(timeout=period):
            with self._cond:
                since = self._writing_since
                if since is not None and time.monotonic() - since > self._fail_fast_after_s:
                    if self.available:
                        log.error("store %s has not answered for %.1f s; publishes get "
                                  "STORE_UNAVAILABLE until it does", self.store.description,
                                  time.monotonic() - since)
                    self.available = False
                    self._fail_client_publishes()

    def _take(self) -> tuple[list[AnyWriteRequest], list[Batch]]:
        """The next transaction's work: a bounded slice of publishes, and the changes.

        Changes ride along only when no dead-letter message (a publish of the
        broker's own) is left behind, so a dead letter and the ack that retires
        the original always commit together.
        """
        publishes = self._publishes[: self._max_batch]
        self._publishes = self._publishes[self._max_batch :]
        if any(p.requester is None for p in self._publishes):
            return publishes, []
        changes, self._changes = self._changes, []
        return publishes, changes

    def _write(self, publishes: list[AnyWriteRequest], changes: list[Batch]) -> bool:
        conflicts = 0
        while True:
            batch = Batch(messages=[p.message for p in publishes])
            batch.topics = {p.message.topic for p in publishes}
            for change in changes:
                batch.extend(change)
            started = self._writing_since = time.monotonic()
            try:
                if self.fence is None:
                    ids = self.store.write(batch, self._clock())
                else:
                    ids = self.store.write(batch, self._clock(), self.fence(set(batch.topics)))
            except Fenced as fenced:
                self._writing_since = None
                if not {lease_topic(t) for t in fenced.topics} & {
                        lease_topic(t) for t in batch.topics}:  # nothing to drop: a bug
                    return self._failed(publishes, changes, fenced)
                publishes, changes = self._drop_fenced(publishes, changes, fenced.topics)
                if publishes or changes:
                    continue  # the rest of the batch, at once
                return True
            except StoreConflict as error:
                self._writing_since = None
                if conflicts == 0:
                    conflicts += 1
                    log.warning("store %s: a transaction lost a conflict (%s); trying it "
                                "again", self.store.description, error)
                    continue
                return self._failed(publishes, changes, error)
            except Exception as error:  # the thread must outlive any one batch
                self._writing_since = None
                return self._failed(publishes, changes, error)
            break
        self._writing_since = None
        self.observe_commit(time.monotonic() - started)
        if not self.available:
            log.warning("store %s is back", self.store.description)
            self.available = True
        if publishes:
            self._schedule(self._on_stored, publishes, ids)
        return True

    def _failed(self, publishes: list[AnyWriteRequest], changes: list[Batch],
                error: Exception) -> bool:
        """A transaction failed: client publishes fail, the broker's own work is kept."""
        if isinstance(error, StoreUnavailable):
            if self.available:
                log.error("store %s unavailable: %s; retrying with backoff",
                          self.store.description, error)
        else:  # a bug, or data the database refused: say so loudly, keep going
            log.error("store %s refused a batch of %d messages and %d changes; its "
                      "publishes are refused, its changes retried with backoff",
                      self.store.description, len(publishes),
                      sum(len(change) for change in changes), exc_info=error)
        self.available = False
        ours = [p for p in publishes if p.requester is None]
        theirs = [p for p in publishes if p.requester is not None]
        if theirs:
            self._schedule(self._on_failed, theirs, str(error) or "store unavailable")
        with self._cond:
            self._publishes[:0] = ours
            self._changes[:0] = changes
        return False

    def _drop_fenced(self, publishes: list[AnyWriteRequest], changes: list[Batch],
                     topics: frozenset[str]) -> tuple[list[AnyWriteRequest], list[Batch]]:
        """Take the topics that lost their lease out of a transaction's work.

        Their client publishes fail; the broker's own publishes and changes of them
        are dropped: the new owner loads the topic from what was committed.  Acks
        and deliveries carry no topic, so a submit that mixed a lost topic with
        others loses those of the others too (they are redelivered: at least once).
        """
        lost = {lease_topic(topic) for topic in topics}

        def is_lost(topic: str) -> bool:
            return lease_topic(topic) in lost

        failed: dict[str, list[AnyWriteRequest]] = {}
        kept: list[AnyWriteRequest] = []
        for publish in publishes:
            if not is_lost(publish.message.topic):
                kept.append(publish)
            elif publish.requester is not None:
                failed.setdefault(publish.message.topic, []).append(publish)
        for topic, requests in failed.items():
            self._schedule(self._on_failed, requests,
                           f"lease lost: {topic} moved to another broker")
        kept_changes = [change for change in (_without(change, is_lost) for change in changes)
                        if change is not None]
        log.warning("lease lost for %s: %d publishes failed, their topics' changes dropped",
                    ", ".join(sorted(topics)), sum(map(len, failed.values())))
        if self.on_fenced is not None:
            try:
                self.on_fenced(topics)
            except Exception:
                log.exception("the fenced-topics callback failed")
        return kept, kept_changes

    def _prune(self) -> None:
        try:
            removed = self.store.prune(self._clock())
        except StoreUnavailable as error:
            log.warning("prune skipped, store unavailable: %s", error)
            return
        except Exception:
            log.exception("prune failed; trying again at the next interval")
            return
        if removed:
            log.info("pruned %d finished rows from the store", removed)

    @staticmethod
    def _run_barrier(callback: Callable[[], object]) -> None:
        try:
            callback()
        except Exception:  # the thread must outlive its callers' mistakes
            log.exception("a store barrier callback failed")

    @staticmethod
    def _run_call(fn: Callable[[], object], future: concurrent.futures.Future[object]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as error:  # handed to the caller, who decides
            future.set_exception(error)

    def _close(self) -> None:
        self._closed.set()
        try:
            self.store.close()
        except Exception:
            log.exception("closing the store failed")


def _without(changes: Batch, is_lost: Callable[[str], bool]) -> Batch | None:
    """``changes`` without what belongs to lost topics; None if nothing is left."""
    lost = {topic for topic in changes.topics if is_lost(topic)}
    if not lost:
        return changes
    if lost == changes.topics:
        return None
    # Mixed: keep what names its topic; acks, deliveries and done ids cannot be told apart.
    # In place: a barrier knows the batch by its identity.
    dropped = len(changes.deliveries) + len(changes.acks) + len(changes.done)
    if dropped:
        log.warning("dropped %d acks, deliveries and finished ids written together with a "
                    "topic whose lease was lost (%s); they are redelivered after a failover",
                    dropped, ", ".join(sorted(changes.topics - lost)))
    changes.messages = [m for m in changes.messages if not is_lost(m.topic)]
    changes.groups = [g for g in changes.groups if not is_lost(g.topic)]
    changes.deleted_groups = [d for d in changes.deleted_groups if not is_lost(d[0])]
    changes.deliveries, changes.acks, changes.done = [], [], []
    changes.topics -= lost
    return changes if len(changes) else None
