"""The broker core on its own: no sockets, no store, a clock moved by hand."""

from __future__ import annotations

from collections.abc import Iterator

from bbmq import protocol
from bbmq.core import LEASE_FIFO_MIN
from bbmq.core.engine import MESSAGE_OVERHEAD_BYTES
from bbmq.protocol import ErrorCode
from bbmq.store.base import Batch, GroupRecord, RecoveredMessage

from .core_harness import START_MS, CoreHarness, messages


def errors(frames: list[protocol.TypedFrame]) -> list[str]:
    return [f.code for f in frames if isinstance(f, protocol.Error)]


def test_publish_is_acked_only_after_the_store_commits() -> None:
    h = CoreHarness()
    pub = h.publisher("orders")
    h.send(pub, protocol.Publish(b"a"), protocol.Publish(b"b"))
    assert h.take(pub) == []  # nothing stored yet, nothing acked
    ids = h.commit()
    acks = h.take(pub)
    assert acks == [protocol.ProducerAckMessage(ids[0].id), protocol.ProducerAckMessage(ids[1].id)]
    assert [m.body for m in h.stored.messages] == [b"a", b"b"]


def test_store_failure_answers_every_publish_in_order() -> None:
    h = CoreHarness()
    pub = h.publisher("orders")
    h.send(pub, protocol.Publish(b"a"))
    h.commit()
    h.send(pub, protocol.Publish(b"b"), protocol.Publish(b"c"))
    h.fail_store()
    frames = h.take(pub)
    assert isinstance(frames[0], protocol.ProducerAckMessage)
    assert errors(frames[1:]) == [ErrorCode.STORE_UNAVAILABLE] * 2


def test_a_refused_publish_waits_behind_earlier_acks() -> None:
    h = CoreHarness(max_queued_bytes=2 * MESSAGE_OVERHEAD_BYTES + 10)
    pub = h.publisher("orders")
    h.send(pub, protocol.Publish(b"12345678"))
    h.commit()
    h.take(pub)
    h.send(pub, protocol.Publish(b"1"), protocol.Publish(b"too big now"))
    assert h.take(pub) == []  # the refusal must not overtake the ack of "1"
    h.commit()
    frames = h.take(pub)
    assert isinstance(frames[0], protocol.ProducerAckMessage)
    assert errors(frames) == [ErrorCode.SERVER_BUSY]


def test_fetch_delivers_in_order_with_metadata() -> None:
    h = CoreHarness()
    sub = h.subscriber("orders")
    pub = h.publisher("orders", name="shop")
    ids = h.publish(pub, b"one", b"two")
    h.send(sub, protocol.Fetch(2))
    frames = h.take(sub)
    assert messages(frames) == [(ids[0], 1, b"one"), (ids[1], 1, b"two")]
    first = frames[0]
    assert isinstance(first, protocol.Message)
    assert first.meta["from"] == "shop"
    assert int(first.meta["ts"]) == h.now


def test_blocking_fetch_waits_for_a_message() -> None:
    h = CoreHarness()
    sub = h.subscriber("orders")
    h.send(sub, protocol.Fetch(1))
    h.advance(60_000)
    assert h.take(sub) == []
    pub = h.publisher("orders")
    h.publish(pub, b"late")
    assert messages(h.take(sub)) == [(1, 1, b"late")]


def test_long_poll_ends_with_queue_empty() -> None:
    h = CoreHarness()
    sub = h.subscriber("orders")
    h.send(sub, protocol.Fetch(5, 0))
    assert h.take(sub) == [protocol.QueueEmpty(0)]
    h.send(sub, protocol.Fetch(5, 1000))
    assert h.take(sub) == []
    h.advance(999)
    assert h.take(sub) == []
    h.advance(1)
    assert h.take(sub) == [protocol.QueueEmpty(0)]


