"""A cluster of real ``bbmq server run --cluster`` processes over the local MariaDB.

Each test has tables of its own (a fresh table prefix) and brokers on free
ports: a client sent to the wrong broker gets REDIRECT naming the owner; the
owner killed with SIGKILL, a handshake on a survivor takes the topic over at
once (its port refuses, so no TTL is waited out) with every confirmed message;
a broker without --cluster is refused on a database a cluster uses; a new broker
takes its fair share of the topics; drain hands every topic to the others; a
clean stop gives the leases back at once.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbmq import protocol
from bbmq.client import Admin, Consumer, Producer
from bbmq.testing import BrokerProcess, clean_environment, wait_for
from tests.mysql_support import isolated_mysql_url

pytestmark = [pytest.mark.slow, pytest.mark.mysql]

TTL_MS = 3000


@pytest.fixture
def store_url() -> Iterator[str]:
    with isolated_mysql_url() as url:
        yield url


def cluster_broker(tmp_path: Path, name: str, store_url: str, **settings: Any) -> BrokerProcess:
    broker = BrokerProcess(tmp_path / name, store=store_url, cluster="true",
                           lease_ttl_ms=str(TTL_MS), **settings)
    broker.settings["advertise"] = f"127.0.0.1:{broker.port}"
    return broker


def handshake(port: int, frame: protocol.TypedFrame,
              timeout: float = 10.0) -> protocol.TypedFrame:
    """Send one handshake over a raw socket and return the broker's first answer."""
    connection = protocol.ClientConnection()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(connection.send(frame))
        while True:
            event = connection.next_event()
            if event is not protocol.NEED_DATA:
                assert isinstance(event, protocol.TypedFrame)
                return event
            data = sock.recv(65536)
            assert data, "the broker closed the connection without an answer"
            connection.receive_data(data)


def cluster_status(port: int) -> dict[str, Any]:
    with Admin(port=port) as admin:
        status: dict[str, Any] = admin.command("cluster")
    return status


def owners(port: int) -> dict[str, str]:
    """topic -> owner's address, as the broker on ``port`` last read the leases."""
    return {lease["topic"]: lease["owner_address"] for lease in cluster_status(port)["leases"]
            if lease["owner"] and lease["remaining_ms"] > 0}


def test_a_client_of_the_wrong_broker_is_redirected_to_the_owner(tmp_path: Path,
                                                                  store_url: str) -> None:
    with cluster_broker(tmp_path, "a", store_url) as a:
        with Producer("orders", port=a.port) as producer:  # a takes the topic, b is not up
            producer.publish(b"first")
        with cluster_broker(tmp_path, "b", store_url) as b:
            answer = handshake(b.port, protocol.ClientSubscriber("orders", "default"))
            assert isinstance(answer, protocol.Redirect), answer
            assert answer.owner == f"127.0.0.1:{a.port}"
            assert answer.epoch == 1
            both = sorted([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])

            def acknowledged_by_a() -> dict[str, Any] | None:
                accepted = handshake(a.port, protocol.ClientPublisher("orders"))
                assert isinstance(accepted, protocol.ServerAcknowledgement), accepted
                return accepted.info if sorted(accepted.info["brokers"]) == both else None

            info = wait_for(acknowledged_by_a, "a to list both brokers", timeout=5)
            assert info["epoch"] == 1


def test_a_killed_owner_s_topic_is_taken_over_at_once_with_every_confirmed_message(
        tmp_path: Path, store_url: str) -> None:
    with cluster_broker(tmp_path, "a", store_url) as a:
        with Producer("jobs", port=a.port) as producer:
            confirmed = set(producer.publish_many(f"job {n}".encode() for n in range(200)))
        b = cluster_broker(tmp_path, "b", store_url).start()
        a.kill()  # kill -9: no release, no deregister; its lease still runs for the TTL
        started = time.monotonic()
        received: set[int] = set()
        with Consumer("jobs", port=b.port) as consumer:
            taken_after = time.monotonic() - started
            while len(received) < len(confirmed):
                message = consumer.fetch(timeout=5)
                assert message is not None, f"only {len(received)} of {len(confirmed)} came"
                received.add(message.id)
                consumer.ack(message)
        assert received == confirmed
        # The refused probe let it take the lease without waiting out the 3 s TTL.
        assert taken_after < 1.5, f"the take-over took {taken_after:.2f} s"
        wait_for(lambda: owners(b.port).get("jobs") == f"127.0.0.1:{b.port}",
                 "b's view of the leases to show it owns jobs", timeout=5)
        b.stop()


def test_a_broker_without_cluster_is_refused_on_a_cluster_s_database(tmp_path: Path,
                                                                      store_url: str) -> None:
    with cluster_broker(tmp_path, "a", store_url) as a:
        single = BrokerProcess(tmp_path / "single", store=store_url).launch()
        assert single.process is not None
        code = single.process.wait(30)
        log = single.log()
        assert code == 1, log
        assert f"127.0.0.1:{a.port}" in log and "--cluster" in log, log
        assert "recovered" not in log  # refused before it loaded anything


