"""Fixtures of the cluster suite: a Galera cluster for the session, and the figures report."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .galera import GaleraCluster, galera_cluster
from .harness import REPORT, chaos_rounds


@pytest.fixture(scope="session")
def galera() -> Iterator[GaleraCluster]:
    """Three Galera nodes on loopback, started once for the session (about 25 s)."""
    with galera_cluster() as cluster:
        yield cluster


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures the cluster tests measured (failover times, losses), at the end of the
    run and appended to BBMQ_CHAOS_REPORT as the chaos suite's are."""
    if not REPORT:
        return
    terminalreporter.section(f"cluster figures (BBMQ_CHAOS_ROUNDS={chaos_rounds()})")
    for line in REPORT:
        terminalreporter.write_line(line)
    if target := os.environ.get("BBMQ_CHAOS_REPORT"):
        with Path(target).open("a") as out:
            out.write("\n".join(REPORT) + "\n")