def test_long_poll_returns_what_is_ready_then_queue_empty() -> None:
    h = CoreHarness()
    sub = h.subscriber("orders")
    pub = h.publisher("orders")
    h.publish(pub, b"a", b"b")
    h.send(sub, protocol.Fetch(5, 10_000))
    frames = h.take(sub)
    assert [m[2] for m in messages(frames)] == [b"a", b"b"]
    assert frames[-1] == protocol.QueueEmpty(2)


def test_requests_on_one_connection_are_served_in_order() -> None:
    h = CoreHarness()
    sub = h.subscriber("orders")
    h.send(sub, protocol.Fetch(1, 500), protocol.Fetch(1))
    pub = h.publisher("orders")
    h.advance(500)
    assert h.take(sub) == [protocol.QueueEmpty(0)]
    h.publish(pub, b"x")
    assert messages(h.take(sub)) == [(1, 1, b"x")]


def test_every_group_gets_every_message_and_a_group_shares_its_messages() -> None:
    h = CoreHarness()
    a1, a2 = h.subscriber("t", "a"), h.subscriber("t", "a")
    b = h.subscriber("t", "b")
    for session in (a1, a2, b):
        h.send(session, protocol.Fetch(10))
    pub = h.publisher("t")
    h.publish(pub, *(str(i).encode() for i in range(10)))
    got_a1 = messages(h.take(a1))
    got_a2 = messages(h.take(a2))
    got_b = messages(h.take(b))
    assert len(got_b) == 10
    assert len(got_a1) == len(got_a2) == 5  # round robin inside the group
    assert sorted(got_a1 + got_a2) == sorted(got_b)


def test_first_group_gets_backlog_later_groups_start_now() -> None:
    h = CoreHarness()
    pub = h.publisher("t")
    h.publish(pub, b"early")
    first = h.subscriber("t", "first")
    h.publish(pub, b"middle")
    second = h.subscriber("t", "second")
    h.publish(pub, b"late")
    h.send(first, protocol.Fetch(10, 0))
    h.send(second, protocol.Fetch(10, 0))
    assert [m[2] for m in messages(h.take(first))] == [b"early", b"middle", b"late"]
    assert [m[2] for m in messages(h.take(second))] == [b"late"]
    starts = {g.group: g.start_id for g in h.stored.groups}
    assert starts == {"first": 0, "second": 2}


def test_ack_finishes_and_unknown_ids_are_named() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    pub = h.publisher("t")
    [mid] = h.publish(pub, b"x")
    h.send(sub, protocol.Fetch(1))
    h.take(sub)
    h.send(sub, protocol.Ack((mid, 999)))
    frames = h.take(sub)
    assert errors(frames) == [ErrorCode.UNKNOWN_MESSAGE]
    assert "999" in frames[0].text and str(mid) not in frames[0].text  # type: ignore[attr-defined]
    assert mid in h.broker.take_store_work()[1].done or mid in h.stored.done
    h.advance(60_000)
    h.send(sub, protocol.Fetch(1, 0))
    assert h.take(sub) == [protocol.QueueEmpty(0)]


def test_nack_redelivers_ahead_of_newer_messages() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    pub = h.publisher("t")
    first, _ = h.publish(pub, b"1", b"2")
    h.send(sub, protocol.Fetch(1))
    h.take(sub)
    h.send(sub, protocol.Nack(first))
    h.send(sub, protocol.Fetch(2))
    assert messages(h.take(sub)) == [(first, 2, b"1"), (first + 1, 1, b"2")]


def test_disconnect_redelivers_to_another_consumer() -> None:
    h = CoreHarness()
    s1, s2 = h.subscriber("t"), h.subscriber("t")
    pub = h.publisher("t")
    [mid] = h.publish(pub, b"x")
    h.send(s1, protocol.Fetch(1))
    assert messages(h.take(s1)) == [(mid, 1, b"x")]
    h.send(s2, protocol.Fetch(1))
    h.disconnect(s1)
    assert messages(h.take(s2)) == [(mid, 2, b"x")]


