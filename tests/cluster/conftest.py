"""Fixtures of the cluster suite: a Galera cluster for the session, and the figures report."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .galera import GaleraCluster, galera_cluster


@pytest.fixture(scope="session")
def galera() -> Iterator[GaleraCluster]:
    """Three Galera nodes on loopback, started once for the session (about 25 s)."""
    with galera_cluster() as cluster:
        yield cluster
