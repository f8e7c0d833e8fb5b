"""The blocking and the asyncio client behind one face, so that one behavioural test runs
against both (the ``clients`` fixture in conftest.py).

The asyncio flavour runs each coroutine of :mod:`bbmq.aio` to completion on a
loop of its own: a test written as ``consumer.fetch(timeout=1)`` or ``for
message in consumer`` then drives the asyncio client through exactly the
same steps, on the same broker.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self

from bbmq import aio, client


class Blocking:
    """The blocking client, as it is."""

    name = "blocking"
    Producer: Callable[..., Any] = client.Producer
    Consumer: Callable[..., Any] = client.Consumer

    def close(self) -> None:
        """Nothing to release."""


class Synchronous:
    """An asyncio client object whose coroutine methods run to completion when called."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wrapped: Any) -> None:
        self._loop = loop
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._wrapped, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        def run(*args: Any, **kwargs: Any) -> Any:
            result = self._loop.run_until_complete(attribute(*args, **kwargs))
            return self if result is self._wrapped else result

        return run

    def __enter__(self) -> Self:
        self._loop.run_until_complete(self._wrapped.__aenter__())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._loop.run_until_complete(self._wrapped.__aexit__(exc_type, exc, tb))

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self._loop.run_until_complete(self._wrapped.__anext__())


class Asyncio:
    """The asyncio client, each object made :class:`Synchronous` on this flavour's loop."""

    name = "asyncio"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def Producer(self, *args: Any, **kwargs: Any) -> Synchronous:  # noqa: N802 - as the class
        return Synchronous(self.loop, aio.Producer(*args, **kwargs))

    def Consumer(self, *args: Any, **kwargs: Any) -> Synchronous:  # noqa: N802 - as the class
        return Synchronous(self.loop, aio.Consumer(*args, **kwargs))

    def close(self) -> None:
        self.loop.close()


Flavour = Blocking | Asyncio
