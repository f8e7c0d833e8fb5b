"""The command line, and the comparison run: every phase, every system, several runs.

Systems are interleaved run by run (phase 1 run 1 on every system, then run
2 ...) so that a burst of noise on this shared machine lands on all of them
rather than on whichever system happened to be measured at that moment;
that is what makes figures from one run comparable with each other.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import celery_phase, profile, report, scale, systems
from bench.phases import PHASES, Measurement, Settings, summarize
from bench.procs import Progress
from bench.systems.base import System, Unavailable

ALL_SYSTEMS = tuple(systems.REGISTRY)
BBMQ_SYSTEMS = tuple(name for name in ALL_SYSTEMS if name.startswith("bbmq-"))
QUICK_MESSAGES = 2_000


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown)} "
                                         f"(known: {', '.join(known)})")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run one workload on bbmq and its peers (RabbitMQ, NATS JetStream, Redis, "
                    "beanstalkd) in one run, and report medians and spreads.")
    parser.add_argument("--systems", type=lambda t: _names(t, ALL_SYSTEMS, "system"),
                        default=None, help="comma-separated, from: " + ",".join(ALL_SYSTEMS) +
                        " (default: all that answer; with --scale/--profile: bbmq-sqlite)")
    parser.add_argument("--phases", type=lambda t: _names(t, tuple(PHASES), "phase"),
                        default=list(PHASES), help="comma-separated, from: " + ",".join(PHASES))
    parser.add_argument("--messages", type=int, default=None,
                        help="messages per phase, N (default 50,000; publish-one uses N/10)")
    parser.add_argument("--size", type=int, default=100, help="message body bytes (default 100)")
    parser.add_argument("--runs", type=int, default=None, help="runs per measurement (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: N={QUICK_MESSAGES:,}, 1 run (with --scale: small "
                             "backlog too)")
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds before a measurement is stopped and marked incomplete")
    parser.add_argument("--json-out", metavar="FILE", help="append JSON lines here")
    parser.add_argument("--markdown", metavar="FILE",
                        help="write this mode's section of a markdown report "
                             "(e.g. docs/benchmarks.md)")
    parser.add_argument("--plot", metavar="FILE", help="PNG bar plot (e.g. docs/benchmarks.png)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--scale", action="store_true",
                      help="bbmq scale figures instead: producers, topics, sizes, 1M backlog")
    mode.add_argument("--profile", type=float, metavar="SECONDS", default=None,
                      help="profile the bbmq broker with py-spy for SECONDS during a window "
                           "publish and during publish+consume, and summarize where time goes")
    mode.add_argument("--celery", action="store_true",
                      help="the Celery phase instead: tasks/s sent and run by one worker, "
                           "through bbmq (bbmq.kombu), Redis and RabbitMQ (pyamqp); "
                           "N tasks (default 5,000)")
    parser.add_argument("--backlog", type=int, default=None,
                        help="messages in the --scale backlog (default 1,000,000; quick 20,000)")
    return parser


def start_systems(names: Sequence[str], notes: dict[str, str]) -> list[System]:
    """Start each system; one that cannot start is skipped and its reason kept in ``notes``."""
    started = []
    for name in names:
        try:
            system = systems.create(name)
            system.start()
        except Unavailable as error:
            notes[name] = f"skipped: {error}"
            print(f"[{name}] skipped: {error}", flush=True)
            continue
        print(f"[{name}] ready: {system.version()}", flush=True)
        started.append(system)
    return started


def stop_systems(started: Sequence[System]) -> None:
    for system in started:
        try:
            system.stop()
        except Exception as error:  # cleaning up: report and go on with the others
            print(f"[{system.name}] stop failed: {error}", file=sys.stderr)


def compare(args: argparse.Namespace, settings: Settings, runs: int) -> int:
    names = args.systems or list(ALL_SYSTEMS)
    notes: dict[str, str] = {}
    out = report.JsonLines(args.json_out)
    info = report.machine()
    out.write({"kind": "machine", **info})
    started = start_systems(names, notes)
    results: report.Results = {}
    try:
        for phase_name in args.phases:
            phase = PHASES[phase_name]
            for run in range(1, runs + 1):
                for system in started:
                    if not phase.durable and not system.transient:
                        continue
                    measure(system, phase_name, run=run, runs=runs, settings=settings,
                            results=results, out=out)
    finally:
        stop_systems(started)
    order = [s.name for s in started]
    for (system_name, phase_name), measurements in results.items():
        for metric in PHASES[phase_name].metrics:
            values = [m.values[metric] for m in measurements if metric in m.values]
            if values:
                median, low, high = summarize(values)
                out.write({"kind": "summary", "system": system_name, "phase": phase_name,
                           "metric": metric, "median": median, "min": low, "max": high,
                           "runs": len(values)})
    table = report.comparison_table(results, order, args.phases)
    print()
    print(report.text_table(table))
    for name, note in notes.items():
        print(f"{name}: {note}")
    for (system_name, phase_name), measurements in results.items():
        for measurement in measurements:
            if measurement.note:
                print(f"note: {system_name} {phase_name}: {measurement.note}")
    if args.plot:
        report.plot(results, order, args.phases, args.plot)
        print(f"plot: {args.plot}")
    if args.markdown:
        body = comparison_markdown(args, settings, runs, info=info, started=started,
                                   notes=notes, results=results)
        report.update_section(args.markdown, "compare", body)
        print(f"markdown: {args.markdown}")
    out.close()
    return 0


def measure(system: System, phase_name: str, *, run: int, runs: int, settings: Settings,
            results: report.Results, out: report.JsonLines) -> None:
    phase = PHASES[phase_name]
    progress = Progress(f"[{system.name}] {phase_name} run {run}/{runs}", settings.messages)
    try:
        measurement = phase.run(system, settings, progress)
    except Exception as error:  # a broken adapter or server: record and carry on
        measurement = Measurement({}, 0, 0.0, False, note=f"{type(error).__name__}: {error}")
    results.setdefault((system.name, phase_name), []).append(measurement)
    if measurement.values:
        shown = ", ".join(f"{key} {value:,.0f}" if key != "msg/s" else f"{value:,.0f} msg/s"
                          for key, value in measurement.values.items())
        progress.finish(shown + ("" if measurement.complete else f" ({measurement.note})"))
    else:
        progress.finish(f"failed: {measurement.note}")
    out.write({"kind": "run", "system": system.name, "phase": phase_name, "run": run,
               "values": measurement.values, "count": measurement.count,
               "seconds": round(measurement.seconds, 4), "complete": measurement.complete,
               "note": measurement.note, **measurement.extra,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


def comparison_markdown(args: argparse.Namespace, settings: Settings, runs: int, *,
                        info: dict[str, object], started: Sequence[System],
                        notes: dict[str, str], results: report.Results) -> str:
    order = [s.name for s in started]
    peers = [name for name in order if not name.startswith("bbmq-")]
    label = "quick smoke run (not representative)" if args.quick else "full run"
    lines = [
        f"## bbmq and its peers: {label}",
        "",
        f"Command: `python -m bench {' '.join(args.raw_argv)}`",
        f"N = {settings.messages:,} messages of {settings.size} bytes per phase "
        f"(publish 1-at-a-time: N/10), {runs} run(s) each, time limit "
        f"{settings.time_limit:g} s per measurement.",
        "",
        *report.machine_lines(info, {s.name: s.version() for s in started}),
        "",
        report.markdown_table(report.comparison_table(results, order, args.phases)),
        "",
    ]
    if args.plot:
        lines += [f"![throughput per system and phase]({Path(args.plot).name})", ""]
    for bbmq in (name for name in order if name in ("bbmq-sqlite", "bbmq-mysql")):
        if peers:
            lines += [f"### Ratios {bbmq} / peer (same run; >1 is bbmq faster, for latency "
                      "<1 is bbmq lower)", "",
                      report.markdown_table(report.ratio_table(results, bbmq, peers,
                                                               args.phases)), ""]
    lines += ["### Issue 8 targets", "", report.markdown_table(report.target_table(results)),
              "", "### What \"durable\" means per system, and how each was driven", "",
              "| system | durable = | client and method |", "|---|---|---|"]
    lines += [f"| {s.name} | {s.durability} | {s.method} |" for s in started]
    lines += [f"| {name} | {note} | |" for name, note in notes.items()]
    incomplete = [f"- {system} {phase}: {m.note}" for (system, phase), ms in results.items()
                  for m in ms if m.note]
    if incomplete:
        lines += ["", "Notes from the runs:", "", *incomplete]
    lines += ["", METHOD]
    return "\n".join(lines)


METHOD = """### Method

