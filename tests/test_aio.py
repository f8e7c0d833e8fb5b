"""What only the asyncio client has to show: a task cancelled in the middle of a fetch, a
stream or a publish loses no message, duplicates none beyond at-least-once, and leaves
its connection usable or closed cleanly.  (Everything else it shares with the blocking
client is tested once for both: the ``clients`` fixture.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import pytest

from bbmq import aio, protocol
from bbmq.aio.channel import AsyncChannel
from bbmq.testing import BrokerController, BrokerProcess, wait_for

#: How many turns of the event loop a cancelled task gets before its cancel, cycled
#: through so the cancel lands at every step: before it runs, in the connect, the
#: handshake, between a send and its reply, while frames stream in.
CANCEL_AFTER_TURNS: Final = range(12)


async def _eventually(condition: Callable[[], Any], what: str, timeout: float = 10) -> None:
    """wait_for on a thread, so the event loop (and the client on it) keeps running."""
    await asyncio.to_thread(wait_for, condition, what, timeout)


async def _cancelled_after(turns: int, work: Awaitable[Any]) -> tuple[bool, Any]:
    """Run ``work`` as a task for ``turns`` turns of the loop, then cancel it: (whether the
    cancel stopped it, its result if it finished first)."""
    task = asyncio.ensure_future(work)
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return (True, None) if task.cancelled() else (False, task.result())


def _sessions(broker: BrokerController) -> int:
    assert broker.server is not None
    return int(broker.call(lambda: len(broker.server.broker.sessions)))  # type: ignore[union-attr]


def _open_fetches(broker: BrokerController, topic: str) -> list[int]:
    """The FETCH requests each consumer of ``topic`` has open in the broker."""
    assert broker.server is not None
    sessions = broker.server.broker.sessions
    return list(broker.call(lambda: [len(s.requests) for s in sessions.values()
                                     if s.topic == topic]))


async def _drain(port: int, topic: str, expected: int = 0) -> dict[int, bytes]:
    """Every message of ``topic`` still to deliver, acked: id -> body.  The ``expected``
    first come as a stream, the rest (there should be none) one fetch at a time."""
    got: dict[int, bytes] = {}

    def take(message: aio.Message) -> None:
        assert message.id not in got, f"message {message.id} delivered twice"
        got[message.id] = message.body

    async with aio.Consumer(topic, port=port, prefetch=500) as consumer:
        if expected:
            async for message in consumer:
                take(message)
                await message.ack()
                if len(got) == expected:
                    break
        while (message := await consumer.fetch(timeout=0.2)) is not None:
            take(message)
            await message.ack()
    return got


def test_a_fetch_cancelled_while_it_waits_leaves_its_request_for_the_next(
        broker: BrokerController) -> None:
    async def scenario() -> None:
        async with aio.Consumer("waits", port=broker.port) as consumer:
            waiting = asyncio.ensure_future(consumer.fetch())  # no timeout: waits in the broker
            await _eventually(lambda: _open_fetches(broker, "waits") == [1],
                              "the fetch to wait in the broker")
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            assert waiting.cancelled()
            async with aio.Producer("waits", port=broker.port) as producer:
                ids = await producer.publish_many([b"first", b"second"])
            got = [await consumer.fetch(timeout=5), await consumer.fetch(timeout=5)]
            assert [(m.id, m.attempt) for m in got if m] == [(ids[0], 1), (ids[1], 1)]
            for message in got:
                assert message is not None
                await message.ack()
            assert await consumer.fetch(timeout=0.2) is None
            assert _open_fetches(broker, "waits") == [0]  # nothing asked twice, none left
        assert await _drain(broker.port, "waits") == {}  # both acked: none redelivered

    asyncio.run(scenario())


def test_fetches_and_streams_cancelled_at_every_step_lose_and_repeat_nothing(
        broker: BrokerController) -> None:
    async def scenario() -> None:
        async with aio.Producer("steps", port=broker.port) as producer:
            ids = await producer.publish_many([b"m%d" % i for i in range(300)])
        got: list[aio.Message] = []
        async with aio.Consumer("steps", port=broker.port, prefetch=7) as consumer:
            step = 0
            while len(got) < len(ids):
                turns = CANCEL_AFTER_TURNS[step % len(CANCEL_AFTER_TURNS)]
                work = consumer.fetch(timeout=5) if step % 2 else anext(consumer)
                cancelled, message = await _cancelled_after(turns, work)
                step += 1
                if not cancelled:
                    assert message is not None, "a fetch came back empty: a message was lost"
                    got.append(message)
                    await message.ack()
            assert step > 2 * len(ids) // 3, "cancels landed before the work could finish"
            assert await consumer.fetch(timeout=0.2) is None
        assert [m.id for m in got] == ids  # each once, in order
        assert {m.attempt for m in got} == {1}  # and none redelivered
        assert await _drain(broker.port, "steps") == {}

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_publish_many_cancelled_midway_leaves_the_producer_in_step(
        broker: BrokerController) -> None:
    """The replies owed to the cancelled publish are read and dropped before the next one,
    whose ids are its own; resending the cancelled bodies stores each at least once."""
    bodies = [b"b%d" % i for i in range(20_000)]

    async def scenario() -> None:
        async with aio.Producer("midway", port=broker.port) as producer:
            connection = producer._channel
            publishing = asyncio.ensure_future(producer.publish_many(bodies, window=1000))
            await _eventually(lambda: _published(broker, "midway") > 0,
                              "the first messages to be stored")
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
            assert publishing.cancelled(), "the publish finished before the cancel"
            stored_before_resend = _published(broker, "midway")
            assert 0 < stored_before_resend < len(bodies)
            again = await producer.publish_many(bodies, window=1000)  # at least once
            assert producer._channel is connection  # the same connection, still usable
        drained = await _drain(broker.port, "midway", _published(broker, "midway"))
        assert [drained[mid] for mid in again] == bodies  # every id is its own body's
        # Everything stored was delivered: the resend, and what the cancelled call stored.
        assert len(drained) == _published(broker, "midway") >= len(bodies) + stored_before_resend
        copies = Counter(drained.values())
        assert set(copies) == set(bodies) and max(copies.values()) == 2  # none lost, <= twice

    asyncio.run(scenario())


def _published(broker: BrokerController, topic: str) -> int:
    assert broker.server is not None
    server = broker.server

    def published() -> int:
        try:
            return server.broker.snapshot().topic(topic).counters.published
        except KeyError:
            return 0

    return int(broker.call(published))


def test_publishes_cancelled_at_every_step_leave_the_connection_usable_or_closed(
        broker: BrokerController) -> None:
    """A cancel in the connect or handshake closes the half-open connection (the next call
    connects again); one after the send leaves the replies owed to be read and dropped."""
    async def scenario() -> None:
        probes: dict[int, bytes] = {}
        maybe = set()
        for turns in CANCEL_AFTER_TURNS:
            producer = aio.Producer("each", port=broker.port)  # connects on first publish
            body = b"cancelled-%d" % turns
            cancelled, mid = await _cancelled_after(turns, producer.publish(body))
            if cancelled:
                maybe.add(body)
            else:
                probes[mid] = body
            probe = b"probe-%d" % turns
            probes[await producer.publish(probe)] = probe
            await producer.close()
        await _eventually(lambda: _sessions(broker) == 0, "every connection to close")
        drained = await _drain(broker.port, "each")
        assert {mid: drained.get(mid) for mid in probes} == probes  # ids paired right
        assert set(drained.values()) - set(probes.values()) <= maybe  # nothing else stored
        assert maybe, "no cancel landed inside the publish"

    asyncio.run(scenario())


def test_run_acks_on_success_and_retries_failures(broker: BrokerController) -> None:
    bodies = [b"ok-%d" % i for i in range(10)] + [b"flaky"]

    async def scenario() -> None:
        async with aio.Producer("work", port=broker.port) as producer:
            await producer.publish_many(bodies)
        done: list[bytes] = []
        failures: list[int] = []
        finished = asyncio.Event()

        async def handler(message: aio.Message) -> None:
            if message.body == b"flaky" and not failures:
                failures.append(message.attempt)
                raise RuntimeError("first try fails")
            done.append(message.body)
            if len(done) == len(bodies):
                finished.set()

        async with aio.Consumer("work", port=broker.port) as consumer:
            running = asyncio.create_task(consumer.run(handler, concurrency=3, backoff=0.05))
            await asyncio.wait_for(finished.wait(), 30)
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            assert sorted(done) == sorted(bodies) and failures == [1]
            assert await consumer.fetch(timeout=0.3) is None  # everything was acked

    asyncio.run(scenario())


def test_a_cancelled_run_lets_the_handlers_in_hand_settle(broker: BrokerController) -> None:
    """Cancelling run() takes no more messages, and the handler already running finishes
    and acks: nothing it did is redelivered, the rest stays for the next consumer."""
    async def scenario() -> None:
        async with aio.Producer("calm", port=broker.port) as producer:
            ids = await producer.publish_many([b"a", b"b", b"c"])
        started = asyncio.Event()
        release = asyncio.Event()
        handled: list[int] = []

        async def handler(message: aio.Message) -> None:
            started.set()
            await release.wait()
            handled.append(message.id)

        async with aio.Consumer("calm", port=broker.port, prefetch=1) as consumer:
            running = asyncio.create_task(consumer.run(handler, concurrency=1))
            await asyncio.wait_for(started.wait(), 10)
            running.cancel()
            await asyncio.sleep(0)  # the cancel reaches run(), which waits for its handler
            assert not running.done()
            release.set()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        assert handled == ids[:1]
        assert sorted(await _drain(broker.port, "calm")) == ids[1:]  # first acked, not lost

    asyncio.run(scenario())


@pytest.mark.slow
def test_run_and_a_producer_come_back_after_a_broker_restart(tmp_path: Path) -> None:
    async def scenario(broker: BrokerProcess) -> None:
        done: list[bytes] = []

        async def handler(message: aio.Message) -> None:
            done.append(message.body)

        consumer = aio.Consumer("steady", port=broker.port)
        running = asyncio.create_task(consumer.run(handler))
        producer = aio.Producer("steady", port=broker.port, retry_for=30)
        await producer.publish(b"before")
        await _eventually(lambda: done == [b"before"], "the message before the restart")
        assert await asyncio.to_thread(broker.stop) == 0
        await asyncio.to_thread(broker.start)
        await producer.publish(b"after")  # the same producer: reconnects, resends
        await _eventually(lambda: b"after" in done, "the message after the restart", 20)
        assert set(done) == {b"before", b"after"}  # "before" twice if its ack met the stop
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await producer.close()
        await consumer.close()

    with BrokerProcess(tmp_path / "data") as broker:
        asyncio.run(scenario(broker))


def test_the_channel_hands_out_the_frames_before_a_broken_one_then_fails() -> None:
    """As the blocking channel: a broker that breaks the stream (garbage after two PONGs)
    costs the connection, not the frames that came before the break, nor a hang."""
    async def scenario() -> None:
        async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(protocol.Pong().encode() + protocol.Pong().encode() + b"NOT A FRAME\r\n")
            await writer.drain()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            channel = await AsyncChannel.open("127.0.0.1", port, timeout=5, tls=False,
                                              ca_file=None)
            assert await channel.read(5) == protocol.Pong()
            assert await channel.read(5) == protocol.Pong()
            with pytest.raises(aio.ConnectionLost, match="invalid frame"):
                await channel.read(5)
            assert channel.closed

    asyncio.run(scenario())


def test_stop_ends_run_after_the_handlers_in_hand_and_loses_nothing(
        broker: BrokerController) -> None:
    """stop() from a handler: run() returns (no CancelledError), what the handlers did is
    acked, and the messages the stream had requested are handed out by the next fetch."""
    async def scenario() -> None:
        async with aio.Producer("halt", port=broker.port) as producer:
            ids = await producer.publish_many([b"m%d" % i for i in range(20)])
        handled: list[int] = []
        async with aio.Consumer("halt", port=broker.port, prefetch=8) as consumer:

            async def handler(message: aio.Message) -> None:
                handled.append(message.id)
                if len(handled) == 5:
                    consumer.stop()

            await asyncio.wait_for(consumer.run(handler, concurrency=1), 30)
            assert handled == ids[:5]
            rest = []
            while (message := await consumer.fetch(timeout=0.2)) is not None:
                rest.append(message.id)
                await message.ack()
            assert rest == ids[5:]  # each once, none redelivered: nothing lost or repeated
        assert await _drain(broker.port, "halt") == {}

    asyncio.run(scenario())


def test_a_stream_of_buffered_messages_lets_other_tasks_run(broker: BrokerController) -> None:
    """Buffered messages are handed out without waiting on the broker, so without a yield
    now and then a long stream would hold the event loop for the whole batch."""
    async def scenario() -> None:
        async with aio.Producer("fair", port=broker.port) as producer:
            await producer.publish_many([b"m%d" % i for i in range(60)])
        async with aio.Consumer("fair", port=broker.port, prefetch=60) as consumer:
            taken = [await anext(consumer)]
            channel = consumer._channel
            assert channel is not None
            while len(channel.inbox.events) < 59:  # the rest of the batch, buffered
                await channel._next_data()
            ticks: list[int] = []

            async def ticker() -> None:
                while True:
                    ticks.append(len(taken))
                    await asyncio.sleep(0)

            other = asyncio.create_task(ticker())
            await asyncio.sleep(0)  # the ticker starts
            while len(taken) < 60:
                taken.append(await anext(consumer))
            other.cancel()
            assert len({m.id for m in taken}) == 60
            assert any(0 < tick < 60 for tick in ticks[1:]), ticks  # it ran mid-stream

    asyncio.run(scenario())
