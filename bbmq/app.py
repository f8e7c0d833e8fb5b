"""The composition root: the user's settings become a broker, and a broker a process.

Every other module is handed what it works with; only this one knows how the
pieces fit.  :func:`build_server` turns the typed :class:`~bbmq.config.Config`
into the store, the wall clock, the broker core, the store thread and the
transport, each given to the next.  :func:`serve` runs the result the way a
process must: signal handlers, garbage-collector tuning, the HTTP side (dashboard,
API, metrics: bbmq/dashboard/), and a drain
on the way out.  ``bbmq server run``, the daemon and
:class:`bbmq.testing.BrokerController` all start brokers through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import logging.handlers
import signal
import ssl
import time
from collections.abc import Callable
from typing import Any, Final, Literal

from bbmq._version import __version__
from bbmq.auth import Authorizer
from bbmq.cluster.joining import new_broker_id
from bbmq.cluster.member import ClusterMember
from bbmq.cluster.seat import CoreSeat
from bbmq.config import Config
from bbmq.core import Broker, BrokerConfig
from bbmq.dashboard import DashboardSources, HttpServer, start_http
from bbmq.dlq_replay import ReplayOutcome, replay_dead_letters
from bbmq.metrics import MetricsSources
from bbmq.server import BrokerServer
from bbmq.server_facts import ConnectionInfo, TransportConfig
from bbmq.store import MySQLStore, open_store
from bbmq.store.leases import LeaseTable
from bbmq.store.worker import StoreWorker

#: Ids a cluster broker reserves at a time (and afresh with each topic it takes), so that
#: brokers do not contend on one sequence row.
ID_BLOCK_SIZE: Final = 10_000
#: The broker process's own lines (signals, start and stop) keep the server's logger name.
log = logging.getLogger("bbmq.server")


def wall_clock_ms() -> int:
    """Milliseconds since the epoch: what the broker stamps messages, leases and timers with."""
    return int(time.time() * 1000)


def build_server(config: Config, clock: Callable[[], int] = wall_clock_ms) -> BrokerServer:
    """A broker for ``config``, wired but not started: nothing is opened or bound yet.

    On a mysql:// store a :class:`~bbmq.cluster.member.ClusterMember` joins it: a
    cluster broker's (``--cluster``) leases its topics and fences the store's
    writes; a single broker's only registers and heartbeats, so that no second
    broker uses the same database unnoticed.
    """
    broker = Broker(BrokerConfig(
        cluster=config.cluster,
        version=__version__,
        max_message_bytes=config.max_message_size,
        ack_timeout_ms=int(config.ack_timeout * 1000),
        max_attempts=config.max_attempts,
        dead_letter_expired=config.dead_letter_expired,
        max_queued_bytes=config.max_queued_bytes,
        max_messages_per_topic=config.max_messages_per_topic,
        max_output_bytes=config.max_output_bytes,
        idle_timeout_ms=int(config.idle_timeout * 1000),
        authorizer=Authorizer.parse(config.auth_tokens),
    ))
    store = open_store(config.store, config.data_path,
                       retention_ms=int(config.retention * 1000),
                       dedup_window_ms=int(config.dedup_window * 1000),
                       password=config.store_password,
                       connect_timeout_s=config.store_connect_timeout,
                       io_timeout_s=config.store_io_timeout)
    seat = CoreSeat(broker, clock)
    member = build_member(config, broker, seat, store) if isinstance(store, MySQLStore) else None
    clustered = member if config.cluster else None  # its writes are fenced by its leases
    worker = StoreWorker(store, clock=clock, max_batch=config.max_batch,
                         fence=None if clustered is None else clustered.fence,
                         on_fenced=None if clustered is None else clustered.on_fenced)
    seat.worker = worker
    transport = TransportConfig(
        host=config.host, port=config.port, max_message_size=config.max_message_size,
        max_connections=config.max_connections, max_output_bytes=config.max_output_bytes,
        handshake_timeout=config.handshake_timeout, idle_timeout=config.idle_timeout,
        tls_cert=config.tls_cert, tls_key=config.tls_key)
    return BrokerServer(broker, worker, clock, transport, membership=member,
                        topic_requests=None if clustered is None else clustered.request_topics)


def build_member(config: Config, broker: Broker, seat: CoreSeat,
                 store: MySQLStore) -> ClusterMember:
    """The broker's member of the brokers and leases tables, with connections of its own:
    one for the lease table, one store to load the topics it takes."""
    mode: Literal["single", "cluster"] = "cluster" if config.cluster else "single"
    own_store = MySQLStore(config.store, password=config.store_password, causal_reads=True,
                           connect_timeout_s=store.connect_timeout_s,
                           io_timeout_s=store.io_timeout_s, table_prefix=store.prefix)
    member = ClusterMember(
        table=LeaseTable(store.connector(), store.prefix, config.lease_ttl_ms), store=own_store,
        seat=seat, broker_id=new_broker_id(),
        address=config.advertised_address(config.port), mode=mode,
        ttl_ms=config.lease_ttl_ms,
        fresh_id_block=store.fresh_id_block if config.cluster else None)
    broker.admin.commands.update(drain=member.drain, cluster=member.status)
    if config.cluster:
        store.use_id_blocks(ID_BLOCK_SIZE)
    return member


def collect_rarely() -> None:
    """Make the cyclic GC cheap for a process that holds many long-lived small objects.

    Queued messages, leases and msgid records live for seconds to hours, and
    with CPython's default thresholds (a collection every 700 allocations) the
    GC keeps re-scanning them: about a third of the broker's time under load.
    Collections run a hundred times less often; the broker makes few reference
    cycles, and the ones it makes (a closed session and its leases) are still
    collected.
    """
    gc.set_threshold(70_000, 20, 20)


async def serve(config: Config, ready: asyncio.Future[BrokerServer] | None = None) -> bool:
    """Run a broker until SIGTERM/SIGINT, then drain; True if the drain finished cleanly.

    SIGHUP reopens log files (after logrotate) when logging goes to a
    WatchedFileHandler, as the daemon's does; otherwise it is only logged.
    """
    server = build_server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # From the first moment: a SIGTERM during a long recovery (or a hung database) ends
    # the start instead of being ignored (as PID 1 in a container would) or killing us.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log_files = [handler for handler in logging.getLogger().handlers
                 if isinstance(handler, logging.handlers.WatchedFileHandler)]

    def reopen_log_files() -> None:
        for handler in log_files:
            handler.reopenIfNeeded()
        log.info("SIGHUP: log file reopened")

    loop.add_signal_handler(signal.SIGHUP, reopen_log_files if log_files else lambda: log.info(
        "SIGHUP: no log file to reopen (logging to stderr)"))
    collect_rarely()  # before recovery too: it allocates a million objects in seconds
    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("stop requested while starting: the start is abandoned, nothing was served")
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting  # closes the store it may have opened
        return True
    stopping.cancel()
    starting.result()  # the start's own error, if it failed
    gc.collect()
    gc.freeze()  # what recovery loaded stays out of the collector's sight
    http: HttpServer | None = None
    try:
        if config.effective_http_port:
            http = await start_http(dashboard_sources(server, config), config.host,
                                    config.effective_http_port, wall_clock_ms)
        if ready is not None:
            ready.set_result(server)
        await stop.wait()
    finally:
        if http is not None:
            await http.close()
        clean = await server.stop()
    return clean


def dashboard_sources(server: BrokerServer, config: Config) -> DashboardSources:
    """What the HTTP side reads and runs, from the running server.

    DLQ replay is the CLI's own (:func:`bbmq.dlq_replay.replay_dead_letters`),
    run against this broker's port with the logged-in token; with TLS on, its
    clients trust exactly this broker's certificate.
    """
    host, port = server.address
    tls: bool | ssl.SSLContext = False
    if config.tls_cert:
        tls = ssl.create_default_context(cafile=config.tls_cert)
        tls.check_hostname = False  # our own certificate, on our own address

    def replay(topic: str, group: str, token: str | None) -> ReplayOutcome:
        return replay_dead_letters(topic, group, host=host, port=port, token=token, tls=tls,
                                   name="bbmq-dashboard-replay")

    return DashboardSources(
        version=__version__, snapshot=server.broker.snapshot, status=server.status,
        connections=lambda: [connection_row(info) for info in server.describe_connections()],
        admin_command=server.admin_command, replay=replay,
        authorizer=server.broker.config.authorizer, read_only=config.dashboard_read_only,
        metrics=MetricsSources(server.broker.snapshot, lambda: len(server.connections),
                               server.worker, cluster_counters(server)))


def cluster_counters(server: BrokerServer) -> Callable[[], dict[str, int]] | None:
    """What the metrics read of a cluster broker's membership; None outside a cluster."""
    member = server.membership
    if not isinstance(member, ClusterMember) or not member.clustered:
        return None
    return lambda: dataclasses.asdict(member.counters)


def connection_row(info: ConnectionInfo) -> dict[str, Any]:
    """One connection as the dashboard's JSON shows it."""
    session = info.session
    return {"id": info.id, "peer": info.peer, "connected_ms": info.connected_ms,
            "bytes_in": info.bytes_in, "bytes_out": info.bytes_out,
            "role": "none" if session is None else session.role,
            "topic": "" if session is None else session.topic,
            "group": "" if session is None else session.group,
            "name": None if session is None else session.name,
            "inflight": 0 if session is None else session.inflight}
