"""The Celery phase: tasks per second through bbmq, Redis and RabbitMQ, same run.

Each broker gets the same two measurements, interleaved run by run as the
comparison does:

* **send**: one process calls ``apply_async`` N times (what ``.delay()`` does), one
  at a time, as an application sends tasks; timed from the first call to the last
  return.  bbmq returns once the task is stored (confirmed, fsynced with SQLite);
  RabbitMQ through ``pyamqp`` returns once the frame is written (no publisher
  confirms: Celery's default), or with ``confirm_publish`` (the ``rabbitmq-confirm``
  row) once RabbitMQ confirmed the persistent message; Redis once LPUSH answered.
* **worker**: the N queued tasks, drained by one ``celery worker`` with the same
  settings for every broker (WORKER_ARGS); the rate is taken from the tasks' own
  finish times (first to last), so the worker's start-up is not in it.  The task
  appends one line to a file: no result backend is in the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import report, systems
from bench.phases import summarize
from bench.systems.base import HOST, Unavailable

ROOT = Path(__file__).resolve().parent.parent
#: The same for every broker.  Two pool processes (the machine has few cores), Celery's
#: default prefetch multiplier, and none of the cluster chatter a benchmark does not need.
WORKER_ARGS = ("-c", "2", "--pool", "prefork", "--prefetch-multiplier", "4",
               "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning")
RABBITMQ = f"pyamqp://guest:guest@{HOST}:5672//"
#: name -> (URL, kombu transport options)
PEERS: dict[str, tuple[str, dict[str, Any]]] = {
    "redis": (f"redis://{HOST}:6379/0", {}),
    "rabbitmq": (RABBITMQ, {}),
    "rabbitmq-confirm": (RABBITMQ, {"confirm_publish": True}),
}
METRICS = ("send tasks/s", "worker tasks/s")


def _environment(url: str, options: dict[str, Any]) -> dict[str, str]:
    return dict(os.environ, BENCH_CELERY_BROKER=url,
                BENCH_CELERY_TRANSPORT_OPTIONS=json.dumps(options),
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                         os.environ.get("PYTHONPATH")])))


def _answers(url: str) -> str | None:
    """None if the broker answers, else why not."""
    from kombu import Connection  # noqa: PLC0415  (the celery extra: only for this mode)

    import bbmq.kombu  # noqa: F401, PLC0415

    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as error:  # any failure to connect means: skip this broker
        return f"{type(error).__name__}: {error}"
    return None


def _delete_queue(url: str, queue: str) -> None:
    from kombu import Connection  # noqa: PLC0415

    with Connection(url, connect_timeout=3) as connection:
        connection.default_channel.queue_delete(queue)


def measure(url: str, options: dict[str, Any], tasks: int, time_limit: float,
            workdir: Path) -> dict[str, Any]:
    """One run on one broker: the send rate, then the worker's rate on what was sent."""
    queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
    log = workdir / f"{queue}.done"
    env = _environment(url, options)
    sent = subprocess.run([sys.executable, "-m", "bench.celery_app", queue, str(tasks),
                           str(log)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=time_limit, check=True)
    send_seconds = float(sent.stdout.strip().splitlines()[-1])
    with (workdir / f"{queue}.worker.log").open("ab") as output:
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.celery_app",
                                   "worker", "-Q", queue, *WORKER_ARGS], env=env, cwd=ROOT,
                                  stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + time_limit
    done: list[float] = []
    try:
        while time.monotonic() < deadline:
            done = [float(line) for line in log.read_text().split()] if log.exists() else []
            if len(done) >= tasks:
                break
            time.sleep(0.2)  # the bench polls the workers' progress; no test waits here
    finally:
        worker.terminate()
        worker.wait(30)
        _delete_queue(url, queue)
    values = {"send tasks/s": tasks / send_seconds}
    if len(done) > 1:
        values["worker tasks/s"] = (len(done) - 1) / (max(done) - min(done))
    return {"values": values, "complete": len(done) >= tasks, "done": len(done)}


def run(args: argparse.Namespace, messages: int, runs: int) -> int:
    """``python -m bench --celery``: every broker that answers, ``runs`` runs each."""
    bbmq = systems.create("bbmq-sqlite")
    try:
        bbmq.start()
    except Unavailable as error:
        print(f"bbmq could not start: {error}", file=sys.stderr)
        return 1
    urls = {"bbmq-sqlite": (f"bbmq://{HOST}:{bbmq.port}", {}), **PEERS}  # type: ignore[attr-defined]
    notes = {name: f"skipped: {why}" for name, (url, _) in urls.items()
             if (why := _answers(url)) is not None}
    urls = {name: url for name, url in urls.items() if name not in notes}
    out = report.JsonLines(args.json_out)
    info = report.machine()
    out.write({"kind": "machine", **info})
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-celery-") as workdir:
            for run_number in range(1, runs + 1):
                for name, (url, options) in urls.items():
                    result = measure(url, options, messages, args.time_limit, Path(workdir))
                    results[name].append(result)
                    shown = ", ".join(f"{key} {value:,.0f}"
                                      for key, value in result["values"].items())
                    print(f"[{name}] celery run {run_number}/{runs}: {shown}"
                          + ("" if result["complete"] else
                             f" (incomplete: {result['done']} of {messages} done)"),
                          flush=True)
                    out.write({"kind": "run", "system": name, "phase": "celery",
                               "run": run_number, **result})
    finally:
        bbmq.stop()
    rows = [["broker", *(f"{metric} (median, min-max)" for metric in METRICS)]]
    for name, measured in results.items():
        cells = [name]
        for metric in METRICS:
            values = [m["values"][metric] for m in measured if metric in m["values"]]
            if values:
                median, low, high = summarize(values)
                cells.append(f"{median:,.0f} ({low:,.0f}-{high:,.0f})")
                out.write({"kind": "summary", "system": name, "phase": "celery",
                           "metric": metric, "median": median, "min": low, "max": high,
                           "runs": len(values)})
            else:
                cells.append("n/a")
        rows.append(cells)
    print()
    print(report.text_table(rows))
    for name, note in notes.items():
        print(f"{name}: {note}")
    if args.markdown:
        body = "\n".join([
            "## Celery: tasks per second through bbmq, Redis and RabbitMQ",
            "",
            f"Command: `python -m bench {' '.join(args.raw_argv)}`",
            f"N = {messages:,} tasks per run, {runs} run(s); worker: `celery worker "
            f"{' '.join(WORKER_ARGS)}` for every broker.",
            "",
            *report.machine_lines(info, {}),
            "",
            report.markdown_table(rows),
            "",
            *(f"- {name}: {note}" for name, note in notes.items()),
            (__doc__ or "").split("\n\n", 1)[1].strip(),
        ])
        report.update_section(args.markdown, "celery", body)
        print(f"markdown: {args.markdown}")
    out.close()
    return 0
