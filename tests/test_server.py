"""The broker over real sockets: the grammar, the handshake words, delivery and every error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bbmq import (
    BrokerError,
    ConnectionLost,
    Consumer,
    InvalidArgument,
    Producer,
    PublishError,
    protocol,
)
from bbmq.client.publishing import PublishWindow
from bbmq.protocol import ErrorCode
from bbmq.testing import BrokerController, BrokerProcess, wait_for

from .client_flavours import Flavour
from .conftest import RawClient

REPO = Path(__file__).resolve().parent.parent


def test_handshake_answers_with_server_facts(raw: RawClient) -> None:
    info = raw.handshake(protocol.ClientPublisher("orders", {"name": "test"}))
    assert info["server"] == "bbmq"
    assert info["max_message_bytes"] == 1024 * 1024
    assert isinstance(info["version"], str)


def test_ping_before_handshake_and_shutdown_words(raw: RawClient) -> None:
    raw.send(protocol.Ping())
    assert raw.receive() == [protocol.Pong()]
    raw.handshake(protocol.ClientSubscriber("orders"))
    raw.send(protocol.ClientShutdownSignal())
    assert raw.receive() == [protocol.CloseConnectionSignal()]
    assert raw.closed_by_server()


def test_a_stream_sent_a_byte_per_write_is_reassembled(raw: RawClient) -> None:
    """The connection keeps a partial frame across reads. Which cuts the reads see is the
    kernel's choice; every cut is in tests/test_core.py, through the decoder and core."""
    tricky = b"HEAD PUBLISH 3\r\nTAIL\r\n\x00\xff"
    stream = protocol.ClientPublisher("split").encode() + protocol.Publish(tricky).encode() * 2
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for index in range(len(stream)):
        raw.sock.sendall(stream[index : index + 1])
    ack, first, second = raw.receive(3)
    assert isinstance(ack, protocol.ServerAcknowledgement)
    assert isinstance(first, protocol.ProducerAckMessage) and isinstance(
        second, protocol.ProducerAckMessage
    )
    with Consumer("split", port=raw.sock.getpeername()[1]) as consumer:
        message = consumer.fetch(timeout=5)
        assert message is not None and message.body == tricky


def test_pipelined_publishes_are_acked_in_order(raw: RawClient) -> None:
    raw.handshake(protocol.ClientPublisher("pipe"))
    raw.send(*(protocol.Publish(b"%d" % i) for i in range(500)))
    acks = raw.receive(500)
    ids = [a.id for a in acks if isinstance(a, protocol.ProducerAckMessage)]
    assert len(ids) == 500 and ids == sorted(ids) and len(set(ids)) == 500


def test_fan_out_across_groups_and_sharing_inside_a_group(
    broker: BrokerController, clients: Flavour
) -> None:
    a1 = clients.Consumer("fan", "a", port=broker.port).connect()
    a2 = clients.Consumer("fan", "a", port=broker.port).connect()
    b = clients.Consumer("fan", "b", port=broker.port).connect()
    with clients.Producer("fan", port=broker.port) as producer:
        ids = producer.publish_many([b"m%d" % i for i in range(20)])
    got_b = [b.fetch(timeout=5) for _ in range(20)]
    assert [m.id for m in got_b if m] == ids
    shared: list[int] = []
    for consumer in (a1, a2):
        while (message := consumer.fetch(timeout=0.2)) is not None:
            shared.append(message.id)
            consumer.ack(message)
            if len(shared) % 2:
                break  # let the other consumer of the group take some too
    while (message := a1.fetch(timeout=0.2)) is not None:
        shared.append(message.id)
    assert sorted(shared) == ids  # each message once inside the group
    for consumer in (a1, a2, b):
        consumer.close()


def test_redelivery_on_nack_and_on_disconnect(broker: BrokerController, clients: Flavour) -> None:
    with clients.Producer("redo", port=broker.port) as producer:
        [mid] = producer.publish_many([b"x"])
    first = clients.Consumer("redo", port=broker.port).connect()
    message = first.fetch(timeout=5)
    assert message is not None and (message.id, message.attempt) == (mid, 1)
    first.nack(message)
    message = first.fetch(timeout=5)
    assert message is not None and (message.id, message.attempt) == (mid, 2)
    first._channel.close()  # vanish without acking
    with clients.Consumer("redo", port=broker.port) as second:
        message = second.fetch(timeout=5)
        assert message is not None and (message.id, message.attempt) == (mid, 3)
        second.ack(message)
        assert second.fetch(timeout=0.2) is None


