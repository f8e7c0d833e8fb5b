"""The workload: what each phase sends and receives, and how it is timed.

Each phase is a small function that runs one measurement of one system and
returns a :class:`Measurement`.  The client work happens in child processes
(:mod:`bench.procs`); the functions named ``publisher``, ``consume_child`` ...
below are those children's bodies.  Every loop stops at a message count and
at the measurement's deadline, whichever comes first.

Timing: throughput is messages over the seconds between the start line and
the last confirm (publish) or the last message taken (consume).  Latency
takes the publisher's ``perf_counter_ns`` written into the body and the
consumer's on receipt: both read CLOCK_MONOTONIC on the same machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.procs import Outcome, Progress, Shared, Target, run_children
from bench.systems.base import Producer, System

WINDOW = 1000
BATCH = 100
#: Messages per ``send`` call in window mode.  Bounded so progress and deadlines are
#: checked; each call drains its window at the end, the same for every system.
WINDOW_CHUNK = 20 * WINDOW
STAMP = 8  # bytes of perf_counter_ns at the start of a latency body


@dataclass(frozen=True)
class Settings:
    """The workload's knobs (the command line sets the first three)."""

    messages: int = 50_000
    size: int = 100
    time_limit: float = 120.0
    latency_rate: int = 1000
    latency_seconds: float = 5.0


@dataclass
class Measurement:
    """One run of one phase on one system."""

    values: dict[str, float]  # metric -> value: "msg/s", or "p50"/"p99"/"p99.9" in µs
    count: int
    seconds: float
    complete: bool
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Phase:
    """A named measurement; ``run`` measures one system once."""

    name: str
    title: str
    run: Callable[[System, Settings, Progress], Measurement]
    durable: bool = True
    #: The metrics this phase reports; throughput phases report "msg/s".
    metrics: tuple[str, ...] = ("msg/s",)


# -- child bodies ------------------------------------------------------------------------------

def _publish_loop(producer: Producer, body: bytes, total: int, *, chunk: int, window: int,
                  shared: Shared, track: bool = True) -> int:
    done = 0
    while done < total and time.monotonic() < shared.deadline:
        count = min(chunk, total - done)
        producer.send([body] * count, window)
        done += count
        if track:
            shared.add(count)
    return done


def publisher(*, system: System, queue: str, durable: bool, total: int, size: int,
              chunk: int, window: int, shared: Shared, track: bool = True) -> dict[str, Any]:
    """Publish ``total`` messages in ``send`` calls of ``chunk`` with ``window`` unconfirmed.

    ``track=False`` leaves the progress line to a consumer running beside it.
    """
    producer = system.producer(queue, durable)
    body = b"x" * size
    shared.ready()
    started = time.perf_counter()
    done = _publish_loop(producer, body, total, chunk=chunk, window=window, shared=shared,
                         track=track)
    finished = time.perf_counter()
    producer.close()
    return {"count": done, "started": started, "finished": finished}


def _preloaded_consumer(*, system: System, queue: str, total: int, size: int,
                        shared: Shared) -> dict[str, Any]:
    """Load ``total`` messages (untimed), then time taking and acking them."""
    consumer = system.consumer(queue, True)
    producer = system.producer(queue, True)
    loaded = _publish_loop(producer, b"x" * size, total, chunk=WINDOW_CHUNK, window=WINDOW,
                           shared=shared)
    producer.close()
    shared.reset()
    shared.ready()
    taken = 0

    def count(_body: bytes) -> None:
        nonlocal taken
        taken += 1
        if not taken % 1000:
            shared.add(1000)

    started = time.perf_counter()
    taken = consumer.receive(loaded, shared.deadline, count)
    finished = time.perf_counter()
    consumer.close()
    return {"count": taken, "started": started, "finished": finished, "loaded": loaded}


def consume_child(*, system: System, queue: str, total: int, latencies: bool,
                  shared: Shared) -> dict[str, Any]:
    """Take ``total`` messages as they come, acking each; with ``latencies``, time them."""
    consumer = system.consumer(queue, True)
    samples: list[int] = []
    taken = 0

    def handle(body: bytes) -> None:
        nonlocal taken
        if latencies:
            samples.append(time.perf_counter_ns() - int.from_bytes(body[:STAMP], "big"))
        taken += 1
        if not taken % 1000:
            shared.add(1000)

    shared.ready()
    taken = consumer.receive(total, shared.deadline, handle)
    finished = time.perf_counter()
    consumer.close()
    result: dict[str, Any] = {"count": taken, "finished": finished}
    if latencies:
        result.update(percentiles(samples))
    return result


def _paced_publisher(*, system: System, queue: str, rate: int, total: int, size: int,
                     shared: Shared) -> dict[str, Any]:
    """Publish one confirmed message every 1/rate s, each stamped with its send time."""
    producer = system.producer(queue, True)
    padding = b"x" * max(0, size - STAMP)
    interval = 1.0 / rate
    shared.ready()
    started = next_at = time.perf_counter()
    sent = 0
    while sent < total and time.monotonic() < shared.deadline:
        wait = next_at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        elif wait < -10 * interval:
            next_at = time.perf_counter()  # fell behind: do not burst to catch up
        producer.send([time.perf_counter_ns().to_bytes(STAMP, "big") + padding], 1)
        sent += 1
        next_at += interval
    finished = time.perf_counter()
    producer.close()
    return {"count": sent, "started": started, "finished": finished}


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    """p50/p99/p99.9/max in microseconds (nearest rank)."""
    if not samples_ns:
        return {}
    ordered = sorted(samples_ns)
    last = len(ordered) - 1

    def rank(q: float) -> float:
        return ordered[min(last, int(q * len(ordered)))] / 1000

    return {"p50": rank(0.50), "p99": rank(0.99), "p99.9": rank(0.999),
            "max": ordered[last] / 1000}


