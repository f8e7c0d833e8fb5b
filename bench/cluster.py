"""Cluster figures (``--cluster``): 1, 2 and 3 brokers over one MariaDB, and failover times.

- Scale-out: TOPICS topics, one producer *process* per topic (window 1,000), each with
  the broker list rotated so that topic i first reaches broker i mod k: the topics spread
  over the k brokers (the lease table is read back to show the spread).  Aggregate msg/s
  of durable publish from the common start to the last confirm; then one consumer
  process per topic (prefetch 100, one ack per message) takes them all back: aggregate
  msg/s to the last message.  A fresh database per broker count, ``runs`` runs each.
- Failover: three brokers, one topic, four publisher threads (one confirmed publish at a
  time each, through ``Producer(brokers=[...])``).  ``kill -9`` the topic's owner FAILOVERS
  times (restarting it each time), then SIGSTOP it FAILOVERS times (SIGCONT once confirms
  come from elsewhere).  Failover time = first confirm after the fault minus the last one
  before it.  Losses and duplicates are counted in the database at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pymysql

from bbmq.client import BrokerError, Consumer, Producer
from bbmq.testing import BrokerProcess, free_port, wait_for
from bench import report
from bench.phases import WINDOW, Settings, summarize
from bench.procs import Progress, Shared, Target, run_children
from bench.scale import aggregate
from bench.systems.base import HOST, unique

TOPICS = 6
BROKER_COUNTS = (1, 2, 3)
DEFAULT_FAILOVERS = 20
TTL_MS = 5000
MYSQL = {"host": HOST, "port": 3306, "user": "root", "password": ""}


def _mysql(database: str | None = None) -> Any:
    return pymysql.connect(**MYSQL, database=database, autocommit=True, connect_timeout=3)


class BenchCluster:
    """``size`` cluster brokers on a fresh database of the local MariaDB."""

    def __init__(self, size: int, ttl_ms: int = TTL_MS) -> None:
        self.database = unique("bbmq_bench_cluster_")
        self.base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        self.url = f"mysql://root@{HOST}:3306/{self.database}"
        self.brokers = []
        for number in range(size):
            port = free_port()
            self.brokers.append(BrokerProcess(
                self.base / f"broker{number}", port=port, store=self.url, cluster="true",
                advertise=f"{HOST}:{port}", lease_ttl_ms=str(ttl_ms), idle_timeout="0"))

    @property
    def addresses(self) -> list[str]:
        return [f"{HOST}:{broker.port}" for broker in self.brokers]

    def rotated(self, index: int) -> list[str]:
        """The broker list starting at broker ``index`` mod size."""
        start = index % len(self.brokers)
        return self.addresses[start:] + self.addresses[:start]

    def __enter__(self) -> BenchCluster:
        with contextlib.closing(_mysql()) as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{self.database}`")
        for broker in self.brokers:
            broker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for broker in self.brokers:
            with contextlib.suppress(Exception):
                os.kill(broker.pid, signal.SIGCONT)
            broker.kill()
        with contextlib.closing(_mysql()) as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{self.database}`")

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(_mysql(self.database)) as conn, conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def owners(self) -> dict[str, str]:
        """topic -> advertised address of its current owner."""
        rows = self.query("SELECT l.topic, b.address FROM bbmq_leases l JOIN bbmq_brokers b "
                          "ON b.id = l.owner WHERE l.lease_until > NOW(6)")
        return {str(topic): str(address) for topic, address in rows}

    def owner(self, topic: str) -> BrokerProcess | None:
        address = self.owners().get(topic)
        for broker in self.brokers:
            if address == f"{HOST}:{broker.port}" and broker.process is not None \
                    and broker.process.poll() is None:
                return broker
        return None

    def stored_copies(self, topic: str) -> Counter[bytes]:
        rows = self.query("SELECT body FROM bbmq_messages WHERE topic = %s", (topic,))
        return Counter(bytes(body) for (body,) in rows)


# -- scale-out ----------------------------------------------------------------------------

def _cluster_publisher(*, brokers: list[str], topic: str, total: int, size: int,
                       shared: Shared) -> dict[str, Any]:
    producer = Producer(topic, brokers=brokers, timeout=60, retry_for=120)
    producer.publish(b"warm-up")  # connected to the owner before the start line
    body = b"x" * size
    shared.ready()
    started = time.perf_counter()
    done = 0
    while done < total and time.monotonic() < shared.deadline:
        count = min(10 * WINDOW, total - done)
        producer.publish_many([body] * count, window=WINDOW)
        done += count
        shared.add(count)
    finished = time.perf_counter()
    producer.close()
    return {"count": done, "started": started, "finished": finished}


def _cluster_consumer(*, brokers: list[str], topic: str, total: int,
                      shared: Shared) -> dict[str, Any]:
    consumer = Consumer(topic, "bench", brokers=brokers, timeout=60, prefetch=100)
    first = consumer.fetch(timeout=30)  # connected (and served) before the start line
    taken = 0 if first is None else 1
    if first is not None:
        consumer.ack(first)
    shared.ready()
    started = time.perf_counter()
    while taken < total and time.monotonic() < shared.deadline:
        message = consumer.fetch(timeout=10)
        if message is None:
            break
        consumer.ack(message)
        taken += 1
        if taken % 1000 == 0:
            shared.add(1000)
    finished = time.perf_counter()
    consumer.close()
    return {"count": taken, "started": started, "finished": finished}


def scale_out(size: int, settings: Settings, runs: int,
              out: report.JsonLines) -> dict[str, list[float]]:
    """Aggregate publish and consume msg/s with ``size`` brokers, ``runs`` times."""
    rates: dict[str, list[float]] = {"publish": [], "consume": []}
    share = settings.messages // TOPICS
    for run in range(1, runs + 1):
        with BenchCluster(size) as cluster:
            topics = [f"bench.cluster.{run}.{index}" for index in range(TOPICS)]
            for name, target in (("publish", _cluster_publisher), ("consume", _cluster_consumer)):
                children: list[Target] = []
                for index, topic in enumerate(topics):
                    options: dict[str, Any] = {"brokers": cluster.rotated(index),
                                               "topic": topic, "total": share}
                    if name == "publish":
                        options["size"] = settings.size
                    children.append((target, options))
                label = f"[cluster {size} broker(s)] {name} run {run}/{runs}"
                progress = Progress(label, share * TOPICS)
                outcome = run_children(children, settings.time_limit, progress)
                if outcome.errors or outcome.killed or None in outcome.results:
                    progress.finish(f"failed: {'; '.join(outcome.errors) or 'time limit'}")
                    break
                count, seconds = aggregate(outcome.results)
                spread = Counter(cluster.owners().get(topic, "none") for topic in topics)
                rates[name].append(count / seconds)
                progress.finish(f"{count / seconds:,.0f} msg/s; topics per broker "
                                f"{sorted(spread.values(), reverse=True)}")
                out.write({"kind": "cluster", "brokers": size, "phase": name, "run": run,
                           "count": count, "seconds": seconds, "spread": dict(spread)})
    return rates


# -- failover -----------------------------------------------------------------------------

class Storm:
    """Publisher threads with confirms, remembering when each confirm came."""

    def __init__(self, brokers: list[str], topic: str, threads: int = 4) -> None:
        self.topic = topic
        self.times: list[float] = []
        self.bodies: set[bytes] = set()
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(brokers, n), daemon=True)
                         for n in range(threads)]

    def _run(self, brokers: list[str], number: int) -> None:
        producer = Producer(self.topic, brokers=brokers, timeout=3, retry_for=120)
        sequence = 0
        while not self._stop.is_set():
            body = b"%d-%d" % (number, sequence)
            sequence += 1
            try:
                producer.publish(body)
            except (BrokerError, OSError):
                with self._lock:
                    self.errors += 1
                continue
            with self._lock:
                self.times.append(time.monotonic())
                self.bodies.add(body)
        with contextlib.suppress(BrokerError, OSError):
            producer.close()

    def confirms_after(self, moment: float) -> int:
        with self._lock:
            return sum(1 for t in self.times[-2000:] if t > moment)

    def gap(self, moment: float, timeout: float = 120.0) -> float:
        wait_for(lambda: self.confirms_after(moment), "a confirm after the fault", timeout)
        with self._lock:
            before = max((t for t in self.times if t <= moment), default=moment)
            after = min(t for t in self.times if t > moment)
        return after - before

    def __enter__(self) -> Storm:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(150)


def failovers(count: int) -> dict[str, Any]:
    """``count`` kills, then ``count`` pauses, of the owner of one topic of three brokers."""
    topic = "bench.failover"
    # The publishers' "reconnecting to resend" warnings are the failovers being measured.
    logging.getLogger("bbmq.client").setLevel(logging.ERROR)
    kills: list[float] = []
    pauses: list[float] = []
    with BenchCluster(3) as cluster, Storm(cluster.addresses, topic) as storm:
        for kind, gaps in (("kill -9", kills), ("SIGSTOP", pauses)):
            progress = Progress(f"[cluster 3 brokers] {kind} of the owner", count)
            for done in range(count):
                floor = time.monotonic()
                wait_for(lambda floor=floor: storm.confirms_after(floor) >= 20,
                         "confirms before the next fault", 120)
                owner = wait_for(lambda: cluster.owner(topic), "a live owner", 60)
                fault = time.monotonic()
                if kind == "kill -9":
                    owner.kill()
                    gaps.append(storm.gap(fault))
                    owner.start()
                else:
                    os.kill(owner.pid, signal.SIGSTOP)
                    try:
                        gaps.append(storm.gap(fault))
                    finally:
                        os.kill(owner.pid, signal.SIGCONT)
                progress.update(done + 1)
            progress.finish(f"p50 {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s")
        confirmed = set(storm.bodies)
        copies = cluster.stored_copies(topic)
    return {"kills": kills, "pauses": pauses, "confirmed": len(confirmed),
            "missing": sum(1 for body in confirmed if copies[body] == 0),
            "duplicates": sum(1 for n in copies.values() if n > 1), "errors": storm.errors}


# -- the mode -----------------------------------------------------------------------------

def _rows(scale: dict[int, dict[str, list[float]]]) -> list[list[str]]:
    rows = [["brokers", "durable publish msg/s", "vs 1 broker", "consume msg/s", "vs 1 broker"]]
    base = {name: summarize(scale[1][name])[0] if scale.get(1, {}).get(name) else 0.0
            for name in ("publish", "consume")}
    for size, rates in sorted(scale.items()):
        row = [str(size)]
        for name in ("publish", "consume"):
            if not rates[name]:
                row += ["failed", "—"]
                continue
            median, low, high = summarize(rates[name])
            spread = f" ({report.number(low)}-{report.number(high)})" if len(rates[name]) > 1 \
                else ""
            row += [f"{report.number(median)}{spread}",
                    f"{median / base[name]:.2f}x" if base[name] else "—"]
        rows.append(row)
    return rows


def _failover_rows(figures: dict[str, Any]) -> list[list[str]]:
    rows = [["fault", "rounds", "p50", "p90", "max"]]
    for key, label in (("kills", "kill -9 of the owner"),
                       ("pauses", f"SIGSTOP of the owner (TTL {TTL_MS / 1000:g} s)")):
        gaps = sorted(figures[key])
        if gaps:
            rows.append([label, str(len(gaps)), f"{statistics.median(gaps):.2f} s",
                         f"{gaps[min(len(gaps) - 1, int(0.9 * len(gaps)))]:.2f} s",
                         f"{gaps[-1]:.2f} s"])
    return rows


def run(args: argparse.Namespace, settings: Settings, runs: int) -> int:
    count = args.failovers or (3 if args.quick else DEFAULT_FAILOVERS)
    out = report.JsonLines(args.json_out)
    info = report.machine()
    scale = {size: scale_out(size, settings, runs, out) for size in BROKER_COUNTS}
    figures = failovers(count)
    out.write({"kind": "cluster-failover", **figures})
    table, failover_table = _rows(scale), _failover_rows(figures)
    losses = (f"{figures['confirmed']:,} confirmed publishes during the faults: "
              f"{figures['missing']} missing, {figures['duplicates']} stored twice, "
              f"{figures['errors']} client errors.")
    print()
    print(report.text_table(table))
    print(report.text_table(failover_table))
    print(losses)
    if args.markdown:
        label = "quick smoke run (not representative)" if args.quick else "full run"
        body = "\n".join([
            f"## Cluster: 1, 2, 3 brokers over one MariaDB, and failover: {label}", "",
            f"Command: `python -m bench {' '.join(args.raw_argv)}`; N = {settings.messages:,} "
            f"messages of {settings.size} bytes over {TOPICS} topics, {runs} run(s) per "
            f"broker count; {count} kills and {count} pauses.", "",
            *report.machine_lines(info, {}), "", report.markdown_table(table), "",
            report.markdown_table(failover_table), "", losses, "",
            (__doc__ or "").split("\n\n", 1)[1].strip()])
        report.update_section(args.markdown, "cluster", body)
    out.close()
    return 0

