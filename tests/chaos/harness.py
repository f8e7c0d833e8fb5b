"""What the chaos tests share: a publish storm that remembers every ack, a drain that
reads everything back, and the figures each test reports.

The claim under test is always the same: every message a publisher got an ack for
is consumed afterwards, whatever happened to the broker or its store in between.
Publishers here retry by themselves (a fresh message each time), so a publish that
was refused or whose ack was lost is simply not counted as acknowledged; duplicates
(stored, ack lost) are allowed by at-least-once delivery and only counted.

Sizes: CI runs the short versions; ``BBMQ_CHAOS_ROUNDS`` (e.g. 100) asks for the long
ones the issue describes, and scales every storm with it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bbmq.client import BrokerError, Consumer, Producer

#: Rounds of kill -9 in CI; BBMQ_CHAOS_ROUNDS=100 is the issue's long version.
CI_ROUNDS = 10


def chaos_rounds() -> int:
    return int(os.environ.get("BBMQ_CHAOS_ROUNDS") or CI_ROUNDS)


def long_run() -> bool:
    """True when the long versions were asked for (more rounds than CI runs)."""
    return chaos_rounds() > CI_ROUNDS


#: Figures reported by the tests, printed at the end of the run (see conftest).
REPORT: list[str] = []


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class StormFigures:
    acked: dict[bytes, int] = field(default_factory=dict)  # body -> id of its ack
    attempts: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # error code -> count
    waits_s: list[float] = field(default_factory=list)  # every publish, acked or refused
    refused_waits_s: list[float] = field(default_factory=list)
    error_texts: dict[str, str] = field(default_factory=dict)  # code -> its first text

    @property
    def worst_wait_s(self) -> float:
        return max(self.waits_s, default=0.0)


class PublishStorm:
    """``threads`` publishers hammering one topic until stopped.

    Each publish is a single attempt (``retry_for=0``): it returns an id or raises,
    and its wait (send to answer) is recorded either way; the thread then moves on to
    a fresh body. Bodies are unique, so the drain can tell which acks came back.
    """

    def __init__(self, port: int, topic: str, *, threads: int = 4, timeout_s: float = 60.0,
                 body_size: int = 64) -> None:
        self.port = port
        self.topic = topic
        self.timeout_s = timeout_s
        self.padding = b"." * max(0, body_size - 24)
        self.figures = StormFigures()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True,
                                          name=f"storm-{n}") for n in range(threads)]

    def acked_count(self) -> int:
        with self._lock:
            return len(self.figures.acked)

    def refused_count(self) -> int:
        with self._lock:
            return sum(self.figures.refusals.values())

    def _run(self, number: int) -> None:
        producer = Producer(self.topic, port=self.port, timeout=self.timeout_s, retry_for=0)
        sequence = 0
        while not self._stop.is_set():
            body = b"%d-%d-" % (number, sequence) + self.padding
            sequence += 1
            started = time.monotonic()
            try:
                message_id = producer.publish(body)
            except BrokerError as error:
                outcome: int | str = error.code
                with self._lock:
                    self.figures.error_texts.setdefault(error.code, str(error))
            except OSError as error:  # refused while the broker restarts
                outcome = type(error).__name__
            else:
                outcome = message_id
            waited = time.monotonic() - started
            with self._lock:
                self.figures.attempts += 1
                self.figures.waits_s.append(waited)
                if isinstance(outcome, int):
                    self.figures.acked[body] = outcome
                else:
                    self.figures.refusals[outcome] = self.figures.refusals.get(outcome, 0) + 1
                    self.figures.refused_waits_s.append(waited)
            if not isinstance(outcome, int):
                self._stop.wait(0.02)  # pacing of a client that backs off, not a sync
        with contextlib.suppress(BrokerError, OSError):
            producer.close()

    def start(self) -> PublishStorm:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> StormFigures:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 10)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        return self.figures


def acked_at_least(publishers: PublishStorm, floor: int) -> bool:
    """For wait_for: the storm has had ``floor`` acks in all."""
    return publishers.acked_count() >= floor


@contextmanager
def storm(port: int, topic: str, **options: object) -> Iterator[PublishStorm]:
    running = PublishStorm(port, topic, **options).start()  # type: ignore[arg-type]
    try:
        yield running
    finally:
        running.stop()


def drain(port: int, topic: str, *, quiet_s: float = 2.0) -> list[bytes]:
    """Every message of ``topic`` the default group still has, acked as it is read."""
    bodies: list[bytes] = []
    with Consumer(topic, port=port, timeout=30, prefetch=500) as consumer:
        while (message := consumer.fetch(timeout=quiet_s)) is not None:
            bodies.append(message.body)
            consumer.ack(message)
    return bodies


def missing_acked(figures: StormFigures, consumed: list[bytes]) -> list[bytes]:
    seen = set(consumed)
    return [body for body in figures.acked if body not in seen]


def report(title: str, **figures: object) -> str:
    """Record one test's figures for the end-of-run summary, and return the line."""
    parts = []
    for name, value in figures.items():
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        parts.append(f"{name}={text}")
    line = f"{title}: " + " ".join(parts)
    REPORT.append(line)
    print(line)
    return line


def wait_summary(waits_s: list[float]) -> dict[str, float]:
    return {
        "p50_ms": 1000 * percentile(waits_s, 0.50),
        "p99_ms": 1000 * percentile(waits_s, 0.99),
        "worst_wait_s": max(waits_s, default=0.0),
        "mean_ms": 1000 * statistics.fmean(waits_s) if waits_s else 0.0,
    }
