"""What the cluster tests share: brokers over one database, a publish storm that remembers
when each confirm came, the lease table seen from outside, and the stored copies.

The claims under test:

* every message a publisher got a confirm for is stored exactly once (the publishers
  resend unconfirmed messages with their msgid, and the store keeps one copy per msgid),
  and can be consumed;
* failover is quick: from the last confirm before a fault to the first one after it.

Publishers here go through the cluster client (``Producer(topic, brokers=[...])``), which
follows REDIRECTs and resends with the same msgid; a publish that raises anyway is a
client error and is counted.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from bbmq import protocol
from bbmq.client import BrokerError, Consumer, Producer
from bbmq.store.mysql import parse_mysql_url
from bbmq.testing import BrokerProcess, free_port, wait_for, wait_until_answering

#: Lease TTL of the test clusters (ms): short, so a pause test stays short, long enough
#: that a loaded 2-core machine still renews in time.
TEST_TTL_MS = 3000
#: Rounds of kill -9 by default; BBMQ_CHAOS_ROUNDS asks for more.
DEFAULT_ROUNDS = 10

#: Figures reported by the tests, printed at the end of the run (see conftest).
REPORT: list[str] = []


def chaos_rounds() -> int:
    return int(os.environ.get("BBMQ_CHAOS_ROUNDS") or DEFAULT_ROUNDS)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def report(title: str, **figures: object) -> str:
    """Record one test's figures for the end-of-run summary, and return the line."""
    parts = [f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}"
             for name, value in figures.items()]
    line = f"{title}: " + " ".join(parts)
    REPORT.append(line)
    print(line)
    return line


# ----------------------------------------------------------------------------- brokers

class BrokerCluster:
    """``size`` cluster brokers on loopback; broker ``n`` uses ``store_urls[n % len]``."""

    def __init__(self, base_dir: Path, store_urls: list[str], size: int = 3, *,
                 ttl_ms: int = TEST_TTL_MS, **settings: Any) -> None:
        self.store_urls = store_urls
        self.ttl_ms = ttl_ms
        self.brokers: list[BrokerProcess] = []
        for number in range(size):
            port = free_port()
            self.brokers.append(BrokerProcess(
                base_dir / f"broker{number}", port=port,
                store=store_urls[number % len(store_urls)], cluster="true",
                advertise=f"127.0.0.1:{port}", lease_ttl_ms=str(ttl_ms), **settings))
        self.leases = LeaseView(store_urls[0])

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{broker.port}" for broker in self.brokers]

    def start(self, *, one_by_one: bool = False) -> BrokerCluster:
        """Launch every broker at once (``one_by_one``: each once the previous answers)."""
        for broker in self.brokers:
            broker.launch()
            if one_by_one:
                self._wait_answering(broker)
        for broker in self.brokers:
            self._wait_answering(broker)
        return self

    @staticmethod
    def _wait_answering(broker: BrokerProcess) -> None:
        assert broker.process is not None
        wait_until_answering(broker.process, broker.port, broker.log_path, 60)

    def broker_at(self, address: str) -> BrokerProcess:
        return next(b for b in self.brokers if f"127.0.0.1:{b.port}" == address)

    def owner(self, topic: str) -> BrokerProcess | None:
        """The running broker the lease table names as ``topic``'s live owner, if any."""
        address = self.leases.owner_address(topic)
        if address is None:
            return None
        with contextlib.suppress(StopIteration):
            broker = self.broker_at(address)
            if broker.process is not None and broker.process.poll() is None:
                return broker
        return None

    def wait_for_owner(self, topic: str, timeout: float = 30.0) -> BrokerProcess:
        return wait_for(lambda: self.owner(topic), f"a live owner of {topic}", timeout)

    def logs(self) -> str:
        return "\n".join(f"--- broker on {b.port}:\n{b.log()[-3000:]}" for b in self.brokers)

    def kill_all(self) -> None:
        for broker in self.brokers:
            with contextlib.suppress(ProcessLookupError):
                broker.kill()