def test_redelivery_on_ack_timeout(tmp_path: Path, clients: Flavour) -> None:
    with BrokerController(data_dir=tmp_path, ack_timeout=0.3) as broker:
        with clients.Producer("slow", port=broker.port) as producer:
            mid = producer.publish(b"x")
        with clients.Consumer("slow", port=broker.port) as consumer:
            message = consumer.fetch(timeout=5)
            assert message is not None and message.attempt == 1
            again = consumer.fetch(timeout=5)  # not acked: it comes back after 0.3 s
            assert again is not None and (again.id, again.attempt) == (mid, 2)


def test_long_poll_queue_empty(raw: RawClient) -> None:
    raw.handshake(protocol.ClientSubscriber("empty"))
    raw.send(protocol.Fetch(3, 0))
    assert raw.receive() == [protocol.QueueEmpty(0)]
    raw.send(protocol.Fetch(3, 200))
    assert raw.receive(timeout=5) == [protocol.QueueEmpty(0)]


def test_non_fatal_errors_leave_the_connection_open(raw: RawClient) -> None:
    raw.send(protocol.Publish(b"too early"))
    raw.send(protocol.encode("NO_SUCH_VERB"))
    raw.send(protocol.encode("CLIENT_SUBSCRIBER", ("bad/name",)))
    raw.send(protocol.encode("PUBLISH", ("color=blue",), b"x"))
    errors = raw.receive(4)
    assert [e.code for e in errors] == [  # type: ignore[attr-defined]
        ErrorCode.NOT_ALLOWED,
        ErrorCode.INVALID_PROTOCOL,
        ErrorCode.BAD_NAME,
        ErrorCode.INVALID_PROTOCOL,
    ]
    assert "'color'" in errors[3].text  # type: ignore[attr-defined]
    raw.handshake(protocol.ClientSubscriber("fine"))
    raw.send(
        protocol.ClientPublisher("again"), protocol.encode("FETCH", ("0",)), protocol.Ack((12345,))
    )
    errors = raw.receive(3)
    assert [e.code for e in errors] == [  # type: ignore[attr-defined]
        ErrorCode.NOT_ALLOWED,
        ErrorCode.INVALID_PROTOCOL,
        ErrorCode.UNKNOWN_MESSAGE,
    ]
    assert "12345" in errors[2].text  # type: ignore[attr-defined]
    raw.send(protocol.Ping())
    assert raw.receive() == [protocol.Pong()]


@pytest.mark.parametrize(
    "garbage",
    [
        b"HEAD " + b"A" * 2000,  # header over 1024 bytes, no CRLF yet
        b"HEAD PUBLISH 99999999999\r\n",  # size over the limit
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not our protocol at all
        b"HEAD PING 3\r\nabcXXXX\r\n",  # no TAIL where SIZE says
    ],
)
def test_framing_errors_send_an_error_then_close(raw: RawClient, garbage: bytes) -> None:
    raw.send(garbage)
    [error] = raw.receive()
    assert isinstance(error, protocol.Error)
    assert error.code in (ErrorCode.FRAME_TOO_LARGE, ErrorCode.INVALID_PROTOCOL)
    assert raw.closed_by_server()


@pytest.mark.parametrize(
    "incomplete",
    [
        b"HEAD PING 0\n",  # a header line ending in a bare LF
        b"HEAD PUBLISH 3\r\nabcd",  # a body not followed by TAIL
    ],
)
def test_incomplete_frames_known_to_be_wrong_are_refused_without_waiting(
    raw: RawClient, incomplete: bytes
) -> None:
    """Defect 8: refused at once (well inside the 10 s handshake timeout), not timed out."""
    raw.send(incomplete)
    [error] = raw.receive(timeout=3)
    assert isinstance(error, protocol.Error) and error.code == ErrorCode.INVALID_PROTOCOL, error
    assert raw.closed_by_server(timeout=3)


