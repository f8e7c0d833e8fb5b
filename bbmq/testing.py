"""Run a real broker for tests: on a thread of the test process, or as its own process.

:class:`BrokerController` is modelled on aiosmtpd's ``Controller``: the broker
listens on a real socket, so tests (yours or ours) talk to it exactly as clients
would, but start-up and shutdown take milliseconds::

    with BrokerController(store="memory://") as broker:
        Producer("jobs", port=broker.port).publish(b"hello")

:class:`BrokerProcess` runs ``python -m bbmq server run`` as a child process, for
what only a process can show: ``kill -9``, signals, memory.
:func:`wait_until_answering` is its wait for a started broker, for tests that
start one another way; :func:`wait_for` waits on any condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from bbmq import config as settings
from bbmq.app import build_server, dashboard_sources, wall_clock_ms
from bbmq.client import BrokerError, ping
from bbmq.dashboard import HttpServer, start_http
from bbmq.server import BrokerServer

T = TypeVar("T")


class BrokerController:
    """A broker on a background thread; keyword arguments are settings (see bbmq.config).

    With ``http=True`` its HTTP side (dashboard, API, /metrics) runs too, on a port of its
    own choosing (:attr:`http_port`); otherwise there is none.
    """

    def __init__(self, *, http: bool = False, **overrides: Any) -> None:
        overrides.setdefault("port", 0)
        self.config = settings.load({k: str(v) for k, v in overrides.items()}, environ={})
        self.server: BrokerServer | None = None
        self.serve_http = http
        self.http: HttpServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bbmq-test-broker",
                                        daemon=True)

    @property
    def port(self) -> int:
        assert self.server is not None, "start() first"
        return self.server.address[1]

    @property
    def http_port(self) -> int:
        assert self.http is not None, "start a BrokerController(http=True) first"
        return self.http.port

    def start(self, timeout: float = 30.0) -> Self:
        self._thread.start()
        server = build_server(self.config)
        asyncio.run_coroutine_threadsafe(server.start(), self._loop).result(timeout)
        self.server = server
        if self.serve_http:
            self.http = asyncio.run_coroutine_threadsafe(
                start_http(dashboard_sources(server, self.config), self.config.host, 0,
                           wall_clock_ms), self._loop).result(timeout)
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
        if self.http is not None:
            asyncio.run_coroutine_threadsafe(self.http.close(), self._loop).result(timeout)
            self.http = None
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


def clean_environment() -> dict[str, str]:
    """This process's environment without BBMQ_* settings, able to import this bbmq."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BBMQ_")}
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BrokerProcess:
    """``python -m bbmq server run`` as a child process; keyword arguments are settings.

    The port stays the same across restarts, so clients can reconnect to it.  The HTTP
    side (dashboard, /metrics) is off unless ``http_port`` (or ``metrics_port``) is given,
    so that brokers run side by side do not race for its default port.
    """

    def __init__(self, data_dir: str | Path, **overrides: Any) -> None:
        self.data_dir = Path(data_dir)
        if "metrics_port" not in overrides:
            overrides.setdefault("http_port", 0)
        self.port = int(overrides.pop("port", 0)) or free_port()
        self.settings = {"data_dir": str(self.data_dir), "port": str(self.port), **overrides}
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-broker.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def launch(self) -> Self:
        """Start the process and return at once, without waiting for it to answer."""
        args = [sys.executable, "-m", "bbmq", "server", "run"]
        for name, value in self.settings.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            env=clean_environment())
        return self

    def start(self, timeout: float = 60.0) -> Self:
        """Start the broker and return once it answers PING."""
        self.launch()
        assert self.process is not None
        try:
            wait_until_answering(self.process, self.port, self.log_path, timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """``kill -9``: no shutdown of any kind."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, and return the exit code (the broker drains first)."""
        assert self.process is not None, "start() first"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
                raise
        return int(self.process.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def wait_for(condition: Callable[[], T], what: str, timeout: float = 15.0, *,
             interval: float = 0.01) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Tests wait on conditions, not on sleeps; the deadline keeps a broken test from
    hanging, and ``what`` says in the failure which condition never came true.
    """
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return result


def answers_ping(port: int) -> bool:
    try:
        ping("127.0.0.1", port, timeout=1.0)
    except BrokerError:
        return False
    return True


def wait_until_answering(process: subprocess.Popen[Any], port: int, log_path: Path,
                         timeout: float = 60.0) -> None:
    """Return once the broker ``process`` answers PING on ``port`` of 127.0.0.1.

    A broker that exits fails the wait at once, with the end of its log (which says
    why), rather than at the deadline.
    """
    def answering() -> bool:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"broker exited with {process.returncode} before answering "
                                 f"PING; its log ends:\n{log}")
        return answers_ping(port)

    wait_for(answering, f"the broker to answer PING on port {port} (its log: {log_path})",
             timeout)