@contextlib.contextmanager
def running_cluster(base_dir: Path, store_urls: list[str], size: int = 3, *,
                    one_by_one: bool = False, **options: Any) -> Iterator[BrokerCluster]:
    cluster = BrokerCluster(base_dir, store_urls, size, **options)
    try:
        yield cluster.start(one_by_one=one_by_one)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.kill_all()


def mysql_connection(url: str) -> pymysql.Connection:
    params = parse_mysql_url(url)
    return pymysql.connect(host=params.host, port=params.port, user=params.user,
                           password=params.password, database=params.database,
                           connect_timeout=3, read_timeout=10, autocommit=True)


class LeaseView:
    """The cluster's tables read from outside, as an operator would with a SQL client."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = parse_mysql_url(url).table_prefix or "bbmq_"

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        conn = mysql_connection(self.url)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        except pymysql.err.ProgrammingError:
            return []  # the tables are not there yet
        finally:
            conn.close()

    def owner_address(self, topic: str) -> str | None:
        """The advertised address of the broker whose lease on ``topic`` is current."""
        rows = self._rows(
            f"SELECT b.address FROM {self.prefix}leases l JOIN {self.prefix}brokers b "
            "ON b.id = l.owner WHERE l.topic = %s AND l.lease_until > NOW(6)", (topic,))
        return str(rows[0][0]) if rows else None

    def epoch(self, topic: str) -> int:
        rows = self._rows(f"SELECT epoch FROM {self.prefix}leases WHERE topic = %s", (topic,))
        return int(rows[0][0]) if rows else 0

    def stored_ids(self, topic: str) -> dict[bytes, list[int]]:
        """The ids of the rows each body of ``topic`` has in the messages table."""
        rows = self._rows(f"SELECT body, id FROM {self.prefix}messages WHERE topic = %s",
                          (topic,))
        ids: dict[bytes, list[int]] = {}
        for body, message_id in rows:
            ids.setdefault(bytes(body), []).append(int(message_id))
        return ids

    def stored_copies(self, topic: str) -> Counter[bytes]:
        """How many rows each body of ``topic`` has in the messages table."""
        return Counter({body: len(ids) for body, ids in self.stored_ids(topic).items()})


# ----------------------------------------------------------------------------- storm

@dataclass
class Confirms:
    """Every confirm a storm got, and every error its publishers saw."""

    times: list[float] = field(default_factory=list)  # monotonic, in arrival order
    bodies: dict[bytes, int] = field(default_factory=dict)  # body -> message id
    errors: list[str] = field(default_factory=list)


class ConfirmStorm:
    """``threads`` cluster producers publishing unique bodies to ``topic`` until stopped."""

    def __init__(self, brokers: list[str], topic: str, *, threads: int = 4,
                 timeout_s: float = 10.0, retry_for_s: float = 60.0, tag: str = "") -> None:
        self.brokers = brokers
        self.topic = topic
        self.timeout_s = timeout_s
        self.retry_for_s = retry_for_s
        self.tag = tag or topic
        self.confirms = Confirms()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True,
                                          name=f"storm-{topic}-{n}") for n in range(threads)]

    def _run(self, number: int) -> None:
        producer = Producer(self.topic, brokers=self.brokers,
                            timeout=self.timeout_s, retry_for=self.retry_for_s)
        sequence = 0
        while not self._stop.is_set():
            body = f"{self.tag}-{number}-{sequence}".encode()
            sequence += 1
            try:
                message_id = producer.publish(body)
            except (BrokerError, OSError) as error:
                with self._lock:
                    self.confirms.errors.append(f"{type(error).__name__}: {error}")
                self._stop.wait(0.05)  # a client backing off, not a synchronisation
                continue
            now = time.monotonic()
            with self._lock:
                self.confirms.times.append(now)
                self.confirms.bodies[body] = message_id
        with contextlib.suppress(BrokerError, OSError):
            producer.close()

    def count(self) -> int:
        with self._lock:
            return len(self.confirms.times)

    def confirmed_after(self, moment: float) -> float | None:
        """The time of the first confirm after ``moment``, if one came."""
        with self._lock:
            index = bisect.bisect_right(self.confirms.times, moment)
            return self.confirms.times[index] if index < len(self.confirms.times) else None

    def last_before(self, moment: float) -> float | None:
        with self._lock:
            index = bisect.bisect_left(self.confirms.times, moment)
            return self.confirms.times[index - 1] if index else None

    def wait_for_more(self, count: int, timeout: float = 60.0) -> None:
        floor = self.count() + count
        wait_for(lambda: self.count() >= floor, f"{count} more confirms on {self.topic}",
                 timeout)

    def gap_around(self, moment: float, timeout: float) -> float:
        """Wait for the first confirm after ``moment``; return it minus the last one before."""
        after = wait_for(lambda: self.confirmed_after(moment),
                         f"a confirm on {self.topic} after the fault", timeout)
        before = self.last_before(moment) or moment
        return after - before

    def longest_stall_after(self, moment: float) -> float:
        """The longest time without a confirm from ``moment`` on (counting from the last
        confirm before it): the outage a fault caused when confirms in flight still came
        in just after it."""
        with self._lock:
            index = bisect.bisect_left(self.confirms.times, moment)
            times = self.confirms.times[max(0, index - 1):]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def start(self) -> ConfirmStorm:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Confirms:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.retry_for_s + self.timeout_s + 10)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        return self.confirms


@contextlib.contextmanager
def confirm_storm(brokers: list[str], topic: str, **options: Any) -> Iterator[ConfirmStorm]:
    running = ConfirmStorm(brokers, topic, **options).start()
    try:
        yield running
    finally:
        running.stop()


def drain(brokers: list[str], topic: str, *, quiet_s: float = 3.0) -> list[bytes]:
    """Every message of ``topic`` the default group still has, acked as it is read."""
    bodies: list[bytes] = []
    with Consumer(topic, brokers=brokers, timeout=30,
                  prefetch=500) as consumer:
        while (message := consumer.fetch(timeout=quiet_s)) is not None:
            bodies.append(message.body)
            consumer.ack(message)
    return bodies


@dataclass(frozen=True)
class Losses:
    """Confirmed bodies missing from the store, and bodies stored more than once."""

    missing: list[bytes]
    duplicated: list[bytes]


def check_stored(leases: LeaseView, topic: str, confirms: Confirms) -> Losses:
    copies = leases.stored_copies(topic)
    return Losses(missing=[b for b in confirms.bodies if copies[b] == 0],
                  duplicated=[b for b, n in copies.items() if n > 1])


# ----------------------------------------------------------------------------- raw frames

class RawPublisher:
    """A publisher speaking frames on one socket, to see exactly what one broker answers
    (the cluster client would follow a REDIRECT or resend by itself)."""

    def __init__(self, port: int, topic: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = protocol.FrameDecoder(max_body_bytes=1 << 24)
        self.frames: list[protocol.TypedFrame] = []
        self.closed = False
        self.send(protocol.ClientPublisher(topic))
        [answer] = self.receive(1)
        assert isinstance(answer, protocol.ServerAcknowledgement), answer

    def send(self, *frames: protocol.TypedFrame) -> None:
        self.sock.sendall(b"".join(frame.encode() for frame in frames))

    def _read(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
        self.frames += [protocol.parse(f, protocol.SERVER_FRAMES)
                        for f in self.decoder.feed(data)]

    def receive(self, count: int, timeout: float = 10.0) -> list[protocol.TypedFrame]:
        """Exactly ``count`` frames, waiting up to ``timeout`` seconds for them."""
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            if self.closed or time.monotonic() >= deadline:
                raise AssertionError(f"wanted {count} frames, got {self.frames!r}")
            self._read(deadline - time.monotonic())
        taken, self.frames = self.frames[:count], self.frames[count:]
        return taken

    def read_until_closed(self, timeout: float) -> list[protocol.TypedFrame]:
        """Every frame until the broker closes the connection (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            if time.monotonic() >= deadline:
                raise AssertionError(f"the broker did not close; frames so far {self.frames!r}")
            with contextlib.suppress(TimeoutError):
                self._read(deadline - time.monotonic())
        taken, self.frames = self.frames, []
        return taken

    def close(self) -> None:
        self.sock.close()
