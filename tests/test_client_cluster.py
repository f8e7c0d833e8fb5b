"""The clients follow a cluster (PROTOCOL.md 4.7): several broker addresses, REDIRECT to
the topic's owner, unconfirmed publishes resent with their msgids, consumers asking the
new owner again, clear errors when no broker answers.

The brokers are pretend ones on real sockets (tests/fake_brokers.py); every
behavioural test runs against the blocking and the asyncio client (the
``clients`` fixture).  The sans-IO part (bbmq/client/cluster.py) is tested on
its own first.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

import bbmq.kombu  # noqa: F401  (registers bbmq://)
from bbmq import aio, cli, protocol
from bbmq.cli_options import client_options
from bbmq.client import CannotConnect, Consumer, InvalidArgument, Message, Producer, Redirected
from bbmq.client.cluster import (
    Cluster,
    ConnectPlan,
    parse_address,
    parse_brokers,
    seed_brokers,
)
from bbmq.client.errors import ConnectionLost
from bbmq.client.inbox import Inbox
from bbmq.client.retry import Backoff, Reconnect
from bbmq.testing import BrokerController, wait_for

from .client_flavours import Flavour
from .fake_brokers import FakeBroker, SharedStore, cluster, message, refused_address

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def two() -> Iterator[tuple[SharedStore, FakeBroker, FakeBroker]]:
    store, (first, second) = cluster(2)
    yield store, first, second
    first.close()
    second.close()


# --------------------------------------------------------------------------- sans-IO


def test_broker_addresses_parse_with_the_default_port_and_ipv6() -> None:
    assert parse_address("10.0.0.5:16000") == ("10.0.0.5", 16000)
    assert parse_address("[::1]:16000") == ("::1", 16000)
    assert parse_address("broker-a") == ("broker-a", 15333)
    assert parse_brokers(" h1:1, h2:2 ,h1:1,") == (("h1", 1), ("h2", 2))
    assert parse_brokers(["h1:1", "h2"]) == (("h1", 1), ("h2", 15333))
    for bad in ("h1:port", "h1:0", ":15333", "h1:99999"):
        with pytest.raises(InvalidArgument, match="host:port"):
            parse_brokers(bad)


def test_the_seed_brokers_come_from_the_arguments_then_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BBMQ_BROKERS", "e1:1,e2:2")
    monkeypatch.setenv("BBMQ_HOST", "envhost")
    assert seed_brokers(None, None, None) == (("e1", 1), ("e2", 2))
    assert seed_brokers("a:1,b:2", None, None) == (("a", 1), ("b", 2))
    assert seed_brokers(None, "h", 9) == (("h", 9),)  # host/port given: one broker
    assert seed_brokers(None, None, 9) == (("envhost", 9),)
    monkeypatch.delenv("BBMQ_BROKERS")
    assert seed_brokers(None, None, None) == (("envhost", 15333),)
    with pytest.raises(InvalidArgument, match="not both"):
        seed_brokers(["a:1"], "h", None)
    monkeypatch.setenv("BBMQ_BROKERS", "a:1,b:nope")
    with pytest.raises(InvalidArgument, match="BBMQ_BROKERS: 'b:nope'"):
        seed_brokers(None, None, None)


def test_the_owner_cache_keeps_the_higher_epoch_and_learns_the_brokers() -> None:
    known = Cluster((("a", 1), ("b", 2)))
    owner = known.redirected("t", protocol.Redirect("t", "c:3", 5, None, ("a:1", "c:3", "d:4")))
    assert owner == ("c", 3)
    assert known.brokers == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    # Older news (a lower epoch) does not move the topic back.
    assert known.redirected("t", protocol.Redirect("t", "b:2", 4)) is None
    assert known.order("t")[0] == ("c", 3)
    assert known.redirected("t", protocol.Redirect("t", "d:4", 6)) == ("d", 4)
    known.acknowledged("t", ("b", 2), {"epoch": 7, "brokers": ["e:5"]})
    assert known.order("t") == [("b", 2), ("a", 1), ("c", 3), ("d", 4), ("e", 5)]
    assert ("e", 5) in known.brokers
    assert known.order("other") == [("b", 2), ("a", 1), ("c", 3), ("d", 4), ("e", 5)]


def test_a_connect_walks_the_brokers_at_once_and_names_them_all_when_none_answers() -> None:
    plan = ConnectPlan(Cluster((("a", 1), ("b", 2), ("c", 3))), "t", now=0.0, patience=30.0)
    for expected in (("a", 1), ("b", 2), ("c", 3)):
        step = plan.next(0.0)
        assert step == (expected, 0.0)  # a refused broker is followed by the next at once
        plan.failed(expected, CannotConnect(f"cannot connect to {expected}: refused"))
    assert plan.next(0.0) is None
    error = plan.error()
    assert isinstance(error, CannotConnect)
    assert all(address in error.text for address in ("a:1", "b:2", "c:3"))
    assert "--brokers" in error.text and "BBMQ_BROKERS" in error.text


def test_a_connection_to_one_of_several_brokers_is_given_seconds_not_the_whole_timeout() -> None:
    several = ConnectPlan(Cluster((("a", 1), ("b", 2))), "t", now=0.0, patience=30.0)
    assert several.connect_timeout(30.0) == 3.0 and several.connect_timeout(1.0) == 1.0
    assert ConnectPlan(Cluster((("a", 1),)), "t", now=0.0, patience=30.0).connect_timeout(
        30.0) == 30.0


def test_a_connect_follows_the_owner_and_waits_out_retry_ms() -> None:
    plan = ConnectPlan(Cluster((("a", 1), ("b", 2), ("c", 3))), "t", now=0.0, patience=30.0)
    assert plan.next(0.0) == (("a", 1), 0.0)
    plan.redirected(protocol.Redirect("t", "c:3", 2))
    assert plan.next(0.0) == (("c", 3), 0.0)  # the owner next, ahead of b
    plan.redirected(protocol.Redirect("t", None, None, 250))
    # The round ends; after retry_ms every broker again, the last owner first.
    assert plan.next(0.1) == (("c", 3), 0.25)
    assert plan.next(0.4) == (("a", 1), 0.0)
    # A cluster that keeps redirecting without granting is given up on after `patience`.
    late = ConnectPlan(Cluster((("a", 1),)), "t", now=0.0, patience=1.0)
    assert late.next(0.0) == (("a", 1), 0.0)
    late.redirected(protocol.Redirect("t", None, None, 2000, (), "no owner yet"))
    assert late.next(0.0) is None
    assert "no owner yet" in late.error().text and "within 1 s" in late.error().text


def test_after_a_loss_the_next_broker_is_tried_first_and_the_failed_last() -> None:
    known = Cluster((("a", 1), ("b", 2), ("c", 3)))
    known.learn_owner("t", ("b", 2), 4)
    plan = ConnectPlan(known, "t", now=0.0, patience=30.0, lost=("b", 2))
    assert plan.next(0.0) == (("a", 1), 0.0)  # not the owner whose connection was lost
    plan.failed(("a", 1), CannotConnect("refused"))
    assert plan.next(0.0) == (("c", 3), 0.0)
    plan.redirected(protocol.Redirect("t", None, None, 100))
    # The next round: the ones that failed (and the lost one) after the others.
    assert plan.next(0.0) == (("c", 3), 0.1)
    assert plan.next(0.1) == (("a", 1), 0.0)
    assert plan.next(0.1) == (("b", 2), 0.0)


def test_a_redirect_loop_ends_with_an_error_that_says_what_to_check() -> None:
    plan = ConnectPlan(Cluster((("a", 1), ("b", 2))), "t", now=0.0, patience=30.0)
    epoch = 0
    while (step := plan.next(0.0)) is not None:
        epoch += 1
        other = "b:2" if step[0] == ("a", 1) else "a:1"
        plan.redirected(protocol.Redirect("t", other, epoch))
    assert epoch > 10
    assert "disagree" in plan.error().text


def test_a_reconnect_is_at_once_after_a_redirect_or_a_first_loss_then_backs_off() -> None:
    reconnect = Reconnect(Backoff(0.1, 0.4))
    lost = ConnectionLost("reset")
    assert reconnect.pause(lost) == 0.0
    assert [reconnect.pause(lost) for _ in range(3)] == [0.1, 0.2, 0.4]
    assert reconnect.pause(Redirected(protocol.Redirect("t", "b:2", 1))) == 0.0
    reconnect.reset()
    assert reconnect.pause(lost) == 0.0
    assert reconnect.pause(lost) == 0.1


def test_the_inbox_ends_the_stream_at_a_redirect_after_the_frames_before_it() -> None:
    server, inbox = protocol.ServerConnection(), Inbox()
    server.receive_data(inbox.connection.send(protocol.ClientPublisher("t", {})))
    server.next_event()
    data = server.send(protocol.ServerAcknowledgement({}))
    server.receive_data(inbox.connection.send(protocol.Publish(b"x", "m1", 0, None, None)))
    server.next_event()
    data += server.send(protocol.ProducerAckMessage(7))
    data += server.send(protocol.Redirect("t", "b:2", 3))
    assert not inbox.receive(data)  # the stream ended in it
    assert inbox.take_all() == [protocol.ServerAcknowledgement({}),
                                protocol.ProducerAckMessage(7)]
    error = inbox.broken_error()
    assert isinstance(error, Redirected) and isinstance(error, ConnectionLost)
    assert error.redirect.owner == "b:2" and "b:2" in error.text


# --------------------------------------------------------------------------- producers


def test_a_broker_that_does_not_serve_the_topic_redirects_the_producer_to_the_owner(
        clients: Flavour, two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    store, first, second = two
    first.answers.append(first.redirect("jobs", second))
    with clients.Producer("jobs", brokers=[first.address, second.address]) as producer:
        assert producer.publish_many([b"a", b"b"]) == [1, 2]
        assert producer.publish(b"c") == 3
        assert (producer.host, producer.port) == ("127.0.0.1", second.port)
    assert len(first.handshakes) == 1 and not first.frames(protocol.Publish)
    assert len(second.handshakes) == 1 and len(second.frames(protocol.Publish)) == 3
    assert len(store.stored) == 3


def test_a_redirect_mid_stream_resends_the_unconfirmed_with_their_msgids(
        clients: Flavour, two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    store, first, second = two
    first.answers.append(first.redirect("jobs", second))
    second.confirm_first = 3  # then the topic moves: 4 publishes stay unanswered
    second.redirect_when_held = (4, second.redirect("jobs", first, epoch=9))
    with clients.Producer("jobs", brokers=[first.address, second.address]) as producer:
        ids = producer.publish_many([f"m{n}".encode() for n in range(10)], window=10)
    assert ids == list(range(1, 11))  # every message confirmed once, in order
    sent_to_second = [publish.msgid for publish in second.frames(protocol.Publish)]
    sent_to_first = [publish.msgid for publish in first.frames(protocol.Publish)]
    assert sent_to_first[:4] == sent_to_second[3:7]  # the unconfirmed, with the same msgids
    assert not set(sent_to_first) & set(sent_to_second[:3])  # the confirmed are not resent
    assert len(store.stored) == 10 and len(set(store.stored)) == 10
    assert len(first.handshakes) == 2  # redirected away at first, then the owner


def test_a_retry_ms_redirect_waits_then_tries_the_last_owner_first(
        clients: Flavour, two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    store, first, second = two
    first.answers.append(first.redirect("jobs", second))
    second.confirm_first = 1
    second.redirect_when_held = (1, second.redirect("jobs", None, retry_ms=150))
    with clients.Producer("jobs", brokers=[first.address, second.address]) as producer:
        assert producer.publish_many([b"a", b"b"]) == [1, 2]
    assert len(first.handshakes) == 1  # the last owner was tried first, and took it back
    assert len(second.handshakes) == 2
    assert second.handshakes[1].at - second.handshakes[0].at >= 0.15
    assert len(store.stored) == 2


def test_a_lost_broker_is_left_for_the_next_and_the_unconfirmed_resent_there(
        clients: Flavour, two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    store, first, second = two
    second.confirm_first = 2
    second.drop_when_held = 3  # then it is gone without a word, as after a kill -9
    with clients.Producer("jobs", brokers=[second.address, first.address]) as producer:
        assert producer.publish_many([f"m{n}".encode() for n in range(6)]) == list(range(1, 7))
        assert (producer.host, producer.port) == ("127.0.0.1", first.port)
    assert len(second.handshakes) == 1  # not tried again: the next broker first
    sent_to_second = [publish.msgid for publish in second.frames(protocol.Publish)]
    sent_to_first = [publish.msgid for publish in first.frames(protocol.Publish)]
    assert sent_to_first[:3] == sent_to_second[2:5]  # the unconfirmed, same msgids
    assert len(sent_to_first) == 4
    assert not set(sent_to_first) & set(sent_to_second[:2])  # not the confirmed
    assert len(store.stored) == 6


def test_a_silent_broker_is_left_after_the_timeout_for_the_next(
        clients: Flavour, two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    """A paused owner keeps the connection open and answers nothing: after ``timeout`` the
    producer resends what it did not confirm to the next broker."""
    store, first, second = two
    second.confirm_first = 1  # then silence
    with clients.Producer("jobs", brokers=[second.address, first.address],
                          timeout=0.3) as producer:
        assert producer.publish_many([b"a", b"b", b"c"]) == [1, 2, 3]
    assert [p.msgid for p in first.frames(protocol.Publish)] == [
        p.msgid for p in second.frames(protocol.Publish)][1:]
    assert len(store.stored) == 3


def test_the_default_timeout_is_shorter_once_several_brokers_are_known() -> None:
    assert Producer("jobs", "h", 1).timeout == 30.0
    assert Producer("jobs", brokers=["h:1", "h:2"]).timeout == 6.0
    assert Producer("jobs", brokers=["h:1", "h:2"], timeout=9).timeout == 9
    alone = Consumer("jobs", brokers=["h:1"])
    alone.cluster.learn_brokers(["h:2"])  # as a handshake answer listing the cluster does
    assert alone.timeout == 6.0


def test_a_redirect_with_retry_ms_at_the_handshake_is_waited_out(clients: Flavour) -> None:
    _store, (only,) = cluster(1)
    only.answers.append(only.redirect("jobs", None, retry_ms=120))
    try:
        with clients.Producer("jobs", brokers=[only.address]) as producer:
            assert producer.publish(b"a") == 1
        assert len(only.handshakes) == 2
        assert only.handshakes[1].at - only.handshakes[0].at >= 0.12
    finally:
        only.close()


@pytest.mark.parametrize("gone", ["refused", "hangs up"])
def test_a_broker_that_is_gone_is_skipped_for_the_next(
        clients: Flavour, two: tuple[SharedStore, FakeBroker, FakeBroker], gone: str) -> None:
    _store, first, second = two
    if gone == "refused":
        dead = refused_address()
    else:
        first.hang_up = True
        dead = first.address
    with clients.Producer("jobs", brokers=[dead, second.address]) as producer:
        assert producer.publish(b"a") == 1
    assert len(second.handshakes) == 1


def test_no_reachable_broker_is_an_error_that_names_them_all(clients: Flavour) -> None:
    dead = [refused_address(), refused_address()]
    producer = clients.Producer("jobs", brokers=dead, retry_for=5)
    with pytest.raises(CannotConnect) as failed:
        producer.publish(b"a")
    assert all(address in failed.value.text for address in dead)
    assert "--brokers" in failed.value.text


def test_bbmq_brokers_lists_the_brokers(
        clients: Flavour, two: tuple[SharedStore, FakeBroker, FakeBroker],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _store, first, second = two
    dead = refused_address()
    monkeypatch.setenv("BBMQ_BROKERS", f"{dead},{second.address}")
    producer = clients.Producer("jobs")
    assert producer.brokers == [dead, second.address]
    with producer:
        assert producer.publish(b"a") == 1
        assert first.address in producer.brokers  # the broker's answer listed it
    assert len(second.handshakes) == 1


# --------------------------------------------------------------------------- consumers


def test_a_consumer_follows_the_topic_and_settles_only_on_the_new_connection(
        clients: Flavour, two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    _store, first, second = two
    _moving_topic(first, second)
    got = []
    with clients.Consumer("jobs", "workers", brokers=[first.address, second.address],
                          prefetch=10) as consumer:
        for delivered in consumer:
            got.append((delivered.id, delivered.attempt))
            consumer.ack(delivered)
            if len(got) == 6:
                break
    assert got == [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)]
    # The new owner is asked again (a FETCH) and hears only acks of its own deliveries.
    assert first.frames(protocol.Fetch)
    assert _acked(first) == [1, 2, 3]
    assert len(first.handshakes) == 2


def test_a_consumer_fetch_follows_a_redirect(
        clients: Flavour, two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    _store, first, second = two
    second.answers.append(second.redirect("jobs", first))
    first.deliveries.append(message(4))
    with clients.Consumer("jobs", brokers=[second.address]) as consumer:
        delivered = consumer.fetch(timeout=5)
        assert delivered is not None and delivered.id == 4
        consumer.ack(delivered)
        assert consumer.fetch(timeout=0.05) is None
    assert [ack.ids for ack in first.frames(protocol.Ack)] == [(4,)]


def _moving_topic(first: FakeBroker, second: FakeBroker) -> None:
    """The handshake goes from ``first`` to ``second``, which delivers three messages and
    then moves the topic back to ``first``, which delivers them again (attempt 2)."""
    first.answers.append(first.redirect("jobs", second))
    second.deliveries.extend(message(n) for n in (1, 2, 3))
    second.redirect_when_delivered = second.redirect("jobs", first, epoch=9)
    first.deliveries.extend(message(n, attempt=2) for n in (1, 2, 3))


def _acked(broker: FakeBroker) -> list[int]:
    return sorted(i for ack in broker.frames(protocol.Ack) for i in ack.ids)


def test_run_follows_a_redirect(two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    _store, first, second = two
    _moving_topic(first, second)
    seen: list[tuple[int, int]] = []
    consumer = Consumer("jobs", brokers=[first.address, second.address], prefetch=10)

    def handle(delivered: Message) -> None:
        seen.append((delivered.id, delivered.attempt))
        if len(seen) == 6:
            consumer.stop()

    consumer.run(handle, workers=1)
    consumer.close()
    assert sorted(seen) == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    wait_for(lambda: _acked(first) == [1, 2, 3], "the new owner's acks")


def test_the_asyncio_run_follows_a_redirect(
        two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    _store, first, second = two
    _moving_topic(first, second)
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        consumer = aio.Consumer("jobs", brokers=[first.address, second.address], prefetch=10)

        async def handle(delivered: aio.Message) -> None:
            seen.append((delivered.id, delivered.attempt))
            if len(seen) == 6:
                consumer.stop()

        await consumer.run(handle)
        await consumer.close()

    asyncio.run(main())
    assert sorted(seen) == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    wait_for(lambda: _acked(first) == [1, 2, 3], "the new owner's acks")


# --------------------------------------------------------------------------- command line


def test_the_cli_takes_brokers(two: tuple[SharedStore, FakeBroker, FakeBroker],
                               capsys: pytest.CaptureFixture[str]) -> None:
    _store, first, second = two
    args = cli.build_parser().parse_args(["publish", "jobs", "x", "--brokers", "h1:1,h2:2"])
    assert client_options(args)["brokers"] == "h1:1,h2:2"
    first.answers.append(first.redirect("jobs", second))
    assert cli.main(["publish", "jobs", "hello", "--brokers",
                     f"{first.address},{second.address}"]) == 0
    assert capsys.readouterr().out.split() == ["1"]
    second.deliveries.append(message(1))
    assert cli.main(["consume", "jobs", "-n", "1", "--brokers", second.address]) == 0
    assert capsys.readouterr().out.split() == ["m1"]
    assert cli.main(["publish", "jobs", "x", "--brokers", "a:1", "--host", "h"]) == 1
    assert "not both" in capsys.readouterr().err


@pytest.mark.slow  # a Python process of its own: about a second
def test_producer_py_and_consumer_py_take_brokers(
        two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    _store, first, second = two
    first.answers.append(first.redirect("jobs", second))
    env = {key: value for key, value in os.environ.items() if not key.startswith("BBMQ_")}
    done = subprocess.run([sys.executable, str(REPO / "producer.py"), "jobs", "hello",
                           "--brokers", f"{first.address},{second.address}"],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
    assert [publish.body for publish in second.frames(protocol.Publish)] == [b"hello"]
    second.answers.append(second.redirect("jobs", first))
    first.deliveries.append(message(1))
    done = subprocess.run([sys.executable, str(REPO / "consumer.py"), "jobs", "-n", "1",
                           "--brokers", f"{second.address},{first.address}"],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["m1"]
    assert _acked(first) == [1]


def test_a_producer_without_brokers_is_a_list_of_one() -> None:
    producer = Producer("jobs", "10.1.2.3", 1234)
    assert producer.brokers == ["10.1.2.3:1234"]
    assert (producer.host, producer.port) == ("10.1.2.3", 1234)


def test_a_kombu_url_in_failover_form_lists_the_brokers() -> None:
    """``bbmq://h1:p1;bbmq://h2:p2`` (kombu's own form for several hosts): every URL is a
    broker of the cluster, a dead first one is skipped."""
    dead = refused_address()
    with BrokerController(store="memory://") as broker, \
            Connection(f"bbmq://{dead};bbmq://127.0.0.1:{broker.port}") as connection:
        assert connection.transport.client_options["brokers"] == [
            dead, f"127.0.0.1:{broker.port}"]
        connection.connect()
        queue = Queue("jobs", Exchange("jobs", "direct"), routing_key="jobs")
        with connection.Producer() as producer:
            producer.publish({"n": 1}, exchange=queue.exchange, routing_key="jobs",
                             declare=[queue])
        received: list[object] = []
        with connection.Consumer([queue], callbacks=[lambda body, m: (received.append(body),
                                                                       m.ack())]):
            connection.drain_events(timeout=5)
    assert received == [{"n": 1}]


def _kombu_message(number: int, attempt: int) -> protocol.Message:
    """A MESSAGE whose body is kombu's envelope of the JSON ``{"n": number}``."""
    envelope = {"body": json.dumps({"n": number}), "content-type": "application/json",
                "content-encoding": "utf-8", "headers": {},
                "properties": {"body_encoding": "utf-8", "delivery_info": {}}}
    return protocol.Message(number, attempt, json.dumps(envelope).encode(), "fake", None, {})


def test_a_kombu_consumer_follows_a_redirect(
        two: tuple[SharedStore, FakeBroker, FakeBroker]) -> None:
    _store, first, second = two
    first.answers.append(first.redirect("jobs", second))
    second.deliveries.extend(_kombu_message(n, 1) for n in (1, 2))
    second.redirect_when_delivered = second.redirect("jobs", first, epoch=9)
    first.deliveries.extend(_kombu_message(n, 2) for n in (1, 2))
    received: list[object] = []
    queue = Queue("jobs", Exchange("jobs", "direct"), routing_key="jobs")
    with Connection(f"bbmq://{first.address};bbmq://{second.address}") as connection, \
            connection.Consumer([queue], auto_declare=False,
                                callbacks=[lambda body, m: (received.append(body), m.ack())]):
        while len(received) < 4:
            connection.drain_events(timeout=5)
    assert received == [{"n": 1}, {"n": 2}, {"n": 1}, {"n": 2}]
    wait_for(lambda: _acked(first) == [1, 2], "the new owner's acks")
