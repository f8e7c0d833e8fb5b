"""Delay, retry, dead letters, TTL and peek on a real broker process, across kill -9.

The core tests (tests/test_core.py) pin each control down with an injected
clock; these check that each one survives a crash of the real daemon.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from bbmq import Consumer, Producer, protocol
from bbmq.testing import BrokerProcess, wait_for

from .conftest import RawClient

pytestmark = pytest.mark.slow  # every test runs the broker as a process


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


def stored_delivery(data_dir: Path, column: str, message_id: int) -> int | None:
    """The largest ``column`` (attempts, retry_at_ms) of a message's delivery rows on disk."""
    database = sqlite3.connect(data_dir / "bbmq.sqlite3")
    try:
        row = database.execute(f"SELECT MAX({column}) FROM bbmq_deliveries WHERE message_id = ?",
                               (message_id,)).fetchone()
    finally:
        database.close()
    return None if row[0] is None else int(row[0])


def test_delayed_message_is_neither_early_nor_lost_across_kill_9(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data") as broker:
        with Producer("later", port=broker.port) as producer:
            published = time.time()
            mid = producer.publish(b"wake up", delay=2.0)
        broker.kill()
        broker.start()
        with Consumer("later", port=broker.port) as consumer:
            message = consumer.fetch(timeout=10)
            received = time.time()
    assert message is not None and message.id == mid
    assert received >= published + 2.0 - 0.05  # the broker's clock in ms, ours in s


def test_a_nack_delay_is_kept_across_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with BrokerProcess(data) as broker:
        with Producer("retry", port=broker.port) as producer:
            mid = producer.publish(b"try later")
        with Consumer("retry", port=broker.port) as consumer:
            first = consumer.fetch(timeout=5)
            assert first is not None and first.id == mid
            nacked = time.time()
            consumer.nack(first, delay=3.0)
            # The delay is committed with the store's next group commit.
            wait_for(lambda: stored_delivery(data, "retry_at_ms", mid) is not None,
                     "the retry time on disk", timeout=10)
        broker.kill()
        broker.start()
        with Consumer("retry", port=broker.port) as consumer:
            again = consumer.fetch(timeout=15)
            received = time.time()
    assert again is not None and (again.id, again.attempt) == (mid, 2)
    assert received >= nacked + 3.0 - 0.05, "redelivered before its NACK delay ran out"


def test_failing_message_lands_in_the_dlq_exactly_once_across_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with BrokerProcess(data, max_attempts=2) as broker:
        with Producer("jobs", port=broker.port) as producer:
            mid = producer.publish(b"poison")
        consumer = Consumer("jobs", port=broker.port).connect()
        first = consumer.fetch(timeout=5)
        assert first is not None and first.attempt == 1
        wait_for(lambda: stored_delivery(data, "attempts", mid) == 1, "the attempt on disk")
        broker.kill()
        broker.start()
        with Consumer("jobs", port=broker.port) as consumer:
            second = consumer.fetch(timeout=5)
            assert second is not None and (second.id, second.attempt) == (mid, 2)
            consumer.nack(second, reason="bad payload")
            assert consumer.fetch(timeout=0.5) is None  # gone from the topic
        wait_for(lambda: "jobs.dlq" in admin(broker.port, "topics"),  # type: ignore[operator]
                 "the dead-letter topic")
        broker.kill()
        broker.start()
        dead = []
        with Consumer("jobs.dlq", port=broker.port) as consumer:
            while (message := consumer.fetch(timeout=1)) is not None:
                dead.append(message)
                consumer.ack(message)
    assert len(dead) == 1
    assert dead[0].body == b"poison"
    assert dead[0].meta["original_topic"] == "jobs"
    assert dead[0].meta["original_id"] == str(mid)
    assert dead[0].meta["attempts"] == "2"
    assert dead[0].meta["reason"] == "bad_payload"


def test_expired_message_is_never_delivered_across_kill_9(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data") as broker:
        with Producer("fresh", port=broker.port) as producer:
            producer.publish(b"stale soon", ttl=0.5)
            published = time.time()
            keep = producer.publish(b"keeps")
        broker.kill()
        wait_for(lambda: time.time() > published + 0.6, "the message's ttl to pass")
        broker.start()
        with Consumer("fresh", port=broker.port) as consumer:
            first = consumer.fetch(timeout=5)
            assert first is not None and first.id == keep
            consumer.ack(first)
            assert consumer.fetch(timeout=0.3) is None
        stats = admin(broker.port, "stats")
        assert stats["topics"]["fresh"]["expired"] == 1  # type: ignore[index]


def test_peek_changes_nothing(tmp_path: Path) -> None:
    with (BrokerProcess(tmp_path / "data") as broker,
          Consumer("look", port=broker.port) as consumer):
        consumer.fetch(timeout=0)
        with Producer("look", port=broker.port) as producer:
            ids = producer.publish_many([b"a", b"b", b"c"])
        before = admin(broker.port, "stats")
        peeked = admin(broker.port, "peek", topic="look", n=10)
        assert admin(broker.port, "peek", topic="look", n=10) == peeked
        assert [m["id"] for m in peeked] == ids  # type: ignore[index, union-attr]
        assert [m["body"] for m in peeked] == ["a", "b", "c"]  # type: ignore[index, union-attr]
        after = admin(broker.port, "stats")
        assert before["topics"] == after["topics"]  # type: ignore[index]
        got = [consumer.fetch(timeout=5) for _ in ids]
        assert [(m.id, m.attempt) for m in got if m] == [(i, 1) for i in ids]
