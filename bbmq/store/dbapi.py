"""The part of DB-API 2 (PEP 249) the SQL stores use: sqlite3 and PyMySQL both fit."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Protocol, TypeVar

T = TypeVar("T")


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use (sqlite3 and PyMySQL both fit)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, operation: str, parameters: Sequence[Any] = ..., /) -> object: ...

    def executemany(self, operation: str, parameters: Iterable[Sequence[Any]], /) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the stores use."""

    def cursor(self) -> Cursor: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...



#: Values per IN (...) list: far below SQLite's and MySQL's parameter limits.
IN_LIST_LENGTH: Final = 500


def in_list_chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most IN_LIST_LENGTH, one per statement."""
    for start in range(0, len(items), IN_LIST_LENGTH):
        yield items[start : start + IN_LIST_LENGTH]
