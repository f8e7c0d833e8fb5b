"""Run a real broker inside a test process, on its own thread and event loop.

Modelled on aiosmtpd's ``Controller``: the broker listens on a real socket, so
tests (yours or ours) talk to it exactly as clients would, but start-up and
shutdown take milliseconds::

    with BrokerController(store="memory://") as broker:
        Producer("jobs", port=broker.port).publish(b"hello")
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

from bbmq import config as settings
from bbmq.server import BrokerServer


class BrokerController:
    """A broker on a background thread; keyword arguments are settings (see bbmq.config)."""

    def __init__(self, **overrides: Any) -> None:
        overrides.setdefault("port", 0)
        self.config = settings.load({k: str(v) for k, v in overrides.items()}, environ={})
        self.server: BrokerServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bbmq-test-broker",
                                        daemon=True)

    @property
    def port(self) -> int:
        assert self.server is not None, "start() first"
        return self.server.address[1]

    def start(self, timeout: float = 30.0) -> Self:
        self._thread.start()
        server = BrokerServer(self.config)
        asyncio.run_coroutine_threadsafe(server.start(), self._loop).result(timeout)
        self.server = server
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the broker's loop thread and return its result."""
        result: Future[Any] = Future()

        def run() -> None:
            try:
                result.set_result(fn(*args))
            except BaseException as error:
                result.set_exception(error)

        self._loop.call_soon_threadsafe(run)
        return result.result(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout)
            self.server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