def test_ack_timeout_redelivers() -> None:
    h = CoreHarness(ack_timeout_ms=1000)
    sub = h.subscriber("t")
    pub = h.publisher("t")
    [mid] = h.publish(pub, b"x")
    h.send(sub, protocol.Fetch(1))
    h.take(sub)
    h.advance(999)
    h.send(sub, protocol.Fetch(1, 0))
    assert h.take(sub) == [protocol.QueueEmpty(0)]
    h.advance(1)
    h.send(sub, protocol.Fetch(1, 0))
    assert messages(h.take(sub)) == [(mid, 2, b"x")]
    h.send(sub, protocol.Ack((mid,)))  # the late ack of attempt 1 is gone; attempt 2's ack works
    assert errors(h.take(sub)) == []


def test_delayed_publish_is_neither_early_nor_lost() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    pub = h.publisher("t")
    h.publish(pub, b"later", delay_ms=5000)
    h.publish(pub, b"now")
    h.send(sub, protocol.Fetch(2))
    assert [m[2] for m in messages(h.take(sub))] == [b"now"]
    h.advance(4999)
    assert h.take(sub) == []
    h.advance(1)
    assert [m[2] for m in messages(h.take(sub))] == [b"later"]


def test_nack_with_delay() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    pub = h.publisher("t")
    [mid] = h.publish(pub, b"x")
    h.send(sub, protocol.Fetch(1))
    h.take(sub)
    h.send(sub, protocol.Nack(mid, delay_ms=2000), protocol.Fetch(1))
    h.advance(1999)
    assert h.take(sub) == []
    h.advance(1)
    assert messages(h.take(sub)) == [(mid, 2, b"x")]


def test_expired_message_is_never_delivered() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    pub = h.publisher("t")
    h.publish(pub, b"stale", ttl_ms=1000)
    h.publish(pub, b"fresh")
    h.advance(1000)
    h.send(sub, protocol.Fetch(2, 0))
    frames = h.take(sub)
    assert [m[2] for m in messages(frames)] == [b"fresh"]
    assert h.broker.snapshot().topic("t").counters.expired == 1


def test_max_attempts_dead_letters_exactly_once_with_reason() -> None:
    h = CoreHarness(max_attempts=2)
    sub = h.subscriber("jobs")
    pub = h.publisher("jobs")
    [mid] = h.publish(pub, b"poison")
    for _ in range(2):
        h.send(sub, protocol.Fetch(1))
        h.take(sub)
        h.send(sub, protocol.Nack(mid, reason="boom"))
    h.commit()  # the dead letter is a message the broker itself stores
    dlq = [m for m in h.stored.messages if m.topic == "jobs.dlq"]
    assert len(dlq) == 1
    assert dlq[0].body == b"poison"
    assert dlq[0].meta == {"original_topic": "jobs", "original_group": "default",
                           "original_id": str(mid), "original_ts": str(START_MS),
                           "attempts": "2", "reason": "boom"}
    h.send(sub, protocol.Fetch(1, 0))
    assert h.take(sub) == [protocol.QueueEmpty(0)]
    dead = h.subscriber("jobs.dlq")
    h.send(dead, protocol.Fetch(1, 0))
    frames = h.take(dead)
    assert messages(frames)[0][2] == b"poison"
    assert frames[0].meta["reason"] == "boom"  # type: ignore[attr-defined]


def test_duplicate_msgid_is_acked_with_original_id_and_not_delivered_twice() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    pub = h.publisher("t")
    first = h.publish(pub, b"x", msgid="k1")
    again = h.publish(pub, b"x", msgid="k1")
    assert first == again
    h.send(sub, protocol.Fetch(5, 0))
    assert len(messages(h.take(sub))) == 1


def test_errors_for_wrong_roles_and_bad_frames() -> None:
    h = CoreHarness()
    fresh = h.connect()
    h.send(fresh, protocol.Publish(b"x"))
    assert errors(h.take(fresh)) == [ErrorCode.NOT_ALLOWED]
    pub = h.publisher("t")
    h.send(pub, protocol.Fetch(1))
    h.send(pub, protocol.ClientPublisher("t"))
    assert errors(h.take(pub)) == [ErrorCode.NOT_ALLOWED, ErrorCode.NOT_ALLOWED]
    h.feed(pub, protocol.encode("BOGUS"))
    h.feed(fresh, protocol.encode("CLIENT_SUBSCRIBER", ["bad name!"]))
    assert errors(h.take(pub)) == [ErrorCode.INVALID_PROTOCOL]
    assert errors(h.take(fresh)) == [ErrorCode.BAD_NAME]
    assert pub not in h.closed and fresh not in h.closed


