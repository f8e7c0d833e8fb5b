"""A rolling restart of three brokers under load, each one drained first: the clients see no
error and nothing confirmed is lost.

Each broker in turn: ``bbmq server drain`` (it hands its topics to the others, whose
clients it redirects), then stop (SIGTERM), then start again.  Producers and consumers
run through it all with the cluster client.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bbmq.client import BrokerError, Consumer
from bbmq.testing import BrokerProcess, clean_environment

from ..mysql_support import isolated_mysql_url
from .harness import confirm_storm, report, running_cluster

pytestmark = [pytest.mark.slow, pytest.mark.mysql]

TOPICS = ("cluster.rolling-a", "cluster.rolling-b", "cluster.rolling-c")
CONFIRMS_BETWEEN_RESTARTS = 30


class ConsumerThread:
    """A cluster consumer acking everything it gets, counting the errors it sees."""

    def __init__(self, brokers: list[str], topic: str) -> None:
        self.brokers = brokers
        self.topic = topic
        #: body -> the message ids it came with (two ids: stored twice)
        self.ids: dict[bytes, set[int]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"consume-{topic}")

    def _run(self) -> None:
        consumer = Consumer(self.topic, brokers=self.brokers,
                            timeout=10, prefetch=50)
        while not self._stop.is_set():
            try:
                message = consumer.fetch(timeout=0.5)
                if message is not None:
                    consumer.ack(message)
                    self.ids.setdefault(message.body, set()).add(message.id)
            except (BrokerError, OSError) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                self._stop.wait(0.05)  # a client backing off, not a synchronisation
        with contextlib.suppress(BrokerError, OSError):
            consumer.close()

    def __enter__(self) -> ConsumerThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)


def drain_broker(broker: BrokerProcess) -> float:
    """``bbmq server drain`` against ``broker``; return how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bbmq", "server", "drain", "--port", str(broker.port)],
        capture_output=True, text=True, timeout=60, env=clean_environment(), check=False)
    assert result.returncode == 0, f"drain failed: {result.stdout}{result.stderr}"
    return time.monotonic() - started


@pytest.mark.timeout(600)
def test_a_rolling_restart_with_drain_shows_clients_no_error_and_loses_nothing(
    tmp_path: Path,
) -> None:
    drains_s: list[float] = []
    with isolated_mysql_url() as url, running_cluster(tmp_path, [url]) as cluster, \
            contextlib.ExitStack() as load:
        storms = [load.enter_context(confirm_storm(cluster.addresses, topic, threads=2))
                  for topic in TOPICS]
        consumers = [load.enter_context(ConsumerThread(cluster.addresses, topic))
                     for topic in TOPICS]
        for storm in storms:
            storm.wait_for_more(CONFIRMS_BETWEEN_RESTARTS)
        for broker in cluster.brokers:
            drains_s.append(drain_broker(broker))
            assert broker.stop() == 0, broker.log()[-3000:]
            broker.start()
            for storm in storms:
                storm.wait_for_more(CONFIRMS_BETWEEN_RESTARTS)
        results = [storm.stop() for storm in storms]
        for consumer in consumers:
            wanted = set(results[TOPICS.index(consumer.topic)].bodies)
            deadline = time.monotonic() + 30
            while not wanted <= consumer.ids.keys() and time.monotonic() < deadline:
                threading.Event().wait(0.1)  # the consumer catching up; bounded above
        load.close()
    publish_errors = [e for confirms in results for e in confirms.errors]
    consume_errors = [e for consumer in consumers for e in consumer.errors]
    unconsumed = [body for confirms, consumer in zip(results, consumers, strict=True)
                  for body in confirms.bodies if body not in consumer.ids]
    duplicated = [body for consumer in consumers for body, ids in consumer.ids.items()
                  if len(ids) > 1]
    report("rolling restart with drain (3 brokers, 3 topics)",
           confirmed=sum(len(c.bodies) for c in results), publish_errors=len(publish_errors),
           consume_errors=len(consume_errors), unconsumed=len(unconsumed),
           duplicates=len(duplicated),
           drain_max_s=max(drains_s))
    assert publish_errors == [] and consume_errors == [], publish_errors + consume_errors
    assert unconsumed == [], f"{len(unconsumed)} confirmed messages never consumed"
    assert duplicated == [], f"{len(duplicated)} bodies stored twice, e.g. {duplicated[:3]}"
