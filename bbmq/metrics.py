"""Prometheus metrics, read from the broker core at scrape time.

Two choices keep this free for the broker and safe:

* Nothing is counted twice.  The core already keeps running totals per topic
  and group, so a custom collector turns the core's snapshot
  (:meth:`bbmq.core.Broker.snapshot`, the one ``ADMIN stats`` answers from) into
  metric families when Prometheus asks; the hot path pays nothing.  Only the
  store's commit latency needs a metric object of its own, a Histogram fed by
  the store thread (``Histogram.observe`` is thread-safe).
* The page is served at ``/metrics`` by the broker's HTTP server
  (bbmq/dashboard/), on the broker's own asyncio loop instead of
  ``prometheus_client.start_http_server``'s thread, so the snapshot is taken on
  the thread that changes the core and never races it.

What it reads comes in as :class:`MetricsSources`; this module knows nothing of
the server that runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector

from bbmq.core import BrokerSnapshot
from bbmq.store.worker import StoreWorker

#: The core's per-topic counters, exported as ``bbmq_messages_<name>_total``.
TOPIC_COUNTERS: Final = ("published", "delivered", "acked", "redelivered", "expired",
                         "dead_lettered")
#: Commits take from well under a millisecond (memory, SQLite in cache) to a second (fsync
#: on a busy disk, a remote MySQL).
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                         1.0, 2.5)


@dataclass(frozen=True, slots=True)
class MetricsSources:
    """What the metrics page reads, handed in by whoever runs the broker."""

    #: The core's counters and queue sizes (:meth:`bbmq.core.Broker.snapshot`).
    snapshot: Callable[[], BrokerSnapshot]
    #: How many client connections are open.
    connections: Callable[[], int]
    #: The store thread: whether the store accepts writes, and where commit times go.
    store: StoreWorker
    #: A cluster broker's membership counters (bbmq/cluster/member.py), by name:
    #: lease_acquisitions, lease_losses, fenced_writes; None outside a cluster.
    cluster: Callable[[], Mapping[str, int]] | None = None


class BrokerCollector:
    """Turns the broker core's snapshot and the server's gauges into metric families on each
    scrape."""

    def __init__(self, sources: MetricsSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        sources = self.sources
        snapshot = sources.snapshot()
        counters = {name: CounterMetricFamily(f"bbmq_messages_{name}",
                                              f"Messages {name.replace('_', ' ')}, per topic",
                                              labels=["topic"])
                    for name in TOPIC_COUNTERS}
        backlog = GaugeMetricFamily("bbmq_topic_backlog_messages",
                                    "Messages kept for the first group of a topic with none yet",
                                    labels=["topic"])
        ready = GaugeMetricFamily("bbmq_group_ready_messages",
                                  "Messages a group can deliver now", labels=["topic", "group"])
        inflight = GaugeMetricFamily("bbmq_group_inflight_messages",
                                     "Messages delivered to a group and not yet acked",
                                     labels=["topic", "group"])
        delayed = GaugeMetricFamily("bbmq_group_delayed_messages",
                                    "Messages of a group waiting for their delay to pass",
                                    labels=["topic", "group"])
        consumers = GaugeMetricFamily("bbmq_group_consumers", "Consumers connected to a group",
                                      labels=["topic", "group"])
        for topic in snapshot.topics:
            for name, family in counters.items():
                family.add_metric([topic.name], getattr(topic.counters, name))
            backlog.add_metric([topic.name], topic.backlog)
            for group in topic.groups:
                labels = [topic.name, group.name]
                ready.add_metric(labels, group.ready)
                inflight.add_metric(labels, group.inflight)
                delayed.add_metric(labels, group.delayed)
                consumers.add_metric(labels, group.consumers)
        yield from counters.values()
        yield from (backlog, ready, inflight, delayed, consumers)
        yield GaugeMetricFamily("bbmq_connections", "Open client connections",
                                value=sources.connections())
        yield GaugeMetricFamily("bbmq_queued_bytes", "Message bytes held in memory",
                                value=snapshot.queued_bytes)
        yield GaugeMetricFamily("bbmq_store_available",
                                "1 while the store accepts writes, 0 during an outage",
                                value=int(sources.store.available))
        if sources.cluster is not None:
            yield from cluster_metrics(sources.cluster(), snapshot)


#: The membership's counters, as ``bbmq_cluster_<name>_total``, and what each counts.
CLUSTER_COUNTERS: Final = {
    "lease_acquisitions": "Topic leases this broker took (acquired, or taken over)",
    "lease_losses": "Topic leases this broker lost (taken, expired, or not renewed in time)",
    "fenced_writes": "Store writes refused because a topic's lease was no longer this "
                     "broker's",
}


def cluster_metrics(counters: Mapping[str, int], snapshot: BrokerSnapshot) -> Iterator[Metric]:
    """A cluster broker's counters: the membership's, and the core's redirects."""
    for name, text in CLUSTER_COUNTERS.items():
        yield CounterMetricFamily(f"bbmq_cluster_{name}", text, value=counters[name])
    core = snapshot.cluster
    yield CounterMetricFamily("bbmq_cluster_redirects", "Clients sent to another broker "
                              "(REDIRECT)", value=0 if core is None else core.redirects_sent)
    yield GaugeMetricFamily("bbmq_cluster_topics_served", "Topics whose lease this broker "
                            "holds and serves", value=0 if core is None else core.topics_served)


def build_registry(sources: MetricsSources,
                   also_observe: Callable[[float], None] | None = None) -> CollectorRegistry:
    """A registry of its own per broker (never the global one), with the commit histogram wired
    to the store thread (and each commit time handed to ``also_observe`` too)."""
    registry = CollectorRegistry()
    registry.register(BrokerCollector(sources))
    ProcessCollector(registry=registry)
    commit_seconds = Histogram("bbmq_store_commit_seconds",
                               "Seconds each store transaction took to commit",
                               buckets=COMMIT_BUCKETS, registry=registry)
    if also_observe is None:
        sources.store.observe_commit = commit_seconds.observe
    else:
        def observe(seconds: float) -> None:
            commit_seconds.observe(seconds)
            also_observe(seconds)

        sources.store.observe_commit = observe
    return registry
