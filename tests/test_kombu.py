"""bbmq as a kombu transport: kombu's API against an in-process broker (fast), and real
``celery worker`` processes against a broker process (slow).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

import bbmq.kombu  # noqa: F401  (registers bbmq://)
from bbmq.client import Admin
from bbmq.kombu.queues import bbmq_name
from bbmq.testing import BrokerController, BrokerProcess, clean_environment, wait_for

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker() -> Iterator[BrokerController]:
    with BrokerController(store="memory://") as controller:
        yield controller


@pytest.fixture
def connection(broker: BrokerController) -> Iterator[Connection]:
    with Connection(f"bbmq://127.0.0.1:{broker.port}") as kombu_connection:
        yield kombu_connection


def jobs_queue(name: str = "jobs") -> Queue:
    return Queue(name, Exchange(name, "direct"), routing_key=name)


def publish(connection: Connection, queue: Queue, *bodies: Any, **options: Any) -> None:
    with connection.Producer() as producer:
        for body in bodies:
            producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                             declare=[queue], **options)


def drain(connection: Connection, queues: list[Queue], count: int, *, ack: bool = True,
          **consumer_options: Any) -> list[Any]:
    """The first ``count`` messages of ``queues``, acked or not."""
    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append((body, message))
        if ack:
            message.ack()

    with connection.Consumer(queues, callbacks=[on_message], **consumer_options):
        while len(received) < count:
            connection.drain_events(timeout=5)
    return received


def group_stats(port: int, queue: str) -> dict[str, Any]:
    with Admin(port=port) as admin:
        name = bbmq_name(queue)
        stats: dict[str, Any] = admin.stats()["topics"][name]["groups"][name]
        return stats


def test_messages_go_through_a_queue_in_order_and_acks_reach_the_broker(
        broker: BrokerController, connection: Connection) -> None:
    queue = jobs_queue()
    publish(connection, queue, *({"n": n} for n in range(20)))
    assert queue(connection.default_channel).queue_declare(passive=True).message_count == 20
    received = drain(connection, [queue], 20)
    assert [body for body, _ in received] == [{"n": n} for n in range(20)]
    wait_for(lambda: group_stats(broker.port, "jobs")["inflight"] == 0, "the acks")
    assert group_stats(broker.port, "jobs")["ready"] == 0


def test_a_queue_name_bbmq_would_refuse_gets_a_topic_of_its_own(
        connection: Connection) -> None:
    """Celery's pidbox queues have an '@': they map to valid, distinct topic names."""
    assert bbmq_name("celery") == "celery"
    assert bbmq_name("w1@host.celery.pidbox") != bbmq_name("w1#host.celery.pidbox")
    queue = jobs_queue("w1@host.celery.pidbox")
    publish(connection, queue, "hello")
    assert [body for body, _ in drain(connection, [queue], 1)] == ["hello"]


def test_an_unacked_message_is_redelivered_by_the_broker_when_its_consumer_goes(
        broker: BrokerController) -> None:
    url = f"bbmq://127.0.0.1:{broker.port}"
    queue = jobs_queue()
    with Connection(url) as first:
        publish(first, queue, "work")
        [(_, message)] = drain(first, [queue], 1, ack=False)
        assert message.delivery_info["redelivered"] is False
    with Connection(url) as second:
        [(body, message)] = drain(second, [queue], 1)
        assert body == "work" and message.delivery_info["redelivered"] is True


def test_reject_with_requeue_gives_the_message_back_and_without_drops_it(
        broker: BrokerController, connection: Connection) -> None:
    queue = jobs_queue()
    publish(connection, queue, "retry me", "drop me")
    received = drain(connection, [queue], 2, ack=False)
    received[0][1].reject(requeue=True)
    received[1][1].reject(requeue=False)
    [(body, message)] = drain(connection, [queue], 1)
    assert body == "retry me" and message.delivery_info["redelivered"] is True
    wait_for(lambda: group_stats(broker.port, "jobs")["inflight"] == 0, "the settlements")
    assert group_stats(broker.port, "jobs")["ready"] == 0


def test_prefetch_bounds_what_a_consumer_takes_so_another_gets_the_rest(
        broker: BrokerController) -> None:
    url = f"bbmq://127.0.0.1:{broker.port}"
    queue = jobs_queue()
    with Connection(url) as greedy, Connection(url) as other:
        publish(greedy, queue, *range(5))
        held = drain(greedy, [queue], 2, ack=False, prefetch_count=2)
        assert len(held) == 2
        with pytest.raises(TimeoutError):  # its prefetch is full: nothing more comes
            greedy.drain_events(timeout=0.3)
        rest = drain(other, [queue], 3)
        assert sorted(body for body, _ in held + rest) == list(range(5))


