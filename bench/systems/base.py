"""The interface every system adapter implements, and helpers for servers the bench runs.

A phase never knows which broker it drives: it asks a :class:`System` for a
queue, a :class:`Producer` and a :class:`Consumer` and calls ``send`` and
``receive``.  That is what makes the figures comparable, and it keeps each
client library's quirks (pika's confirm callbacks, nats-py's event loop,
greenstalk's one-command-at-a-time) inside one adapter module.

Phases run in forked child processes, so a System holds only plain data and
server subprocess handles between calls: no open connection may leak into a
child, which would then share a socket with its parent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

HOST = "127.0.0.1"


class Unavailable(Exception):
    """The system cannot be benchmarked here (not installed, not answering); says why."""


class Producer(Protocol):
    def send(self, bodies: Sequence[bytes], window: int) -> None:
        """Publish ``bodies`` in order with at most ``window`` unconfirmed.

        Returns once every message is confirmed.  ``send([b], 1)`` is a
        confirmed one-at-a-time publish, ``send(batch, len(batch))`` a batch,
        and a longer list with a smaller window a sliding window.
        """

    def close(self) -> None: ...


class Consumer(Protocol):
    def receive(self, count: int, deadline: float, handle: Callable[[bytes], None]) -> int:
        """Take up to ``count`` messages, acking each one, until ``deadline`` (monotonic).

        Calls ``handle(body)`` per message and returns how many it took.
        """

    def close(self) -> None: ...


class System(ABC):
    """One broker configuration: its server (if the bench runs it) and its clients."""

    name: str
    #: What a confirmed "durable" publish means for this system (shown in the report).
    durability: str
    #: How the adapter maps the workload onto the client library (shown in the report).
    method: str
    #: Whether the durable phases are really durable here (memory:// is not).
    durable: bool = True
    #: Whether the system has a transient mode for the transient phase.
    transient: bool = True

    @abstractmethod
    def start(self) -> None:
        """Start or reach the server; raise :class:`Unavailable` with the reason if we cannot."""

    def stop(self) -> None:  # noqa: B027 (optional: peers the bench only reaches need none)
        """Stop whatever :meth:`start` started."""

    @abstractmethod
    def version(self) -> str:
        """Server (and client library) versions, for the report."""

    @abstractmethod
    def new_queue(self, durable: bool) -> str:
        """A fresh, empty queue/topic/stream for one measurement; returns its name."""

    def drop_queue(self, queue: str, durable: bool) -> None:  # noqa: B027 (optional)
        """Free what :meth:`new_queue` made (best effort)."""

    @abstractmethod
    def producer(self, queue: str, durable: bool) -> Producer: ...

    @abstractmethod
    def consumer(self, queue: str, durable: bool) -> Consumer:
        """A connected consumer: messages published after this returns reach it."""

    def server_pid(self) -> int | None:
        """The server process id when the bench runs the server (for RSS and profiling)."""
        return None


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; return the seconds it took or raise Unavailable."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.02)
    raise Unavailable(f"{what} not ready within {timeout:g} s")


class ServerProcess:
    """A server binary the bench starts on a free port in a temporary directory, and stops."""

    def __init__(self, name: str, argv: Callable[[int, Path], list[str]]) -> None:
        self.name = name
        self._argv = argv
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.port = free_port()
        log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - the child keeps it open
        with log:
            self.process = subprocess.Popen(self._argv(self.port, self.dir), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(lambda: self._alive() and port_open(self.port, 0.2), timeout,
                   f"{self.name} on port {self.port}")

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise Unavailable(f"{self.name} exited with {self.process.returncode}: "
                              f"{self.log_tail()}")
        return True

    def log_tail(self, lines: int = 5) -> str:
        if self.dir is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self.dir / "server.log").read_text(errors="replace")
            return " | ".join(text.strip().splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None:
            terminate(self.process, timeout)
        self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM and wait up to ``timeout`` s for it to drain; SIGKILL if it does not."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def unique(prefix: str) -> str:
    """A name no earlier measurement used, so runs never see each other's messages."""
    return f"{prefix}{os.getpid()}x{time.monotonic_ns() % 10**12}"
