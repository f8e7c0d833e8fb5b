"""bbmq: a small, durable message broker you can read end to end.

The client library is the public API of this package::

    from bbmq import Producer, Consumer
"""

from bbmq._version import __version__
from bbmq.client import (
    BrokerError,
    CannotConnect,
    ConnectionLost,
    Consumer,
    InvalidArgument,
    Message,
    Producer,
    PublishError,
)

__all__ = ["BrokerError", "CannotConnect", "ConnectionLost", "Consumer", "InvalidArgument",
           "Message", "Producer", "PublishError", "__version__"]