def test_publishes_before_bad_bytes_are_confirmed_before_the_error(raw: RawClient) -> None:
    """One write of 20 PUBLISHes, a PING and a malformed frame: PONG, then all 20 acks (each
    message was stored), then the ERROR, then the close; never an ERROR in an ack's place."""
    raw.handshake(protocol.ClientPublisher("burst"))
    raw.send(
        *(protocol.Publish(b"m%d" % i) for i in range(20)),
        protocol.Ping(),
        b"HEAD PUBLISH 3\r\nabcdTAIL\r\n",
    )
    replies = raw.receive(22)
    assert replies[0] == protocol.Pong()
    acks = replies[1:21]
    assert all(isinstance(ack, protocol.ProducerAckMessage) for ack in acks), acks
    assert [ack.id for ack in acks] == sorted(ack.id for ack in acks)  # type: ignore[attr-defined]
    assert (
        isinstance(replies[21], protocol.Error) and replies[21].code == ErrorCode.INVALID_PROTOCOL
    )
    assert raw.closed_by_server()


def test_max_connections_gets_server_busy(tmp_path: Path) -> None:
    with BrokerController(data_dir=tmp_path, max_connections=1) as broker:
        first = RawClient(broker.port)
        first.send(protocol.Ping())
        assert first.receive() == [protocol.Pong()]
        second = RawClient(broker.port)
        [error] = second.receive()
        assert isinstance(error, protocol.Error) and error.code == ErrorCode.SERVER_BUSY
        assert second.closed_by_server()
        first.close()
        second.close()


def test_handshake_timeout(tmp_path: Path) -> None:
    with BrokerController(data_dir=tmp_path, handshake_timeout=0.2) as broker:
        client = RawClient(broker.port)
        [error] = client.receive(timeout=5)
        assert isinstance(error, protocol.Error) and error.code == ErrorCode.TIMEOUT
        assert client.closed_by_server()
        client.close()


def test_stop_tells_clients_the_server_is_closing(tmp_path: Path) -> None:
    broker = BrokerController(data_dir=tmp_path).start()
    client = RawClient(broker.port)
    client.handshake(protocol.ClientSubscriber("bye"))
    broker.stop()
    [error] = client.receive()
    assert isinstance(error, protocol.Error) and error.code == ErrorCode.SERVER_CLOSING
    assert client.closed_by_server()
    client.close()


def test_client_surfaces_broker_errors_and_lost_connections(
    tmp_path: Path, clients: Flavour
) -> None:
    broker = BrokerController(data_dir=tmp_path, max_message_size=10).start()
    producer = clients.Producer("limits", port=broker.port, retry_for=0).connect()
    with pytest.raises(BrokerError) as info:
        producer.publish(b"x" * 11)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    consumer = clients.Consumer("limits", port=broker.port).connect()
    outcome: list[BaseException] = []

    def blocked_fetch() -> None:
        try:
            consumer.fetch()
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=blocked_fetch)
    thread.start()
    wait_for(
        lambda: broker.call(
            lambda: any(s.requests for s in broker.server.broker.sessions.values())
        ),  # type: ignore[union-attr]
        "the fetch to wait in the broker",
    )
    broker.stop()
    thread.join(10)
    assert outcome and isinstance(outcome[0], ConnectionLost | BrokerError)


def test_consumer_run_acks_on_success_and_retries_failures(broker: BrokerController) -> None:
    with Producer("work", port=broker.port) as producer:
        producer.publish_many([b"ok-%d" % i for i in range(10)] + [b"flaky"])
    done: list[bytes] = []
    stop = threading.Event()
    failures = []

    def handler(message: object) -> None:
        body = message.body  # type: ignore[attr-defined]
        if body == b"flaky" and not failures:
            failures.append(body)
            raise RuntimeError("first try fails")
        done.append(body)
        if len(done) == 11:
            stop.set()

    consumer = Consumer("work", port=broker.port)
    runner = threading.Thread(
        target=consumer.run, args=(handler,), kwargs={"workers": 3, "backoff": 0.05, "stop": stop}
    )
    runner.start()
    runner.join(30)
    assert not runner.is_alive()
    assert sorted(done) == sorted([b"ok-%d" % i for i in range(10)] + [b"flaky"])
    assert failures == [b"flaky"]
    assert consumer.fetch(timeout=0.3) is None  # everything was acked
    consumer.close()


