"""Where MySQL-backed tests find a server, and what they do without one.

Tests marked ``mysql`` use the server named by ``BBMQ_TEST_MYSQL_URL``
(default: a local MariaDB, user root without password, database ``test``).
Without a server they skip and say how to enable them, except on CI
(``CI=true``), where a missing database must fail the build rather than
quietly shrink it.  Each test works in tables of its own prefix so tests never
see each other's data nor that of anybody else using the database.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pymysql
import pytest

from bbmq.store.mysql import parse_mysql_url

DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"


def mysql_url() -> str:
    """The server the tests use."""
    return os.environ.get("BBMQ_TEST_MYSQL_URL") or DEFAULT_MYSQL_URL


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    """Skip the test for a missing dependency, or fail it on CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)")
    pytest.skip(reason)


def connect(url: str) -> pymysql.Connection:
    """A plain autocommit connection to the database ``url`` names."""
    params = parse_mysql_url(url)
    return pymysql.connect(
        host=params.host, port=params.port, user=params.user, password=params.password,
        database=params.database, connect_timeout=3, autocommit=True,
    )


@functools.cache
def unreachable_reason(url: str) -> str | None:
    """Why ``url`` cannot be used, or None if it answers (asked once per session)."""
    try:
        connect(url).close()
    except (pymysql.err.Error, OSError) as error:
        return (
            f"MySQL at {parse_mysql_url(url).description} does not answer ({error}); "
            "start MariaDB/MySQL or set BBMQ_TEST_MYSQL_URL"
        )
    return None


def require_mysql() -> str:
    """The test server's URL; skips (or fails on CI) if it does not answer."""
    url = mysql_url()
    reason = unreachable_reason(url)
    if reason is not None:
        missing(reason)
    return url


def unique_table_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}_"


def with_table_prefix(url: str, prefix: str) -> str:
    """``url`` with its ``table_prefix`` option set to ``prefix``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=f"table_prefix={prefix}"))


def drop_tables(url: str, prefix: str) -> None:
    """Drop every table whose name starts with ``prefix``."""
    conn = connect(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW TABLES")
            tables = [name for (name,) in cursor.fetchall() if name.startswith(prefix)]
            if tables:
                cursor.execute("DROP TABLE IF EXISTS " + ", ".join(f"`{t}`" for t in tables))
    finally:
        conn.close()


@contextmanager
def isolated_mysql_url() -> Iterator[str]:
    """A URL of the test server with a fresh table prefix; its tables go afterwards."""
    url = require_mysql()
    prefix = unique_table_prefix()
    try:
        yield with_table_prefix(url, prefix)
    finally:
        drop_tables(url, prefix)
