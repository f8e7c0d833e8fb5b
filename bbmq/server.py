"""The asyncio transport: sockets in, the broker core, sockets and the store thread out.

It stays thin on purpose.  Each connection reads bytes, feeds the sans-IO
decoder, hands whole frames to :class:`bbmq.core.Broker`, and after every read
writes each connection's coalesced output in one ``transport.write`` and hands
the store its work.  Flow control uses asyncio's own write-buffer limits:
``pause_writing`` stops deliveries to a slow consumer until its buffer drains.

Reading is bounded too (see bbmq/handover.py): one client's burst cannot hold
the others back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import runpy
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from bbmq import protocol
from bbmq._version import __version__
from bbmq.core import Broker, PendingPublish
from bbmq.handover import FRAMES_PER_TURN, MAX_OWED_REPLIES, hand_over
from bbmq.heap import CHECK_INTERVAL_S, MemoryReleaser
from bbmq.protocol import ErrorCode
from bbmq.server_facts import (
    ConnectionInfo,
    Membership,
    TransportConfig,
    is_loopback,
    log_destination,
)
from bbmq.store.base import RecoveredMessage, StoredId
from bbmq.store.worker import StoreWorker

log = logging.getLogger("bbmq.server")

RECOVERY_CHUNK = 20_000


class Connection(asyncio.Protocol):
    """One client connection: read, feed, hand over; nothing else."""

    def __init__(self, server: BrokerServer, session_id: int) -> None:
        self.server = server
        self.id = session_id
        #: The protocol's state for this connection: it checks every frame against the table.
        self.protocol = protocol.ServerConnection(server.config.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        #: Wall-clock milliseconds of the accept, and the bytes read and written since.
        self.connected_ms = server.clock()
        self.bytes_in = 0
        self.bytes_out = 0
        self.timeout: asyncio.TimerHandle | None = None
        self.last_read = time.monotonic()
        self.framing_error_logged = False
        #: Once the handshake is accepted, the idle timeout replaces the handshake timeout.
        self.watching_idle = False
        #: Reading is paused: frames wait for the next turn, or for the store to catch up.
        self.reading_paused = False
        self.continuation: asyncio.Handle | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        server = self.server
        server.connections[self.id] = self
        server.broker.connect(self.id)
        transport.set_write_buffer_limits(high=server.config.max_output_bytes)
        if len(server.connections) > server.config.max_connections:
            log.warning("conn=%d peer=%s refused: over max_connections", self.id, self.peer)
            server.broker.send_error(self.id, ErrorCode.SERVER_BUSY,
                                     "too many connections; retry later", close=True)
            server.flush()
            return
        self._arm_timeout(server.config.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        self.bytes_in += len(data)
        self.protocol.receive_data(data)
        if self.continuation is None and self not in self.server.backlogged:
            self.hand_over()

    def hand_over(self) -> None:
        """Hand the core one turn's worth of frames; pause reading if more are waiting."""
        self.continuation = None
        if self.lost:
            return
        server = self.server
        broker = server.broker
        more = False
        try:
            more = hand_over(self.protocol, broker, self.id, server.clock(),
                             lambda: server.write_output_of(self.id), budget=FRAMES_PER_TURN)
        except Exception:  # a bug: this connection's state is suspect, the broker's not
            log.exception("conn=%d peer=%s: failed on a frame; closing the connection",
                          self.id, self.peer)
            broker.send_error(self.id, ErrorCode.INTERNAL_ERROR,
                              "the broker failed on this frame (a bug, in its log); "
                              "reconnect, and please report it", close=True)
        if not self.framing_error_logged and (error := self.protocol.framing_error) is not None:
            self.framing_error_logged = True
            log.info("conn=%d peer=%s framing error: %s", self.id, self.peer, error.text)
        if not self.watching_idle and broker.handshaken(self.id):
            self.watching_idle = True
            if self.timeout is not None:
                self.timeout.cancel()
            self._arm_timeout(server.config.idle_timeout, self._check_idle)
        behind = broker.replies_owed(self.id) >= MAX_OWED_REPLIES
        self._pause_reading(more or behind)
        if behind:
            server.backlogged.add(self)  # flush() resumes it once the store catches up
        elif more:
            self.continuation = asyncio.get_running_loop().call_soon(self.hand_over)
        server.flush()

    def _pause_reading(self, pause: bool) -> None:
        if pause == self.reading_paused or self.transport is None:
            return
        self.reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # half-closed: close our side too

    def pause_writing(self) -> None:
        self.server.broker.set_writable(self.id, False, self.server.clock())

    def resume_writing(self) -> None:
        self.server.broker.set_writable(self.id, True, self.server.clock())
        self.server.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.timeout is not None:
            self.timeout.cancel()
        if self.continuation is not None:
            self.continuation.cancel()
        server = self.server
        server.backlogged.discard(self)
        server.memory.connection_closed()
        server.connections.pop(self.id, None)
        server.broker.disconnect(self.id, server.clock())
        server.flush()

    def _arm_timeout(self, delay: float, check: Callable[[], None]) -> None:
        if delay > 0:
            self.timeout = asyncio.get_running_loop().call_later(delay, check)

    def _handshake_expired(self) -> None:
        limit = self.server.config.handshake_timeout
        self._time_out(f"no handshake within {limit:g} s; send the handshake first")

    def _check_idle(self) -> None:
        limit = self.server.config.idle_timeout
        if self.server.broker.awaiting_answers(self.id):
            # Waiting on a FETCH or on acks is not idle; look again within a second, so the
            # idle clock restarts when the wait ends (docs/PROTOCOL.md 4.4), not before.
            self.last_read = time.monotonic()
            self._arm_timeout(min(limit, 1.0), self._check_idle)
            return
        idle_for = time.monotonic() - self.last_read
        if idle_for < limit:
            self._arm_timeout(limit - idle_for, self._check_idle)
        else:
            self._time_out(f"idle for {limit:g} s; send PING to stay connected")

    def _time_out(self, text: str) -> None:
        log.info("conn=%d peer=%s closed: %s", self.id, self.peer, text)
        self.server.broker.send_error(self.id, ErrorCode.TIMEOUT, text, close=True)
        self.server.flush()


