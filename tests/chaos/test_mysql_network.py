"""The network between the broker and MySQL fails during a publish storm: the broker's
store connection goes through :class:`FaultyProxy`, which refuses, then black-holes,
then resets connections, with normal service between the faults.

No acknowledged message may be lost (checked after a restart of the broker, so the
messages are read back from MySQL, not from the broker's memory), and no publish may
wait for its answer longer than the store's configured timeouts allow.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from bbmq.store.mysql import MySQLStore
from bbmq.testing import BrokerProcess, wait_for

from ..mysql_support import isolated_mysql_url
from .harness import acked_at_least, drain, long_run, missing_acked, report, storm, wait_summary
from .proxy import FaultyProxy, Mode

pytestmark = [pytest.mark.slow, pytest.mark.mysql]

TOPIC = "chaos.mysql-network"
#: How long each fault lasts: in CI longer than the I/O timeout asked for below; the
#: long run outlasts any store timeout.
FAULT_S = 45.0 if long_run() else 5.0
#: Acks the storm must get between two faults (service really came back).
ACKS_BETWEEN_FAULTS = 50
#: The store timeouts the test asks for, as URL options (a bbmq whose store ignores
#: them keeps its own defaults: the bound below is always the effective timeouts').
STORE_TIMEOUT_OPTIONS = "io_timeout=2&connect_timeout=1"


def wait_bound_s(url: str) -> float:
    """The longest a publish may wait for its answer: the store's I/O timeout (a stuck
    write) plus one connect timeout (a reconnect), or the fault itself if shorter, plus
    a second for the batch around it."""
    store = MySQLStore(url)  # not opened: only its effective timeouts are read
    return min(FAULT_S, store.io_timeout_s + store.connect_timeout_s) + 1.0


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


@pytest.mark.timeout(900)
def test_refused_black_holed_and_reset_store_connections_lose_nothing(tmp_path: Path) -> None:
    phases: list[tuple[str, int, int]] = []  # fault, acks during it, refusals during it
    with isolated_mysql_url() as isolated:
        upstream = urlsplit(isolated).port or 3306
        url = f"{isolated}&{STORE_TIMEOUT_OPTIONS}"
        bound_s = wait_bound_s(url)
        proxy = FaultyProxy(upstream).start()
        broker = BrokerProcess(tmp_path / "data", store=with_port(url, proxy.port)).start()
        try:
            with storm(broker.port, TOPIC, timeout_s=120) as publishers:
                for fault in (Mode.REFUSE, Mode.BLACK_HOLE, Mode.RESET):
                    floor = publishers.acked_count() + ACKS_BETWEEN_FAULTS
                    wait_for(partial(acked_at_least, publishers, floor),
                             f"acks through the healthy proxy before the {fault.value}", 90)
                    acked, refused = publishers.acked_count(), publishers.refused_count()
                    proxy.set_mode(fault)
                    threading.Event().wait(FAULT_S)  # the fault's duration, not a sync
                    proxy.set_mode(Mode.PASS)
                    phases.append((fault.value, publishers.acked_count() - acked,
                                   publishers.refused_count() - refused))
                floor = publishers.acked_count() + ACKS_BETWEEN_FAULTS
                wait_for(lambda: publishers.acked_count() >= floor,
                         "acks through the healed proxy", 90)
            figures = publishers.figures
            assert broker.stop() == 0, broker.log()[-3000:]
            # Read back from MySQL itself, not through the proxy or the old broker's memory.
            broker = BrokerProcess(tmp_path / "data", store=url).start()
            started = time.monotonic()
            consumed = drain(broker.port, TOPIC)
            drain_s = time.monotonic() - started
            assert broker.stop() == 0
        finally:
            broker.kill()
            proxy.close()
    lost = missing_acked(figures, consumed)
    report("MySQL network faults", fault_s=FAULT_S,
           phases="; ".join(f"{name}: {acks} acked, {refusals} refused"
                            for name, acks, refusals in phases),
           acked=len(figures.acked), refused=dict(figures.refusals), consumed=len(consumed),
           lost=len(lost), proxy_connections=proxy.connections, drain_s=drain_s,
           wait_bound_s=bound_s, **wait_summary(figures.waits_s))
    assert lost == [], f"{len(lost)} acknowledged messages missing, e.g. {lost[:5]}"
    assert figures.worst_wait_s <= bound_s, (
        f"a publish waited {figures.worst_wait_s:.1f} s for its answer (bound {bound_s:.1f} s)")
