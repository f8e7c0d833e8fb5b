"""The client package: its sans-IO decisions on their own, and a consumer moving between
iteration, fetch() and run() against a real broker without losing a message."""

from __future__ import annotations

import ast
import logging
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Final

import pytest

from bbmq import protocol
from bbmq.client import BrokerError, ConnectionLost, Consumer, Message, PublishError, Redirected
from bbmq.client.channel import Channel
from bbmq.client.consuming import FetchQueue, ack_frames
from bbmq.client.publishing import MsgIds, PublishJob, PublishWindow, publish_frames
from bbmq.client.retry import Backoff, comes_back
from bbmq.protocol import ErrorCode
from bbmq.testing import BrokerController, wait_for

from .client_flavours import Blocking, Flavour

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- sans-IO layer


def _frames(count: int) -> list[protocol.Publish]:
    return publish_frames([b"m%d" % i for i in range(count)], MsgIds(), delay=None, ttl=None,
                          group=None, max_message_bytes=None)


def test_publish_window_pairs_replies_in_order_and_tops_up_at_half() -> None:
    frames = _frames(10)
    ids = [0] * 10
    window = PublishWindow(frames, list(range(10)), ids, window=4)
    assert window.to_send() == frames[:4]
    assert window.to_send() == []  # nothing answered yet: the window is full
    window.on_replies([protocol.ProducerAckMessage(101)])
    assert window.to_send() == []  # 3 unanswered: more than half the window
    window.on_replies([protocol.Pong()])  # not a PUBLISH reply: pairs with nothing
    window.on_replies([protocol.Error(ErrorCode.STORE_UNAVAILABLE, "later")])
    assert window.to_send() == frames[4:6]
    for reply_id in range(103, 111):
        window.on_replies([protocol.ProducerAckMessage(reply_id)])
        window.to_send()
    assert window.done and window.failure() is None
    assert ids == [101, 0, *range(103, 111)]
    assert window.refused is not None and window.refused.code == ErrorCode.STORE_UNAVAILABLE


def test_a_final_refusal_stops_sending_and_waits_for_the_replies_owed() -> None:
    frames = _frames(6)
    ids = [0] * 6
    window = PublishWindow(frames, list(range(6)), ids, window=2)
    assert len(window.to_send()) == 2
    window.on_replies([protocol.Error(ErrorCode.INVALID_PROTOCOL, "bad")])
    assert window.to_send() == [] and not window.done  # the second reply is still owed
    window.on_replies([protocol.ProducerAckMessage(7)])
    assert window.done
    failure = window.failure()
    assert isinstance(failure, PublishError) and failure.ids == [0, 7, 0, 0, 0, 0]


def test_a_publish_job_resends_only_the_unacked_until_retry_for_runs_out() -> None:
    job = PublishJob(_frames(3), window=10, retry_for=1.0, now=0.0)
    first = job.next_pass()
    assert first is not None
    first.to_send()
    first.on_replies([protocol.ProducerAckMessage(1)])
    first.on_replies([protocol.Error(ErrorCode.SERVER_BUSY, "full")])
    first.on_replies([protocol.ProducerAckMessage(3)])
    assert job.after_pass(first, now=0.1) == 0.05
    second = job.next_pass()
    assert second is not None and second.to_send() == [job._frames[1]]
    # The first loss since messages were confirmed is followed at once (the next broker of
    # a cluster may take over within the second); losses in a row back off.
    assert job.after_loss(ConnectionLost("gone"), now=0.5) == 0.0
    assert job.after_loss(ConnectionLost("gone"), now=0.5) == 0.05
    redirect = protocol.Redirect("t", "h:1", 2)
    assert job.after_loss(Redirected(redirect), now=0.5) == 0.0  # the connect follows it
    third = job.next_pass()
    assert third is not None
    third.to_send()
    third.on_replies([protocol.Error(ErrorCode.STORE_UNAVAILABLE, "down")])
    with pytest.raises(BrokerError) as refused:
        job.after_pass(third, now=1.0)
    assert refused.value.code == ErrorCode.STORE_UNAVAILABLE
    with pytest.raises(ConnectionLost):
        job.after_loss(ConnectionLost("gone"), now=1.0)
    assert job.ids == [1, 0, 3]


def test_the_fetch_queue_counts_against_the_oldest_open_fetch() -> None:
    fetches = FetchQueue()
    assert fetches.top_up(4) == protocol.Fetch(4)
    assert fetches.top_up(4) is None
    delivered = protocol.Message(5, 1, b"x", "me")
    assert fetches.received(delivered) == Message(5, b"x", 1, {"from": "me"})
    assert fetches.top_up(4) is None  # 3 on their way: more than half of 4
    fetches.received(delivered)
    assert fetches.top_up(4) == protocol.Fetch(2)
    assert fetches.fetch(3, 200) == protocol.Fetch(3, 200)
    assert fetches.owed == 7
    fetches.received(delivered)
    fetches.received(delivered)  # the first FETCH is filled
    # QUEUE_EMPTY closes the second FETCH (owed 2), not the third
    assert fetches.received(protocol.QueueEmpty(0)) is None
    assert fetches.owed == 3
    assert fetches.received(protocol.Error(ErrorCode.UNKNOWN_MESSAGE, "not in flight")) is None
    with pytest.raises(BrokerError):
        fetches.received(protocol.Error(ErrorCode.UNAUTHORIZED, "no"))
    with pytest.raises(ConnectionLost):
        fetches.received(protocol.Pong())


