"""The connection settings the blocking and the asyncio clients share."""

from __future__ import annotations

import os
import ssl
from typing import Any

from bbmq.client.arguments import default_address


class ConnectionSettings:
    """Where a client connects and how it introduces itself: what the blocking and the
    asyncio clients share before any socket is opened.

    Unset values come from BBMQ_HOST, BBMQ_PORT and BBMQ_TOKEN, then the defaults.
    """

    def __init__(self, host: str | None, port: int | None, *, name: str | None,
                 token: str | None, tls: bool | ssl.SSLContext, ca_file: str | None,
                 timeout: float) -> None:
        default_host, default_port = default_address()
        self.host = host or default_host
        self.port = port or default_port
        self.name = name
        self.token = token if token is not None else os.environ.get("BBMQ_TOKEN")
        self.tls = tls
        self.ca_file = ca_file
        self.timeout = timeout
        #: What the broker said of itself in its SERVER_ACKNOWLEDGEMENT.
        self.server_info: dict[str, Any] = {}
        #: A handshake has succeeded once: a connection that fails from now on was lost
        #: (worth retrying), while one that never opened is the caller's to hear of at once.
        self.was_connected = False

    def _options(self) -> dict[str, Any]:
        """The handshake's options: this client's name and token, where given."""
        return {key: value for key, value in (("name", self.name), ("token", self.token))
                if value is not None}
