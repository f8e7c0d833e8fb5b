"""The admin commands and the metrics page against a real broker process with the SQLite store.

Each test builds a workload whose numbers are known exactly, then checks what
``bbmq stats|topics|purge|group delete|peek|dlq`` (run as subprocesses, as a
user would) and the Admin client report about it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bbmq.admin import Admin
from bbmq.client import BrokerError, Consumer, Producer
from bbmq.testing import BrokerProcess, free_port, wait_for

from .broker_process import bbmq_env, run_bbmq

pytestmark = pytest.mark.slow  # every test runs bbmq as a process


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "data").start()
    try:
        yield process
    finally:
        assert process.stop() == 0, "the broker should drain and exit 0 on SIGTERM"


def bbmq(broker: BrokerProcess, *args: str) -> Any:
    """Run an admin command against ``broker``; its completed process."""
    return run_bbmq(*args, "--host", "127.0.0.1", "--port", str(broker.port))


def group_stats(admin: Admin, topic: str, group: str) -> dict[str, Any]:
    stats: dict[str, Any] = admin.stats()["topics"][topic]["groups"][group]
    return stats


def test_stats_match_a_known_workload(broker: BrokerProcess) -> None:
    port = broker.port
    with Consumer("orders", "a", "127.0.0.1", port) as group_a, \
            Consumer("orders", "b", "127.0.0.1", port), \
            Producer("orders", "127.0.0.1", port) as producer, \
            Admin("127.0.0.1", port) as admin:
        producer.publish_many([f"order {n}" for n in range(10)])
        delivered = [group_a.fetch(timeout=5) for _ in range(6)]
        for message in delivered[:4]:
            assert message is not None
            group_a.ack(message)
        wait_for(lambda: group_stats(admin, "orders", "a")["acked"] == 4, "the 4 acks")

        stats = admin.stats()
        from_cli = json.loads(bbmq(broker, "stats", "--json", "--interval", "0.2").stdout)
        table = bbmq(broker, "stats", "--interval", "0").stdout

    for sample in (stats, from_cli):
        orders = sample["topics"]["orders"]
        assert (orders["published"], orders["delivered"], orders["acked"]) == (10, 6, 4)
        a, b = orders["groups"]["a"], orders["groups"]["b"]
        assert (a["ready"], a["inflight"], a["delayed"], a["consumers"]) == (4, 2, 0, 1)
        assert (a["delivered"], a["acked"]) == (6, 4)
        assert (b["ready"], b["inflight"], b["delayed"], b["consumers"]) == (10, 0, 0, 1)
        assert (b["delivered"], b["acked"]) == (0, 0)
        assert sample["server"]["pid"] == broker.pid
    assert from_cli["topics"]["orders"]["published_per_s"] == 0  # nothing published meanwhile
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    # READY INFLIGHT DELAYED CONSUMERS PUBLISHED PUB/S ACKED ACK/S
    assert rows["orders"] == ["14", "2", "0", "2", "10", "-", "4", "-"]
    assert rows["a"] == ["4", "2", "0", "1", "4", "-"]
    assert rows["b"] == ["10", "0", "0", "1", "0", "-"]


def test_stats_watch_refreshes_with_rates(broker: BrokerProcess) -> None:
    with Producer("watched", "127.0.0.1", broker.port) as producer:
        producer.publish("one")
    watch = subprocess.Popen(
        [sys.executable, "-m", "bbmq", "stats", "--watch", "0.1", "--json",
         "--port", str(broker.port)], env=bbmq_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first, second = json.loads(watch.stdout.readline()), json.loads(watch.stdout.readline())
    finally:
        watch.terminate()
        watch.wait(10)
    assert first["topics"]["watched"]["published_per_s"] is None  # one sample: no rate yet
    assert second["topics"]["watched"]["published_per_s"] == 0
    assert second["interval_s"] > 0


def test_topics_purge_group_delete_and_peek(broker: BrokerProcess) -> None:
    port = broker.port
    with Consumer("alpha", "a", "127.0.0.1", port), \
            Consumer("alpha", "b", "127.0.0.1", port) as group_b, \
            Admin("127.0.0.1", port) as admin:
        with Producer("alpha", "127.0.0.1", port) as producer:
            ids = producer.publish_many([f"alpha {n}" for n in range(5)])
        with Producer("beta", "127.0.0.1", port) as producer:
            producer.publish_many([b"beta 0", b"beta 1", b"beta \xff"])

        assert bbmq(broker, "topics").stdout.split() == ["alpha", "beta"]

        before = admin.stats()["topics"]
        peek = bbmq(broker, "peek", "alpha", "--group", "a", "-n", "3")
        assert [line.split()[1] for line in peek.stdout.splitlines()[::2]] == [
            f"id={i}" for i in ids[:3]]
        assert peek.stdout.splitlines()[1] == "alpha 0"
        backlog = admin.peek("beta")
        assert [m["encoding"] for m in backlog] == ["utf-8", "utf-8", "base64"]
        assert admin.stats()["topics"] == before  # peeking changed nothing

        purge_b = bbmq(broker, "purge", "alpha", "b")
        assert purge_b.returncode == 0 and "purged 5 " in purge_b.stdout
        assert group_stats(admin, "alpha", "b")["ready"] == 0
        assert group_stats(admin, "alpha", "a")["ready"] == 5
        assert "purged 3 " in bbmq(broker, "purge", "beta").stdout
        assert admin.stats()["topics"]["beta"]["backlog"] == 0

        deleted = bbmq(broker, "group", "delete", "alpha", "b")
        assert deleted.returncode == 0, deleted.stderr
        assert list(admin.stats()["topics"]["alpha"]["groups"]) == ["a"]
        with pytest.raises(BrokerError):  # its consumer was told, then disconnected
            group_b.fetch(timeout=5)

        no_topic = bbmq(broker, "purge", "nosuch")
        assert no_topic.returncode == 1 and "bbmq topics" in no_topic.stderr
        no_group = bbmq(broker, "group", "delete", "alpha", "zzz")
        assert no_group.returncode == 1 and "has no group 'zzz'" in no_group.stderr
        bad_name = bbmq(broker, "purge", "no spaces allowed")
        assert bad_name.returncode == 2 and "invalid" in bad_name.stderr


def test_admin_commands_say_what_to_do_when_no_broker_answers() -> None:
    result = run_bbmq("stats", "--port", str(free_port()))

    assert result.returncode == 1
    assert "is a broker running there" in result.stderr


def test_dlq_replay_and_purge_end_to_end(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", max_attempts=1) as broker, \
            Consumer("jobs", "default", "127.0.0.1", broker.port) as consumer, \
            Consumer("jobs", "audit", "127.0.0.1", broker.port) as auditor, \
            Producer("jobs", "127.0.0.1", broker.port) as producer, \
            Admin("127.0.0.1", broker.port) as admin:
        [poison] = producer.publish_many(["poison"])
        audited = auditor.fetch(timeout=5)  # another group, which copes with the message
        assert audited is not None and audited.id == poison
        auditor.ack(audited)
        first = consumer.fetch(timeout=5)
        assert first is not None and first.id == poison
        consumer.nack(first, reason="boom")
        wait_for(lambda: "jobs.dlq" in admin.topics(), "the dead letter")
        [dead] = admin.peek("jobs.dlq")
        assert dead["body"] == "poison"
        assert dead["meta"]["reason"] == "boom" and dead["meta"]["original_id"] == str(poison)

        replay = bbmq(broker, "dlq", "replay", "jobs")

        assert replay.returncode == 0, replay.stderr
        assert "from jobs.dlq to the groups of jobs that gave up" in replay.stdout
        again = consumer.fetch(timeout=5)
        assert again is not None and again.body == b"poison" and again.attempt == 1
        assert again.id != poison
        consumer.ack(again)
        audit = group_stats(admin, "jobs", "audit")  # the replay went to 'default' alone
        assert (audit["ready"], audit["inflight"], audit["acked"]) == (0, 0, 1)
        mistyped = bbmq(broker, "dlq", "replay", "jobs", "--group", "nosuch")
        assert mistyped.returncode == 1 and "no group 'nosuch'" in mistyped.stderr
        assert sorted(admin.stats()["topics"]["jobs.dlq"]["groups"]) == ["default"]
        dlq_group = group_stats(admin, "jobs.dlq", "default")
        assert (dlq_group["ready"], dlq_group["inflight"], dlq_group["acked"]) == (0, 0, 1)

        producer.publish("also poison")
        doomed = consumer.fetch(timeout=5)
        assert doomed is not None
        consumer.nack(doomed)
        wait_for(lambda: group_stats(admin, "jobs.dlq", "default")["ready"] == 1,
                 "the second dead letter")
        purged = bbmq(broker, "dlq", "purge", "jobs")
        assert purged.returncode == 0 and "purged 1 dead letters" in purged.stdout
        assert group_stats(admin, "jobs.dlq", "default")["ready"] == 0


def test_the_metrics_page_counts_a_known_workload(tmp_path: Path) -> None:
    metrics_port = free_port()
    with BrokerProcess(tmp_path / "data", metrics_port=metrics_port) as broker, \
            Consumer("metered", "g", "127.0.0.1", broker.port) as consumer, \
            Admin("127.0.0.1", broker.port) as admin:
        with Producer("metered", "127.0.0.1", broker.port) as producer:
            producer.publish_many([f"m{n}" for n in range(10)])
        for _ in range(3):
            message = consumer.fetch(timeout=5)
            assert message is not None
            consumer.ack(message)
        wait_for(lambda: group_stats(admin, "metered", "g")["acked"] == 3, "the 3 acks")

        url = f"http://127.0.0.1:{metrics_port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            page = response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as not_found:
            urllib.request.urlopen(f"{url}/elsewhere", timeout=5)
        assert not_found.value.code == 404

    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(page) for sample in family.samples}
    topic = (("topic", "metered"),)
    group = (("group", "g"), ("topic", "metered"))
    assert samples[("bbmq_messages_published_total", topic)] == 10
    assert samples[("bbmq_messages_delivered_total", topic)] == 3
    assert samples[("bbmq_messages_acked_total", topic)] == 3
    assert samples[("bbmq_messages_redelivered_total", topic)] == 0
    assert samples[("bbmq_group_ready_messages", group)] == 7
    assert samples[("bbmq_group_inflight_messages", group)] == 0
    assert samples[("bbmq_group_consumers", group)] == 1
    assert samples[("bbmq_connections", ())] >= 2
    assert samples[("bbmq_store_commit_seconds_count", ())] >= 1