def test_acks_that_wait_to_share_a_write_reach_the_broker_unprompted(
    broker: BrokerController,
) -> None:
    """An ack held back to share a write (Channel.send_soon) is sent within the linger
    time by the flusher, with no further call from the user; a NACK after it stays after it."""
    with Producer("linger", port=broker.port) as producer:
        producer.publish_many([b"a", b"b"])
    consumer = Consumer("linger", "g", port=broker.port).connect()
    first, second = consumer.fetch(timeout=5), consumer.fetch(timeout=5)
    assert first is not None and second is not None

    def group_counters() -> tuple[int, int]:
        assert broker.server is not None
        counters = broker.server.broker.snapshot().topic("linger").group("g").counters
        return counters.acked, counters.redelivered

    consumer.channel.send_soon(protocol.Ack((first.id,)))
    wait_for(lambda: broker.call(group_counters) == (1, 0), "the held ack", timeout=5)
    consumer.channel.send_soon(protocol.Ack((second.id,)))
    consumer.nack(second)  # the held ack goes first, so this NACK is of an acked message
    wait_for(lambda: broker.call(group_counters) == (2, 0), "the second held ack", timeout=5)
    error = consumer.channel.read(timeout=5)
    assert isinstance(error, protocol.Error) and error.code == ErrorCode.UNKNOWN_MESSAGE
    consumer.close()


def test_a_refused_publish_leaves_the_producer_in_step(
    broker: BrokerController, clients: Flavour
) -> None:
    """Every reply owed is read before the refusal is raised, so the next publish gets its
    own ack, not a stale one; the refusal says which messages were stored."""
    with clients.Producer("step", port=broker.port) as producer:
        frames = [
            protocol.Publish(b"before", "m1"),
            protocol.Publish(b"x", delay_ms=-1),
            protocol.Publish(b"after", "m2"),
        ]
        assert frames[1].encode() == b"HEAD PUBLISH delay=-1 1\r\nxTAIL\r\n"
        ids = [0, 0, 0]
        with pytest.raises(PublishError) as refused:
            producer._pipeline(PublishWindow(frames, [0, 1, 2], ids, window=10))
        assert refused.value.code == ErrorCode.INVALID_PROTOCOL
        assert refused.value.ids[0] and refused.value.ids[1] == 0 and refused.value.ids[2]
        next_id = producer.publish(b"next")
        assert next_id > refused.value.ids[2]
        with pytest.raises(InvalidArgument, match="ttl must be"):
            producer.publish(b"x", ttl=0)
        with pytest.raises(InvalidArgument, match="delay must be"):
            producer.publish(b"x", delay=-1)
    with clients.Consumer("step", port=broker.port) as consumer:
        got = [consumer.fetch(timeout=5) for _ in range(3)]
        assert [(m.id, m.body) for m in got if m] == [
            (refused.value.ids[0], b"before"),
            (refused.value.ids[2], b"after"),
            (next_id, b"next"),
        ]
    with pytest.raises(InvalidArgument):
        clients.Consumer("step", "bad group")


@pytest.mark.slow
def test_consumer_run_reconnects_when_the_broker_restarts(tmp_path: Path) -> None:
    done: list[bytes] = []
    stop = threading.Event()
    with BrokerProcess(tmp_path / "data") as broker:
        consumer = Consumer("steady", port=broker.port)
        runner = threading.Thread(
            target=consumer.run,
            args=(lambda m: done.append(m.body),),
            kwargs={"stop": stop},
            daemon=True,
        )
        runner.start()
        with Producer("steady", port=broker.port) as producer:
            producer.publish(b"before")
        wait_for(lambda: done == [b"before"], "the message before the restart", timeout=10)
        assert broker.stop() == 0
        broker.start()
        with Producer("steady", port=broker.port) as producer:
            producer.publish(b"after")
        wait_for(lambda: b"after" in done, "the message after the restart", timeout=20)
        assert set(done) == {b"before", b"after"}  # "before" twice if its ack met the stop
        stop.set()
        runner.join(10)
        assert not runner.is_alive()
        consumer.close()


def test_a_message_over_the_limit_is_refused_at_once(tmp_path: Path, clients: Flavour) -> None:
    with (
        BrokerController(data_dir=tmp_path, max_message_size=1000) as broker,
        clients.Producer("big", port=broker.port, retry_for=30) as producer,
    ):
        with pytest.raises(InvalidArgument, match="over the broker's limit of 1000"):
            producer.publish(b"x" * 1001)
        assert producer.publish(b"x" * 1000)