def test_a_second_single_broker_on_one_database_is_refused(tmp_path: Path,
                                                            store_url: str) -> None:
    with BrokerProcess(tmp_path / "first", store=store_url) as first:
        with Producer("t", port=first.port) as producer:
            producer.publish(b"kept once")
        second = BrokerProcess(tmp_path / "second", store=store_url).launch()
        assert second.process is not None
        assert second.process.wait(30) == 1
        assert "another broker" in second.log() and "stop it" in second.log()


def test_drain_hands_every_topic_to_the_other_broker(tmp_path: Path, store_url: str) -> None:
    topics = [f"t{n}" for n in range(4)]
    with cluster_broker(tmp_path, "a", store_url) as a, \
            cluster_broker(tmp_path, "b", store_url) as b:
        published = {}
        for topic in topics:  # every topic on a, the first to be asked
            with Producer(topic, port=a.port) as producer:
                published[topic] = producer.publish(topic.encode())
        drained = subprocess.run(
            [sys.executable, "-m", "bbmq", "server", "drain", "--port", str(a.port),
             "--wait", "30"], env=clean_environment(), capture_output=True, text=True,
            timeout=60, check=False)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert "drained" in drained.stdout
        b_address = f"127.0.0.1:{b.port}"
        wait_for(lambda: all(owners(b.port).get(t) == b_address for t in topics),
                 "b to own every topic", timeout=10)
        for topic in topics:
            with Consumer(topic, port=b.port) as consumer:
                message = consumer.fetch(timeout=5)
                assert message is not None and message.id == published[topic]
                consumer.ack(message)
        status = subprocess.run(
            [sys.executable, "-m", "bbmq", "cluster", "status", "--port", str(b.port),
             "--json"], env=clean_environment(), capture_output=True, text=True,
            timeout=30, check=True)
        shown = json.loads(status.stdout)
        assert {lease["topic"] for lease in shown["leases"]} == set(topics)
        assert any(broker["draining"] for broker in shown["brokers"])


def test_a_single_broker_killed_and_restarted_is_not_refused_by_its_own_row(
        tmp_path: Path, store_url: str) -> None:
    broker = BrokerProcess(tmp_path / "single", store=store_url).start()
    with Producer("t", port=broker.port) as producer:
        kept = producer.publish(b"kept")
    broker.kill()  # its row looks live for a TTL more, at the address the restart takes
    with broker.start(), Consumer("t", port=broker.port) as consumer:
        message = consumer.fetch(timeout=5)
        assert message is not None and message.id == kept
    assert "killed without a clean stop" in broker.log()


def test_a_stopped_broker_gives_its_leases_back_at_once(tmp_path: Path, store_url: str) -> None:
    with cluster_broker(tmp_path, "a", store_url) as a:
        with Producer("events", port=a.port) as producer:
            sent = producer.publish(b"before the stop")
        b = cluster_broker(tmp_path, "b", store_url).start()
        try:
            assert a.stop() == 0  # SIGTERM: the leases are released, the row deleted
            brokers = {broker["address"] for broker in cluster_status(b.port)["brokers"]}
            wait_for(lambda: f"127.0.0.1:{a.port}" not in {
                broker["address"] for broker in cluster_status(b.port)["brokers"]},
                "b to see a gone", timeout=5)
            assert f"127.0.0.1:{b.port}" in brokers
            with Consumer("events", port=b.port) as consumer:
                message = consumer.fetch(timeout=5)
                assert message is not None and message.id == sent
                consumer.ack(message)
            assert "acquired 'events' at epoch 2" in b.log()  # free: no take-over needed
        finally:
            b.stop()


def test_a_new_broker_takes_its_fair_share_from_a_busy_one(tmp_path: Path,
                                                          store_url: str) -> None:
    topics = [f"load{n}" for n in range(6)]
    with cluster_broker(tmp_path, "a", store_url) as a:
        for topic in topics:
            with Producer(topic, port=a.port) as producer:
                producer.publish(topic.encode())
        wait_for(lambda: len(owners(a.port)) == len(topics), "a to hold every topic", 5)
        with cluster_broker(tmp_path, "b", store_url) as b:
            b_address = f"127.0.0.1:{b.port}"

            def shared() -> bool:
                held = list(owners(b.port).values())
                return held.count(b_address) == 3 and len(held) == len(topics)

            # One hand-off per renew (every TTL/3 = 1 s) until each has ceil(6/2) = 3.
            wait_for(shared, "b to hold 3 of the 6 topics", timeout=15)
            for topic, owner in owners(b.port).items():
                port = b.port if owner == b_address else a.port
                with Consumer(topic, port=port) as consumer:
                    message = consumer.fetch(timeout=5)
                    assert message is not None and message.body == topic.encode()
                    consumer.ack(message)
