"""The systems the benchmark knows, by name, each built lazily.

An adapter module is imported only when its system is asked for, so a
missing client library (say, no ``pika``) skips that one system with a note
instead of breaking the whole benchmark.
"""

from __future__ import annotations

import importlib
from typing import Final

from bench.systems.base import System, Unavailable

#: name -> (module, class, keyword arguments), in the order systems are reported.
REGISTRY: Final[dict[str, tuple[str, str, dict[str, str]]]] = {
    "bbmq-sqlite": ("bench.systems.bbmq_broker", "BbmqSystem", {"store": "sqlite"}),
    "bbmq-mysql": ("bench.systems.bbmq_broker", "BbmqSystem", {"store": "mysql"}),
    "bbmq-memory": ("bench.systems.bbmq_broker", "BbmqSystem", {"store": "memory"}),
    "bbmq-sqlite-asyncio": ("bench.systems.bbmq_asyncio", "BbmqAsyncioSystem",
                            {"store": "sqlite"}),
    "bbmq-memory-asyncio": ("bench.systems.bbmq_asyncio", "BbmqAsyncioSystem",
                            {"store": "memory"}),
    "rabbitmq": ("bench.systems.rabbitmq", "RabbitMQSystem", {}),
    "nats": ("bench.systems.nats_js", "NatsSystem", {}),
    "redis": ("bench.systems.redis_streams", "RedisSystem", {}),
    "beanstalkd": ("bench.systems.beanstalk", "BeanstalkSystem", {}),
}


def create(name: str) -> System:
    """The adapter for ``name``; raises Unavailable if its client library is missing."""
    module_name, class_name, kwargs = REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise Unavailable(f"client library missing: {error} (pip install 'bbmq[bench]')") from None
    system: System = getattr(module, class_name)(**kwargs)
    return system
