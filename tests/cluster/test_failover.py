"""Three brokers on loopback over the local MariaDB: the owner of a topic is killed or paused
during a publish storm with confirms.

kill -9: the port refuses at once, so the client goes to another broker, which finds the
owner's address refusing and takes the lease without waiting for it to expire.  SIGSTOP:
the port still accepts, so the others take over only once the lease has expired; the
paused owner, when it wakes, must confirm nothing more (its lease may have expired: its
monotonic clock says so), and must send its clients elsewhere.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from pathlib import Path

import pytest

from bbmq import protocol

from ..mysql_support import isolated_mysql_url
from .harness import (
    TEST_TTL_MS,
    RawPublisher,
    chaos_rounds,
    check_stored,
    confirm_storm,
    drain,
    percentile,
    report,
    running_cluster,
)

pytestmark = [pytest.mark.slow, pytest.mark.mysql]

#: Confirms the storm must get from the new owner before the next kill.
CONFIRMS_PER_ROUND = 30
#: The targets of the issue: failover after kill -9 (p50), and never over TTL + 2 s.
KILL_P50_S = 1.0
WORST_S = TEST_TTL_MS / 1000 + 2.0


@pytest.mark.timeout(900)
def test_kill_9_of_the_owner_during_a_storm_loses_nothing_and_fails_over_fast(
    tmp_path: Path,
) -> None:
    topic = "cluster.kill9"
    rounds = chaos_rounds()
    pacing = random.Random(18)
    gaps: list[float] = []
    with isolated_mysql_url() as url, running_cluster(tmp_path, [url]) as cluster:
        with confirm_storm(cluster.addresses, topic, threads=4, timeout_s=5) as storm:
            for _ in range(rounds):
                storm.wait_for_more(CONFIRMS_PER_ROUND)
                owner = cluster.wait_for_owner(topic)
                # Pacing, not synchronisation: the kill lands anywhere in 0.3 s.
                threading.Event().wait(pacing.uniform(0.0, 0.3))
                owner.kill()
                killed_at = time.monotonic()
                gaps.append(storm.gap_around(killed_at, timeout=WORST_S + 30))
                owner.start()  # back in the cluster, with a new broker id
            confirms = storm.confirms
        losses = check_stored(cluster.leases, topic, storm.stop())
        consumed = set(drain(cluster.addresses, topic))
    unconsumed = [body for body in confirms.bodies if body not in consumed]
    report("kill -9 of the owner (3 brokers, MariaDB)", rounds=rounds,
           confirmed=len(confirms.bodies), client_errors=len(confirms.errors),
           missing=len(losses.missing), duplicates=len(losses.duplicated),
           unconsumed=len(unconsumed), failover_p50_s=statistics.median(gaps),
           failover_p90_s=percentile(gaps, 0.9), failover_max_s=max(gaps))
    assert losses.missing == [], f"{len(losses.missing)} confirmed messages not stored"
    assert losses.duplicated == [], f"{len(losses.duplicated)} bodies stored twice"
    assert unconsumed == [], f"{len(unconsumed)} confirmed messages not consumed"
    assert statistics.median(gaps) <= KILL_P50_S, gaps
    assert max(gaps) <= WORST_S, gaps


@pytest.mark.timeout(600)
def test_a_paused_owner_confirms_nothing_after_its_lease_may_have_expired(
    tmp_path: Path,
) -> None:
    topic = "cluster.pause"
    pause_s = 2 * TEST_TTL_MS / 1000
    with isolated_mysql_url() as url, running_cluster(tmp_path, [url]) as cluster:
        with confirm_storm(cluster.addresses, topic, threads=4, timeout_s=2) as storm:
            storm.wait_for_more(CONFIRMS_PER_ROUND)
            owner = cluster.wait_for_owner(topic)
            direct = RawPublisher(owner.port, topic)  # one connection that stays with it
            owner.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            paused_at = time.monotonic()
            try:
                # Written while it sleeps: read by the owner only when it wakes, past its lease.
                direct.send(*(protocol.Publish(b"sent-to-the-paused-%d" % n, msgid=f"p{n}")
                              for n in range(20)))
                gap = storm.gap_around(paused_at, timeout=WORST_S + 30)
                threading.Event().wait(max(0.0, paused_at + pause_s - time.monotonic()))
            finally:
                os.kill(owner.pid, signal.SIGCONT)
            answers = direct.read_until_closed(timeout=30)
            direct.close()
            storm.wait_for_more(CONFIRMS_PER_ROUND)
        confirms = storm.confirms
        losses = check_stored(cluster.leases, topic, confirms)
        stored = cluster.leases.stored_copies(topic)
        assert owner.process is not None and owner.process.poll() is None, "it died"
    late = [body for body in stored if body.startswith(b"sent-to-the-paused-")]
    report("SIGSTOP of the owner for 2 x TTL", ttl_ms=TEST_TTL_MS,
           confirmed=len(confirms.bodies), client_errors=len(confirms.errors),
           missing=len(losses.missing), duplicates=len(losses.duplicated), failover_s=gap,
           answers_after_wake=",".join(type(a).__name__ for a in answers) or "none")
    confirmed_late = [a for a in answers if isinstance(a, protocol.ProducerAckMessage)]
    assert confirmed_late == [], f"the woken owner confirmed {confirmed_late}"
    assert late == [], f"the woken owner stored {late} after losing its lease"
    assert any(isinstance(a, protocol.Redirect) for a in answers), answers
    assert losses.missing == [] and losses.duplicated == [], losses
    assert gap <= WORST_S, gap
