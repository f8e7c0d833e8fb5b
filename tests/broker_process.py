"""Running ``bbmq`` as a user would, as subprocesses, for the daemon and admin tests.

:func:`run_bbmq` runs one command to completion; a broker running in the
foreground is :class:`bbmq.testing.BrokerProcess`, and waits on conditions are
:func:`bbmq.testing.wait_for`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from bbmq.testing import clean_environment


def bbmq_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without the developer's BBMQ_* settings, plus ``extra``.

    The HTTP side is off (BBMQ_HTTP_PORT=0) unless ``extra`` turns it on: daemons started
    side by side would otherwise race for its default port.
    """
    return {**clean_environment(), "BBMQ_HTTP_PORT": "0", **(extra or {})}


def run_bbmq(*args: str, env: Mapping[str, str] | None = None, module: str = "bbmq",
             timeout: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> ARGS`` to completion and capture what it printed."""
    return subprocess.run([sys.executable, "-m", module, *args], env=bbmq_env(env),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          check=False)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
