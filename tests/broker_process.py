"""Real broker processes for tests: free ports, private data dirs, deadlines instead of sleeps.

The daemon and admin tests drive ``bbmq`` exactly as a user would, as
subprocesses, so they share these helpers: :func:`run_bbmq` runs one command,
:class:`BrokerProcess` runs ``bbmq server run`` in the foreground until
SIGTERM, and :func:`wait_for` polls a condition until a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from bbmq.client import BrokerError, ping

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bbmq_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without the developer's BBMQ_* settings, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BBMQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_bbmq(*args: str, env: Mapping[str, str] | None = None, module: str = "bbmq",
             timeout: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> ARGS`` to completion and capture what it printed."""
    return subprocess.run([sys.executable, "-m", module, *args], env=bbmq_env(env),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          check=False)


def wait_for(condition: Callable[[], T], what: str, timeout: float = 15.0) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def answers_ping(port: int) -> bool:
    try:
        ping("127.0.0.1", port, timeout=1.0)
    except BrokerError:
        return False
    return True


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class BrokerProcess:
    """``bbmq server run`` in the foreground on a free port and its own data dir."""

    def __init__(self, data_dir: Path, *args: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.args = args
        self.log_path = data_dir / "foreground.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def start(self, timeout: float = 30.0) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bbmq", "server", "run", "--host", "127.0.0.1",
                 "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args],
                env=bbmq_env(), stdout=log, stderr=subprocess.STDOUT)
        process = self.process
        wait_for(lambda: process.poll() is not None or answers_ping(self.port),
                 f"the broker to answer on port {self.port}", timeout)
        if process.poll() is not None:
            raise AssertionError(f"the broker exited with {process.returncode}:\n"
                                 f"{self.log_path.read_text()}")
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the drain; kill it if it hangs (and fail then)."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else 0
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"the broker did not stop within {timeout:g} s") from None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
