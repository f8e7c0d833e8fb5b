"""Hostile input, limits and slow clients: the daemon stays up and loses nothing."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbmq import Consumer, Producer, protocol
from bbmq.core import Broker, PendingPublish, Session
from bbmq.protocol import ErrorCode
from bbmq.store.base import Batch, NewMessage, StoredId, WriteRequest
from bbmq.store.memory import MemoryStore
from bbmq.store.sqlite import SQLiteStore
from bbmq.store.worker import StoreWorker
from bbmq.testing import BrokerController, BrokerProcess

from .conftest import RawClient
from .mysql_support import isolated_mysql_url


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def admin(port: int, command: str, **params: object) -> object:
    client = RawClient(port)
    try:
        client.handshake(protocol.ClientAdmin())
        client.send(protocol.AdminCommand(command, dict(params)))
        [result] = client.receive()
        assert isinstance(result, protocol.AdminResult), result
        return result.result
    finally:
        client.close()


def hostile_payloads(rng: random.Random) -> Iterator[tuple[str, bytes, bool]]:
    """(kind, bytes to send, half-close afterwards) for one hostile connection each."""
    fixed = [
        ("truncated frame", protocol.Publish(b"x" * 50).encode()[:30], False),
        ("header without CRLF", b"HEAD PUBLISH 10", True),
        ("100 MB size field", b"HEAD PUBLISH 100000000\r\n", False),
        ("megabyte header line", b"HEAD " + b"A" * 2_000_000, False),
        ("unknown verb", protocol.encode("DESTROY_EVERYTHING"), False),
        ("publish before handshake", protocol.Publish(b"sneaky").encode(), False),
        ("http request", b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", False),
        ("half-closed handshake", protocol.ClientSubscriber("honest", "workers").encode(), True),
        ("wrong tail", b"HEAD PING 0\r\nTALE\r\n", False),
        ("negative size", b"HEAD PUBLISH -5\r\n", False),
        ("nul in header", b"HEAD PUB\x00LISH 0\r\nTAIL\r\n", False),
        ("bad json handshake", protocol.encode("CLIENT_PUBLISHER", ("honest",), b"{nope"), False),
        ("deep json", protocol.encode("CLIENT_PUBLISHER", ("honest",), b"[" * 100_000), False),
    ]
    yield from fixed
    frames = [
        f.encode()
        for f in (
            protocol.ClientPublisher("hostile"),
            protocol.Publish(b"x"),
            protocol.Fetch(3, 5),
            protocol.Ack((1, 2)),
            protocol.Nack(1),
            protocol.Ping(),
        )
    ]
    while True:
        choice = rng.random()
        if choice < 0.4:
            yield "random bytes", rng.randbytes(rng.randint(1, 4096)), rng.random() < 0.5
        elif choice < 0.8:  # valid frames with bytes flipped
            data = bytearray(b"".join(rng.choices(frames, k=rng.randint(1, 6))))
            for _ in range(rng.randint(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            yield "mutated frames", bytes(data), rng.random() < 0.5
        else:  # valid frames cut anywhere
            data = b"".join(rng.choices(frames, k=rng.randint(1, 6)))
            yield "cut frames", data[: rng.randrange(1, len(data) + 1)], True


def poke(port: int, payload: bytes, half_close: bool) -> None:
    """One hostile connection: send, maybe half-close, read a little, go."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.05)
            sock.recv(65536)
        except OSError:
            pass  # the broker closing on us is one of the right answers


def run_honest_pair(
    port: int, count: int, received: list[int], failures: list[BaseException]
) -> list[threading.Thread]:
    def produce() -> None:
        try:
            with Producer("honest", port=port) as producer:
                for start in range(0, count, 100):
                    producer.publish_many([b"%d" % i for i in range(start, start + 100)])
        except BaseException as error:
            failures.append(error)

    def consume() -> None:
        try:
            with Consumer("honest", "workers", port=port) as consumer:
                for message in consumer:
                    received.append(int(message.body))
                    consumer.ack(message)
                    if len(received) == count:
                        return
        except BaseException as error:
            failures.append(error)

    threads = [
        threading.Thread(target=produce, daemon=True),
        threading.Thread(target=consume, daemon=True),
    ]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.slow
