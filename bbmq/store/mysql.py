"""A store in a MySQL or MariaDB database, for brokers whose data lives on a server.

Through PyMySQL, with autocommit off and one transaction per call, InnoDB
tables in utf8mb4 with binary collation (topic ``a`` is not topic ``A``) and
bodies in LONGBLOB columns, byte for byte.  The server may go away at any
moment: a connection error rolls back, drops the connection and raises
StoreUnavailable, and the next call connects again, so the broker only has
to retry.  Short connect and read/write timeouts make a dead server an error
within seconds rather than a hang.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
from pymysql.constants import CLIENT

from bbmq.store.dbapi import Connection, Cursor
from bbmq.store.schema import Column, Table
from bbmq.store.sql import DEFAULT_DEDUP_WINDOW_MS, SQLStore

MYSQL_DEFAULT_PORT: Final = 3306
DEFAULT_TABLE_PREFIX: Final = "bbmq_"
#: Seconds to open a connection, and to wait on one socket read or write.  Well below a
#: client's own 30 s: a silent database must become STORE_UNAVAILABLE, not a hang.
DEFAULT_CONNECT_TIMEOUT_S: Final = 2.0
DEFAULT_IO_TIMEOUT_S: Final = 5.0
#: SQL types of the column kinds in bbmq.store.schema.TABLES.  Names are at most 200
#: characters; 204 leaves room for the ".dlq" of a dead-letter topic.
_TYPES: Final = {
    "int": "BIGINT", "name": "VARCHAR(204)", "msgid": "VARCHAR(100)", "key": "VARCHAR(64)",
    "text": "TEXT", "blob": "LONGBLOB", "time": "DATETIME(6)",
}
_TABLE_OPTIONS: Final = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
#: Refuse to store a value that does not fit instead of truncating it.
_SQL_MODE: Final = "TRADITIONAL"
#: ER_DUP_FIELDNAME: ALTER TABLE ... ADD COLUMN of a column that exists.
_DUP_FIELDNAME: Final = 1060
#: ER_LOCK_DEADLOCK (on Galera also a certification failure at COMMIT), ER_LOCK_WAIT_TIMEOUT.
_DEADLOCK: Final = 1213
_LOCK_WAIT_TIMEOUT: Final = 1205
#: ER_UNKNOWN_SYSTEM_VARIABLE: a server without wsrep_sync_wait (MySQL, not MariaDB).
_UNKNOWN_VARIABLE: Final = 1193
#: The errors a new setup meets when it opens the store (see explain_open_failure).
_BAD_DB: Final = 1049  # ER_BAD_DB_ERROR: no such database
_ACCESS_DENIED: Final = 1045  # ER_ACCESS_DENIED_ERROR: wrong user or password
_DB_ACCESS_DENIED: Final = 1044  # ER_DBACCESS_DENIED_ERROR: the user may not use the database
_CANNOT_CONNECT: Final = 2003  # CR_CONN_HOST_ERROR: nothing listens there
_UNKNOWN_HOST: Final = 2005  # CR_UNKNOWN_HOST


@dataclass(frozen=True, slots=True)
class MySQLParams:
    """Where a ``mysql://`` URL points."""

    host: str
    port: int
    user: str
    password: str
    database: str
    #: From the ``table_prefix`` query option.
    table_prefix: str | None = None
    #: From the ``connect_timeout`` and ``io_timeout`` query options (seconds).
    connect_timeout_s: float | None = None
    io_timeout_s: float | None = None

    @property
    def description(self) -> str:
        """The URL without the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mysql://{self.user}@{host}:{self.port}/{self.database}"


def parse_mysql_url(url: str) -> MySQLParams:
    """Split ``mysql://user[:password]@host[:port]/database[?option=value&...]``.

    User and password are URL-decoded, so a password may contain ``@`` as ``%40``.
    Options: ``table_prefix``, ``connect_timeout`` and ``io_timeout`` (seconds); others
    are ignored.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or MYSQL_DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad port in MySQL URL {redact_url(url)!r} (a password with / # ? "
                         "must be percent-encoded, or given with --store-password)") from None
    database = unquote(parts.path.lstrip("/"))
    if parts.scheme != "mysql" or not parts.hostname or not parts.username or not database:
        raise ValueError(
            f"MySQL URL {redact_url(url)!r} must look like mysql://user[:password]@host[:port]/database"
        )
    options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    return MySQLParams(
        host=parts.hostname,
        port=port,
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        database=database,
        table_prefix=options.get("table_prefix"),
        connect_timeout_s=_seconds(options, "connect_timeout", url),
        io_timeout_s=_seconds(options, "io_timeout", url),
    )


def _seconds(options: dict[str, str], name: str, url: str) -> float | None:
    if name not in options:
        return None
    try:
        value = float(options[name])
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name} in MySQL URL {redact_url(url)!r} must be a number of seconds "
                         f"above 0, got {options[name]!r}")
    return value