@pytest.mark.parametrize("width", [1, 6, 19])
def test_ack_frames_stay_under_the_header_limit(width: int) -> None:
    ids = [10 ** (width - 1) + i for i in range(1000)]
    frames = ack_frames(ids)
    data = b"".join(frame.encode() for frame in frames)
    decoded = protocol.FrameDecoder().feed(data)  # the broker's limit: a longer line is refused
    assert [int(arg) for frame in decoded for arg in frame.args] == ids
    headers = [frame.encode().split(b"\r\n")[0] for frame in frames]
    assert all(len(header) <= protocol.MAX_HEADER_BYTES for header in headers)
    # Packed up to the limit: no frame but the last had room for one more id.
    for header, following in zip(headers, frames[1:], strict=False):
        assert len(header) + 1 + len(str(following.ids[0])) > protocol.MAX_HEADER_BYTES


def test_one_retry_policy_for_the_library_and_the_cli() -> None:
    assert comes_back(ConnectionLost("gone"))
    for code in (ErrorCode.SERVER_BUSY, ErrorCode.SERVER_CLOSING, ErrorCode.TIMEOUT):
        assert comes_back(BrokerError(code, "passes"))
    for code in (ErrorCode.UNAUTHORIZED, ErrorCode.BAD_NAME, ErrorCode.INVALID_PROTOCOL):
        assert not comes_back(BrokerError(code, "stays"))
    backoff = Backoff.reconnect(ceiling=0.5)
    assert [backoff.next() for _ in range(4)] == [0.1, 0.2, 0.4, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1


#: The client modules that decide without doing I/O, so an asyncio client can share them.
SANS_IO: Final = ("arguments", "cluster", "consuming", "errors", "inbox", "message", "publishing",
                   "retry")
#: What would tie them to one way of doing I/O (or to the clock).
IO_MODULES: Final = {
    "asyncio",
    "select",
    "socket",
    "ssl",
    "threading",
    "time",
    "bbmq.client.base",
    "bbmq.client.channel",
}


@pytest.mark.parametrize("module", SANS_IO)
def test_the_client_decisions_do_no_io(module: str) -> None:
    path = REPO / "bbmq" / "client" / f"{module}.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert imported, "the check reads the imports"
    assert not imported & IO_MODULES, f"{path} imports {sorted(imported & IO_MODULES)}"


def test_the_channel_hands_out_the_frames_before_a_broken_one_then_fails() -> None:
    """A broker that breaks the stream (here: garbage after a PONG) costs the connection,
    but not the frames that came before the break, nor a hang."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        channel = Channel("127.0.0.1", server.getsockname()[1], timeout=5, tls=False, ca_file=None)
        peer, _ = server.accept()
        with peer:
            peer.sendall(protocol.Pong().encode() + protocol.Pong().encode() + b"NOT A FRAME\r\n")
            assert channel.read(5) == protocol.Pong()
            assert channel.read(5) == protocol.Pong()
            with pytest.raises(ConnectionLost, match="invalid frame"):
                channel.read(5)
            assert channel.closed


# --------------------------------------------------------------------------- against a broker


def _publish(clients: Flavour, broker: BrokerController, topic: str, count: int) -> list[int]:
    with clients.Producer(topic, port=broker.port) as producer:
        return producer.publish_many([b"m%d" % i for i in range(count)])


def _stream_until_first(consumer: Any) -> Message:
    """Leave a ``for`` loop after its first message: the rest it asked for is buffered or
    still on its way."""
    for message in consumer:
        return message
    raise AssertionError("the stream ended")


@pytest.mark.slow  # waits out a one-second long poll
def test_fetch_after_leaving_a_stream_early_hands_out_what_it_had_asked_for(
    broker: BrokerController, clients: Flavour
) -> None:
    ids = _publish(clients, broker, "leave", 12)
    with clients.Consumer("leave", port=broker.port, prefetch=8) as consumer:
        first = _stream_until_first(consumer)
        consumer.ack(first)
        got = [first]
        while (message := consumer.fetch(timeout=1)) is not None:
            got.append(message)
            consumer.ack(message)
        assert [m.id for m in got] == ids  # each once, in order: none lost, none twice
        assert all(m.attempt == 1 for m in got)


def test_fetch_takes_what_the_stream_left_early_is_still_owed(
    broker: BrokerController, clients: Flavour
) -> None:
    """Messages published after the ``break`` go to the stream's FETCH, still open on the
    broker: fetch() waits for those rather than asking again, and misses none."""
    first_id = _publish(clients, broker, "owed", 1)[0]
    with clients.Consumer("owed", port=broker.port, prefetch=8) as consumer:
        assert _stream_until_first(consumer).id == first_id
        later = _publish(clients, broker, "owed", 5)
        got = [consumer.fetch(timeout=5) for _ in later]
        assert [m.id for m in got if m] == later
        assert consumer.fetch(timeout=0.2) is None
        session_requests = broker.call(
            lambda: [  # only the stream's FETCH was ever open
                len(s.requests)
                for s in broker.server.broker.sessions.values()  # type: ignore[union-attr]
                if s.topic == "owed"
            ]
        )
        assert session_requests == [1]


def test_iterating_again_after_leaving_a_stream_early_goes_on_where_it_left(
    broker: BrokerController, clients: Flavour
) -> None:
    ids = _publish(clients, broker, "again", 30)
    with clients.Consumer("again", port=broker.port, prefetch=10) as consumer:
        got = [_stream_until_first(consumer)]
        fetched = consumer.fetch(timeout=5)  # fetch between the two loops, too
        assert fetched is not None
        got.append(fetched)
        for message in consumer:
            got.append(message)
            if len(got) == len(ids):
                break
        consumer.ack_many(got)
        assert [m.id for m in got] == ids
        assert consumer.fetch(timeout=0.2) is None  # all acked, nothing left owed


@pytest.mark.slow  # waits out a one-second long poll
def test_a_stream_left_early_then_closed_is_redelivered_by_the_broker(
    broker: BrokerController, clients: Flavour
) -> None:
    ids = _publish(clients, broker, "closed", 6)
    consumer = clients.Consumer("closed", port=broker.port, prefetch=4).connect()
    first = _stream_until_first(consumer)
    consumer.ack(first)
    consumer.close()
    with clients.Consumer("closed", port=broker.port) as second:
        rest = []
        while (message := second.fetch(timeout=1)) is not None:
            rest.append(message)
            second.ack(message)
    assert [m.id for m in rest] == ids[1:]
    assert {m.attempt for m in rest[:3]} == {2}  # the three the stream held are redelivered


def test_run_after_leaving_a_stream_early_processes_what_it_had_asked_for(
    broker: BrokerController,
) -> None:
    ids = _publish(Blocking(), broker, "handoff", 20)
    consumer = Consumer("handoff", port=broker.port, prefetch=5).connect()
    first = _stream_until_first(consumer)
    consumer.ack(first)
    done: list[int] = []
    stop = threading.Event()

    def handler(message: Message) -> None:
        done.append(message.id)
        if len(done) == len(ids) - 1:
            stop.set()

    runner = threading.Thread(
        target=consumer.run, args=(handler,), kwargs={"workers": 2, "stop": stop}
    )
    runner.start()
    runner.join(30)
    assert not runner.is_alive()
    assert sorted(done) == ids[1:]
    consumer.close()


def test_a_producer_waits_out_a_full_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clients: Flavour
) -> None:
    """SERVER_BUSY at the handshake is in the shared policy's COME_BACK: a publish retries
    it within retry_for, as Consumer.run does."""
    with BrokerController(data_dir=tmp_path, max_connections=1) as broker:
        hog = socket.create_connection(("127.0.0.1", broker.port))  # the one allowed
        outcome: list[int | BaseException] = []

        def publish() -> None:
            # connects on publish
            producer = clients.Producer("full", port=broker.port, retry_for=30)
            try:
                outcome.append(producer.publish(b"waited"))
            except BaseException as error:
                outcome.append(error)
            finally:
                producer.close()

        publisher = threading.Thread(target=publish)
        with caplog.at_level(logging.WARNING, logger="bbmq.client"):
            publisher.start()
            wait_for(
                lambda: "too many connections" in caplog.text,
                "the publish to meet SERVER_BUSY",
                timeout=10,
            )
            assert publisher.is_alive() and not outcome
            hog.close()
            publisher.join(30)
        assert not publisher.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], int), outcome


def test_the_package_ships_py_typed(tmp_path: Path) -> None:
    """PEP 561: setuptools installs the marker with the client package (package-data in
    pyproject.toml), so type checkers read the client's annotations."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "bbmq", source / "bbmq", ignore=shutil.ignore_patterns("__pycache__"))
    # build_py lays out exactly the files that a wheel (or pip install) installs.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(tmp_path / "installed"),
        ],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    for name in ("client", "aio"):  # the blocking client and the asyncio one
        package = tmp_path / "installed" / "bbmq" / name
        assert (package / "py.typed").is_file()
        assert (package / "__init__.py").is_file()
    assert not (tmp_path / "installed" / "bbmq" / "client.py").exists()