def test_ping_and_shutdown() -> None:
    h = CoreHarness()
    session = h.connect()
    h.send(session, protocol.Ping())
    assert h.take(session) == [protocol.Pong()]
    h.send(session, protocol.ClientShutdownSignal())
    assert h.take(session) == [protocol.CloseConnectionSignal()]
    assert session in h.closed


def test_unwritable_consumer_is_skipped_not_buffered() -> None:
    h = CoreHarness()
    slow, fast = h.subscriber("t"), h.subscriber("t")
    h.send(slow, protocol.Fetch(100))
    h.send(fast, protocol.Fetch(100))
    h.broker.set_writable(slow, False, h.now)
    pub = h.publisher("t")
    h.publish(pub, *(b"m" for _ in range(10)))
    assert messages(h.take(slow)) == []
    assert len(messages(h.take(fast))) == 10


def test_admin_stats_peek_purge() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    pub = h.publisher("t")
    h.publish(pub, b"a", b"b", b"c")
    h.send(sub, protocol.Fetch(1))
    admin = h.connect()
    h.send(admin, protocol.ClientAdmin())
    h.take(admin)
    h.send(admin, protocol.AdminCommand("peek", {"topic": "t", "n": 5}))
    [peek] = h.take(admin)
    assert isinstance(peek, protocol.AdminResult)
    assert [m["body"] for m in peek.result] == ["b", "c"]
    h.send(admin, protocol.AdminCommand("stats"))
    [stats] = h.take(admin)
    group = stats.result["topics"]["t"]["groups"]["default"]  # type: ignore[attr-defined]
    assert (group["ready"], group["inflight"], group["consumers"]) == (2, 1, 1)
    h.send(admin, protocol.AdminCommand("purge", {"topic": "t"}))
    assert h.take(admin) == [protocol.AdminResult({"purged": 2})]
    h.send(admin, protocol.AdminCommand("nope"))
    assert errors(h.take(admin)) == [ErrorCode.INVALID_PROTOCOL]


def test_recover_rebuilds_queues_with_attempts() -> None:
    h = CoreHarness()
    h.broker.recover(
        [RecoveredMessage(7, "t", b"redo", None, 1, 0, None, {}, {"default": 2}),
         RecoveredMessage(8, "t", b"new", None, 1, 0, None, {}, {"default": 0}),
         RecoveredMessage(9, "u", b"backlog", None, 1, 0, None, {}, {})],
        [GroupRecord("t", "default", 0, 1)], h.now)
    sub = h.subscriber("t")
    h.send(sub, protocol.Fetch(2))
    assert messages(h.take(sub)) == [(7, 3, b"redo"), (8, 1, b"new")]
    late = h.subscriber("u", "g")
    h.send(late, protocol.Fetch(1))
    assert messages(h.take(late)) == [(9, 1, b"backlog")]


def test_acked_leases_do_not_pile_up_in_the_deadline_fifo() -> None:
    h = CoreHarness()
    pub, sub = h.publisher("t"), h.subscriber("t")
    ids = h.publish(pub, *(b"m" for _ in range(3 * LEASE_FIFO_MIN)))
    kept = ids[-1]
    for message_id in ids[:-1]:  # deliver and ack, one at a time; the last stays in flight
        h.send(sub, protocol.Fetch(1))
        h.take(sub)
        h.send(sub, protocol.Ack((message_id,)))
    h.send(sub, protocol.Fetch(1))
    assert messages(h.take(sub)) == [(kept, 1, b"m")]
    assert len(h.broker.engine.lease_deadlines) < LEASE_FIFO_MIN  # not one entry per delivery
    h.advance(h.broker.config.ack_timeout_ms + 1)  # the live one still times out
    assert kept not in h.broker.engine.topics["t"].groups["default"].inflight


