"""kill -9 the broker every ~0.5 s during a publish storm: no acknowledged message is lost.

For the SQLite store and for the MySQL store (the shared MariaDB, tables of the
test's own). Each round lets the storm get some acks through the fresh broker,
kills it with SIGKILL at a random moment within ~0.5 s, and starts it again on the
same data. At the end the broker is killed once more, restarted, and the topic is
drained: every body a publisher got an ack for must come back.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from bbmq.testing import BrokerProcess, wait_for

from ..mysql_support import isolated_mysql_url
from .harness import acked_at_least, chaos_rounds, drain, missing_acked, report, storm, wait_summary

pytestmark = pytest.mark.slow

TOPIC = "chaos.kill9"
#: Acks a fresh broker must give the storm before it may be killed again.
ACKS_PER_ROUND = 20


@contextmanager
def store_url(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        yield ""
    else:
        with isolated_mysql_url() as url:
            yield url


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_kill_9_during_a_publish_storm_loses_no_acknowledged_message(
    kind: str, tmp_path: Path,
) -> None:
    rounds = chaos_rounds()
    pacing = random.Random(16)
    with store_url(kind) as url:
        settings = {"store": url} if url else {}
        broker = BrokerProcess(tmp_path / "data", **settings).start()
        restarts_s: list[float] = []
        try:
            with storm(broker.port, TOPIC, timeout_s=30) as publishers:
                for _ in range(rounds):
                    floor = publishers.acked_count() + ACKS_PER_ROUND
                    wait_for(partial(acked_at_least, publishers, floor),
                             f"{ACKS_PER_ROUND} acks from the restarted broker", 60)
                    # Pacing, not synchronisation: the kill lands anywhere in ~0.5 s.
                    threading.Event().wait(pacing.uniform(0.0, 0.5))
                    broker.kill()
                    started = time.monotonic()
                    broker.start()
                    restarts_s.append(time.monotonic() - started)
            figures = publishers.figures
            broker.kill()  # and once more with nothing in flight any more
            broker.start()
            consumed = drain(broker.port, TOPIC)
        finally:
            broker.kill()
    lost = missing_acked(figures, consumed)
    report(f"kill -9 storm ({kind})", rounds=rounds, acked=len(figures.acked),
           attempts=figures.attempts, refused=sum(figures.refusals.values()),
           consumed=len(consumed), duplicates=len(consumed) - len(set(consumed)),
           lost=len(lost), restart_mean_s=sum(restarts_s) / len(restarts_s),
           **wait_summary(figures.waits_s))
    assert len(figures.acked) >= rounds * ACKS_PER_ROUND
    assert lost == [], f"{len(lost)} acknowledged messages missing, e.g. {lost[:5]}"