def test_a_no_ack_consumer_leaves_nothing_in_flight(broker: BrokerController,
                                                    connection: Connection) -> None:
    queue = jobs_queue()
    publish(connection, queue, "a", "b")
    assert [body for body, _ in drain(connection, [queue], 2, ack=False, no_ack=True)] == \
        ["a", "b"]
    wait_for(lambda: group_stats(broker.port, "jobs")["inflight"] == 0, "the broker-side acks")


def test_basic_get_takes_one_message_or_none(connection: Connection) -> None:
    queue = jobs_queue()
    bound = queue(connection.default_channel)
    bound.declare()
    assert bound.get() is None
    publish(connection, queue, "one")
    message = bound.get()
    assert message is not None and message.payload == "one"
    message.ack()
    assert bound.get() is None


def test_purge_and_delete_drop_a_queue_s_messages(broker: BrokerController,
                                                  connection: Connection) -> None:
    queue = jobs_queue()
    publish(connection, queue, "a", "b", "c")
    bound = queue(connection.default_channel)
    assert bound.purge() == 3
    assert bound.queue_declare(passive=True).message_count == 0
    publish(connection, queue, "d")
    bound.delete()
    with Admin(port=broker.port) as admin:
        assert "jobs" not in admin.stats()["topics"]["jobs"]["groups"]


def test_a_fanout_exchange_gives_every_bound_queue_every_message(
        connection: Connection) -> None:
    exchange = Exchange("news", "fanout")
    queues = [Queue("reader-a", exchange), Queue("reader-b", exchange)]
    for queue in queues:
        queue(connection.default_channel).declare()  # bound: it keeps what comes from now on
    with connection.Producer() as producer:
        producer.publish("extra", exchange=exchange, declare=[exchange])
    received = drain(connection, queues, 2)
    assert [body for body, _ in received] == ["extra", "extra"]
    assert {message.delivery_info["routing_key"] for _, message in received} == {""}


def test_a_direct_binding_made_by_another_process_routes_by_its_key(
        broker: BrokerController) -> None:
    """Bindings live in each process (kombu's virtual transports route in the client):
    a binding whose key is not the queue's name still reaches a publisher that only
    declared the exchange, as Celery's remote-control replies need."""
    url = f"bbmq://127.0.0.1:{broker.port}"
    exchange = Exchange("reply.pidbox", "direct")
    replies = Queue("client-1.reply.pidbox", exchange, routing_key="ticket-1")
    with Connection(url) as listener, Connection(url) as replier:
        replies(listener.default_channel).declare()
        with replier.Producer() as producer:
            producer.publish("pong", exchange=exchange, routing_key="ticket-1",
                             declare=[exchange])
            producer.publish("to a queue named by the key", exchange=exchange,
                             routing_key="plain", declare=[exchange])
        assert [body for body, _ in drain(listener, [replies], 1)] == ["pong"]
        assert [body for body, _ in drain(listener, [jobs_queue("plain")], 1)] == \
            ["to a queue named by the key"]


def test_an_expiration_becomes_the_message_s_ttl(broker: BrokerController,
                                                 connection: Connection) -> None:
    publish(connection, jobs_queue(), "short-lived", expiration=60)
    with Admin(port=broker.port) as admin:
        [peeked] = admin.peek("jobs", "jobs")
    assert peeked["expires_at_ms"] - peeked["published_ms"] == 60_000


def test_the_eta_header_is_held_by_the_broker(broker: BrokerController,
                                              connection: Connection) -> None:
    """Celery's countdown: the broker holds the message (it is 'delayed', no consumer
    holds it unacked meanwhile)."""
    eta = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
    publish(connection, jobs_queue(), "later", headers={"eta": eta})
    stats = group_stats(broker.port, "jobs")
    assert (stats["delayed"], stats["ready"]) == (1, 0)


def test_waiting_on_an_idle_queue_is_not_a_busy_poll(connection: Connection) -> None:
    """drain_events sleeps in select() on the long poll: it costs its thread next to no
    CPU while it waits (a poll-and-sleep loop or a spinning one would)."""
    queue = jobs_queue()

    def on_message(body: Any, message: Any) -> None:
        raise AssertionError(f"nothing was published, got {body!r}")

    with connection.Consumer([queue], callbacks=[on_message]):
        cpu_before, wall_before = time.thread_time(), time.monotonic()
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=0.8)
        cpu, wall = time.thread_time() - cpu_before, time.monotonic() - wall_before
    assert wall >= 0.8
    assert cpu < 0.1, f"{cpu:.3f} s of CPU in a {wall:.2f} s wait"


@pytest.mark.slow  # kombu's connect takes its connect_timeout to give up
def test_an_unreachable_broker_is_a_connection_error_kombu_can_retry() -> None:
    with Connection("bbmq://127.0.0.1:1", connect_timeout=2) as connection, \
            pytest.raises(connection.connection_errors):
        connection.connect()


