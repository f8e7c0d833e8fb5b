"""The broker core in a cluster: topics served under a lease, handshakes that wait for their
topic, REDIRECT answers, a lost topic forgotten cleanly, and the topics every batch names.

Driven through the core harness (frames in and out through the protocol's state, a store
that commits on demand, a clock moved by hand), and once through the real transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bbmq import protocol
from bbmq.core import Broker, BrokerConfig
from bbmq.core.engine import MESSAGE_OVERHEAD_BYTES
from bbmq.defaults import lease_topic
from bbmq.server import BrokerServer, TransportConfig
from bbmq.store import open_store
from bbmq.store.base import GroupRecord, RecoveredMessage, StoredId
from bbmq.store.worker import StoreWorker

from .core_harness import START_MS, CoreHarness, messages


def cluster(**config: object) -> CoreHarness:
    harness = CoreHarness(cluster=True, **config)
    harness.broker.set_cluster_brokers(("10.0.0.1:15333", "10.0.0.2:15333"))
    return harness


def handshake(harness: CoreHarness, frame: protocol.TypedFrame, *after: protocol.TypedFrame
              ) -> int:
    """A new connection that sends ``frame`` and, pipelined behind it, ``after``."""
    session = harness.connect()
    harness.send(session, frame, *after)
    return session


def stored_message(message_id: int, topic: str, body: bytes, pending: dict[str, int]
                   ) -> RecoveredMessage:
    return RecoveredMessage(message_id, topic, body, None, START_MS, 0, None, {}, pending)


def acquire(harness: CoreHarness, topic: str, epoch: int, groups: list[GroupRecord] | None = None,
            records: list[RecoveredMessage] | None = None) -> None:
    harness.broker.topic_acquired(topic, epoch, groups or [], records or [], harness.now)
    harness.collect()


def only(frames: list[protocol.TypedFrame], kind: type[Any]) -> Any:
    assert len(frames) == 1 and isinstance(frames[0], kind), frames
    return frames[0]


# ---------------------------------------------------------------------------- handshakes

def test_a_handshake_waits_for_its_topic_then_is_acknowledged_with_epoch_and_brokers() -> None:
    harness = cluster()
    publisher = handshake(harness, protocol.ClientPublisher("orders", {}),
                          protocol.Publish(b"pipelined"))
    dead_letters = handshake(harness, protocol.ClientSubscriber("orders.dlq", "ops"))
    assert harness.take(publisher) == [] and harness.take(dead_letters) == []
    assert harness.broker.take_store_work()[0] == []  # the PUBLISH behind it waits too
    # One request per topic, once; the dead-letter topic is served with its parent.
    assert harness.broker.take_topic_requests() == ["orders"]
    assert harness.broker.take_topic_requests() == []
    assert harness.broker.snapshot().cluster is not None
    assert harness.broker.snapshot().cluster.topics_waiting == 1

    acquire(harness, "orders", 7)
    for session in (publisher, dead_letters):
        frames = harness.take(session)
        info = frames[0].info
        assert isinstance(frames[0], protocol.ServerAcknowledgement)
        assert info["epoch"] == 7
        assert info["brokers"] == ["10.0.0.1:15333", "10.0.0.2:15333"]
    assert harness.broker.served_topics() == {"orders": 7}
    # The pipelined PUBLISH went on once the handshake was answered.
    harness.commit()
    assert isinstance(only(harness.take(publisher), protocol.ProducerAckMessage),
                      protocol.ProducerAckMessage)
    counters = harness.broker.snapshot().cluster
    assert counters is not None and (counters.topics_served, counters.topics_waiting) == (1, 0)


def test_a_served_topic_is_acknowledged_at_once_and_its_recovered_messages_are_ready() -> None:
    harness = cluster()
    # A delivery of the old epoch (attempt 1 made) is ready again at once, not after a timeout.
    acquire(harness, "orders", 3, [GroupRecord("orders", "billing", 0, START_MS)],
            [stored_message(5, "orders", b"old", {"billing": 1}),
             stored_message(6, "orders", b"new", {"billing": 0}),
             stored_message(7, "orders.dlq", b"dead", {})])
    consumer = harness.subscriber("orders", "billing")
    harness.send(consumer, protocol.Fetch(10, 0))
    assert messages(harness.take(consumer)) == [(5, 2, b"old"), (6, 1, b"new")]
    dead = harness.subscriber("orders.dlq", "ops")
    harness.send(dead, protocol.Fetch(1, 0))
    assert messages(harness.take(dead)) == [(7, 1, b"dead")]


def test_topic_acquired_refuses_records_of_another_topic() -> None:
    harness = cluster()
    with pytest.raises(ValueError, match="'billing'"):
        harness.broker.topic_acquired("orders", 1, [], [stored_message(1, "billing", b"x", {})],
                                      harness.now)
    with pytest.raises(ValueError, match="served with 'orders'"):
        harness.broker.topic_acquired("orders.dlq", 1, [], [], harness.now)


def test_a_waiting_handshake_found_elsewhere_is_redirected_and_closed() -> None:
    harness = cluster()
    publisher = handshake(harness, protocol.ClientPublisher("orders", {}),
                          protocol.Publish(b"never handled here"))
    assert harness.broker.take_topic_requests() == ["orders"]
    harness.broker.topic_elsewhere("orders", "10.0.0.2:15333", 9, None, harness.now)
    harness.collect()
    redirect = only(harness.take(publisher), protocol.Redirect)
    assert (redirect.topic, redirect.owner, redirect.epoch, redirect.retry_ms) == (
        "orders", "10.0.0.2:15333", 9, None)
    assert redirect.brokers == ("10.0.0.1:15333", "10.0.0.2:15333")
    assert publisher in harness.closed
    assert harness.broker.take_store_work()[0] == []
    assert harness.broker.served_topics() == {}
    # Answered: the next handshake for it asks the membership again.
    handshake(harness, protocol.ClientSubscriber("orders", "billing"))
    assert harness.broker.take_topic_requests() == ["orders"]


def test_a_handshake_waiting_past_topic_wait_ms_is_told_to_retry() -> None:
    harness = cluster(topic_wait_ms=1000, topic_retry_ms=250)
    publisher = handshake(harness, protocol.ClientPublisher("orders", {}))
    assert harness.broker.take_topic_requests() == ["orders"]
    assert harness.broker.next_deadline() == harness.now + 1000
    harness.advance(999)
    assert harness.take(publisher) == [] and publisher not in harness.closed
    harness.advance(1)
    redirect = only(harness.take(publisher), protocol.Redirect)
    assert (redirect.owner, redirect.retry_ms) == (None, 250)
    assert publisher in harness.closed
    counters = harness.broker.snapshot().cluster
    assert counters is not None and (counters.redirects_sent, counters.topics_waiting) == (1, 0)
    # Nobody waits any more: a later handshake asks again (the request may have been dropped).
    handshake(harness, protocol.ClientPublisher("orders", {}))
    assert harness.broker.take_topic_requests() == ["orders"]


def test_a_waiting_connection_that_goes_away_is_forgotten() -> None:
    harness = cluster()
    publisher = handshake(harness, protocol.ClientPublisher("orders", {}))
    harness.disconnect(publisher)
    assert harness.broker.snapshot().cluster.topics_waiting == 0  # type: ignore[union-attr]
    acquire(harness, "orders", 1)  # answers nobody, and does not fail on the gone session
    assert harness.take(publisher) == []


# ---------------------------------------------------------------------------- topic lost

@pytest.mark.parametrize("store_answer", ["stored", "failed"])
def test_a_lost_topic_redirects_its_clients_and_is_forgotten(store_answer: str) -> None:
    harness = cluster(ack_timeout_ms=30_000)
    acquire(harness, "orders", 1)
    publisher = harness.publisher("orders")
    consumer = harness.subscriber("orders", "billing")
    poller = harness.subscriber("orders", "audit")
    [first_id] = harness.publish(publisher, b"first")
    harness.send(consumer, protocol.Fetch(10))
    assert messages(harness.take(consumer)) == [(first_id, 1, b"first")]  # held, unacked
    harness.send(poller, protocol.Fetch(5, 60_000))  # ...a long poll, delivered and open
    assert messages(harness.take(poller)) == [(first_id, 1, b"first")]
    harness.send(publisher, protocol.Publish(b"in the store thread", msgid="m-2"))
    in_thread, _ = harness.broker.take_store_work()
    harness.send(publisher, protocol.Publish(b"not handed over yet", msgid="m-3"))
    admin = harness.connect()
    harness.send(admin, protocol.ClientAdmin({}))
    harness.take(admin)

    harness.broker.topic_lost("orders", "10.0.0.2:15333", 2, None, harness.now)
    harness.collect()
    for session in (publisher, consumer, poller):
        redirect = only(harness.take(session), protocol.Redirect)  # and no reply for m-2, m-3
        assert (redirect.owner, redirect.epoch) == ("10.0.0.2:15333", 2)
        assert session in harness.closed
    assert admin not in harness.closed
    broker = harness.broker
    assert broker.served_topics() == {}
    assert broker.snapshot().topics == ()
    assert broker.next_deadline() is None  # ack deadlines and the long poll went with it
    publishes, _ = broker.take_store_work()
    assert publishes == []  # m-3 is not written: its publisher resends it to the new owner
    # Only the publish still in the store thread is held, until the store answers it.
    assert broker.queued_bytes == len(b"in the store thread") + MESSAGE_OVERHEAD_BYTES

    if store_answer == "stored":
        broker.stored(in_thread, [StoredId(first_id + 1)], harness.now)
    else:
        broker.store_failed(in_thread, "lease lost")
    harness.collect()
    assert broker.queued_bytes == 0
    assert broker.snapshot().topics == ()  # the answer did not bring the topic back
    assert all(harness.take(session) == [] for session in (publisher, consumer, poller))
    # The admin commands see the topics served only: none now.
    harness.send(admin, protocol.AdminCommand("topics", {}),
                 protocol.AdminCommand("peek", {"topic": "orders"}),
                 protocol.AdminCommand("purge", {"topic": "orders"}))
    topics, peek, purge = harness.take(admin)
    assert topics == protocol.AdminResult([])
    for answer in (peek, purge):
        assert isinstance(answer, protocol.Error)
        assert answer.text.startswith("no topic 'orders' served here")

    # Taken back later: the store's state is loaded, the old deliveries are ready at once.
    acquire(harness, "orders", 3, [GroupRecord("orders", "billing", 0, START_MS)],
            [stored_message(first_id, "orders", b"first", {"billing": 1}),
             stored_message(first_id + 1, "orders", b"in the store thread", {"billing": 0})])
    again = harness.subscriber("orders", "billing")
    harness.send(again, protocol.Fetch(10, 0))
    assert messages(harness.take(again)) == [(first_id, 2, b"first"),
                                              (first_id + 1, 1, b"in the store thread")]


def test_a_publish_committed_after_its_topic_was_lost_and_taken_back_is_not_queued_twice(
) -> None:
    harness = cluster()
    acquire(harness, "orders", 1)
    publisher = harness.publisher("orders")
    harness.send(publisher, protocol.Publish(b"late", msgid="m-1"))
    in_thread, _ = harness.broker.take_store_work()
    harness.broker.topic_lost("orders", None, None, 100, harness.now)
    # It committed before the lease moved, so the reload includes it ...
    acquire(harness, "orders", 2, [GroupRecord("orders", "g", 0, START_MS)],
            [stored_message(41, "orders", b"late", {"g": 0})])
    # ... and the store's late answer for it changes nothing.
    harness.broker.stored(in_thread, [StoredId(41)], harness.now)
    assert harness.broker.snapshot().topic("orders").group("g").ready == 1
    assert harness.broker.queued_bytes == len(b"late") + MESSAGE_OVERHEAD_BYTES


def test_a_lost_topic_answers_its_waiting_handshakes_too() -> None:
    harness = cluster()
    waiting = handshake(harness, protocol.ClientSubscriber("orders", "billing"))
    harness.broker.topic_lost("orders", None, None, 300, harness.now)
    harness.collect()
    assert only(harness.take(waiting), protocol.Redirect).retry_ms == 300
    assert waiting in harness.closed


def test_a_lost_topic_takes_its_dead_letter_topic_but_no_other() -> None:
    harness = cluster(max_attempts=1)
    acquire(harness, "orders", 1)
    acquire(harness, "billing", 1)
    publisher = harness.publisher("orders")
    consumer = harness.subscriber("orders", "g")
    other = harness.subscriber("billing", "g")
    harness.publish(publisher, b"doomed")
    harness.send(consumer, protocol.Fetch(1))
    [(message_id, _, _)] = messages(harness.take(consumer))
    harness.send(consumer, protocol.Nack(message_id))
    harness.commit()
    dead = harness.subscriber("orders.dlq", "ops")
    assert [t.name for t in harness.broker.snapshot().topics] == ["billing", "orders",
                                                                  "orders.dlq"]
    harness.broker.topic_lost("orders", None, None, 100, harness.now)
    harness.collect()
    assert [t.name for t in harness.broker.snapshot().topics] == ["billing"]
    assert dead in harness.closed and other not in harness.closed
    assert harness.broker.queued_bytes == 0
    assert harness.broker.served_topics() == {"billing": 1}


# ---------------------------------------------------------------------------- batch.topics

@pytest.mark.parametrize("cluster_mode", [True, False])
def test_every_batch_names_the_topics_it_changes(cluster_mode: bool) -> None:
    harness = cluster(max_attempts=2) if cluster_mode else CoreHarness(max_attempts=2)
    broker = harness.broker
    if cluster_mode:
        acquire(harness, "orders", 1)
        acquire(harness, "quiet", 1)

    def changes() -> tuple[int, Any]:
        publishes, batch = broker.take_store_work()
        harness.stored.messages += [p.message for p in publishes]
        ids = [StoredId(next(harness._message_ids)) for _ in publishes]
        broker.stored(publishes, ids, harness.now)
        harness.collect()
        return len(publishes), batch

    consumer = harness.subscriber("orders", "billing")
    _, batch = changes()
    assert batch.groups and batch.topics == {"orders"}
    publisher = harness.publisher("orders")
    harness.send(publisher, protocol.Publish(b"one"), protocol.Publish(b"two"),
                 protocol.Publish(b"three", delay_ms=1000))
    count, batch = changes()
    assert count == 3 and batch.topics == {"orders"}
    harness.send(consumer, protocol.Fetch(2))
    [(first, _, _), (second, _, _)] = messages(harness.take(consumer))
    _, batch = changes()
    assert batch.deliveries and batch.topics == {"orders"}
    harness.send(consumer, protocol.Ack((first,)))
    _, batch = changes()
    assert batch.acks and batch.done and batch.topics == {"orders"}
    harness.send(consumer, protocol.Nack(second, delay_ms=10))
    _, batch = changes()
    assert batch.deliveries[0].retry_at_ms is not None and batch.topics == {"orders"}
    harness.advance(10)
    harness.send(consumer, protocol.Fetch(1))
    harness.send(consumer, protocol.Nack(second))  # the last attempt: a dead letter
    count, batch = changes()
    assert count == 1 and harness.stored.messages[-1].topic == "orders.dlq"
    assert batch.acks and batch.topics == {"orders"}  # the DLQ is fenced with its parent
    harness.send(publisher, protocol.Publish(b"for a group", group="gone"))
    publishes, _ = broker.take_store_work()
    admin = harness.connect()
    harness.send(admin, protocol.ClientAdmin({}),
                 protocol.AdminCommand("group_delete", {"topic": "orders", "group": "gone"}))
    _, batch = broker.take_store_work()
    assert batch.deleted_groups and not batch.groups and batch.topics == {"orders"}
    broker.stored(publishes, [StoredId(1000)], harness.now)  # its group is gone: done at once
    _, batch = changes()
    assert batch.done == [1000] and batch.topics == {"orders"}
    quiet = harness.publisher("quiet")
    harness.publish(quiet, b"backlog")
    harness.send(admin, protocol.AdminCommand("purge", {"topic": "quiet"}))
    _, batch = changes()
    assert batch.done and batch.topics == {"quiet"}


def test_a_dead_letter_topic_leases_with_its_parent() -> None:
    assert lease_topic("orders.dlq") == "orders"
    assert lease_topic("orders.dlq.dlq") == "orders"
    assert lease_topic("orders") == "orders"
    assert lease_topic(".dlq") == ".dlq"


# ---------------------------------------------------------------------------- draining

def test_a_draining_broker_redirects_what_it_does_not_serve_and_keeps_what_it_does() -> None:
    harness = cluster()
    acquire(harness, "orders", 4)
    waiting = handshake(harness, protocol.ClientPublisher("billing", {}))
    harness.broker.topic_elsewhere("known", "10.0.0.2:15333", 6, None, harness.now)
    assert harness.broker.take_topic_requests() == ["billing"]

    harness.broker.draining = True
    harness.collect()
    assert harness.broker.draining
    assert only(harness.take(waiting), protocol.Redirect).retry_ms == 500
    served = harness.publisher("orders")  # still served: works as before
    assert harness.publish(served, b"still here")
    unknown = handshake(harness, protocol.ClientSubscriber("elsewhere", "g"))
    assert only(harness.take(unknown), protocol.Redirect).owner is None
    known = handshake(harness, protocol.ClientSubscriber("known.dlq", "g"))
    redirect = only(harness.take(known), protocol.Redirect)
    assert (redirect.topic, redirect.owner, redirect.epoch) == ("known.dlq", "10.0.0.2:15333", 6)
    assert harness.broker.take_topic_requests() == []  # a draining broker asks for nothing
    # The hand-off: its clients go to the target.
    harness.broker.topic_lost("orders", "10.0.0.3:15333", 5, None, harness.now)
    harness.collect()
    assert only(harness.take(served), protocol.Redirect).owner == "10.0.0.3:15333"


# ---------------------------------------------------------------------------- single mode

def test_a_single_broker_serves_every_topic_and_has_no_cluster_parts() -> None:
    harness = CoreHarness()
    publisher = harness.connect()
    harness.send(publisher, protocol.ClientPublisher("orders", {}))
    info = only(harness.take(publisher), protocol.ServerAcknowledgement).info
    assert "epoch" not in info and "brokers" not in info
    assert harness.broker.take_topic_requests() == []
    assert harness.broker.snapshot().cluster is None
    admin = harness.connect()
    harness.send(admin, protocol.ClientAdmin({}), protocol.AdminCommand("stats", {}))
    stats = harness.take(admin)[1]
    assert isinstance(stats, protocol.AdminResult) and "cluster" not in stats.result
    with pytest.raises(RuntimeError, match="cluster=True"):
        harness.broker.topic_acquired("orders", 1, [], [], harness.now)


def test_a_cluster_brokers_stats_carry_its_counters() -> None:
    harness = cluster(topic_wait_ms=10)
    acquire(harness, "orders", 1)
    handshake(harness, protocol.ClientPublisher("billing", {}))
    harness.advance(10)
    admin = harness.connect()
    harness.send(admin, protocol.ClientAdmin({}), protocol.AdminCommand("stats", {}))
    ack, stats = harness.take(admin)
    assert ack.info["brokers"] == ["10.0.0.1:15333", "10.0.0.2:15333"]
    assert "epoch" not in ack.info
    assert stats.result["cluster"] == {"redirects_sent": 1, "topics_served": 1,
                                       "topics_waiting": 0}


# ---------------------------------------------------------------------------- the transport

def test_the_transport_passes_topic_requests_on_and_resumes_the_connection_once_answered(
        tmp_path: Any) -> None:
    """Through real sockets: the handshake waits, the topic goes to the callback, and once the
    membership answers on the loop, the frames pipelined behind the handshake are handled."""

    async def scenario() -> list[protocol.TypedFrame]:
        requested: asyncio.Queue[list[str]] = asyncio.Queue()
        worker = StoreWorker(open_store("memory://", tmp_path), clock=lambda: START_MS)
        server = BrokerServer(
            Broker(BrokerConfig(cluster=True)), worker, lambda: START_MS,
            TransportConfig(host="127.0.0.1", port=0, max_message_size=1 << 20,
                            max_connections=10, max_output_bytes=1 << 20,
                            handshake_timeout=10, idle_timeout=10),
            topic_requests=requested.put_nowait)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(protocol.ClientPublisher("orders", {}).encode()
                         + protocol.Publish(b"behind the handshake").encode())
            assert await asyncio.wait_for(requested.get(), 5) == ["orders"]
            server.call_core(lambda broker, now: broker.topic_acquired("orders", 2, [], [], now))
            decoder, frames = protocol.FrameDecoder(1 << 20), []
            while len(frames) < 2:
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, "the broker closed the connection"
                frames += [protocol.parse(f, protocol.SERVER_FRAMES) for f in decoder.feed(data)]
            # The topic moves away: REDIRECT, then the broker closes the connection.
            server.call_core(lambda broker, now: broker.topic_lost(
                "orders", "10.0.0.2:15333", 3, None, now))
            while data := await asyncio.wait_for(reader.read(65536), 5):
                frames += [protocol.parse(f, protocol.SERVER_FRAMES) for f in decoder.feed(data)]
            writer.close()
            return frames
        finally:
            await server.stop(grace=1)

    ack, reply, redirect = asyncio.run(scenario())
    assert isinstance(ack, protocol.ServerAcknowledgement) and ack.info["epoch"] == 2
    assert isinstance(reply, protocol.ProducerAckMessage)
    assert redirect == protocol.Redirect("orders", "10.0.0.2:15333", 3, None, (),
                                         "topic 'orders' moved to 10.0.0.2:15333")


def test_a_waiting_handshake_the_transport_timed_out_is_not_answered_again() -> None:
    harness = cluster()
    publisher = handshake(harness, protocol.ClientPublisher("orders", {}))
    harness.broker.send_error(publisher, protocol.ErrorCode.TIMEOUT, "no handshake", close=True)
    harness.collect()
    assert isinstance(only(harness.take(publisher), protocol.Error), protocol.Error)
    acquire(harness, "orders", 1)  # an ACK now would break the protocol's state: none is sent
    assert harness.take(publisher) == []


def test_a_topic_acquired_again_under_a_new_epoch_is_reloaded_and_its_clients_redirected(
) -> None:
    harness = cluster()
    acquire(harness, "orders", 1, [GroupRecord("orders", "g", 0, START_MS)],
            [stored_message(1, "orders", b"before", {"g": 0})])
    consumer = harness.subscriber("orders", "g")
    acquire(harness, "orders", 2, [GroupRecord("orders", "g", 0, START_MS)],
            [stored_message(1, "orders", b"before", {"g": 1}),
             stored_message(2, "orders", b"meanwhile", {"g": 0})])
    assert only(harness.take(consumer), protocol.Redirect).owner is None
    assert harness.broker.served_topics() == {"orders": 2}
    group = harness.broker.snapshot().topic("orders").group("g")
    assert (group.ready, group.inflight) == (2, 0)
    acquire(harness, "orders", 2)  # the same epoch again: nothing is loaded twice
    assert harness.broker.snapshot().topic("orders").group("g").ready == 2


def test_flow_control_on_a_redirected_subscriber_changes_nothing() -> None:
    harness = cluster()
    acquire(harness, "orders", 1)
    consumer = harness.subscriber("orders", "g")
    harness.broker.topic_lost("orders", None, None, 100, harness.now)
    harness.broker.set_writable(consumer, False, harness.now)
    harness.broker.set_writable(consumer, True, harness.now)  # its group is gone: no dispatch
    assert harness.broker.resume_throttled(harness.now) is True  # only its REDIRECT is pending
