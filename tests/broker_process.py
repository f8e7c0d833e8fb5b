"""Real broker processes for tests: free ports, private data dirs, deadlines instead of sleeps.

The daemon and admin tests drive ``bbmq`` exactly as a user would, as
subprocesses, so they share these helpers: :func:`run_bbmq` runs one command,
:class:`bbmq.testing.BrokerProcess` runs ``bbmq server run`` in the foreground
until SIGTERM, and :func:`wait_for` polls a condition until a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from bbmq.client import BrokerError, ping
from bbmq.testing import BrokerProcess, clean_environment, free_port

__all__ = ["BrokerProcess", "answers_ping", "bbmq_env", "free_port", "process_alive",
           "run_bbmq", "wait_for"]

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def bbmq_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without the developer's BBMQ_* settings, plus ``extra``."""
    return {**clean_environment(), **(extra or {})}


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
