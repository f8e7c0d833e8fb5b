"""Turning measurements into the terminal table, JSON lines, docs/benchmarks.md and a plot.

The markdown file is shared by the three modes (compare, ``--scale``,
``--profile``), which run at different times: each mode owns one section
between ``<!-- bench:NAME -->`` markers and rewrites only that section, so a
scale run does not wipe the comparison and vice versa.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from bench.phases import PHASES, Measurement, summarize
from bench.systems.bbmq_broker import ROOT

Results = dict[tuple[str, str], list[Measurement]]

#: (label, system, phase, metric, "min"|"max", threshold): issue 8's targets for the
#: comparison run.  "min" means the figure must be at least the threshold.
TARGETS: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("publish, window 1,000, SQLite", "bbmq-sqlite", "publish-window", "msg/s", "min", 100_000),
    ("publish, window 1,000, MySQL", "bbmq-mysql", "publish-window", "msg/s", "min", 60_000),
    ("publish, one at a time, SQLite", "bbmq-sqlite", "publish-one", "msg/s", "min", 5_000),
    ("consume + ack per message (SQLite)", "bbmq-sqlite", "consume", "msg/s", "min", 50_000),
    ("produce and consume at once (SQLite)", "bbmq-sqlite", "pubsub", "msg/s", "min", 40_000),
    ("latency p50 at 1,000 msg/s (SQLite)", "bbmq-sqlite", "latency", "p50", "max", 300),
    ("latency p99 at 1,000 msg/s (SQLite)", "bbmq-sqlite", "latency", "p99", "max", 1000),
    ("transient (memory://) publish, window 1,000", "bbmq-memory", "transient", "msg/s",
     "min", 200_000),
)


# -- the machine ---------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        kib = int(re.findall(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[0])
    except (OSError, IndexError):
        kib = 0
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "bbmq_commit": _commit(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _commit() -> str:
    """The bbmq commit measured (the tree changes while others work on it)."""
    try:
        run = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return run.stdout.strip()


def machine_lines(info: dict[str, Any], versions: dict[str, str]) -> list[str]:
    lines = [f"- date: {info['date']}; bbmq commit {info['bbmq_commit']}",
             f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, "
             f"Linux {info['kernel']}, Python {info['python']}"]
    lines += [f"- {name}: {text}" for name, text in versions.items()]
    return lines


# -- JSON lines ----------------------------------------------------------------------------------

class JsonLines:
    """Appends one JSON object per line (or does nothing without a path)."""

    def __init__(self, path: str | None) -> None:
        self._file: TextIO | None = open(path, "a") if path else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, default=str) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# -- tables --------------------------------------------------------------------------------------

def number(value: float) -> str:
    """Short and still exact enough: 41.2k, 4,120, 312."""
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,.0f}"


def cell(measurements: Sequence[Measurement], metric: str) -> str:
    """Median (min-max) over the runs that produced the metric; * marks incomplete runs."""
    values = [m.values[metric] for m in measurements if metric in m.values]
    if not values:
        return "failed" if measurements else "—"
    median, low, high = summarize(values)
    text = number(median)
    if len(values) > 1:
        text += f" ({number(low)}-{number(high)})"
    if any(not m.complete for m in measurements):
        text += " *"
    return text


def metric_rows(phases: Iterable[str]) -> list[tuple[str, str, str]]:
    """(label, phase, metric) per table row."""
    rows = []
    for name in phases:
        phase = PHASES[name]
        for metric in phase.metrics:
            label = phase.title if metric == "msg/s" else f"{phase.title} {metric}"
            rows.append((label, name, metric))
    return rows


def comparison_table(results: Results, systems: Sequence[str],
                     phases: Sequence[str]) -> list[list[str]]:
    header = ["metric (msg/s unless µs)", *systems]
    rows = [header]
    for label, phase, metric in metric_rows(phases):
        rows.append([label, *(cell(results.get((system, phase), []), metric)
                              for system in systems)])
    return rows


def median_of(results: Results, system: str, phase: str, metric: str) -> float | None:
    values = [m.values[metric] for m in results.get((system, phase), []) if metric in m.values]
    return summarize(values)[0] if values else None


def ratio_table(results: Results, bbmq: str, peers: Sequence[str],
                phases: Sequence[str]) -> list[list[str]]:
    """bbmq median / peer median per metric; the transient row compares bbmq-memory."""
    rows = [[f"{bbmq} / peer", *peers]]
    for label, phase, metric in metric_rows(phases):
        ours = bbmq if PHASES[phase].durable else "bbmq-memory"
        mine = median_of(results, ours, phase, metric)
        row = [label if ours == bbmq else f"{label} ({ours})"]
        for peer in peers:
            theirs = median_of(results, peer, phase, metric)
            row.append(f"{mine / theirs:.2f}x" if mine and theirs else "—")
        rows.append(row)
    return rows


def target_table(results: Results) -> list[list[str]]:
    rows = [["target (issue 8)", "wanted", "measured (median)", "met?"]]
    for label, system, phase, metric, kind, threshold in TARGETS:
        value = median_of(results, system, phase, metric)
        unit = " µs" if metric != "msg/s" else " msg/s"
        wanted = ("≥ " if kind == "min" else "≤ ") + f"{threshold:,.0f}{unit}"
        if value is None:
            rows.append([label, wanted, "not measured", "—"])
            continue
        met = value >= threshold if kind == "min" else value <= threshold
        rows.append([label, wanted, f"{value:,.0f}{unit}", "yes" if met else "**no**"])
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |",
             "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


# -- markdown file -------------------------------------------------------------------------------

HEADER = """# Benchmarks