# -- real Celery workers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def celery_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One broker process for the worker tests, and the app pointed at it."""
    base = tmp_path_factory.mktemp("celery")
    results = base / "results"
    results.mkdir()
    with BrokerProcess(base / "data") as process:  # __enter__ starts it
        settings = {"BBMQ_CELERY_BROKER": f"bbmq://127.0.0.1:{process.port}",
                    "BBMQ_CELERY_BACKEND": f"file://{results}", "port": str(process.port)}
        from tests.celery_tasks import app  # noqa: PLC0415  (configured here, per run)
        app.conf.broker_url = settings["BBMQ_CELERY_BROKER"]
        app.conf.result_backend = settings["BBMQ_CELERY_BACKEND"]
        yield settings


class Worker:
    """``celery -A tests.celery_tasks worker`` in a session of its own (SIGKILL takes the
    pool's processes too)."""

    def __init__(self, settings: dict[str, str], queue: str, log: Path,
                 concurrency: int = 2, name: str | None = None) -> None:
        env = {**clean_environment(), **{key: value for key, value in settings.items()
                                         if key.startswith("BBMQ_CELERY_")}}
        self.log = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tests.celery_tasks", "worker",
                 "-Q", queue, "-c", str(concurrency), "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "-l", "info", "-n", name or f"{uuid.uuid4().hex[:8]}@%h"],
                cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_a_celery_worker_runs_a_thousand_delayed_tasks_through_bbmq(
        celery_broker: dict[str, str], workers: list[Worker], tmp_path: Path) -> None:
    from tests.celery_tasks import add  # noqa: PLC0415

    queue = "add-" + uuid.uuid4().hex[:8]
    workers.append(Worker(celery_broker, queue, tmp_path / "worker.log"))
    add_to_queue = add.s().set(queue=queue)
    results = [add_to_queue.clone(args=(n, 1000)).delay() for n in range(1000)]
    assert [result.get(timeout=60, interval=0.01) for result in results] == \
        [n + 1000 for n in range(1000)]
    stats = group_stats(int(celery_broker["port"]), queue)
    assert (stats["ready"], stats["delivered"]) == (0, 1000)


@pytest.mark.slow
def test_an_acks_late_task_whose_worker_is_killed_runs_again_on_a_new_worker(
        celery_broker: dict[str, str], workers: list[Worker], tmp_path: Path) -> None:
    from tests.celery_tasks import hold_until_released  # noqa: PLC0415

    queue = "hold-" + uuid.uuid4().hex[:8]
    log, release = tmp_path / "task.log", tmp_path / "release"
    first = Worker(celery_broker, queue, tmp_path / "first.log", concurrency=1)
    workers.append(first)
    result = hold_until_released.apply_async((str(log), str(release)), queue=queue)
    wait_for(lambda: lines(log), "the task to start on the first worker", timeout=60)
    first.kill()
    release.touch()
    workers.append(Worker(celery_broker, queue, tmp_path / "second.log", concurrency=1))
    assert result.get(timeout=60, interval=0.05) == "done"
    started, ended = ([line.split()[1] for line in lines(log) if line.startswith(word)]
                      for word in ("started", "done"))
    assert len(started) == 2 and started[0] != started[1], lines(log)
    assert ended == [started[1]], lines(log)


@pytest.mark.slow
def test_remote_control_reaches_the_worker_and_its_reply_comes_back(
        celery_broker: dict[str, str], workers: list[Worker], tmp_path: Path) -> None:
    """``celery inspect``/``control``: a fanout broadcast out, a direct reply back."""
    from tests.celery_tasks import app  # noqa: PLC0415

    queue = "control-" + uuid.uuid4().hex[:8]
    worker_name = f"{queue}@test"
    worker = Worker(celery_broker, queue, tmp_path / "worker.log", name=worker_name)
    workers.append(worker)
    replies = wait_for(lambda: app.control.ping(destination=[worker_name], timeout=1.0),
                       "the worker's pong", timeout=60)
    assert replies == [{worker_name: {"ok": "pong"}}]


@pytest.mark.slow
def test_a_countdown_task_runs_no_earlier_than_its_countdown(
        celery_broker: dict[str, str], workers: list[Worker], tmp_path: Path) -> None:
    from tests.celery_tasks import record_run_time  # noqa: PLC0415

    queue = "later-" + uuid.uuid4().hex[:8]
    workers.append(Worker(celery_broker, queue, tmp_path / "worker.log"))
    log = tmp_path / "ran"
    sent = time.time()
    result = record_run_time.apply_async((str(log),), queue=queue, countdown=2)
    stats = group_stats(int(celery_broker["port"]), queue)
    assert (stats["delayed"], stats["inflight"]) == (1, 0)  # the broker holds it, no worker
    ran = result.get(timeout=60, interval=0.05)
    assert ran >= sent + 2, f"ran {ran - sent:.3f} s after sending, countdown 2 s"
    assert [float(line) for line in lines(log)] == [ran]  # once