def test_consumer_run_waits_out_a_full_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SERVER_BUSY at the handshake (too many connections) is a reason to retry, not to stop."""
    done: list[bytes] = []
    stop = threading.Event()
    with BrokerController(data_dir=tmp_path, max_connections=1) as broker:
        with Producer("busy", port=broker.port) as producer:
            producer.publish(b"job")
        hog = socket.create_connection(("127.0.0.1", broker.port))  # the one allowed
        consumer = Consumer("busy", port=broker.port)
        runner = threading.Thread(
            target=consumer.run,
            args=(lambda m: done.append(m.body),),
            kwargs={"stop": stop},
            daemon=True,
        )
        runner.start()
        try:
            wait_for(
                lambda: "too many connections" in caplog.text, "the refusal in the log", timeout=10
            )
            assert runner.is_alive(), "run() gave up on SERVER_BUSY"
            hog.close()
            wait_for(lambda: done == [b"job"], "the job once a connection is free", timeout=20)
        finally:
            stop.set()
            runner.join(10)
            consumer.close()
        assert not runner.is_alive()


def _script(name: str, *args: str, port: int, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BBMQ_PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(REPO / name), *args],
        input=stdin,
        text=True,
        capture_output=True,
        timeout=60,
        env=env,
        cwd=REPO,
        check=False,
    )


@pytest.mark.slow
def test_producer_and_consumer_scripts_as_a_user_would(broker: BrokerController) -> None:
    lines_in = ["first order", "second order", "HEAD PUBLISH 0 TAIL"]
    produced = _script(
        "producer.py",
        "orders",
        "--name",
        "cli",
        port=broker.port,
        stdin="\r\n".join(lines_in) + "\n",
    )
    assert produced.returncode == 0, produced.stderr
    ids = [int(line) for line in produced.stdout.split()]
    assert len(ids) == 3 and ids == sorted(ids)
    consumed = _script("consumer.py", "orders", "-n", "3", "-v", port=broker.port)
    assert consumed.returncode == 0, consumed.stderr
    lines = consumed.stdout.splitlines()
    assert lines[1::2] == lines_in
    assert [line.split()[1] for line in lines[0::2]] == [f"id={i}" for i in ids]
    assert lines[0].startswith(f"# id={ids[0]} attempt=1 published=")
    assert lines[0].endswith("+00:00 from=cli")
    again = _script("consumer.py", "orders", "--timeout", "0.3", port=broker.port)
    assert again.returncode == 0 and again.stdout == ""  # all three were acked


@pytest.mark.slow
def test_consumer_script_keeps_going_across_a_broker_restart(tmp_path: Path) -> None:
    out = tmp_path / "consumed.txt"
    with BrokerProcess(tmp_path / "data") as broker, out.open("wb") as sink:
        with Producer("restarts", port=broker.port) as producer:
            producer.publish(b"one")
        consumer = subprocess.Popen(
            [sys.executable, str(REPO / "consumer.py"), "restarts", "-n", "2"],
            cwd=REPO,
            env={**os.environ, "BBMQ_PORT": str(broker.port)},
            stdout=sink,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: out.read_bytes() == b"one\n", "the first message consumed", timeout=20)
            assert broker.stop() == 0
            broker.start()
            with Producer("restarts", port=broker.port) as producer:
                producer.publish(b"two")
            _, stderr = consumer.communicate(timeout=60)
        finally:
            consumer.kill()
        assert consumer.returncode == 0, stderr
        assert out.read_bytes().splitlines()[-1] == b"two"
        assert b"reconnecting" in stderr


@pytest.mark.slow
def test_scripts_explain_an_unreachable_broker() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _script("producer.py", "orders", "hello", port=port)
    assert result.returncode != 0
    assert f"cannot connect to 127.0.0.1:{port}" in result.stderr
    assert "is a broker running there" in result.stderr


@pytest.mark.slow
def test_the_idle_clock_restarts_when_a_long_poll_ends(tmp_path: Path) -> None:
    """Issue 16, defect 7 (PROTOCOL.md 4.4): a long poll that ends just after the server's
    last idle check used to leave the consumer a fraction of the idle timeout (closed 0.1 s
    after this poll ended); the clock now restarts within a second of the poll's end."""
    with BrokerController(data_dir=tmp_path, idle_timeout=3) as broker:
        client = RawClient(broker.port)
        client.handshake(protocol.ClientSubscriber("quiet"))
        client.send(protocol.Fetch(1, 5_900))
        assert client.receive(timeout=10) == [protocol.QueueEmpty(0)]
        assert client.silent_for(1.0), client.frames  # no TIMEOUT right after the poll
        client.send(protocol.Ping())
        assert client.receive() == [protocol.Pong()]
        client.close()
