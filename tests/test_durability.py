"""Nothing acknowledged is lost: kill -9 mid-stream, a kill loop, and a store outage.

These run real broker processes (``bbmq.testing.BrokerProcess``) on SQLite and
on MySQL, because only a real process can be killed with SIGKILL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbmq import BrokerError, Consumer, Producer, protocol
from bbmq.protocol import ErrorCode
from bbmq.testing import BrokerProcess, wait_for

from .conftest import RawClient
from .mariadb_server import throwaway_mariadb
from .mysql_support import isolated_mysql_url

pytestmark = pytest.mark.slow  # every test runs the broker as a process


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
    else:
        with isolated_mysql_url() as url:
            yield url


def drain(port: int, topic: str, group: str = "default") -> list[tuple[int, bytes]]:
    """Consume and ack everything a group has, until the queue stays empty for a moment."""
    got = []
    with Consumer(topic, group, port=port) as consumer:
        while (message := consumer.fetch(timeout=1.0)) is not None:
            got.append((message.id, message.body))
            consumer.ack(message)
    return got


class PipelinedPublisher(threading.Thread):
    """Pipelines PUBLISH frames on a raw socket and records which ones were acked."""

    def __init__(self, port: int, topic: str, count: int) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(port)
        self.topic = topic
        self.count = count
        self.acked: dict[bytes, int] = {}
        self.bodies = [b"m-%06d" % i for i in range(count)]

    def run(self) -> None:
        self.client.handshake(protocol.ClientPublisher(self.topic))
        sender = threading.Thread(target=self._send_all, daemon=True)
        sender.start()
        try:
            for body in self.bodies:  # one reply per PUBLISH, in order
                [reply] = self.client.receive(timeout=30)
                assert isinstance(reply, protocol.ProducerAckMessage), reply
                self.acked[body] = reply.id
        except (AssertionError, OSError):
            return  # the broker died: what was acked so far is what counts

    def _send_all(self) -> None:
        try:
            for start in range(0, self.count, 100):
                self.client.send(*(protocol.Publish(b) for b in self.bodies[start : start + 100]))
        except OSError:
            return


def test_kill_9_mid_stream_loses_no_acked_message(tmp_path: Path, store_url: str) -> None:
    broker = BrokerProcess(tmp_path / "data", store=store_url).start()
    try:
        with Consumer("crash", "workers", port=broker.port) as consumer:
            consumer.fetch(timeout=0)  # the group exists before the storm
        publisher = PipelinedPublisher(broker.port, "crash", 20_000)
        publisher.start()
        wait_for(lambda: len(publisher.acked) >= 2_000, "2,000 acks", timeout=60)
        broker.kill()
        publisher.join(30)
        acked = dict(publisher.acked)
        assert 2_000 <= len(acked) < 20_000, "the kill should land mid-stream"
        broker.start()
        drained = drain(broker.port, "crash", "workers")
    finally:
        broker.kill()
    bodies = [body for _, body in drained]
    assert len(bodies) == len(set(bodies)), "a message was delivered twice"
    missing = [body for body in acked if body not in set(bodies)]
    assert not missing, f"{len(missing)} acked messages lost, e.g. {missing[:3]}"
    ids = [mid for mid, _ in drained]
    assert ids == sorted(ids), "first deliveries must come in publish order"
    assert all(dict(drained)[acked[body]] == body for body in acked)  # same ids as acked


def test_kill_loop_on_one_data_dir(tmp_path: Path) -> None:
    """The broker killed again and again during a publish storm; the producer keeps going."""
    broker = BrokerProcess(tmp_path / "data").start()
    acked: dict[int, bytes] = {}
    stop = threading.Event()
    failures: list[BaseException] = []

    def storm() -> None:
        producer = Producer("storm", port=broker.port, retry_for=60)
        batch = 0
        try:
            while not stop.is_set():
                bodies = [b"b%04d-%03d" % (batch, i) for i in range(200)]
                for mid, body in zip(producer.publish_many(bodies), bodies, strict=True):
                    acked[mid] = body
                batch += 1
        except BaseException as error:
            failures.append(error)

    with Consumer("storm", port=broker.port) as consumer:
        consumer.fetch(timeout=0)
    thread = threading.Thread(target=storm, daemon=True)
    thread.start()
    rounds = 8
    try:
        for _ in range(rounds):
            seen = len(acked)
            wait_for(lambda seen=seen: len(acked) >= seen + 400 or failures,
                     "400 more acks (or a failure)", timeout=60)
            broker.kill()
            broker.start()
        stop.set()
        thread.join(90)
        assert not failures, failures
        drained = drain(broker.port, "storm")
    finally:
        broker.kill()
    by_id = dict(drained)
    assert len(by_id) == len(drained), "an id was delivered twice"
    assert all(by_id.get(mid) == body for mid, body in acked.items()), "an acked message is lost"
    bodies = [body for _, body in drained]
    assert len(bodies) == len(set(bodies)), "a resend after a kill was stored twice"
    database = sqlite3.connect(tmp_path / "data" / "bbmq.sqlite3")
    assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    database.close()


def test_acked_by_a_group_is_not_redelivered_after_restart(tmp_path: Path,
                                                          store_url: str) -> None:
    broker = BrokerProcess(tmp_path / "data", store=store_url).start()
    try:
        with Consumer("half", port=broker.port) as consumer:
            consumer.fetch(timeout=0)
            with Producer("half", port=broker.port) as producer:
                ids = producer.publish_many([b"%d" % i for i in range(10)])
            for _ in range(4):
                message = consumer.fetch(timeout=5)
                assert message is not None
                consumer.ack(message)
            unacked = consumer.fetch(timeout=5)  # delivered, never acked
            assert unacked is not None
        assert broker.stop() == 0  # a clean stop writes the acks it holds
        broker.start()
        with Consumer("half", port=broker.port) as consumer:
            first = consumer.fetch(timeout=5)
            assert first is not None
            assert (first.id, first.attempt) == (unacked.id, 2)  # attempt count preserved
            consumer.ack(first)
        assert [mid for mid, _ in drain(broker.port, "half")] == ids[5:]
    finally:
        broker.kill()


@pytest.mark.mysql
def test_store_outage_never_acks_what_was_not_stored(tmp_path: Path) -> None:
    with throwaway_mariadb() as database:
        broker = BrokerProcess(tmp_path / "data", store=database.url).start()
        try:
            with Consumer("outage", port=broker.port) as consumer:
                consumer.fetch(timeout=0)
            before = Producer("outage", port=broker.port).connect()
            stored_before = before.publish_many([b"before-%d" % i for i in range(50)])
            database.stop()
            raw = RawClient(broker.port)
            raw.handshake(protocol.ClientPublisher("outage"))
            raw.send(protocol.Publish(b"during"))
            [reply] = raw.receive(timeout=30)
            assert isinstance(reply, protocol.Error) and reply.code == ErrorCode.STORE_UNAVAILABLE
            with pytest.raises(BrokerError) as info:
                Producer("outage", port=broker.port, retry_for=0.5).publish(b"during-client")
            assert info.value.code == ErrorCode.STORE_UNAVAILABLE
            # Messages already in memory keep flowing, and their acks wait for the store.
            with Consumer("outage", port=broker.port) as consumer:
                message = consumer.fetch(timeout=5)
                assert message is not None and message.id == stored_before[0]
                consumer.ack(message)
            database.start()
            after = Producer("outage", port=broker.port, retry_for=60)
            stored_after = after.publish_many([b"after-%d" % i for i in range(50)])
            drained = drain(broker.port, "outage")
            assert broker.stop() == 0
            broker.start()
            assert drain(broker.port, "outage") == []  # every ack reached the store
        finally:
            broker.kill()
    ids = [mid for mid, _ in drained]
    assert ids == stored_before[1:] + stored_after
    assert b"during" not in {body for _, body in drained}
