"""bbmq's scale figures (``--scale``): producers, topics, message sizes and a large backlog.

These take long and concern bbmq alone, hence a mode of their own.

- Producers: N messages split over 1, 8 and 64 producer *processes* (threads
  would share one GIL and measure the client, not the broker), each with a
  1,000 window; aggregate msg/s from the common start to the last confirm.
- Topics: 8 producer processes publish N messages round-robin over 1 or
  10,000 topics in ``publish_many`` calls of N/topics messages each, the same
  call pattern for both, so only the number of topics (and, since a bbmq
  producer connection is bound to one topic, of connections) differs.
- Sizes: 100 B, 10 KB and 1 MB bodies, counts bounded by bytes, windows
  bounded to 64 MiB in flight (bbmq's default memory cap is 512 MiB).
- Backlog: publish 1,000,000 messages to a fresh broker, restart it, and
  time until it answers PING again (it recovers before it listens); RSS
  from /proc/<pid>/status before loading, after loading and after recovery.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report, systems
from bench.phases import WINDOW, WINDOW_CHUNK, Settings, publisher, summarize
from bench.procs import Progress, Shared, Target, run_children
from bench.systems.base import Unavailable
from bench.systems.bbmq_broker import BbmqSystem, recovery_lines

PRODUCERS = (1, 8, 64)
TOPIC_PRODUCERS = 8
SIZES = (100, 10_000, 1_000_000)
IN_FLIGHT_BYTES = 64 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def aggregate(results: Sequence[dict[str, Any] | None]) -> tuple[int, float]:
    """Messages confirmed by all children, and seconds from the first start to the last end."""
    done = [r for r in results if r is not None]
    count = sum(r["count"] for r in done)
    seconds = max(r["finished"] for r in done) - min(r["started"] for r in done)
    return count, seconds


def _topic_publisher(*, system: BbmqSystem, topics: Sequence[str], total: int, per_call: int,
                     size: int, shared: Shared) -> dict[str, Any]:
    """Round-robin over ``topics`` (one connection each), ``per_call`` messages per call."""
    producers = [system.producer(topic, True) for topic in topics]
    body = b"x" * size
    shared.ready()
    started = time.perf_counter()
    done = 0
    while done < total and time.monotonic() < shared.deadline:
        for producer in producers:
            count = min(per_call, total - done)
            if count <= 0:
                break
            producer.send([body] * count, count)
            done += count
            shared.add(count)
    finished = time.perf_counter()
    for producer in producers:
        producer.close()
    return {"count": done, "started": started, "finished": finished}


class ScaleRun:
    """One bbmq system's scale figures, printed as they come and kept for the report."""

    def __init__(self, system: BbmqSystem, settings: Settings, runs: int,
                 out: report.JsonLines) -> None:
        self.system = system
        self.settings = settings
        self.runs = runs
        self.out = out
        self.rows: list[list[str]] = []
        self.figures: dict[str, float] = {}

    def record(self, key: str, label: str, values: list[float], unit: str, *,
               detail: str = "") -> None:
        median, low, high = summarize(values)

        def shown(value: float) -> str:
            return f"{value:.2f}" if unit == "s" else report.number(value)

        spread = f" ({shown(low)}-{shown(high)})" if len(values) > 1 else ""
        self.rows.append([label, f"{shown(median)}{spread} {unit}", detail])
        self.figures[key] = median
        self.out.write({"kind": "scale", "system": self.system.name, "figure": key,
                        "median": median, "min": low, "max": high, "unit": unit,
                        "runs": values, "detail": detail})

    def publishers(self, label: str, targets_of: Any, total: int) -> list[float]:
        """Run the children ``targets_of(queue)`` builds, ``runs`` times; aggregate msg/s."""
        rates = []
        for run in range(1, self.runs + 1):
            queue = self.system.new_queue(True)
            progress = Progress(f"[{self.system.name}] {label} run {run}/{self.runs}", total)
            outcome = run_children(targets_of(queue), self.settings.time_limit, progress)
            if outcome.errors or outcome.killed or any(r is None for r in outcome.results):
                progress.finish(f"failed: {'; '.join(outcome.errors) or 'time limit'}")
                continue
            count, seconds = aggregate(outcome.results)
            rates.append(count / seconds)
            note = "" if count >= total else f" (incomplete: {count:,} of {total:,})"
            progress.finish(f"{count / seconds:,.0f} msg/s{note}")
        return rates

    def producers(self) -> None:
        total, size = self.settings.messages, self.settings.size
        for count in PRODUCERS:
            share = total // count

            def targets(queue: str, count: int = count, share: int = share) -> list[Target]:
                return [(publisher, {"system": self.system, "queue": queue, "durable": True,
                                     "total": share, "size": size, "chunk": WINDOW_CHUNK,
                                     "window": min(WINDOW, share)})] * count

            rates = self.publishers(f"{count} producers", targets, share * count)
            if rates:
                self.record(f"producers-{count}", f"{count} producer process(es), window "
                            f"{min(WINDOW, share):,}", rates, "msg/s",
                            detail=f"{share:,} messages each")

    def topics(self, counts: Sequence[int]) -> None:
        total, size = self.settings.messages, self.settings.size
        per_call = max(1, total // max(counts))
        for topic_count in counts:
            def targets(queue: str, topic_count: int = topic_count) -> list[Target]:
                names = [f"{queue}.{index}" for index in range(topic_count)]
                return [(_topic_publisher, {
                    "system": self.system, "topics": names[child::TOPIC_PRODUCERS] or names[:1],
                    "total": total // TOPIC_PRODUCERS, "per_call": per_call, "size": size})
                    for child in range(TOPIC_PRODUCERS)]

            rates = self.publishers(f"{topic_count:,} topic(s)", targets,
                                    total // TOPIC_PRODUCERS * TOPIC_PRODUCERS)
            if rates:
                self.record(f"topics-{topic_count}", f"{topic_count:,} topic(s)", rates, "msg/s",
                            detail=f"{TOPIC_PRODUCERS} processes, publish_many of {per_call} "
                                   "per call")

    def sizes(self) -> None:
        total = self.settings.messages
        for size in SIZES:
            count = max(20, min(total, total * 1000 // size))
            window = max(1, min(WINDOW, IN_FLIGHT_BYTES // size))

            def targets(queue: str, size: int = size, count: int = count,
                        window: int = window) -> list[Target]:
                return [(publisher, {"system": self.system, "queue": queue, "durable": True,
                                     "total": count, "size": size,
                                     "chunk": max(window, min(count, WINDOW_CHUNK)),
                                     "window": window})]

            rates = self.publishers(f"size {size:,} B", targets, count)
            if rates:
                megabytes = [rate * size / 1e6 for rate in rates]
                self.record(f"size-{size}", f"{size:,}-byte messages", rates, "msg/s",
                            detail=f"{count:,} messages, window {window:,}; "
                            f"{summarize(megabytes)[0]:,.1f} MB/s")

    def backlog(self, total: int) -> None:
        """Load a backlog into a broker of its own, restart it, time recovery, read RSS."""
        system = BbmqSystem(self.system.store)
        system.start()
        try:
            pid = system.server_pid()
            assert pid is not None
            empty = rss_bytes(pid)
            queue = system.new_queue(True)
            progress = Progress(f"[{system.name}] backlog of {total:,}", total)
            child = {"system": system, "queue": queue, "durable": True, "total": total,
                     "size": self.settings.size, "chunk": WINDOW_CHUNK, "window": WINDOW}
            outcome = run_children([(publisher, child)], max(self.settings.time_limit, 1800.0),
                                   progress)
            result = outcome.results[0]
            if result is None:
                progress.finish(f"failed: {'; '.join(outcome.errors) or 'time limit'}")
                return
            loaded, seconds = result["count"], result["finished"] - result["started"]
            progress.finish(f"{loaded:,} published in {seconds:.1f} s "
                            f"({loaded / seconds:,.0f} msg/s)")
            full = rss_bytes(pid)
            system.halt()
            print(f"[{system.name}] restarting on the backlog ...", flush=True)
            recovery = system.launch(timeout=1800.0)
            pid = system.server_pid()
            assert pid is not None
            recovered = rss_bytes(pid)
            lines = recovery_lines(system.log_text())
            print(f"[{system.name}] answering PING after {recovery:.2f} s; "
                  f"{lines[-1] if lines else 'no recovery lines in the log'}", flush=True)
        finally:
            system.stop()
        self.record("backlog-publish", f"publish a {loaded:,}-message backlog",
                    [loaded / seconds], "msg/s", detail=f"{seconds:.1f} s")
        self.record("recovery-seconds", f"restart with {loaded:,} queued: until PING answers",
                    [recovery], "s", detail=lines[-1] if lines else "")
        self.record("rss-loaded", "RSS growth per queued message while loading",
                    [(full - empty) / loaded], "B", detail=f"{empty / 2**20:.0f} → "
                    f"{full / 2**20:.0f} MiB")
        self.record("rss-recovered", "RSS after recovery, growth over an empty broker, "
                    "per queued message", [(recovered - empty) / loaded], "B",
                    detail=f"{empty / 2**20:.0f} → {recovered / 2**20:.0f} MiB; whole RSS / "
                           f"messages: {recovered / loaded:,.0f} B")


def targets(figures: dict[str, float], topic_counts: Sequence[int]) -> list[list[str]]:
    rows = [["target (issue 8)", "wanted", "measured", "met?"]]

    def add(label: str, wanted: str, measured: str, met: bool | None) -> None:
        rows.append([label, wanted, measured, "—" if met is None else
                     ("yes" if met else "**no**")])

    one, eight = figures.get("producers-1"), figures.get("producers-8")
    add("8 producers vs 1", "aggregate ≥ 1 producer's", f"{eight or 0:,.0f} vs {one or 0:,.0f}"
        " msg/s", None if not (one and eight) else eight >= one)
    few, many = (figures.get(f"topics-{n}") for n in (min(topic_counts), max(topic_counts)))
    add(f"{max(topic_counts):,} topics vs 1", "within 20%",
        f"{many or 0:,.0f} vs {few or 0:,.0f} msg/s",
        None if not (few and many) else many >= 0.8 * few)
    recovery = figures.get("recovery-seconds")
    add("recovery of the backlog", "≤ 10 s", f"{recovery:.1f} s" if recovery else "—",
        None if recovery is None else recovery <= 10)
    rss = figures.get("rss-recovered")
    add("RSS per queued 100-byte message", "≤ 400 B", f"{rss:,.0f} B" if rss else "—",
        None if rss is None else rss <= 400)
    return rows


def run(args: argparse.Namespace, settings: Settings, runs: int) -> int:
    backlog = args.backlog or (20_000 if args.quick else 1_000_000)
    topic_counts = (1, 1_000) if args.quick else (1, 10_000)
    out = report.JsonLines(args.json_out)
    info = report.machine()
    sections = []
    for name in args.systems:
        try:
            system = systems.create(name)
            assert isinstance(system, BbmqSystem)
            system.extra_args = ["--max-connections", str(max(topic_counts) + 1000)]
            system.start()
        except Unavailable as error:
            print(f"[{name}] skipped: {error}")
            continue
        scale = ScaleRun(system, settings, runs, out)
        try:
            scale.producers()
            scale.topics(topic_counts)
            scale.sizes()
        finally:
            system.stop()
        if system.durable:
            scale.backlog(backlog)
        print()
        print(report.text_table([["figure", "median (min-max)", "detail"], *scale.rows]))
        print(report.text_table(targets(scale.figures, topic_counts)))
        sections += [f"### {name}", "", report.markdown_table(
            [["figure", "median (min-max)", "detail"], *scale.rows]), "",
            report.markdown_table(targets(scale.figures, topic_counts)), ""]
    if args.markdown:
        label = "quick smoke run (not representative)" if args.quick else "full run"
        body = "\n".join([
            f"## bbmq scale figures: {label}", "",
            f"Command: `python -m bench {' '.join(args.raw_argv)}`; N = {settings.messages:,}, "
            f"{runs} run(s) each, backlog {backlog:,}.", "",
            *report.machine_lines(info, {}), "", *sections,
            (__doc__ or "").split("\n\n", 1)[1].strip()])
        report.update_section(args.markdown, "scale", body)
    out.close()
    return 0
