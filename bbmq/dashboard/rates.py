"""Rates per second and store commit times, derived over time outside the core.

The core keeps running totals and reads no clock; once a second the dashboard
samples those totals (:class:`RateHistory`) and turns two samples into
publish / deliver / ack / redeliver rates, keeping a few minutes of them so a
page opened now shows history at once.  :class:`CommitTimes` keeps the store
thread's recent commit durations (fed by the same hook as the Prometheus
histogram) for the overview's latency figures.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from bbmq.core import BrokerSnapshot

#: The counters the charts and tables show as rates.
RATE_NAMES: Final = ("published", "delivered", "acked", "redelivered")
#: Samples kept (one a second): what a freshly opened overview can chart.
HISTORY_SAMPLES: Final = 600
#: Commit times kept for the latency figures.
COMMIT_SAMPLES: Final = 2000


def _totals(snapshot: BrokerSnapshot) -> dict[str, dict[str, int]]:
    return {topic.name: {name: getattr(topic.counters, name) for name in RATE_NAMES}
            for topic in snapshot.topics}


class RateHistory:
    """Samples of the core's counters, turned into per-second rates, overall and per topic."""

    def __init__(self, snapshot: Callable[[], BrokerSnapshot]) -> None:
        self._snapshot = snapshot
        self._previous: tuple[float, dict[str, dict[str, int]]] | None = None
        #: One point a second: ``{"t": wall ms, "published": per s, ...}``, oldest first.
        self.points: deque[dict[str, Any]] = deque(maxlen=HISTORY_SAMPLES)
        #: The latest rates of each topic, by counter name.
        self.topic_rates: dict[str, dict[str, float]] = {}

    def sample(self, monotonic_s: float, wall_ms: int) -> None:
        """Take the counters now; with an earlier sample, add a point of rates."""
        totals = _totals(self._snapshot())
        previous, self._previous = self._previous, (monotonic_s, totals)
        if previous is None or monotonic_s <= previous[0]:
            return
        seconds = monotonic_s - previous[0]
        rates: dict[str, dict[str, float]] = {}
        for topic, counts in totals.items():
            before = previous[1].get(topic, dict.fromkeys(RATE_NAMES, 0))
            # A counter that went down (the topic was recreated) counts from zero.
            rates[topic] = {name: round(max(0, counts[name] - before[name]) / seconds, 1)
                            for name in RATE_NAMES}
        self.topic_rates = rates
        point: dict[str, Any] = {"t": wall_ms}
        for name in RATE_NAMES:
            point[name] = round(sum(topic[name] for topic in rates.values()), 1)
        self.points.append(point)

    def latest(self) -> dict[str, Any] | None:
        return self.points[-1] if self.points else None


class CommitTimes:
    """The store's recent commit durations; observed on the store thread, read on the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: deque[float] = deque(maxlen=COMMIT_SAMPLES)
        self.total = 0

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._seconds.append(seconds)
            self.total += 1

    def summary(self) -> dict[str, Any]:
        """Milliseconds over the last commits: median, 99th percentile, latest; and counts."""
        with self._lock:
            recent = sorted(self._seconds)
            last = self._seconds[-1] if self._seconds else None
            total = self.total
        if not recent:
            return {"commits": total, "sampled": 0, "p50_ms": None, "p99_ms": None,
                    "last_ms": None}
        return {"commits": total, "sampled": len(recent),
                "p50_ms": round(recent[len(recent) // 2] * 1000, 2),
                "p99_ms": round(recent[min(len(recent) - 1, len(recent) * 99 // 100)] * 1000, 2),
                "last_ms": None if last is None else round(last * 1000, 2)}