def explain_open_failure(error: BaseException, url: str) -> str | None:
    """Why a MySQL store at ``url`` could not be opened, and what to do, in one line; None
    when ``error`` (or its cause) is none of the failures a new setup runs into."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, pymysql.err.MySQLError):
        cause = cause.__cause__
    if cause is None or not cause.args or not isinstance(cause.args[0], int):
        return None
    code, params = cause.args[0], parse_mysql_url(url)
    server = f"the MySQL server at {params.host}:{params.port}"
    if code == _BAD_DB:
        return (f"database {params.database!r} does not exist on {server}; create it "
                f"(CREATE DATABASE {params.database}) or name another one in --store")
    if code in (_ACCESS_DENIED, _DB_ACCESS_DENIED):
        return (f"{server} refused user {params.user!r} ({cause.args[-1]}); check the user and "
                "password in --store (or --store-password) and the user's grants")
    if code in (_CANNOT_CONNECT, _UNKNOWN_HOST):
        return (f"cannot reach {server} ({cause.args[-1]}); check that it is running and the "
                "host and port in --store")
    return None


def redact_url(url: str) -> str:
    """``url`` with any password replaced, for error messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.partition(':')[0]}:***@{host}"


class MySQLStore(SQLStore):
    """A store in the database named by ``url`` (see :func:`parse_mysql_url`).

    ``table_prefix`` (default: the URL's ``table_prefix`` option, else ``bbmq_``)
    lets several independent brokers or test runs share one database.  The
    timeouts, when not given, come from the URL's options, else the defaults.

    ``causal_reads`` (a cluster broker's store): on MariaDB Galera, every read waits
    until this node has applied what the cluster certified before it
    (``wsrep_sync_wait = 1``), so a broker taking a topic over reads every commit of
    the previous owner, whichever node that went to.  Set it before open().
    """

    PLACEHOLDER = "%s"
    FENCES = True

    def __init__(
        self,
        url: str,
        *,
        retention_ms: int = 0,
        dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS,
        table_prefix: str | None = None,
        connect_timeout_s: float | None = None,
        io_timeout_s: float | None = None,
        password: str | None = None,
        causal_reads: bool = False,
    ) -> None:
        self.params = parse_mysql_url(url)
        self.causal_reads = causal_reads
        if password is not None:
            self.params = replace(self.params, password=password)
        self.connect_timeout_s = (connect_timeout_s or self.params.connect_timeout_s
                                  or DEFAULT_CONNECT_TIMEOUT_S)
        self.io_timeout_s = io_timeout_s or self.params.io_timeout_s or DEFAULT_IO_TIMEOUT_S
        super().__init__(
            self.params.description,
            retention_ms=retention_ms,
            dedup_window_ms=dedup_window_ms,
            table_prefix=table_prefix or self.params.table_prefix or DEFAULT_TABLE_PREFIX,
        )

    def _connect(self) -> Connection:
        conn = self.connector()()
        if self.causal_reads:
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SET SESSION wsrep_sync_wait = 1")
            except pymysql.err.MySQLError as error:
                if error.args[:1] != (_UNKNOWN_VARIABLE,):
                    conn.close()
                    raise
        store_conn: Connection = conn
        return store_conn

    def connector(self) -> Callable[[], pymysql.connections.Connection]:
        """Makes connections to this store's database as the store makes its own: autocommit
        off, strict SQL mode, short timeouts, and rowcounts that count matched rows
        (``CLIENT.FOUND_ROWS``), as :class:`bbmq.store.leases.LeaseTable` needs."""
        p = self.params

        def connect() -> pymysql.connections.Connection:
            return pymysql.connect(
                host=p.host,
                port=p.port,
                user=p.user,
                password=p.password,
                database=p.database,
                charset="utf8mb4",
                autocommit=False,
                sql_mode=_SQL_MODE,
                connect_timeout=self.connect_timeout_s,
                read_timeout=self.io_timeout_s,
                write_timeout=self.io_timeout_s,
                client_flag=CLIENT.FOUND_ROWS,
            )
        return connect

    def _unavailable(self, error: BaseException) -> bool:
        # OperationalError covers lost connections (2006, 2013), refused ones
        # (2003), server shutdown, deadlocks and lock wait timeouts: all worth a retry.
        return isinstance(
            error, pymysql.err.OperationalError | pymysql.err.InterfaceError | OSError
        )

    def _conflict(self, error: BaseException) -> bool:
        return isinstance(error, pymysql.err.OperationalError) and error.args[:1] in (
            (_DEADLOCK,), (_LOCK_WAIT_TIMEOUT,))

    def _begin(self, cursor: Cursor, *, write: bool) -> None:
        # With autocommit off the first statement opens the transaction.
        pass

    def _create_table(self, table: Table) -> list[str]:
        columns = [self._column(c) for c in table.columns]
        columns.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
        name = self.prefix + table.name
        columns += [
            f"INDEX {name}_{'_'.join(cols)} ({', '.join(cols)})" for cols in table.indexes
        ]
        return [f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(columns)}) {_TABLE_OPTIONS}"]

    def _duplicate_column(self, error: Exception) -> bool:
        return isinstance(error, pymysql.err.MySQLError) and error.args[:1] == (_DUP_FIELDNAME,)

    def _column(self, column: Column) -> str:
        null = ' NULL' if column.nullable else " NOT NULL"
        return f"{column.name} {_TYPES[column.kind]}{null}"

    def _upsert_clause(self, key: Sequence[str], update: Sequence[str]) -> str:
        # VALUES(c) works on MariaDB and MySQL (deprecated, not removed, in 8.0).
        # Assigning a key column to itself is the portable "do nothing".
        assignments = [f"{c} = VALUES({c})" for c in update] or [f"{key[0]} = {key[0]}"]
        return "ON DUPLICATE KEY UPDATE " + ", ".join(assignments)
