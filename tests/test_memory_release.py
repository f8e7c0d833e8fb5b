"""Memory is given back after a large drain and after many connections close (issue 16,
defect 5): glibc keeps freed memory unless asked, so RSS stayed at its peak."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbmq import protocol
from bbmq.client import Producer
from bbmq.heap import TRIM_AFTER_BYTES, TRIM_AFTER_CLOSES, MemoryReleaser
from bbmq.testing import BrokerProcess, wait_for

from .conftest import RawClient


def test_a_trim_comes_after_a_large_drop_or_many_closes_and_not_otherwise() -> None:
    trims: list[int] = []
    releaser = MemoryReleaser(trim=lambda pad: trims.append(pad) or 1)
    assert not releaser.check(TRIM_AFTER_BYTES)  # growing is no reason
    assert not releaser.check(TRIM_AFTER_BYTES // 2)  # nor a small drop
    releaser.check(3 * TRIM_AFTER_BYTES)
    assert releaser.check(TRIM_AFTER_BYTES)  # fell by two thresholds from the peak
    assert not releaser.check(TRIM_AFTER_BYTES)  # the peak starts again from there
    for _ in range(TRIM_AFTER_CLOSES):
        releaser.connection_closed()
    assert releaser.check(TRIM_AFTER_BYTES)
    assert trims == [0, 0] and releaser.trims == 2


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_rss_falls_after_a_large_backlog_is_drained(tmp_path: Path) -> None:
    count, size = 40_000, 2_000  # 80 MB of bodies
    with BrokerProcess(tmp_path / "data") as broker:
        consumer = RawClient(broker.port)
        consumer.handshake(protocol.ClientSubscriber("big"))
        with Producer("big", port=broker.port) as producer:
            producer.publish_many(b"z" * size for _ in range(count))
        peak = rss_mb(broker.pid)
        drained = 0
        while drained < count:
            consumer.send(protocol.Fetch(100))
            ids = [m.id for m in consumer.receive(100)]  # type: ignore[attr-defined]
            consumer.send(protocol.Ack(tuple(ids)))
            drained += len(ids)
        consumer.send(protocol.Ping())
        assert consumer.receive() == [protocol.Pong()]
        # Before: RSS stayed at its peak (253 of 274 MB after a 200 MB drain).
        wait_for(lambda: rss_mb(broker.pid) < peak - 40, f"RSS to fall from its {peak} MB peak",
                 15)
        consumer.close()
