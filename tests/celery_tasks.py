"""The Celery app the kombu transport tests run in real ``celery worker`` processes.

The broker and the result backend come from the environment, so one module
serves every test: BBMQ_CELERY_BROKER (a bbmq:// URL) and BBMQ_CELERY_BACKEND
(a file:// directory: results need no server of their own).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

import bbmq.kombu  # noqa: F401  (registers bbmq://)

app = Celery("bbmq_tests", broker=os.environ.get("BBMQ_CELERY_BROKER", "bbmq://127.0.0.1:15333"),
             backend=os.environ.get("BBMQ_CELERY_BACKEND"))
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue="bbmq-tests",
                worker_prefetch_multiplier=4)


@app.task
def add(x: int, y: int) -> int:
    return x + y


def _append(path: str, line: str) -> None:
    with open(path, "a") as out:
        out.write(line + "\n")


@app.task(acks_late=True)
def hold_until_released(log: str, release: str) -> str:
    """Log the start, wait for the ``release`` file to exist (the test kills the worker
    meanwhile), log the end: a task killed half-way shows as a start without an end."""
    _append(log, f"started {os.getpid()}")
    while not Path(release).exists():
        time.sleep(0.05)
    _append(log, f"done {os.getpid()}")
    return "done"


@app.task
def record_run_time(log: str) -> float:
    now = time.time()
    _append(log, repr(now))
    return now