# -- phases --------------------------------------------------------------------------------------

def _failed(outcome: Outcome) -> Measurement:
    """A child failed or was killed; a killed one still shows the rate it had reached."""
    if outcome.errors:
        return Measurement({}, outcome.progress, outcome.seconds, False,
                           note="; ".join(outcome.errors))
    rate = outcome.progress / outcome.seconds if outcome.seconds > 0 else 0.0
    return Measurement({"msg/s": rate}, outcome.progress, outcome.seconds, False,
                       note=f"incomplete: killed after {outcome.seconds:.0f} s at "
                            f"{outcome.progress:,} messages")


def _throughput(count: int, total: int, seconds: float) -> Measurement:
    complete = count >= total
    note = "" if complete else f"incomplete: {count:,} of {total:,} before the time limit"
    return Measurement({"msg/s": count / seconds if seconds > 0 else 0.0}, count, seconds,
                       complete, note)


def _publish_phase(total_of: Callable[[Settings], int], chunk: int, window: int,
                   durable: bool) -> Callable[[System, Settings, Progress], Measurement]:
    def run(system: System, settings: Settings, progress: Progress) -> Measurement:
        return _one_child(system, settings, progress, publisher, total_of(settings),
                          queue_durable=durable, chunk=chunk, window=window, durable=durable)

    return run


def _consume(system: System, settings: Settings, progress: Progress) -> Measurement:
    return _one_child(system, settings, progress, _preloaded_consumer, settings.messages,
                      queue_durable=True)


def _one_child(system: System, settings: Settings, progress: Progress,
               child: Callable[..., dict[str, Any]], total: int, *, queue_durable: bool,
               **options: Any) -> Measurement:
    """Throughput of one child process working ``total`` messages on a fresh queue."""
    progress.total = total
    queue = system.new_queue(queue_durable)
    try:
        arguments = {"system": system, "queue": queue, "total": total, "size": settings.size,
                     **options}
        outcome = run_children([(child, arguments)], settings.time_limit, progress)
    finally:
        system.drop_queue(queue, queue_durable)
    result = outcome.results[0]
    if result is None:
        return _failed(outcome)
    return _throughput(result["count"], total, result["finished"] - result["started"])


def _pubsub(system: System, settings: Settings, progress: Progress) -> Measurement:
    total = progress.total = settings.messages
    queue = system.new_queue(True)
    targets: list[Target] = [
        (consume_child, {"system": system, "queue": queue, "total": total, "latencies": False}),
        (publisher, {"system": system, "queue": queue, "durable": True, "total": total,
                     "size": settings.size, "chunk": WINDOW_CHUNK, "window": WINDOW,
                     "track": False}),
    ]
    try:
        outcome = run_children(targets, settings.time_limit, progress)
    finally:
        system.drop_queue(queue, True)
    consumed, published = outcome.results
    if consumed is None or published is None:
        return _failed(outcome)
    return _throughput(consumed["count"], total, consumed["finished"] - published["started"])


def _latency(system: System, settings: Settings, progress: Progress) -> Measurement:
    total = progress.total = int(settings.latency_rate * settings.latency_seconds)
    queue = system.new_queue(True)
    targets: list[Target] = [
        (consume_child, {"system": system, "queue": queue, "total": total, "latencies": True}),
        (_paced_publisher, {"system": system, "queue": queue, "rate": settings.latency_rate,
                            "total": total, "size": settings.size}),
    ]
    try:
        outcome = run_children(targets, settings.time_limit, progress)
    finally:
        system.drop_queue(queue, True)
    consumed, published = outcome.results
    if consumed is None or published is None or "p50" not in consumed:
        return _failed(outcome)
    rate = published["count"] / (published["finished"] - published["started"])
    values = {key: consumed[key] for key in ("p50", "p99", "p99.9", "max")}
    complete = consumed["count"] >= total
    note = "" if rate >= 0.95 * settings.latency_rate else (
        f"publisher reached only {rate:,.0f} msg/s (one confirmed publish at a time)")
    return Measurement(values, consumed["count"], published["finished"] - published["started"],
                       complete, note, {"rate": rate})


PHASES: dict[str, Phase] = {phase.name: phase for phase in (
    Phase("publish-one", "publish 1-at-a-time",
          _publish_phase(lambda s: max(1, s.messages // 10), 1, 1, True)),
    Phase("publish-batch", f"publish batch {BATCH}",
          _publish_phase(lambda s: s.messages, BATCH, BATCH, True)),
    Phase("publish-window", f"publish window {WINDOW:,}",
          _publish_phase(lambda s: s.messages, WINDOW_CHUNK, WINDOW, True)),
    Phase("consume", "consume + ack", _consume),
    Phase("pubsub", "publish + consume at once", _pubsub),
    Phase("latency", f"latency µs at {Settings().latency_rate:,}/s", _latency,
          metrics=("p50", "p99", "p99.9")),
    Phase("transient", f"transient publish window {WINDOW:,}",
          _publish_phase(lambda s: s.messages, WINDOW_CHUNK, WINDOW, False), durable=False),
)}


def summarize(values: list[float]) -> tuple[float, float, float]:
    """Median, min and max of a metric over runs."""
    return statistics.median(values), min(values), max(values)
