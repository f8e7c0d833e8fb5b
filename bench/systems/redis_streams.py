"""Redis Streams through redis-py: XADD to publish, XREADGROUP + XACK to consume.

Streams rather than LPUSH/BRPOP because a stream with a consumer group is
the Redis structure closest to a broker queue: a delivered entry stays
pending until it is XACKed and can be claimed again, as in the other systems.

Durable = a separate ``redis-server`` the bench starts on a free port with
``--appendonly yes --appendfsync always``: Redis writes and fsyncs the AOF
before it sends the replies of an event-loop iteration, so an XADD reply
means the entry is on disk.  Transient = the machine's Redis on 6379, which
runs with ``--appendonly no``.

redis-py's synchronous client cannot keep a sliding window of unanswered
commands, so a "window" of W is a pipeline of W XADDs sent together and
awaited together (batches, which favours Redis slightly: no refill per ack).
XACKs are pipelined per fetched batch, one XACK command per message.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version as package_version

import redis

from bench.systems.base import HOST, ServerProcess, System, Unavailable, unique

TRANSIENT_PORT = 6379
FIELD = b"b"
GROUP = "bench"


class RedisProducer:
    def __init__(self, port: int, stream: str) -> None:
        self._redis = redis.Redis(HOST, port, socket_timeout=60)
        self._stream = stream

    def send(self, bodies: Sequence[bytes], window: int) -> None:
        if len(bodies) == 1:
            self._redis.xadd(self._stream, {FIELD: bodies[0]})
            return
        for start in range(0, len(bodies), window):
            pipe = self._redis.pipeline(transaction=False)
            for body in bodies[start:start + window]:
                pipe.xadd(self._stream, {FIELD: body})
            pipe.execute()

    def close(self) -> None:
        self._redis.close()


class RedisConsumer:
    def __init__(self, port: int, stream: str, prefetch: int = 100) -> None:
        self._redis = redis.Redis(HOST, port, socket_timeout=60)
        self._stream = stream
        self._prefetch = prefetch

    def receive(self, count: int, deadline: float, handle: Callable[[bytes], None]) -> int:
        taken = 0
        while taken < count and (remaining := deadline - time.monotonic()) > 0:
            reply = self._redis.xreadgroup(GROUP, "c1", {self._stream: ">"},
                                           count=min(self._prefetch, count - taken),
                                           block=max(1, int(min(remaining, 5.0) * 1000)))
            if not reply:
                continue
            entries = reply[0][1]
            pipe = self._redis.pipeline(transaction=False)
            for entry_id, fields in entries:
                handle(fields[FIELD])
                pipe.xack(self._stream, GROUP, entry_id)
            pipe.execute()
            taken += len(entries)
        return taken

    def close(self) -> None:
        self._redis.close()


class RedisSystem(System):
    name = "redis"
    durability = ("yes: a separate redis-server with appendonly yes, appendfsync always "
                  "(AOF fsynced before replies)")
    method = ("redis-py, Streams: XADD (window W = pipeline of W, awaited together); "
              "XREADGROUP COUNT 100 + pipelined XACK per message; transient = Redis on 6379 "
              "(appendonly no)")

    def __init__(self) -> None:
        self._server = ServerProcess("redis", lambda port, tmp: [
            shutil.which("redis-server") or "redis-server", "--port", str(port),
            "--bind", HOST, "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--dir", str(tmp)])
        self._version = ""

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            raise Unavailable("redis-server is not installed (needed for the durable instance)")
        self._server.start()
        self._version = f"Redis {self._client(True).info('server')['redis_version']}"
        try:  # the transient phase needs the machine's Redis, and without AOF
            self.transient = not self._client(False).info("persistence").get("aof_enabled")
        except redis.RedisError:
            self.transient = False

    def stop(self) -> None:
        self._server.stop()

    def version(self) -> str:
        return f"{self._version}, redis-py {package_version('redis')}"

    def _port(self, durable: bool) -> int:
        return self._server.port if durable else TRANSIENT_PORT

    def _client(self, durable: bool) -> redis.Redis:
        return redis.Redis(HOST, self._port(durable), socket_timeout=10)

    def new_queue(self, durable: bool) -> str:
        name = unique("bench:")
        with self._client(durable) as client:
            client.xgroup_create(name, GROUP, id="0", mkstream=True)
        return name

    def drop_queue(self, queue: str, durable: bool) -> None:
        with self._client(durable) as client:
            client.delete(queue)

    def producer(self, queue: str, durable: bool) -> RedisProducer:
        return RedisProducer(self._port(durable), queue)

    def consumer(self, queue: str, durable: bool) -> RedisConsumer:
        return RedisConsumer(self._port(durable), queue)