def test_hostile_connections_while_an_honest_pair_runs(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", max_connections=64, handshake_timeout=2) as broker:
        Consumer("honest", "workers", port=broker.port).connect().close()  # group first
        received: list[int] = []
        failures: list[BaseException] = []
        count = 5_000
        threads = run_honest_pair(broker.port, count, received, failures)
        rng = random.Random(20261125)
        tried: dict[str, int] = {}
        deadline = time.monotonic() + 25
        for kind, payload, half_close in hostile_payloads(rng):
            poke(broker.port, payload, half_close)
            tried[kind] = tried.get(kind, 0) + 1
            if sum(tried.values()) >= 1_500 or time.monotonic() > deadline:
                break
        # Someone else's ids: a second member of the group acks what it was never given.
        thief = RawClient(broker.port)
        thief.handshake(protocol.ClientSubscriber("honest", "workers"))
        thief.send(protocol.Ack(tuple(range(1, 200))))
        [error] = thief.receive()
        assert isinstance(error, protocol.Error) and error.code == ErrorCode.UNKNOWN_MESSAGE
        thief.close()
        # A flood past the connection limit is refused at once, not left hanging.
        flood = [socket.create_connection(("127.0.0.1", broker.port)) for _ in range(80)]
        refused = 0
        started = time.monotonic()
        for sock in flood:
            sock.settimeout(0.5)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            refused += b"SERVER_BUSY" in data
        assert refused >= 80 - 64, "connections over the limit must get SERVER_BUSY"
        assert time.monotonic() - started < 30
        for sock in flood:
            sock.close()
        for thread in threads:
            thread.join(120)
        assert not failures, failures
        assert sorted(received) == list(range(count)), "the honest pair lost messages"
        assert broker.process is not None and broker.process.poll() is None
        assert rss_bytes(broker.pid) < 300 * 1024 * 1024
        topics = admin(broker.port, "topics")
        assert isinstance(topics, list) and "honest" in topics
        assert all(protocol.check_name("topic", name) for name in topics)
        print(f"hostile inputs tried: {sum(tried.values())} {tried}")


def test_slow_consumer_gets_fewer_messages_not_unbounded_buffers(tmp_path: Path) -> None:
    with BrokerController(data_dir=tmp_path, max_output_bytes=64 * 1024) as broker:
        slow = socket.create_connection(("127.0.0.1", broker.port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        slow.sendall(
            protocol.ClientSubscriber("bulk", "slow").encode() + protocol.Fetch(100_000).encode()
        )
        fast = Consumer("bulk", "fast", port=broker.port).connect()
        body = b"z" * 10_000
        with Producer("bulk", port=broker.port) as producer:
            producer.publish_many([body] * 2_000)
        for got, message in enumerate(fast, start=1):
            fast.ack(message)
            if got == 2_000:
                break
        stats = admin(broker.port, "stats")
        slow_group = stats["topics"]["bulk"]["groups"]["slow"]  # type: ignore[index]
        assert slow_group["inflight"] < 1_000, slow_group  # socket buffers + one cap's worth
        assert slow_group["ready"] + slow_group["inflight"] == 2_000
        fast.close()
        slow.close()


def test_memory_bound_refuses_publishers_until_consumers_catch_up(tmp_path: Path) -> None:
    with BrokerController(data_dir=tmp_path, max_queued_bytes=100_000) as broker:
        raw = RawClient(broker.port)
        raw.handshake(protocol.ClientPublisher("full"))
        raw.send(*(protocol.Publish(b"m" * 10_000) for _ in range(12)))
        replies = raw.receive(12)
        acked = [r for r in replies if isinstance(r, protocol.ProducerAckMessage)]
        refused = [r for r in replies if isinstance(r, protocol.Error)]
        assert 8 <= len(acked) <= 10 and refused
        assert all(r.code == ErrorCode.SERVER_BUSY for r in refused)
        with Consumer("full", port=broker.port) as consumer:
            for _ in acked:
                message = consumer.fetch(timeout=5)
                assert message is not None
                consumer.ack(message)
        raw.send(protocol.Publish(b"room again"))
        [reply] = raw.receive()
        assert isinstance(reply, protocol.ProducerAckMessage)
        raw.close()


def test_idle_timeout_and_ping_keepalive(tmp_path: Path) -> None:
    with BrokerController(data_dir=tmp_path, idle_timeout=0.3) as broker:
        idle = RawClient(broker.port)
        idle.handshake(protocol.ClientSubscriber("quiet"))
        alive = RawClient(broker.port)
        alive.handshake(protocol.ClientSubscriber("quiet"))
        for _ in range(8):  # 0.8 s of pings every 0.1 s: well past the idle timeout
            alive.send(protocol.Ping())
            assert alive.receive() == [protocol.Pong()]
            time.sleep(0.1)  # the client's pace, not a synchronization
        [error] = idle.receive(timeout=5)
        assert isinstance(error, protocol.Error) and error.code == ErrorCode.TIMEOUT
        assert idle.closed_by_server()
        idle.close()
        alive.close()


SQLISH = ["x';DROP_TABLE_bbmq_messages;--", '"OR_1=1--', "a`b", "%s", "\\x00", "é", "a b"]


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
    else:
        with isolated_mysql_url() as url:
            yield url


def test_sql_looking_and_binary_input_through_every_entry_point(
    tmp_path: Path, store_url: str
) -> None:
    with BrokerController(data_dir=tmp_path, store=store_url) as broker:
        for name in SQLISH:
            for head in (
                b"CLIENT_PUBLISHER " + name.encode(),
                b"CLIENT_SUBSCRIBER ok " + name.encode(),
            ):
                raw = RawClient(broker.port)
                raw.send(b"HEAD " + head + b" 0\r\nTAIL\r\n")
                [reply] = raw.receive()
                assert isinstance(reply, protocol.Error), (name, reply)
                assert reply.code in (ErrorCode.BAD_NAME, ErrorCode.INVALID_PROTOCOL)
                raw.close()
        raw = RawClient(broker.port)  # a topic named like a table is just a name
        raw.handshake(protocol.ClientPublisher("bbmq_messages", {"name": SQLISH[0]}))
        bodies = [s.encode() for s in SQLISH] + [b"\x00\xff'\"TAIL\r\n"]
        for index, body in enumerate(bodies):
            raw.send(protocol.Publish(body, msgid=f"';DELETE_FROM_x;--{index}"))
        replies = raw.receive(len(bodies))
        assert all(isinstance(r, protocol.ProducerAckMessage) for r in replies)
        raw.send(protocol.Publish(b"again", msgid="';DELETE_FROM_x;--0"))  # a repeat: same id back
        [repeat] = raw.receive()
        assert repeat == replies[0]
        raw.close()
        assert admin(broker.port, "peek", topic="bbmq_messages", n=1)[0]["sender"] == SQLISH[0]  # type: ignore[index]
        result = admin_error(broker.port, "purge", topic=SQLISH[0])
        assert result.code == ErrorCode.BAD_NAME
        with Consumer("bbmq_messages", port=broker.port) as consumer:
            got = [consumer.fetch(timeout=5) for _ in bodies]
            assert [m.body for m in got if m] == bodies


def admin_error(port: int, command: str, **params: object) -> protocol.Error:
    client = RawClient(port)
    try:
        client.handshake(protocol.ClientAdmin())
        client.send(protocol.AdminCommand(command, dict(params)))
        [result] = client.receive()
        assert isinstance(result, protocol.Error), result
        return result
    finally:
        client.close()


def test_extreme_numbers_and_wrong_types_get_errors_and_the_store_keeps_working(
    tmp_path: Path, store_url: str
) -> None:
    """Values at the edge of every numeric field: refused with an ERROR, never a dead
    store thread (a delay past 64 bits once stalled every publisher of a SQLite broker)."""
    huge = str(protocol.MAX_DURATION_MS + 1)
    with BrokerController(data_dir=tmp_path, store=store_url) as broker:
        publisher = RawClient(broker.port)
        publisher.handshake(protocol.ClientPublisher("edges"))
        refused = [
            f"delay={huge}",
            f"ttl={huge}",
            "delay=9223372036854775807",
            "ttl=99999999999999999999999",
        ]
        for option in refused:
            publisher.send(b"HEAD PUBLISH %s 1\r\nxTAIL\r\n" % option.encode())
        replies = publisher.receive(len(refused))
        assert [r.code for r in replies] == [ErrorCode.INVALID_PROTOCOL] * len(refused)  # type: ignore[attr-defined]
        publisher.send(
            protocol.Publish(b"far", delay_ms=protocol.MAX_DURATION_MS), protocol.Publish(b"now")
        )
        far, now = publisher.receive(2)
        assert isinstance(far, protocol.ProducerAckMessage) and isinstance(
            now, protocol.ProducerAckMessage
        )
        for garbage in (b"HEAD PING x 0\r\nTAIL\r\n", b"HEAD PING a=b 0\r\nTAIL\r\n"):
            publisher.send(garbage)
            [error] = publisher.receive()
            assert isinstance(error, protocol.Error) and error.code == ErrorCode.INVALID_PROTOCOL
        publisher.close()

        subscriber = RawClient(broker.port)
        subscriber.handshake(protocol.ClientSubscriber("edges", "g"))
        subscriber.send(
            b"HEAD FETCH 1 %s 0\r\nTAIL\r\n" % huge.encode(),
            b"HEAD NACK 1 delay=%s 0\r\nTAIL\r\n" % huge.encode(),
            protocol.Fetch(1),
        )
        first, second, message = subscriber.receive(3)
        assert first.code == second.code == ErrorCode.INVALID_PROTOCOL  # type: ignore[attr-defined]
        assert isinstance(message, protocol.Message) and message.body == b"now"
        subscriber.close()

        for params in (
            {"topic": "edges", "n": 10**20},
            {"topic": "edges", "n": True},
            {"topic": "edges", "n": -1},
        ):
            assert admin_error(broker.port, "peek", **params).code == ErrorCode.INVALID_PROTOCOL
        for command, params in (
            ("purge", {"topic": "edges", "group": ""}),
            ("peek", {"topic": 5}),
            ("purge", {"topic": ["edges"]}),
        ):
            assert admin_error(broker.port, command, **params).code == ErrorCode.BAD_NAME
        queued = admin(broker.port, "peek", topic="edges", group="g", n=5)
        assert sorted(m["body"] for m in queued) == ["far", "now"]  # type: ignore[attr-defined,index]
        for name in (5, True, ["a"]):
            raw = RawClient(broker.port)
            raw.send(protocol.ClientPublisher("edges", {"name": name}))
            [error] = raw.receive()
            assert isinstance(error, protocol.Error) and error.code == ErrorCode.BAD_NAME, name
            raw.close()


class RefusesOneBatch(SQLiteStore):
    """A real SQLite store whose first write fails the way a refused value does."""

    refused = False

    def write(self, batch: Batch, now_ms: int) -> list[StoredId]:
        if not self.refused:
            self.refused = True
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return super().write(batch, now_ms)


def test_the_store_thread_outlives_a_batch_the_database_refuses(tmp_path: Path) -> None:
    stored: list[int] = []
    failed: list[str] = []
    done = threading.Condition()

    def on_stored(publishes: list[PendingPublish], ids: list[StoredId]) -> None:
        with done:
            stored.extend(stored_id.id for stored_id in ids)
            done.notify_all()

    def on_failed(publishes: list[PendingPublish], reason: str) -> None:
        with done:
            failed.extend(reason for _ in publishes)
            done.notify_all()

    broker = Broker()
    session = broker.sessions.setdefault(1, Session(1))

    def publish(body: bytes) -> PendingPublish:
        return PendingPublish(session, NewMessage("t", body, None, 1_000))

    worker = StoreWorker(RefusesOneBatch(tmp_path / "s.sqlite3"), clock=lambda: 1_000)
    worker.start(lambda fn, *args: fn(*args), on_stored, on_failed).result(10)
    try:
        worker.submit([publish(b"poison")], Batch())
        with done:
            assert done.wait_for(lambda: failed, timeout=10)
        assert "too large" in failed[0]
        deadline = time.monotonic() + 10
        while not stored and time.monotonic() < deadline:  # retried until past the backoff
            worker.submit([publish(b"fine")], Batch())
            with done:
                done.wait_for(lambda: stored, timeout=0.2)
        assert stored, f"the store thread stopped writing (failures: {failed})"
    finally:
        assert worker.stop(10)


class RecordsPrunes(MemoryStore):
    """A memory store that remembers the time of every prune it was asked for."""

    def __init__(self) -> None:
        super().__init__(retention_ms=1_000)
        self.pruned_at: list[int] = []

    def prune(self, now_ms: int) -> int:
        self.pruned_at.append(now_ms)
        return super().prune(now_ms)


def test_the_store_thread_gives_the_store_its_clock_for_commits_and_prunes() -> None:
    """A store reads no clock: retention counts from the worker's clock at the commit."""
    store = RecordsPrunes()
    stored: list[int] = []
    done = threading.Condition()

    def on_stored(publishes: list[WriteRequest[None, None]], ids: list[StoredId]) -> None:
        with done:
            stored.extend(stored_id.id for stored_id in ids)
            done.notify_all()

    worker = StoreWorker(store, clock=lambda: 50_000, prune_interval_s=0.01)
    worker.start(lambda fn, *args: fn(*args), on_stored, lambda publishes, reason: None).result(10)
    try:
        worker.submit([WriteRequest(None, NewMessage("t", b"kept", None, 1_000))], Batch())
        with done:
            assert done.wait_for(lambda: stored, timeout=10)
        worker.submit([], Batch(done=stored))
        deadline = time.monotonic() + 10
        while not (worker.idle() and store.pruned_at) and time.monotonic() < deadline:
            with done:
                done.wait(0.01)  # the worker has no event to wait on: poll its state
        assert store.pruned_at and set(store.pruned_at) == {50_000}
        assert worker.call(lambda: store.prune(50_999)).result(10) == 0  # retained until ...
        assert worker.call(lambda: store.prune(51_000)).result(10) == 1  # ... 50_000 + 1_000
    finally:
        assert worker.stop(10)