def test_ack_deadlines_hold_when_the_wall_clock_steps_back() -> None:
    h = CoreHarness(ack_timeout_ms=30_000)
    pub, sub = h.publisher("t"), h.subscriber("t")
    first, second = h.publish(pub, b"A", b"B")
    h.send(sub, protocol.Fetch(1))
    h.now -= 600_000  # NTP steps the clock back ten minutes
    h.send(sub, protocol.Fetch(1))
    assert [m[0] for m in messages(h.take(sub))] == [first, second]
    h.advance(31_000)  # B's deadline passed, though A's (in the future now) has not
    assert second not in h.broker.engine.topics["t"].groups["default"].inflight
    assert first in h.broker.engine.topics["t"].groups["default"].inflight


def test_deleting_a_group_leaves_nothing_for_its_timers_to_finish_twice() -> None:
    h = CoreHarness(ack_timeout_ms=30_000, max_attempts=1)
    pub, doomed, other = h.publisher("t"), h.subscriber("t", "doomed"), h.subscriber("t", "g2")
    [mid] = h.publish(pub, b"M")
    h.send(doomed, protocol.Fetch(1))
    h.broker.admin.delete_group("t", "doomed", h.now)
    h.commit()
    h.disconnect(doomed)
    h.advance(31_000)  # the deleted group's ack deadline for M
    h.commit()
    assert mid not in h.stored.done, "g2 still owes M: the store must keep it"
    assert not [m for m in h.stored.messages if m.topic == "t.dlq"]
    h.send(other, protocol.Fetch(1))
    assert messages(h.take(other)) == [(mid, 1, b"M")]


def test_a_nack_delay_is_stored_and_honoured_after_recovery() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    pub = h.publisher("t")
    [mid] = h.publish(pub, b"later")
    h.send(sub, protocol.Fetch(1))
    h.send(sub, protocol.Nack(mid, delay_ms=5_000))
    h.commit()
    [record] = [d for d in h.stored.deliveries if d.retry_at_ms is not None]
    assert (record.message_id, record.attempts, record.retry_at_ms) == (mid, 1, h.now + 5_000)
    restarted = CoreHarness()
    restarted.now = h.now + 1_000
    restarted.broker.recover(
        [RecoveredMessage(mid, "t", b"later", None, 1, 0, None, {}, {"default": 1},
                          {"default": record.retry_at_ms})],
        [GroupRecord("t", "default", 0, 1)], restarted.now)
    again = restarted.subscriber("t")
    restarted.send(again, protocol.Fetch(1, 0))
    assert messages(restarted.take(again)) == []  # 4 s of the delay are left
    restarted.advance(4_000)
    assert messages(restarted.take(again)) == []  # the long poll ended; ask again
    restarted.send(again, protocol.Fetch(1, 0))
    assert messages(restarted.take(again)) == [(mid, 2, b"later")]


def test_a_message_for_one_group_reaches_that_group_only() -> None:
    h = CoreHarness()
    a, b = h.subscriber("t", "a"), h.subscriber("t", "b")
    pub = h.publisher("t")
    [only_b] = h.publish(pub, b"for b", group="b")
    [new_group] = h.publish(pub, b"for c", group="c")  # made at once, as a subscribe would
    assert ("t", "c") in [(g.topic, g.group) for g in h.stored.groups]
    for session in (a, b):
        h.send(session, protocol.Fetch(5, 0))
    assert messages(h.take(a)) == []
    assert messages(h.take(b)) == [(only_b, 1, b"for b")]
    c = h.subscriber("t", "c")
    h.send(c, protocol.Fetch(5, 0))
    assert messages(h.take(c)) == [(new_group, 1, b"for c")]


