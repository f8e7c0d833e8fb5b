"""The Celery app of the bench's Celery phase, imported by ``celery -A bench.celery_app``.

The broker comes from BENCH_CELERY_BROKER, its kombu transport options (JSON) from
BENCH_CELERY_TRANSPORT_OPTIONS.  The one task appends its finish
time to BENCH_CELERY_LOG (one short ``O_APPEND`` write, atomic between the pool's
processes): the bench reads the processing rate from those times, so no result
backend (with its own server and costs) is in the measurement.
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery

import bbmq.kombu  # noqa: F401  (registers bbmq://)

app = Celery("bench", broker=os.environ.get("BENCH_CELERY_BROKER", "bbmq://127.0.0.1:15333"))
app.conf.update(broker_connection_retry_on_startup=True, task_ignore_result=True,
                worker_hijack_root_logger=False, broker_transport_options=json.loads(
                    os.environ.get("BENCH_CELERY_TRANSPORT_OPTIONS", "{}")))


@app.task(name="bench.note_done")  # the same name when this module runs as __main__
def note_done(log: str) -> None:
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{time.time():.6f}\n".encode())
    finally:
        os.close(descriptor)


def send(queue: str, count: int, log: str) -> float:
    """Send ``count`` tasks to ``queue`` with ``.delay()``-style calls; return the seconds."""
    started = time.perf_counter()
    for _ in range(count):
        note_done.apply_async((log,), queue=queue)
    return time.perf_counter() - started


if __name__ == "__main__":  # python -m bench.celery_app QUEUE COUNT LOG: prints the seconds
    import sys

    print(send(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