Produced by `python -m bench` (see `bench/`); each section below is rewritten by the mode that
made it and says when and how it was measured.  Figures are medians over runs with the
spread (min-max) in brackets; `*` marks a run stopped at the time limit.
"""


def update_section(path: str | Path, key: str, body: str) -> None:
    """Replace (or append) the section between this key's markers, keeping the others."""
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- plot ----------------------------------------------------------------------------------------

def plot(results: Results, systems: Sequence[str], phases: Sequence[str], path: str) -> None:
    """Grouped bars: throughput per phase and system (log scale), latency beside it."""
    import matplotlib  # noqa: PLC0415 (slow to import, and only needed for --plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (after choosing the Agg backend)

    throughput = [p for p in phases if "msg/s" in PHASES[p].metrics]
    latency = "latency" in phases
    figure, axes = plt.subplots(1, 2 if latency else 1, figsize=(15 if latency else 11, 5.5),
                                gridspec_kw={"width_ratios": [3, 1]} if latency else None,
                                squeeze=False)
    colours = plt.colormaps["tab10"]
    width = 0.8 / max(1, len(systems))

    def bars(axis: Any, groups: Sequence[tuple[str, str]], labels: Sequence[str]) -> None:
        for index, system in enumerate(systems):
            medians, lows, highs, xs = [], [], [], []
            for position, (phase, metric) in enumerate(groups):
                values = [m.values[metric] for m in results.get((system, phase), [])
                          if metric in m.values]
                if values:
                    median, low, high = summarize(values)
                    xs.append(position + (index - (len(systems) - 1) / 2) * width)
                    medians.append(median)
                    lows.append(median - low)
                    highs.append(high - median)
            if xs:
                axis.bar(xs, medians, width, yerr=[lows, highs], capsize=2, label=system,
                         color=colours(index))
        axis.set_xticks(range(len(groups)), labels, rotation=20, ha="right", fontsize=8)
        axis.grid(axis="y", alpha=0.3)

    main = axes[0][0]
    bars(main, [(p, "msg/s") for p in throughput], [PHASES[p].title for p in throughput])
    main.set_yscale("log")
    main.set_ylabel("messages per second (log)")
    main.set_title("Throughput, median of runs (whiskers: min-max)")
    main.legend(fontsize=8, ncol=2)
    if latency:
        side = axes[0][1]
        bars(side, [("latency", "p50"), ("latency", "p99")], ["p50", "p99"])
        side.set_yscale("log")
        side.set_ylabel("µs (log)")
        side.set_title("Publish-to-receive latency")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