def test_recovered_message_whose_last_attempt_was_cut_short_is_dead_lettered() -> None:
    """A crash during the last allowed delivery must not buy the message another one."""
    h = CoreHarness(max_attempts=3)
    h.broker.recover(
        [RecoveredMessage(7, "t", b"last", None, 1, 0, None, {}, {"a": 3, "b": 1})],
        [GroupRecord("t", "a", 0, 1), GroupRecord("t", "b", 0, 1)], h.now)
    h.commit()
    [dead] = [m for m in h.stored.messages if m.topic == "t.dlq"]
    assert dead.body == b"last" and dead.meta is not None
    assert (dead.meta["original_group"], dead.meta["attempts"]) == ("a", "3")
    assert [(a.message_id, a.group) for a in h.stored.acks] == [(7, "a")]
    assert 7 not in h.stored.done  # group b still owes it
    a, b = h.subscriber("t", "a"), h.subscriber("t", "b")
    h.send(a, protocol.Fetch(1, 0))
    h.send(b, protocol.Fetch(1, 0))
    assert messages(h.take(a)) == []
    assert messages(h.take(b)) == [(7, 2, b"last")]


def test_deliveries_pause_when_a_connection_outbox_is_full() -> None:
    h = CoreHarness(max_output_bytes=1000)
    sub = h.subscriber("t")
    pub = h.publisher("t")
    h.publish(pub, *(b"x" * 300 for _ in range(10)))
    h.send(sub, protocol.Fetch(10))
    assert len(messages(h.take(sub))) == 3  # 3 x ~330 bytes reach the 1000-byte cap
    assert h.broker.resume_throttled(h.now)  # after a flush, the next share goes out
    h._collect()
    assert len(messages(h.take(sub))) == 3


def test_goodbye_waits_for_the_replies_still_owed() -> None:
    h = CoreHarness()
    pub = h.publisher("t")
    h.send(pub, protocol.Publish(b"a"), protocol.Publish(b"b"), protocol.ClientShutdownSignal())
    assert h.take(pub) == [] and pub not in h.closed
    ids = h.commit()
    assert h.take(pub) == [
        protocol.ProducerAckMessage(ids[0].id),
        protocol.ProducerAckMessage(ids[1].id),
        protocol.CloseConnectionSignal(),
    ]
    assert pub in h.closed


def test_sender_names_must_fit_in_a_header() -> None:
    h = CoreHarness()
    session = h.connect()
    h.send(session, protocol.ClientPublisher("t", {"name": "José Smith"}))
    assert errors(h.take(session)) == [ErrorCode.BAD_NAME]


# --------------------------------------------------------------------------- byte boundaries

#: A body that looks like frame markers: a decoder that lost its place would misread it.
TRICKY = b"HEAD PUBLISH 3\r\nTAIL\r\n\x00\xff"


