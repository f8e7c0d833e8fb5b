"""Where the bbmq broker's time goes (``--profile SECONDS``), sampled with py-spy.

The broker runs as usual while py-spy samples its process from outside
(``--nonblocking``, so the broker is never paused), first during a window
publish and then while one process publishes and another consumes.  py-spy's
raw output (one collapsed stack per line, with its sample count) is reduced
here to what a reader needs: how busy each thread was, the functions where
the samples land (self time) and the bbmq functions they pass through
(inclusive time).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import report, systems
from bench.phases import WINDOW, WINDOW_CHUNK, Settings, consume_child, publisher
from bench.procs import Progress, Target, run_children
from bench.systems.base import System, Unavailable

RATE = 200  # samples per second
TOP = 12
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
#: Frames under every sample of the loop thread (the launcher): left out of "inclusive".
_LAUNCHERS = ("bbmq/__main__.py", "bbmq/cli.py")


def short(frame: str, *, line: bool) -> str:
    """``function (/path/to/bbmq/core.py:12)`` -> ``function (bbmq/core.py:12)``."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    if "/bbmq/" in path:
        path = "bbmq/" + path.rsplit("/bbmq/", 1)[1]
    elif not path.startswith("bbmq/"):  # py-spy shortens paths under sys.path entries
        path = Path(path).name
    if line and match["line"]:
        path += f":{match['line']}"
    return f"{match['function']} ({path})"


def summarize(raw: str, seconds: float) -> str:
    """Markdown: busy share per thread, top lines by self time, top bbmq functions inclusive."""
    threads: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        threads[re.sub(r"^thread \(\d+\):? ?", "", frames[0]) or frames[0]] += count
        total += count
        if len(frames) > 1:
            leaves[short(frames[-1], line=True)] += count
        for call in {short(frame, line=False) for frame in frames[1:]}:
            if "(bbmq/" in call and not call.endswith(tuple(f"({f})" for f in _LAUNCHERS)):
                inclusive[call] += count
    if not total:
        return "py-spy recorded no samples."
    possible = RATE * seconds
    lines = ["Busy share of the wall time per thread (samples / (rate x duration)): " +
             ", ".join(f"{name} {100 * count / possible:.0f}%"
                       for name, count in threads.most_common()), "",
             "| self time: the line where samples land | % of busy samples |", "|---|---|"]
    lines += [f"| `{name}` | {100 * count / total:.1f} |" for name, count in
              leaves.most_common(TOP)]
    lines += ["", "| bbmq function on the stack (inclusive) | % of busy samples |", "|---|---|"]
    lines += [f"| `{name}` | {100 * count / total:.1f} |" for name, count in
              inclusive.most_common(TOP)]
    return "\n".join(lines)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise Unavailable("py-spy is not installed (pip install py-spy)")
    return found


def profile_once(system: System, label: str, targets: list[Target], seconds: float,
                 workdir: Path) -> str:
    """Sample the broker for ``seconds`` while the children run; return the markdown summary."""
    pid = system.server_pid()
    assert pid is not None
    raw = workdir / f"{system.name}-{label.replace(' ', '-')}.txt"
    spy = subprocess.Popen([_py_spy(), "record", "--pid", str(pid), "--duration",
                            str(int(seconds)), "--rate", str(RATE), "--format", "raw",
                            "--threads", "--nonblocking", "-o", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = Progress(f"[{system.name}] profiling {label} for {seconds:g} s", 10**7)
    outcome = run_children(targets, seconds + 1, progress)
    _, errors = spy.communicate(timeout=seconds + 60)
    done = [r for r in outcome.results if r is not None]
    rate = 0.0
    if done:  # the slower side's count over the whole span (consumers have no "started")
        span = max(r["finished"] for r in done) - min(r.get("started", 1e18) for r in done)
        rate = min(r["count"] for r in done) / span if span > 0 else 0.0
    progress.finish(f"~{rate:,.0f} msg/s while sampled; raw stacks in {raw}")
    if spy.returncode != 0 or not raw.exists():
        return f"py-spy failed: {errors.decode(errors='replace').strip()[-300:]}"
    return (f"While sampled: ~{rate:,.0f} msg/s (py-spy running, so a little lower than "
            f"unprofiled).\n\n" + summarize(raw.read_text(), seconds))


def run(args: argparse.Namespace, settings: Settings) -> int:
    seconds = float(args.profile)
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    many = 10**7  # bounded by the deadline, not by the count
    sections = []
    for name in args.systems:
        try:
            system = systems.create(name)
            system.start()
        except Unavailable as error:
            print(f"[{name}] skipped: {error}")
            continue
        try:
            queue = system.new_queue(True)
            producer = {"system": system, "queue": queue, "durable": True, "total": many,
                        "size": settings.size, "chunk": WINDOW_CHUNK, "window": WINDOW}
            publish = profile_once(system, "window publish", [(publisher, producer)], seconds,
                                   workdir)
            queue = system.new_queue(True)
            consumer = {"system": system, "queue": queue, "total": many, "latencies": False}
            paired = {**producer, "queue": queue, "track": False}
            both = profile_once(system, "publish and consume",
                                [(consume_child, consumer), (publisher, paired)], seconds, workdir)
        finally:
            system.stop()
        for label, text in (("window publish (1,000)", publish),
                            ("publish and consume at once", both)):
            print(f"\n[{name}] {label}\n{text}")
            sections += [f"### {name}: {label}", "", text, ""]
    if args.markdown and sections:
        body = "\n".join([
            "## Where the broker's time goes (py-spy)", "",
            f"Command: `python -m bench {' '.join(args.raw_argv)}`: py-spy samples the broker "
            f"process at {RATE} Hz for {seconds:g} s per workload, without pausing it.", "",
            *report.machine_lines(report.machine(), {}), "", *sections])
        report.update_section(args.markdown, "profile", body)
    return 0
