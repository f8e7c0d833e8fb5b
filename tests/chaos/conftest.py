"""The chaos suite prints its figures at the end of the run, and to BBMQ_CHAOS_REPORT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .harness import REPORT, chaos_rounds


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section(f"chaos figures (BBMQ_CHAOS_ROUNDS={chaos_rounds()})")
    for line in REPORT:
        terminalreporter.write_line(line)
    if target := os.environ.get("BBMQ_CHAOS_REPORT"):
        with Path(target).open("a") as out:
            out.write("\n".join(REPORT) + "\n")