def pieces(stream: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """The stream cut in two at every point, then cut between every two bytes."""
    for cut in range(len(stream) + 1):
        yield f"cut at byte {cut}", [stream[:cut], stream[cut:]]
    yield "a byte at a time", [stream[index : index + 1] for index in range(len(stream))]


def publisher_run(chunks: list[bytes]) -> tuple[list[protocol.TypedFrame], Batch]:
    """A publisher's replies, and what was stored, when its bytes arrive as ``chunks``;
    the store commits after every read, so a frame can be half read across a commit."""
    h = CoreHarness()
    pub = h.connect()
    for chunk in chunks:
        h.feed(pub, chunk)
        h.commit()
    return h.take(pub), h.stored


def subscriber_run(chunks: list[bytes]) -> tuple[list[protocol.TypedFrame], Batch]:
    """A subscriber's replies, and what was stored, when its bytes arrive as ``chunks``,
    with the messages 1, 2 (TRICKY) and 3 waiting for its group."""
    h = CoreHarness()
    h.disconnect(h.subscriber("split", "g"))  # the group exists before the messages
    h.publish(h.publisher("split"), b"one", TRICKY, b"three")
    sub = h.connect()
    for chunk in chunks:
        h.feed(sub, chunk)
        h.commit()
    return h.take(sub), h.stored


def test_a_publisher_stream_cut_anywhere_gets_the_same_replies() -> None:
    """The decoder and the core together, as the server drives them on every read, minus
    the socket (over loopback the kernel, not the test, would choose the cuts)."""
    stream = b"".join(
        [
            protocol.ClientPublisher("split", {"name": "p"}).encode(),
            protocol.Publish(TRICKY).encode(),
            protocol.Publish(b"", msgid="m1").encode(),
            protocol.encode("PUBLISH", ("color=blue",), b"x"),  # refused, and the connection stays
            protocol.Publish(
                TRICKY, msgid="m1"
            ).encode(),  # a duplicate: it gets the first one's id
            protocol.Publish(b"TAIL\r\n", delay_ms=5).encode(),
        ]
    )
    whole = publisher_run([stream])
    replies, stored = whole
    assert [type(frame) for frame in replies] == [
        protocol.ServerAcknowledgement,
        protocol.ProducerAckMessage,
        protocol.ProducerAckMessage,
        protocol.Error,
        protocol.ProducerAckMessage,
        protocol.ProducerAckMessage,
    ]
    assert replies[4] == replies[2]  # the duplicate's id
    # What the core handed the store, duplicate included: the store recognises it.
    assert [m.body for m in stored.messages] == [TRICKY, b"", TRICKY, b"TAIL\r\n"]
    for how, chunks in pieces(stream):
        assert publisher_run(chunks) == whole, how


def test_a_subscriber_stream_cut_anywhere_gets_the_same_replies() -> None:
    stream = b"".join(
        frame.encode()
        for frame in [
            protocol.ClientSubscriber("split", "g"),
            protocol.Fetch(3),
            protocol.Ack((1,)),
            protocol.Nack(2),
            protocol.Fetch(1),
            protocol.Ping(),
            protocol.Ack((2, 3)),
            protocol.Ack((99,)),  # never delivered: an error, and the connection stays
            protocol.ClientShutdownSignal(),
        ]
    )
    whole = subscriber_run([stream])
    replies, stored = whole
    assert isinstance(replies[0], protocol.ServerAcknowledgement)
    assert messages(replies[1:5]) == [
        (1, 1, b"one"),
        (2, 1, TRICKY),
        (3, 1, b"three"),
        (2, 2, TRICKY),
    ]
    assert replies[5] == protocol.Pong()
    assert errors(replies[6:7]) == [ErrorCode.UNKNOWN_MESSAGE]
    assert replies[7:] == [protocol.CloseConnectionSignal()]
    assert [ack.message_id for ack in stored.acks] == [1, 2, 3]
    for how, chunks in pieces(stream):
        assert subscriber_run(chunks) == whole, how


def test_a_framing_error_waits_behind_the_replies_owed_to_a_publisher() -> None:
    """Frames before bad bytes are handled normally (PROTOCOL.md 2.4): their PUBLISH replies
    go out first, once stored, then the ERROR, then the connection closes."""
    h = CoreHarness()
    pub = h.publisher("t")
    h.feed(
        pub,
        b"".join(protocol.Publish(b"m%d" % i).encode() for i in range(3))
        + protocol.Ping().encode()
        + b"HEAD PUBLISH 3\r\nabcdTAIL\r\n",
    )
    assert h.take(pub) == [protocol.Pong()]  # nothing else yet: the acks wait for the store
    assert pub not in h.closed
    ids = h.commit()
    replies = h.take(pub)
    assert replies[:3] == [protocol.ProducerAckMessage(stored.id) for stored in ids]
    assert errors(replies[3:]) == [ErrorCode.INVALID_PROTOCOL]
    assert pub in h.closed


def test_a_framing_error_on_other_connections_closes_at_once() -> None:
    h = CoreHarness()
    sub = h.subscriber("t")
    h.feed(sub, protocol.Ping().encode() + b"GET / HTTP/1.1\r\n\r\n")
    replies = h.take(sub)
    assert replies[0] == protocol.Pong() and errors(replies[1:]) == [ErrorCode.INVALID_PROTOCOL]
    assert sub in h.closed


def test_an_id_named_twice_in_one_ack_is_acked_once_and_unknown_ids_are_machine_readable() -> None:
    """Issue 16, defect 7: ``ACK 10023 10023`` used to answer UNKNOWN_MESSAGE for the message
    it had just acked; UNKNOWN_MESSAGE names the ids as ``ids=a,b`` at the start of its text."""
    h = CoreHarness()
    sub = h.subscriber("t")
    [mid] = h.publish(h.publisher("t"), b"x")
    h.send(sub, protocol.Fetch(1))
    h.take(sub)
    h.send(sub, protocol.Ack((mid, mid)))
    assert h.take(sub) == []
    h.send(sub, protocol.Ack((mid, 77)), protocol.Nack(78))
    unknown = h.take(sub)
    assert errors(unknown) == [ErrorCode.UNKNOWN_MESSAGE] * 2
    assert [e.text.split(" ")[0] for e in unknown] == [f"ids={mid},77", "ids=78"]  # type: ignore[attr-defined]


def test_expired_messages_leave_the_queue_and_the_store_without_a_consumer() -> None:
    """Issue 16, defect 6: a timer expires them in the background, counted in stats."""
    h = CoreHarness()
    h.subscriber("t", "g")
    pub = h.publisher("t")
    [short] = h.publish(pub, b"short", ttl_ms=1_000)
    h.publish(pub, b"long", ttl_ms=5_000)
    h.publish(pub, b"forever")
    h.publish(pub, b"delayed", ttl_ms=3_000, delay_ms=2_000)
    group = h.broker.snapshot().topic("t").group("g")
    assert (group.ready, group.delayed) == (3, 1)
    h.advance(1_000)
    h.commit()
    group = h.broker.snapshot().topic("t").group("g")
    assert (group.ready, group.counters.expired) == (2, 1)
    assert short in h.stored.done  # the store forgets it too
    h.advance(4_000)
    snapshot = h.broker.snapshot()
    group = snapshot.topic("t").group("g")
    assert (group.ready, group.delayed, group.counters.expired) == (1, 0, 3)
    assert snapshot.topic("t").counters.expired == 3
    assert h.broker.next_deadline() is None  # nothing left to expire: no timer


def test_the_memory_limit_counts_what_a_message_costs_not_only_its_body() -> None:
    """Issue 16, defect 3: 1-byte bodies under a limit that holds 100 such messages."""
    h = CoreHarness(max_queued_bytes=100 * (MESSAGE_OVERHEAD_BYTES + 1))
    h.subscriber("t")
    pub = h.publisher("t")
    h.send(pub, *(protocol.Publish(b"x") for _ in range(150)))
    h.commit()
    replies = h.take(pub)
    assert sum(isinstance(r, protocol.ProducerAckMessage) for r in replies) == 100
    assert errors(replies) == [ErrorCode.SERVER_BUSY] * 50


def test_max_messages_per_topic_refuses_that_topic_only_until_it_drains() -> None:
    h = CoreHarness(max_messages_per_topic=3)
    sub = h.subscriber("busy")
    busy, calm = h.publisher("busy"), h.publisher("calm")
    h.send(busy, *(protocol.Publish(b"m%d" % i) for i in range(4)))
    h.commit()
    replies = h.take(busy)
    assert errors(replies) == [ErrorCode.SERVER_BUSY] and "3 messages" in replies[-1].text  # type: ignore[attr-defined]
    assert len(h.publish(calm, b"a", b"b", b"c")) == 3  # another topic is not held back
    h.send(sub, protocol.Fetch(3))
    h.send(sub, protocol.Ack(tuple(m[0] for m in messages(h.take(sub)))))
    assert len(h.publish(busy, b"room again")) == 1
    h.send(sub, protocol.Fetch(1))
    h.send(sub, protocol.Ack(tuple(m[0] for m in messages(h.take(sub)))))
    assert h.broker.snapshot().queued_bytes == 3 * MESSAGE_OVERHEAD_BYTES + 3  # calm's, unconsumed
