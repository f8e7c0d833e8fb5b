"""A TCP proxy in front of MySQL that can cut a connection right after a COMMIT went through.

The ambiguous commit: the database has committed, the broker never hears so (its
connection breaks while it waits for the answer).  Armed with :meth:`cut_next_commit`,
the proxy watches the client-to-server packets of every connection (MySQL packets: a
3-byte length, a sequence number, then for a command its type: 0x03 is COM_QUERY), and
on a connection whose transaction inserted into a ``messages`` table, lets the COMMIT
through, swallows the server's answer, and closes both sides.  Other connections (the
membership's lease renewals, say) pass untouched.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

COM_QUERY = 0x03
POLL_S = 0.05


@dataclass
class _Link:
    """One proxied connection: its two sockets and what its transaction did so far."""

    client: socket.socket
    server: socket.socket
    inserted_message: bool = False
    swallowing: bool = False
    pending: bytearray = field(default_factory=bytearray)

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class CommitCutProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; see the module docstring."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._armed = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        #: How many COMMITs were let through and then cut.
        self.cuts = 0
        self._cut = threading.Condition(self._lock)
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._accepter.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closing.set()
        self._accepter.join()
        self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def cut_next_commit(self) -> None:
        """Cut the next connection that commits a transaction which inserted a message."""
        self._armed.set()

    def wait_for_cut(self, count: int, timeout: float) -> bool:
        with self._cut:
            return self._cut.wait_for(lambda: self.cuts >= count, timeout)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._client_to_server, args=(link,), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(link,), daemon=True).start()

    def _client_to_server(self, link: _Link) -> None:
        try:
            while data := link.client.recv(65536):
                link.pending += data
                self._forward_packets(link)
        except OSError:
            pass
        link.close()

    def _forward_packets(self, link: _Link) -> None:
        """Forward every whole packet in ``pending``, looking at the queries among them."""
        while len(link.pending) >= 4:
            length = int.from_bytes(link.pending[:3], "little")
            if len(link.pending) < 4 + length:
                return
            packet = bytes(link.pending[:4 + length])
            del link.pending[:4 + length]
            sequence, payload = packet[3], packet[4:]
            if sequence == 0 and payload[:1] == bytes([COM_QUERY]):
                query = payload[1:200].decode(errors="replace").lstrip().upper()
                if query.startswith("INSERT") and "MESSAGES" in query:
                    link.inserted_message = True
                elif query.startswith("COMMIT"):
                    if link.inserted_message and self._armed.is_set():
                        self._armed.clear()
                        link.swallowing = True  # before the COMMIT leaves: its answer too
                    link.inserted_message = False
                elif query.startswith("ROLLBACK"):
                    link.inserted_message = False
            link.server.sendall(packet)

    def _server_to_client(self, link: _Link) -> None:
        try:
            while data := link.server.recv(65536):
                if link.swallowing:
                    # The COMMIT's answer: the database committed; the client never learns.
                    with self._cut:
                        self.cuts += 1
                        self._cut.notify_all()
                    break
                link.client.sendall(data)
        except OSError:
            pass
        link.close()
