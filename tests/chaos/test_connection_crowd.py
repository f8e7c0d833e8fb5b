"""5,000 idle connections, slow writers, stalled readers and half-open connections,
while an honest producer/consumer pair keeps its latency.

The crowd, all on one broker process:
* ``IDLE`` connections that did their handshake and then say nothing;
* slow writers trickling a PUBLISH one byte at a time;
* stalled readers that FETCH a backlog of large messages and never read a byte;
* half-open connections: half a header then silence, or a handshake then a FIN
  (shutdown of their sending side) while they keep the connection.
The honest pair publishes one message and consumes it, over and over, before the
crowd arrives and while it is there; the test compares the two latencies.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from bbmq import protocol
from bbmq.client import Admin, Consumer, Producer
from bbmq.testing import BrokerProcess

from .harness import long_run, percentile, report

pytestmark = pytest.mark.slow

IDLE = 5000
SLOW_WRITERS = 50
STALLED_READERS = 20
HALF_OPEN = 200
#: Round trips (publish, then receive) measured before and with the crowd.
SAMPLES = 3000 if long_run() else 300
#: The pair's p99 with the crowd may be this many times its p99 without, or LATENCY_FLOOR_S.
LATENCY_FACTOR = 10
LATENCY_FLOOR_S = 0.1


def raise_fd_limit(wanted: int) -> None:
    """This process (and the broker it starts, which inherits it) may open ``wanted`` fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted or (
        resource.getrlimit(resource.RLIMIT_NOFILE)[0] == resource.RLIM_INFINITY), (
        f"cannot raise the open-file limit to {wanted} (hard limit {hard})")


def connect(port: int, *frames: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if frames:
        sock.sendall(b"".join(frames))
    return sock


def handshaken(port: int, frame: protocol.TypedFrame) -> socket.socket:
    """A connection whose handshake the broker has answered."""
    sock = connect(port, frame.encode())
    assert sock.recv(4096), "the broker closed a connection instead of answering its handshake"
    return sock


def round_trips(producer: Producer, consumer: Consumer, count: int) -> list[float]:
    """Seconds from publish to delivery, ``count`` times."""
    latencies = []
    for n in range(count):
        body = b"honest %d" % n
        started = time.monotonic()
        producer.publish(body)
        message = consumer.fetch(timeout=10)
        latencies.append(time.monotonic() - started)
        assert message is not None and message.body == body, message
        consumer.ack(message)
    return latencies


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def broker_connections(port: int) -> int:
    """How many connections the broker says it holds (this admin one included)."""
    with Admin(port=port) as admin:
        return int(admin.stats()["server"]["connections"])


@contextmanager
def trickling(sockets: list[socket.socket]) -> Iterator[None]:
    """Every socket gets one more byte of a PUBLISH every ~20 ms, until the block ends."""
    frame = protocol.Publish(b"x" * 200).encode()
    stop = threading.Event()

    def run() -> None:
        position = 0
        while not stop.wait(0.02):  # the writers' pace
            byte = frame[position % len(frame):][:1]
            for sock in sockets:
                with contextlib.suppress(OSError):  # the broker may close one; the rest go on
                    sock.send(byte)
            position += 1

    thread = threading.Thread(target=run, daemon=True, name="trickle")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.timeout(600)
def test_crowd_of_idle_slow_and_half_open_connections_keeps_an_honest_pair_fast(
    tmp_path: Path,
) -> None:
    total = IDLE + SLOW_WRITERS + STALLED_READERS + 2 * HALF_OPEN
    raise_fd_limit(total + 1000)
    with ExitStack() as stack:
        broker = stack.enter_context(BrokerProcess(tmp_path / "data"))
        producer = stack.enter_context(Producer("crowd.honest", port=broker.port))
        consumer = stack.enter_context(Consumer("crowd.honest", port=broker.port))
        round_trips(producer, consumer, 20)  # warm up
        alone = round_trips(producer, consumer, SAMPLES)

        crowd: list[socket.socket] = []
        stack.callback(close_all, crowd)
        started = time.monotonic()
        for n in range(IDLE):
            handshake = (protocol.ClientPublisher(f"crowd.idle{n % 10}") if n % 2 else
                         protocol.ClientSubscriber(f"crowd.idle{n % 10}", "g"))
            crowd.append(handshaken(broker.port, handshake))
        connect_s = time.monotonic() - started
        with Producer("crowd.flood", port=broker.port) as flood:
            flood.publish_many([b"f" * 65536] * 400)
        for _ in range(STALLED_READERS):
            crowd.append(
                connect(
                    broker.port,
                    protocol.ClientSubscriber("crowd.flood", "g").encode(),
                    protocol.Fetch(1000).encode(),
                )
            )
        for n in range(HALF_OPEN):
            crowd.append(connect(broker.port, b"HEAD PUB"))  # half a header, then silence
            half_closed = handshaken(broker.port, protocol.ClientPublisher(f"crowd.half{n}"))
            half_closed.shutdown(socket.SHUT_WR)
            crowd.append(half_closed)
        writers = [
            handshaken(broker.port, protocol.ClientPublisher("crowd.slow"))
            for _ in range(SLOW_WRITERS)
        ]
        crowd += writers
        with trickling(writers):
            crowded = round_trips(producer, consumer, SAMPLES)
        stats = broker_connections(broker.port)

    baseline_p99 = percentile(alone, 0.99)
    bound = max(LATENCY_FLOOR_S, LATENCY_FACTOR * baseline_p99)
    report(
        "connection crowd",
        idle=IDLE,
        slow_writers=SLOW_WRITERS,
        stalled_readers=STALLED_READERS,
        half_open=2 * HALF_OPEN,
        broker_connections=stats,
        connect_idle_s=connect_s,
        samples=SAMPLES,
        alone_p50_ms=1000 * percentile(alone, 0.5),
        alone_p99_ms=1000 * baseline_p99,
        crowd_p50_ms=1000 * percentile(crowded, 0.5),
        crowd_p99_ms=1000 * percentile(crowded, 0.99),
        crowd_worst_ms=1000 * max(crowded),
    )
    assert stats >= IDLE, f"the broker holds only {stats} connections"
    assert percentile(crowded, 0.99) <= bound, (
        f"p99 with the crowd {percentile(crowded, 0.99) * 1000:.1f} ms, "
        f"alone {baseline_p99 * 1000:.1f} ms (bound {bound * 1000:.0f} ms)"
    )
