"""The cluster member's decisions, its probe and its settings: fast, no broker, no database.

The decisions (bbmq/cluster/decisions.py) are pure functions of the rows the member
last read, so each rule is checked here alone; the probe is checked against real
sockets (one listening, one closed, one that never answers).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bbmq import config as settings
from bbmq.cluster.decisions import (
    BalancePlan,
    Verdict,
    assigned_topics,
    decide_request,
    live_brokers,
    lost_topics,
    plan_balance,
    renew_interval_s,
    safety_margin_s,
    served_with,
    valid_until,
)
from bbmq.cluster.joining import JoinRefused
from bbmq.cluster.member import ClusterMember
from bbmq.cluster.probe import ProbeResult, probe, split_address
from bbmq.cluster.seat import CoreSeat
from bbmq.cluster_cli import status_lines
from bbmq.core import BrokerSnapshot
from bbmq.core.snapshot import ClusterCounters as CoreClusterCounters
from bbmq.defaults import lease_topic
from bbmq.metrics import cluster_metrics
from bbmq.store import MySQLStore
from bbmq.store.base import Fenced
from bbmq.store.leases import LeaseTable
from bbmq.testing import wait_for
from tests.mysql_support import isolated_mysql_url

TTL = 5000


@dataclass(frozen=True)
class Lease:
    topic: str
    owner: str = ""
    owner_address: str | None = None
    epoch: int = 0
    remaining_ms: int = 0


@dataclass(frozen=True)
class Peer:
    id: str
    address: str = ""
    mode: str = "cluster"
    heartbeat_age_ms: int = 100
    draining: bool = False


def held(topic: str, owner: str, remaining_ms: int = 3000, epoch: int = 1) -> Lease:
    return Lease(topic, owner, f"{owner}.example:1", epoch, remaining_ms)


# --------------------------------------------------------------------------- validity


def test_a_lease_is_trusted_for_less_than_it_lasts_from_the_moment_the_renew_was_sent() -> None:
    assert valid_until(100.0, 5000) == pytest.approx(100.0 + 5.0 - 0.5)  # ttl/10 = 500 ms
    assert valid_until(100.0, 1000) == pytest.approx(100.0 + 1.0 - 0.25)  # the 250 ms floor
    assert safety_margin_s(60_000) == pytest.approx(6.0)
    assert renew_interval_s(6000) == pytest.approx(2.0)
    # Three renews fit in one TTL with room to spare before the local validity ends.
    assert valid_until(0.0, TTL) > 2 * renew_interval_s(TTL)


# --------------------------------------------------------------------------- requests


def test_a_free_or_expired_lease_is_acquired() -> None:
    assert decide_request(None, "me", draining=False) is Verdict.ACQUIRE
    assert decide_request(Lease("t"), "me", draining=False) is Verdict.ACQUIRE
    assert decide_request(held("t", "other", remaining_ms=-1), "me",
                          draining=False) is Verdict.ACQUIRE
    assert decide_request(held("t", "me", remaining_ms=-1), "me",
                          draining=False) is Verdict.ACQUIRE


def test_a_lease_handed_to_us_is_adopted() -> None:
    assert decide_request(held("t", "me"), "me", draining=False) is Verdict.ADOPT


def test_a_live_owner_is_probed_and_only_a_refusal_means_take_over() -> None:
    lease = held("t", "other")
    assert decide_request(lease, "me", draining=False) is Verdict.PROBE
    assert decide_request(lease, "me", draining=False,
                          probed=ProbeResult.REFUSED) is Verdict.TAKE_OVER
    assert decide_request(lease, "me", draining=False,
                          probed=ProbeResult.ACCEPTED) is Verdict.ELSEWHERE
    # A paused owner (its port accepts, or nothing answers) keeps its lease until the TTL.
    assert decide_request(lease, "me", draining=False,
                          probed=ProbeResult.NO_ANSWER) is Verdict.ELSEWHERE


def test_an_owner_without_a_brokers_row_is_taken_over() -> None:
    lease = Lease("t", "gone", None, 3, 2000)
    assert decide_request(lease, "me", draining=False) is Verdict.TAKE_OVER


def test_an_owner_at_our_own_address_is_our_killed_predecessor_and_is_taken_over() -> None:
    lease = held("t", "old")  # owner address old.example:1, which now answers: it is us
    assert decide_request(lease, "new", draining=False,
                          my_address="old.example:1") is Verdict.TAKE_OVER
    assert decide_request(lease, "new", draining=False,
                          my_address="new.example:1") is Verdict.PROBE


def test_a_draining_broker_takes_nothing() -> None:
    assert decide_request(None, "me", draining=True) is Verdict.RETRY_LATER
    assert decide_request(held("t", "other"), "me", draining=True) is Verdict.ELSEWHERE


def test_dead_letters_are_leased_with_their_topic() -> None:
    assert lease_topic("orders") == "orders"
    assert lease_topic("orders.dlq") == "orders"
    assert lease_topic("orders.dlq.dlq") == "orders"
    assert lease_topic(".dlq") == ".dlq"
    assert served_with("orders") == ("orders", "orders.dlq")


# --------------------------------------------------------------------------- renews


def test_a_renew_finds_lost_leases_and_leases_handed_to_us() -> None:
    before = {"a": 1, "b": 4, "c": 2}
    after = {"a": 1, "b": 5, "d": 7}
    assert lost_topics(before, after) == ["b", "c"]  # b: taken and given back, new epoch
    assert assigned_topics(before, after) == ["d"]


# --------------------------------------------------------------------------- balance


def test_live_brokers_have_a_heartbeat_younger_than_the_ttl() -> None:
    brokers = [Peer("b"), Peer("a"), Peer("old", heartbeat_age_ms=TTL + 1)]
    assert [b.id for b in live_brokers(brokers, TTL)] == ["a", "b"]


def test_a_broker_under_its_fair_share_takes_free_topics() -> None:
    brokers = [Peer("me"), Peer("other")]
    leases = [held("t1", "other"), held("t2", "other"), held("t3", "other"),
              Lease("t4"), held("t5", "dead", remaining_ms=-10), Lease("t6")]
    plan = plan_balance("me", brokers, leases, TTL, draining=False)
    assert plan == BalancePlan(acquire=("t4", "t5", "t6"))  # fair = 3


def test_a_broker_over_its_fair_share_gives_one_topic_to_the_least_loaded() -> None:
    brokers = [Peer("me"), Peer("busy"), Peer("new")]
    leases = [held(f"m{i}", "me") for i in range(5)] + [held("b1", "busy"), held("b2", "busy")]
    plan = plan_balance("me", brokers, leases, TTL, draining=False)
    assert plan == BalancePlan(hand_off=(("m4", "new"),))  # fair = ceil(7/3) = 3


def test_balanced_brokers_move_nothing() -> None:
    brokers = [Peer("me"), Peer("other")]
    leases = [held("a", "me"), held("b", "me"), held("c", "other")]
    assert plan_balance("me", brokers, leases, TTL, draining=False) == BalancePlan()
    # The other side of the same table moves nothing either: no topic goes back and forth.
    assert plan_balance("other", brokers, leases, TTL, draining=False) == BalancePlan()


def test_draining_and_dead_brokers_are_given_nothing() -> None:
    brokers = [Peer("me"), Peer("leaving", draining=True), Peer("dead", heartbeat_age_ms=9999)]
    leases = [held(f"m{i}", "me") for i in range(4)]
    assert plan_balance("me", brokers, leases, TTL, draining=False) == BalancePlan()


def test_a_draining_broker_hands_every_topic_off_round_robin() -> None:
    brokers = [Peer("me", draining=True), Peer("x"), Peer("y"), Peer("z", draining=True)]
    leases = [held("a", "me"), held("b", "me"), held("c", "me"), held("d", "x")]
    plan = plan_balance("me", brokers, leases, TTL, draining=True)
    assert plan == BalancePlan(hand_off=(("a", "y"), ("b", "x"), ("c", "y")))
    alone = plan_balance("me", [Peer("me", draining=True)], leases, TTL, draining=True)
    assert alone == BalancePlan()  # nobody to hand to: the drain waits for a broker


# --------------------------------------------------------------------------- the probe


def test_a_listening_port_is_accepted_and_a_closed_one_refused() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert probe(f"127.0.0.1:{port}") is ProbeResult.ACCEPTED
    assert probe(f"127.0.0.1:{port}") is ProbeResult.REFUSED


def test_a_full_backlog_that_never_answers_is_not_a_refusal() -> None:
    # A listener that never accepts, its backlog filled: the next connect hangs (as a paused
    # broker's would) and times out, which must not count as the owner being gone.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
                fillers.append(filler)
            assert probe(address, timeout_s=0.1) is ProbeResult.NO_ANSWER
        finally:
            for filler in fillers:
                filler.close()
    assert probe("not-an-address") is ProbeResult.NO_ANSWER


def test_addresses_split_into_host_and_port() -> None:
    assert split_address("h.example:15333") == ("h.example", 15333)
    assert split_address("[::1]:7") == ("::1", 7)
    with pytest.raises(ValueError):
        split_address("nohost")


# --------------------------------------------------------------------------- settings


def load(**flags: str) -> settings.Config:
    return settings.load(flags, environ={})


def test_cluster_settings_default_to_a_single_broker() -> None:
    config = load()
    assert (config.cluster, config.advertise, config.lease_ttl_ms) == (False, None, 5000)


def test_a_cluster_needs_a_mysql_store() -> None:
    with pytest.raises(settings.ConfigError, match="needs a shared mysql://"):
        load(cluster="true")
    with pytest.raises(settings.ConfigError, match="needs a shared mysql://"):
        load(cluster="true", store="memory://")


def test_a_cluster_broker_on_every_address_must_say_where_it_is_reached() -> None:
    with pytest.raises(settings.ConfigError, match="pass --advertise HOST:PORT"):
        load(cluster="true", store="mysql://u@db/x", host="0.0.0.0")
    config = load(cluster="true", store="mysql://u@db/x", host="0.0.0.0",
                  advertise="b1.example:15333")
    assert config.advertised_address(15333) == "b1.example:15333"


def test_the_advertised_address_defaults_to_the_listen_address() -> None:
    config = load(cluster="true", store="mysql://u@db/x", host="10.0.0.5")
    assert config.advertised_address(4000) == "10.0.0.5:4000"
    assert load(host="::1").advertised_address(4000) == "[::1]:4000"


def test_bad_cluster_values_are_refused_with_what_to_give() -> None:
    with pytest.raises(settings.ConfigError, match="expected HOST:PORT"):
        load(advertise="nohost")
    with pytest.raises(settings.ConfigError, match="lease_ttl_ms"):
        load(lease_ttl_ms="0")
    assert settings.load({}, environ={"BBMQ_LEASE_TTL_MS": "2000"}).lease_ttl_ms == 2000


# --------------------------------------------------------------------------- the member thread
# Against the local MariaDB (tables of their own), with the core's seat recording what the
# member tells the core instead of a broker: the thread, the lease table and the store are real.


class RecordingSeat(CoreSeat):
    """The member's calls into the core, recorded (there is no broker and no loop here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def _record(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def attach(self, loop: Any, flush: Any) -> None:
        pass

    def topic_acquired(self, topic: str, epoch: int, groups: list[Any],
                       messages: list[Any]) -> None:
        self._record("acquired", topic, epoch, len(messages))

    def topic_elsewhere(self, topic: str, owner: str | None, epoch: int | None,
                        retry_ms: int | None) -> None:
        self._record("elsewhere", topic, owner, epoch)

    def topic_lost(self, topic: str, owner: str | None, epoch: int | None,
                   retry_ms: int | None) -> None:
        self._record("lost", topic, owner, epoch)

    def hand_off(self, topic: str, target: str | None, committed: Any) -> None:
        self._record("handed", topic, target)
        committed()

    def set_cluster_brokers(self, addresses: tuple[str, ...]) -> None:
        self._record("brokers", addresses)

    def set_draining(self, draining: bool) -> None:
        self._record("draining", draining)

    def call_store(self, fn: Any, timeout_s: float) -> Any:
        return fn()

    def seen(self, kind: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [call for call in self.calls if call[0] == kind]


@pytest.fixture
def mysql_url() -> Iterator[str]:
    with isolated_mysql_url() as url:
        store = MySQLStore(url)
        store.open()  # the schema, leases and brokers tables included
        store.close()
        yield url


def make_member(url: str, name: str, *, mode: str = "cluster", ttl_ms: int = 1500,
                prober: Any = None) -> tuple[ClusterMember, RecordingSeat]:
    store = MySQLStore(url)
    seat = RecordingSeat()
    member = ClusterMember(
        table=LeaseTable(store.connector(), store.prefix, ttl_ms), store=store, seat=seat,
        broker_id=name, address=f"{name}.example:1", mode=mode,  # type: ignore[arg-type]
        ttl_ms=ttl_ms, prober=prober or (lambda address: ProbeResult.ACCEPTED))
    return member, seat


@contextmanager
def running(member: ClusterMember) -> Iterator[ClusterMember]:
    member.join()
    member.start(None, lambda: None)  # type: ignore[arg-type]
    try:
        yield member
    finally:
        member.stop()
        member.leave()


@pytest.mark.mysql
@pytest.mark.slow
def test_a_second_single_broker_is_refused_with_what_to_do(mysql_url: str) -> None:
    first, _ = make_member(mysql_url, "first", mode="single")
    second, _ = make_member(mysql_url, "second", mode="single")
    clustered, _ = make_member(mysql_url, "clustered")
    with running(first):
        with pytest.raises(JoinRefused, match=r"first\.example:1.*start every broker with "
                                              r"--cluster"):
            second.join()
        with pytest.raises(JoinRefused, match="without --cluster"):
            clustered.join()
    second.join()  # the first one left (deregistered): the database is free again
    second.leave()


@pytest.mark.mysql
def test_a_requested_topic_is_acquired_and_fenced_by_its_epoch(mysql_url: str) -> None:
    member, seat = make_member(mysql_url, "a")
    with running(member):
        member.request_topics(["orders"])
        wait_for(lambda: seat.seen("acquired"), "the topic to be acquired", 5)
        assert seat.seen("acquired") == [("acquired", "orders", 1, 0)]
        fence = member.fence({"orders", "orders.dlq"})
        assert (fence.owner, dict(fence.epochs)) == ("a", {"orders": 1})
        with pytest.raises(Fenced) as refused:
            member.fence({"orders", "other"})
        assert refused.value.topics == frozenset({"other"})
        assert member.counters.lease_acquisitions == 1


@pytest.mark.mysql
@pytest.mark.slow
def test_a_live_owner_s_clients_are_sent_to_it_and_a_gone_one_is_taken_over(
        mysql_url: str) -> None:
    a, a_seat = make_member(mysql_url, "a")
    verdicts = [ProbeResult.ACCEPTED, ProbeResult.REFUSED]
    b, b_seat = make_member(mysql_url, "b", prober=lambda address: verdicts.pop(0))
    with running(a), running(b):
        a.request_topics(["jobs"])
        wait_for(lambda: a_seat.seen("acquired"), "a to acquire jobs", 5)
        b.request_topics(["jobs"])
        wait_for(lambda: b_seat.seen("elsewhere"), "b to send the client to a", 5)
        assert b_seat.seen("elsewhere") == [("elsewhere", "jobs", "a.example:1", 1)]
        b.request_topics(["jobs"])  # a's port refuses now: b takes the lease at once
        wait_for(lambda: b_seat.seen("acquired"), "b to take jobs over", 5)
        assert b_seat.seen("acquired") == [("acquired", "jobs", 2, 0)]
        # a's next renew finds the lease gone, and its writes are refused from then on.
        wait_for(lambda: a_seat.seen("lost"), "a to find jobs lost", 5)
        assert a_seat.seen("lost") == [("lost", "jobs", "b.example:1", 2)]
        with pytest.raises(Fenced):
            a.fence({"jobs"})
        assert b.fence({"jobs"}).epochs == {"jobs": 2}


@pytest.mark.mysql
def test_a_lease_past_its_local_validity_is_no_longer_written(mysql_url: str) -> None:
    now = [1000.0]
    member, _ = make_member(mysql_url, "a")
    member._monotonic = lambda: now[0]
    member.join()
    try:
        member._answer("t")  # one request, on this thread: acquired at "1000.0"
        assert member.fence({"t"}).epochs == {"t": 1}
        now[0] += 1.5 - 0.25 - 0.001  # ttl - margin, just before
        assert member.fence({"t"}).epochs == {"t": 1}
        now[0] += 0.002
        with pytest.raises(Fenced) as refused:
            member.fence({"t"})
        member.on_fenced(refused.value.topics)  # what the store thread does with it
        assert member.counters.fenced_writes == 1
    finally:
        member.leave()


# --------------------------------------------------------------------------- bbmq cluster status


def test_cluster_status_lists_brokers_with_their_topics_and_each_lease() -> None:
    status = {"me": "aaa", "address": "h1:1", "mode": "cluster", "ttl_ms": 5000,
              "draining": False,
              "brokers": [{"id": "aaa", "address": "h1:1", "mode": "cluster",
                           "heartbeat_age_ms": 1200, "draining": False},
                          {"id": "bbb", "address": "h2:2", "mode": "cluster",
                           "heartbeat_age_ms": 300, "draining": True}],
              "leases": [{"topic": "b", "owner": "bbb", "owner_address": "h2:2", "epoch": 4,
                          "remaining_ms": 2500},
                         {"topic": "a", "owner": "aaa", "owner_address": "h1:1", "epoch": 7,
                          "remaining_ms": 4000},
                         {"topic": "c", "owner": "", "owner_address": None, "epoch": 2,
                          "remaining_ms": -10}]}
    lines = status_lines(status)
    assert lines[0] == "asked broker aaa at h1:1 (cluster mode, lease TTL 5000 ms)"
    assert lines[2].split() == ["BROKER", "ADDRESS", "MODE", "HEARTBEAT", "DRAINING", "TOPICS"]
    assert lines[3].split() == ["aaa", "h1:1", "cluster", "1.2s", "ago", "no", "1"]
    assert lines[4].split() == ["bbb", "h2:2", "cluster", "0.3s", "ago", "yes", "1"]
    leases = [line.split() for line in lines[6:]]
    assert leases == [["TOPIC", "OWNER", "EPOCH", "LEASE", "LEFT"], ["a", "h1:1", "7", "4.0s"],
                      ["b", "h2:2", "4", "2.5s"], ["c", "-", "2", "-"]]


# --------------------------------------------------------------------------- metrics


def test_the_cluster_counters_are_exported_for_prometheus() -> None:
    snapshot = BrokerSnapshot(0, (), CoreClusterCounters(redirects_sent=3, topics_served=2))
    counters = {"lease_acquisitions": 5, "lease_losses": 1, "fenced_writes": 4}

    class Collector:
        def collect(self) -> Iterator[Any]:
            return cluster_metrics(counters, snapshot)

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    page = generate_latest(registry).decode()
    for line in ("bbmq_cluster_lease_acquisitions_total 5.0",
                 "bbmq_cluster_lease_losses_total 1.0", "bbmq_cluster_fenced_writes_total 4.0",
                 "bbmq_cluster_redirects_total 3.0", "bbmq_cluster_topics_served 2.0"):
        assert line in page.splitlines(), page