- Every measurement runs its clients in forked child processes, released together once
  connected; produce-and-consume and latency use one producer process and one consumer
  process, so the two Python clients never share a GIL.  Queues/streams are fresh per run.
- Publish phases time from the start line to the last confirm: one-at-a-time waits for each
  confirm; batch sends 100 and waits for all 100; window keeps up to 1,000 unconfirmed, in
  calls of 20,000 messages (each call drains its window at its end, for every system alike).
- Consume preloads N messages (untimed), then times taking them with prefetch 100 and one ack
  per message.  Produce-and-consume times from the producer's start to the consumer's last
  message.
- Latency: one confirmed publish every millisecond for 5 s, the send time
  (`perf_counter_ns`, CLOCK_MONOTONIC) in the body; the consumer process subtracts it from its
  own clock on receipt.  Nearest-rank percentiles.
- Transient: bbmq memory://, RabbitMQ non-persistent messages on a non-durable queue (still
  with confirms), NATS core publish (flush per 1,000), Redis without AOF, beanstalkd
  without binlog."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)  # quoted in the report
    messages = args.messages or (QUICK_MESSAGES if args.quick else 50_000)
    runs = args.runs or (1 if args.quick else 3)
    settings = Settings(messages=messages, size=args.size, time_limit=args.time_limit)
    if args.scale or args.profile is not None:
        if args.systems is None:
            args.systems = ["bbmq-sqlite"]
        others = [name for name in args.systems if name not in BBMQ_SYSTEMS]
        if others:
            print(f"--scale and --profile measure bbmq only, not {', '.join(others)}",
                  file=sys.stderr)
            return 2
    if args.celery:
        return celery_phase.run(args, args.messages or (QUICK_MESSAGES if args.quick else 5_000),
                                runs)
    if args.scale:
        return scale.run(args, settings, runs)
    if args.profile is not None:
        return profile.run(args, settings)
    return compare(args, settings, runs)
