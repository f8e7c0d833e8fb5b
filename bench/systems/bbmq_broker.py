"""bbmq, started by the bench as ``python -m bbmq server run`` on a fresh data dir and port.

One System per store: ``sqlite`` (the default store, in the data dir),
``mysql`` (a fresh database on the local MariaDB, dropped afterwards) and
``memory`` (``memory://``, not durable: it stands for bbmq in the transient
phase and shows what the broker costs without its store).  The broker runs as
a real subprocess so it has its own GIL and its own PID for RSS and py-spy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pymysql

from bbmq import client
from bbmq._version import __version__
from bench.systems.base import (
    HOST,
    System,
    Unavailable,
    free_port,
    terminate,
    unique,
    wait_until,
)

#: The repository root, so ``python -m bbmq`` imports this tree's bbmq.
ROOT = Path(__file__).resolve().parents[2]
MYSQL = {"host": HOST, "port": 3306, "user": "root", "password": ""}


class BbmqProducer:
    def __init__(self, topic: str, port: int) -> None:
        self._producer = client.Producer(topic, HOST, port).connect()

    def send(self, bodies: Sequence[bytes], window: int) -> None:
        if len(bodies) == 1:
            self._producer.publish(bodies[0])
        else:
            self._producer.publish_many(bodies, window=window)

    def close(self) -> None:
        self._producer.close()


class BbmqConsumer:
    """Iterates the client's Consumer (prefetch 100) and acks each message on its own."""

    def __init__(self, topic: str, port: int, prefetch: int = 100) -> None:
        self._consumer = client.Consumer(topic, "bench", HOST, port, prefetch=prefetch).connect()
        self._stream: Iterator[client.Message] | None = None

    def receive(self, count: int, deadline: float, handle: Callable[[bytes], None]) -> int:
        # The client's iterator blocks without a timeout; the phase's child process is
        # killed at its time limit, which bounds this loop in time as well as in count.
        if self._stream is None:
            self._stream = iter(self._consumer)
        taken = 0
        while taken < count and time.monotonic() < deadline:
            message = next(self._stream)
            handle(message.body)
            self._consumer.ack(message)
            taken += 1
        return taken

    def close(self) -> None:
        self._consumer.close()


class BbmqSystem(System):
    """A bbmq broker subprocess with one store kind."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.name = f"bbmq-{store}"
        self.durable = store != "memory"
        self.transient = store == "memory"
        self.durability = {
            "sqlite": "yes: SQLite WAL, synchronous=FULL, committed before the ack",
            "mysql": "yes: InnoDB commit before the ack (fsync per commit if the server's "
                     "innodb_flush_log_at_trx_commit=1)",
            "memory": "no: memory:// keeps nothing on disk (transient)",
        }[store]
        self.method = ("bbmq.client: publish() per message, publish_many(window=W); Consumer "
                       "iterator with prefetch 100, ack() per message")
        self.port = 0
        self.data_dir: Path | None = None
        self.database: str | None = None
        self.mysql_version = ""
        self.extra_args: list[str] = []  # more server flags, e.g. for the scale figures
        self.process: subprocess.Popen[bytes] | None = None

    # -- the broker process -------------------------------------------------------------------

    def start(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        if self.store == "mysql":
            self.database = self._create_database()
        self.launch()

    def store_url(self) -> str:
        if self.store == "mysql":
            return f"mysql://root@{HOST}:3306/{self.database}"
        return {"sqlite": "", "memory": "memory://"}[self.store]

    def launch(self, timeout: float = 600.0) -> float:
        """Start the broker on the existing data dir; return seconds until it answers PING.

        Also used to restart after a backlog was loaded, where the wait is the
        recovery time, hence the generous timeout.
        """
        assert self.data_dir is not None
        self.port = self.port or free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        argv = [sys.executable, "-m", "bbmq", "server", "run", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--store", self.store_url(),
                "--idle-timeout", "0",
                # The dashboard stays on, as it is by default, on a port of its own.
                "--http-port", str(free_port()), *self.extra_args]
        started = time.monotonic()
        with open(self.data_dir / "broker.log", "ab") as log:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise Unavailable(f"broker exited with {self.process.returncode}: "
                                  f"{self.log_tail()}")
            try:
                client.ping(HOST, self.port, timeout=0.5)
            except client.BrokerError:
                return False
            return True

        wait_until(answers, timeout, f"{self.name} on port {self.port}")
        return time.monotonic() - started

    def halt(self, timeout: float = 60.0) -> None:
        """Stop the broker process (SIGTERM, then SIGKILL), keeping its data."""
        if self.process is not None:
            terminate(self.process, timeout)
        self.process = None

    def stop(self) -> None:
        self.halt()
        if self.database is not None:
            self._drop_database(self.database)
            self.database = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def log_tail(self, lines: int = 5) -> str:
        if self.data_dir is None:
            return ""
        try:
            text = (self.data_dir / "broker.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def log_text(self) -> str:
        assert self.data_dir is not None
        return (self.data_dir / "broker.log").read_text(errors="replace")

    def server_pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def version(self) -> str:
        store = f"MariaDB {self.mysql_version}" if self.mysql_version else self.store
        return f"bbmq {__version__} ({store})"

    # -- MySQL database per run ---------------------------------------------------------------

    def _mysql(self) -> Any:
        try:
            return pymysql.connect(**MYSQL, autocommit=True, connect_timeout=3)
        except pymysql.MySQLError as error:
            raise Unavailable(f"MySQL/MariaDB on {HOST}:3306 does not answer: {error}") from None

    def _create_database(self) -> str:
        name = unique("bbmq_bench_")
        connection = self._mysql()
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
            cursor.execute("SELECT VERSION()")
            self.mysql_version = cursor.fetchone()[0]
        connection.close()
        return name

    def _drop_database(self, name: str) -> None:
        connection = self._mysql()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        connection.close()

    # -- queues and clients -------------------------------------------------------------------

    def new_queue(self, durable: bool) -> str:
        return unique("bench.")  # topics and groups are created on first use

    def producer(self, queue: str, durable: bool) -> BbmqProducer:
        return BbmqProducer(queue, self.port)

    def consumer(self, queue: str, durable: bool) -> BbmqConsumer:
        return BbmqConsumer(queue, self.port)


def recovery_lines(log: str) -> list[str]:
    """The broker's "recovering N messages: P%" progress lines, for the backlog report."""
    return re.findall(r"recover(?:ing|ed) \d+ messages.*", log)
