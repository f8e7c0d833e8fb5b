"""``ADMIN stats`` and the Prometheus page read one snapshot of the core, and agree."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bbmq import protocol
from bbmq.core import BrokerSnapshot
from bbmq.metrics import TOPIC_COUNTERS, MetricsSources, build_registry
from bbmq.store.memory import MemoryStore
from bbmq.store.worker import StoreWorker

from .core_harness import CoreHarness


def busy_broker() -> CoreHarness:
    """A core where every counter and queue of topic ``t`` is above zero."""
    h = CoreHarness(max_attempts=2)
    pub = h.publisher("t")
    a1, a2, b = h.subscriber("t", "a"), h.subscriber("t", "a"), h.subscriber("t", "b")
    first, second, third, _ = h.publish(pub, b"1", b"2", b"3", b"4")
    h.publish(pub, b"stale", ttl_ms=10)
    h.advance(10)
    h.send(a1, protocol.Fetch(3))
    h.send(a1, protocol.Ack((first,)), protocol.Nack(second, delay_ms=60_000), protocol.Nack(third))
    h.send(a1, protocol.Fetch(1))
    h.send(a1, protocol.Nack(third))  # its second attempt: dead-lettered
    h.send(b, protocol.Fetch(10, 0))  # takes 1-4; "stale" has expired
    h.commit()  # the dead letter waits in t.dlq's backlog: it has no group
    for session in (a1, a2, b):
        h.take(session)
    return h


def stats(h: CoreHarness) -> dict[str, Any]:
    admin = h.connect()
    h.send(admin, protocol.ClientAdmin(), protocol.AdminCommand("stats"))
    [_, answer] = h.take(admin)
    assert isinstance(answer, protocol.AdminResult)
    result: dict[str, Any] = answer.result
    return result


def metric_samples(h: CoreHarness, snapshots: list[BrokerSnapshot]) -> dict[tuple[str, ...], float]:
    def snapshot() -> BrokerSnapshot:
        snapshots.append(h.broker.snapshot())
        return snapshots[-1]

    worker = StoreWorker(MemoryStore(), clock=lambda: h.now)  # never started: only read
    registry = build_registry(MetricsSources(snapshot, lambda: 4, worker))
    page = generate_latest(registry).decode()
    return {(sample.name, *(sample.labels[key] for key in sorted(sample.labels))): sample.value
            for family in text_string_to_metric_families(page) for sample in family.samples}


def test_stats_and_the_metrics_page_report_the_same_numbers() -> None:
    h = busy_broker()
    answer = stats(h)
    snapshots: list[BrokerSnapshot] = []
    samples = metric_samples(h, snapshots)
    assert len(snapshots) == 1  # one scrape, one walk of the core
    assert snapshots[0] == h.broker.snapshot()  # nothing changed between the two reads

    topic = answer["topics"]["t"]
    assert all(topic[name] > 0 for name in TOPIC_COUNTERS), topic  # nothing compared is vacuous
    assert {name: group["delayed"] for name, group in topic["groups"].items()} == {"a": 1, "b": 0}
    assert answer["topics"]["t.dlq"]["backlog"] == 1

    assert samples[("bbmq_queued_bytes",)] == answer["queued_bytes"] > 0
    assert samples[("bbmq_connections",)] == 4
    assert samples[("bbmq_store_available",)] == 1
    for name, topic in answer["topics"].items():
        for counter in TOPIC_COUNTERS:
            assert samples[(f"bbmq_messages_{counter}_total", name)] == topic[counter]
        assert samples[("bbmq_topic_backlog_messages", name)] == topic["backlog"]
        for group_name, group in topic["groups"].items():
            for gauge, key in (("ready", "ready"), ("inflight", "inflight"),
                               ("delayed", "delayed")):
                assert samples[(f"bbmq_group_{gauge}_messages", group_name, name)] == group[key]
            assert samples[("bbmq_group_consumers", group_name, name)] == group["consumers"]
    topics = {key[1] for key in samples if key[0] == "bbmq_topic_backlog_messages"}
    assert topics == set(answer["topics"]) == {"t", "t.dlq"}


def test_stats_answers_in_the_shape_the_cli_reads() -> None:
    h = busy_broker()
    answer = stats(h)
    assert list(answer) == ["server", "queued_bytes", "topics"]
    assert list(answer["topics"]) == ["t", "t.dlq"]
    topic = answer["topics"]["t"]
    counters = ["published", "delivered", "redelivered", "acked", "expired", "dead_lettered"]
    assert list(topic) == [*counters, "publishers", "backlog", "groups"]
    assert list(topic["groups"]) == ["a", "b"]
    assert list(topic["groups"]["a"]) == ["ready", "delayed", "inflight", "consumers", *counters]
    assert (topic["publishers"], topic["groups"]["a"]["consumers"]) == (1, 2)
