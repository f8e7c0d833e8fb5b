"""The Galera helper itself: a row written on one node is read on another."""

from __future__ import annotations

import uuid

import pytest

from .galera import GaleraCluster

pytestmark = [pytest.mark.galera, pytest.mark.slow]


def test_a_row_written_on_node_1_is_read_on_node_3(galera: GaleraCluster) -> None:
    assert [node.status("wsrep_cluster_size") for node in galera.nodes] == ["3", "3", "3"]
    table = f"t{uuid.uuid4().hex[:12]}"
    first, _, third = galera.nodes
    with first.connect() as writer, writer.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, body VARCHAR(32))")
        cursor.execute(f"INSERT INTO {table} VALUES (1, 'written on node 1')")
    with third.connect() as reader, reader.cursor() as cursor:
        # Reads wait until this node has applied everything the cluster certified.
        cursor.execute("SET SESSION wsrep_sync_wait=1")
        cursor.execute(f"SELECT body FROM {table} WHERE id = 1")
        assert cursor.fetchall() == (("written on node 1",),)
        cursor.execute(f"DROP TABLE {table}")
