"""The Python client library: :class:`Producer` and :class:`Consumer` over plain sockets.

Blocking and dependency-free, built on the same sans-IO :mod:`bbmq.protocol`
as the server.  A lost connection always surfaces as :class:`ConnectionLost`
(never a hang), and errors from the broker as :class:`BrokerError` with the
broker's code and text.

The package is layered so that an asyncio client can share all but the
socket calls:

* ``errors``, ``message``, ``arguments``: what users see and pass in;
* ``retry``: the one policy of what to resend, when to reconnect, how long to wait;
* ``publishing``, ``consuming``: what a producer and a consumer decide, sans-IO;
* ``channel``: one blocking socket under a ``ClientConnection``;
* ``base``, ``producer``, ``consumer``, ``admin``: the blocking clients.
"""

from bbmq.client.admin import Admin
from bbmq.client.arguments import default_address
from bbmq.client.base import Client, ping
from bbmq.client.channel import ACK_LINGER_S
from bbmq.client.consumer import Consumer
from bbmq.client.errors import (
    BrokerError,
    CannotConnect,
    ConnectionLost,
    InvalidArgument,
    PublishError,
    Redirected,
)
from bbmq.client.message import Message
from bbmq.client.producer import Producer

__all__ = ["ACK_LINGER_S", "Admin", "BrokerError", "CannotConnect", "Client", "ConnectionLost",
           "Consumer", "InvalidArgument", "Message", "Producer", "PublishError", "Redirected",
           "default_address", "ping"]
