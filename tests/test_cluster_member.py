"""The cluster member's decisions, its probe and its settings: fast, no broker, no database.

The decisions (bbmq/cluster/decisions.py) are pure functions of the rows the member
last read, so each rule is checked here alone; the probe is checked against real
sockets (one listening, one closed, one that never answers).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

from bbmq import config as settings
from bbmq.cluster.decisions import (
    BalancePlan,
    Verdict,
    assigned_topics,
    decide_request,
    lease_topic,
    live_brokers,
    lost_topics,
    plan_balance,
    renew_interval_s,
    safety_margin_s,
    served_with,
    valid_until,
)
from bbmq.cluster.probe import ProbeResult, probe, split_address

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
