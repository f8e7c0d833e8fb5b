"""beanstalkd, started by the bench on a free port, through greenstalk.

Durable = ``beanstalkd -b <tmpdir>`` with its default binlog policy, which
fsyncs at most once every 50 ms (``-f 50``): a job is acknowledged
(INSERTED) once written to the binlog, not once fsynced, so up to 50 ms of
acknowledged jobs can be lost on power failure (``-f 0`` would fsync every
write).  Transient = a second beanstalkd without ``-b``.

greenstalk sends one command and reads its reply before the next, and
beanstalkd has no prefetch: batches and windows are therefore sequential
puts, and consuming is reserve + delete per job.  The figures show what a
Python user of beanstalkd gets, not the server's ceiling.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version as package_version

import greenstalk

from bench.systems.base import HOST, ServerProcess, System, Unavailable, unique


class BeanstalkProducer:
    def __init__(self, port: int, tube: str) -> None:
        self._client = greenstalk.Client((HOST, port), encoding=None, use=tube)

    def send(self, bodies: Sequence[bytes], window: int) -> None:
        for body in bodies:
            self._client.put(body)

    def close(self) -> None:
        self._client.close()


class BeanstalkConsumer:
    def __init__(self, port: int, tube: str) -> None:
        self._client = greenstalk.Client((HOST, port), encoding=None, watch=tube)

    def receive(self, count: int, deadline: float, handle: Callable[[bytes], None]) -> int:
        taken = 0
        while taken < count and (remaining := deadline - time.monotonic()) > 0:
            try:
                job = self._client.reserve(timeout=max(1, min(int(remaining), 5)))
            except greenstalk.TimedOutError:
                continue
            handle(job.body)  # type: ignore[arg-type]  # bytes: encoding=None
            self._client.delete(job)
            taken += 1
        return taken

    def close(self) -> None:
        self._client.close()


class BeanstalkSystem(System):
    name = "beanstalkd"
    durability = ("no fsync per job: binlog (-b) with the default -f 50, fsync at most every "
                  "50 ms")
    method = ("greenstalk: one put per message (no pipelining: batch/window are sequential), "
              "reserve + delete per job (no prefetch); transient = a second beanstalkd "
              "without -b")

    def __init__(self) -> None:
        binary = shutil.which("beanstalkd") or "beanstalkd"
        self._durable = ServerProcess("beanstalkd", lambda port, tmp: [
            binary, "-l", HOST, "-p", str(port), "-b", str(tmp)])
        self._transient = ServerProcess("beanstalkd-transient", lambda port, _tmp: [
            binary, "-l", HOST, "-p", str(port)])
        self._version = ""

    def start(self) -> None:
        if shutil.which("beanstalkd") is None:
            raise Unavailable("beanstalkd is not installed (apt-get install beanstalkd)")
        self._durable.start()
        self._transient.start()
        with greenstalk.Client((HOST, self._durable.port)) as client:
            self._version = f"beanstalkd {client.stats()['version']}"

    def stop(self) -> None:
        self._durable.stop()
        self._transient.stop()

    def version(self) -> str:
        return f"{self._version}, greenstalk {package_version('greenstalk')}"

    def _port(self, durable: bool) -> int:
        return (self._durable if durable else self._transient).port

    def new_queue(self, durable: bool) -> str:
        return unique("bench-")  # tubes exist while used

    def producer(self, queue: str, durable: bool) -> BeanstalkProducer:
        return BeanstalkProducer(self._port(durable), queue)

    def consumer(self, queue: str, durable: bool) -> BeanstalkConsumer:
        return BeanstalkConsumer(self._port(durable), queue)