class BrokerServer:
    """Owns the listening socket and the connections; drives the broker core and the store thread.

    Everything it drives is handed in (see :func:`bbmq.app.build_server`): the
    core, the store thread with its store, and ``clock``, the wall clock in
    milliseconds that every call into the core is stamped with.
    """

    def __init__(self, broker: Broker, worker: StoreWorker, clock: Callable[[], int],
                 config: TransportConfig, *,
                 topic_requests: Callable[[list[str]], None] | None = None,
                 membership: Membership | None = None) -> None:
        self.config = config
        #: Registers before recovery, renews while serving, leaves after the store's last write.
        self.membership = membership
        self.broker = broker
        #: A cluster's membership (bbmq/app.py wires it; None for a single broker): it is
        #: handed the topics handshakes wait for after each turn, as the store its work.
        self.topic_requests = topic_requests
        self.store = worker.store
        self.clock = clock
        self.broker.status_provider = self.status
        self.connections: dict[int, Connection] = {}
        #: Connections not read until the store commits their publishes (MAX_OWED_REPLIES).
        self.backlogged: set[Connection] = set()
        self.memory = MemoryReleaser()
        self._memory_check: asyncio.TimerHandle | None = None
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self.worker = worker
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self.started_at_ms = clock()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "start() first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        """Open the store, recover its messages, then listen."""
        loop = self._loop = asyncio.get_running_loop()
        if not self.store.durable:
            log.warning("store is memory://: messages are NOT durable and are lost on restart")
        log.info("opening store %s", self.store.description)
        await asyncio.wrap_future(
            self.worker.start(loop.call_soon_threadsafe, self._stored, self._store_failed))
        log.info("store %s opened", self.store.description)
        membership = self.membership
        try:
            if membership is not None:  # before recovery: a refused broker loads nothing
                await loop.run_in_executor(None, membership.join)
            await self._recover()
            self._server = await loop.create_server(
                lambda: Connection(self, next(self._ids)),
                self.config.host, self.config.port, ssl=self._ssl_context(),
                reuse_address=True, backlog=1024)
        except BaseException:
            await loop.run_in_executor(None, self.worker.stop)  # close the store we opened
            if membership is not None:
                await loop.run_in_executor(None, membership.leave)
            raise
        if membership is not None:
            membership.start(loop, self.flush)
        host, port = self.address
        log.info("bbmq %s listening on %s:%d", __version__, host, port)
        self._check_memory()
        if not self.broker.config.authorizer.enabled and not is_loopback(self.config.host):
            log.warning("listening on %s WITHOUT authentication: anyone who can reach this "
                        "port can publish and consume; set --auth-tokens", self.config.host)

    async def _recover(self) -> None:
        if self.broker.config.cluster:
            return  # a cluster broker loads each topic as it acquires it (Broker.topic_acquired)
        worker = self.worker
        total = await asyncio.wrap_future(worker.call(self.store.count_pending))
        groups = await asyncio.wrap_future(worker.call(self.store.groups))
        records: Iterator[RecoveredMessage] = iter(())
        if total:
            log.info("recovering %d messages", total)
            records = await asyncio.wrap_future(worker.call(self.store.recover))
        loaded = self.broker.recover([], groups, self.clock())
        while True:
            chunk = await asyncio.wrap_future(
                worker.call(lambda: list(itertools.islice(records, RECOVERY_CHUNK))))
            if not chunk:
                break
            loaded += self.broker.recover(chunk, [], self.clock())
            log.info("recovering %d messages: %d%%", total, 100 * loaded // max(total, 1))
        if loaded:
            log.info("recovered %d messages", loaded)
        self.flush()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    def flush(self) -> None:
        """Encode and write every connection's pending frames (one write each), hand the store
        its work, re-arm the timer."""
        broker = self.broker
        while True:
            for session_id, frames, close in broker.take_output():
                if self._write(session_id, frames, close) and not close:
                    self._hand_over_later(session_id)
            if not broker.resume_throttled(self.clock()):
                break
        publishes, changes = broker.take_store_work()
        if publishes or len(changes):
            self.worker.submit(publishes, changes)
        if self.topic_requests is not None and (topics := broker.take_topic_requests()):
            self.topic_requests(topics)
        self._arm_timer()
        if self.backlogged:
            self._resume_caught_up()

    def _resume_caught_up(self) -> None:
        """Read again from the backlogged connections the store has half caught up with."""
        assert self._loop is not None
        for connection in [c for c in self.backlogged
                           if self.broker.replies_owed(c.id) < MAX_OWED_REPLIES // 2]:
            self.backlogged.discard(connection)
            connection.continuation = self._loop.call_soon(connection.hand_over)

    def write_output_of(self, session_id: int) -> bool:
        """Write one connection's frames now (the answer to its handshake); False if it closes."""
        frames, close = self.broker.take_output_of(session_id)
        self._write(session_id, frames, close)
        return not close

    def _write(self, session_id: int, frames: list[protocol.TypedFrame], close: bool) -> bool:
        """Encode ``frames`` through the connection's protocol state, write them, maybe close;
        True if they answered a handshake that had waited (``flush`` hands over what follows)."""
        connection = self.connections.get(session_id)
        if connection is None or connection.transport is None:
            return False
        answered = False
        if frames:
            answered = connection.protocol.state is protocol.State.AWAITING_ACK
            encoded = connection.protocol.send_all(frames)
            connection.bytes_out += len(encoded)
            connection.transport.write(encoded)
        if close:
            connection.transport.close()
        return answered and connection.protocol.state is not protocol.State.AWAITING_ACK

    def _hand_over_later(self, session_id: int) -> None:
        """A handshake answered after a wait (in a cluster, for its topic to be loaded): hand
        the core the frames that waited behind it, on the next turn."""
        connection = self.connections[session_id]
        if connection.continuation is None and connection not in self.backlogged:
            assert self._loop is not None
            connection.continuation = self._loop.call_soon(connection.hand_over)

    def call_core(self, call: Callable[[Broker, int], None]) -> None:
        """Run ``call(broker, now_ms)`` and send what it caused: how a cluster's membership
        thread changes the core (``loop.call_soon_threadsafe(server.call_core, ...)``)."""
        call(self.broker, self.clock())
        self.flush()

    def _arm_timer(self) -> None:
        deadline = self.broker.next_deadline()
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = deadline
        self._timer = self._loop.call_later(max(0.0, (deadline - self.clock()) / 1000), self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self.broker.tick(self.clock())
        self.flush()

    def _check_memory(self) -> None:
        """Give freed memory back after a large drain or many closes (bbmq/heap.py)."""
        self.memory.check(self.broker.queued_bytes)
        assert self._loop is not None
        self._memory_check = self._loop.call_later(CHECK_INTERVAL_S, self._check_memory)

    def _stored(self, publishes: list[PendingPublish], ids: list[StoredId]) -> None:
        self.broker.stored(publishes, ids, self.clock())
        self.flush()

    def _store_failed(self, publishes: list[PendingPublish], reason: str) -> None:
        self.broker.store_failed(publishes, reason)
        self.flush()

    async def stop(self, grace: float = 10.0) -> bool:
        """Stop accepting, let stored work finish, say goodbye to clients, close the store.

        Returns False if the store thread did not finish its writes within ``grace``.
        """
        log.info("shutting down: %d connections", len(self.connections))
        if self._server is not None:
            self._server.close()
        if self.membership is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.membership.stop)
        self.broker.accepting = False
        deadline = time.monotonic() + grace
        worker = self.worker
        while not worker.idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the worker thread has no awaitable; poll it briefly
        for session_id in list(self.connections):
            self.broker.send_error(session_id, ErrorCode.SERVER_CLOSING,
                                   "server is shutting down; reconnect after it restarts",
                                   close=True)
        self.flush()
        await asyncio.sleep(0)
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.abort()
        if self._timer is not None:
            self._timer.cancel()
        if self._memory_check is not None:
            self._memory_check.cancel()
        stopped = await asyncio.get_running_loop().run_in_executor(None, worker.stop, grace)
        if self.membership is not None:  # releases the leases: the others take them at once
            await asyncio.get_running_loop().run_in_executor(None, self.membership.leave)
        if not stopped:
            log.error("store thread did not finish within %.0f s: writes not yet committed "
                      "(acks, deliveries) are lost and those messages will be redelivered", grace)
        log.info("stopped")
        return stopped

    def describe_connections(self) -> list[ConnectionInfo]:
        """Every open connection, oldest first (the dashboard's connections page)."""
        return [ConnectionInfo(connection.id, connection.peer, connection.connected_ms,
                               connection.bytes_in, connection.bytes_out,
                               self.broker.describe_session(connection.id))
                for connection in self.connections.values()]

    def admin_command(self, command: str, params: dict[str, Any]) -> Any:
        """Run an ADMIN command for the dashboard, then flush what it changed (a purge's
        finished messages to the store, a deleted group's consumers their ERROR)."""
        try:
            return self.broker.admin_command(command, params, self.clock())
        finally:
            self.flush()

    def status(self) -> dict[str, Any]:
        host, port = self.address
        return {"pid": os.getpid(), "address": f"{host}:{port}", "store": self.store.description,
                "uptime_s": round((self.clock() - self.started_at_ms) / 1000, 1),
                "connections": len(self.connections), "store_available": self.worker.available,
                "log": log_destination()}


if __name__ == "__main__":
    # The seed's 'python -m bbmq.server start' is 'bbmq server start'.  The command is run
    # by its module name, not imported: the transport does not depend on the command line.
    sys.argv[1:1] = ["server"]
    runpy.run_module("bbmq", run_name="__main__", alter_sys=True)
