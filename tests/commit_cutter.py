"""A MySQL proxy that cuts the connection right after it forwards a COMMIT.

The ambiguous commit: the server got the COMMIT (and commits), the client never
hears back and cannot tell whether it did.  The proxy reads the client's side as
MySQL packets (3-byte length, sequence number, payload) and, when armed, forwards
the packet ``COM_QUERY "COMMIT"`` and then ends both connections: the server's with
a FIN after the COMMIT's bytes (so that it reads and runs it), the client's at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from .blackhole_proxy import BlackHoleProxy

#: COM_QUERY (0x03) with the statement PyMySQL's Connection.commit() sends.
COMMIT_PACKET = b"\x03COMMIT"


class CommitCuttingProxy(BlackHoleProxy):
    """Forwards to ``upstream``; after :meth:`cut_after_next_commit`, the next COMMIT a
    client sends goes through and its connection is cut before the answer comes back."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream)
        self._armed = threading.Event()
        #: COMMITs forwarded and then cut.
        self.cuts = 0

    def cut_after_next_commit(self) -> None:
        self._armed.set()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        if source.getsockname()[1] != self.port:  # the server's answers: passed as they come
            super()._pump(source, target)
            return
        pending = b""
        for data in self._received(source, target):
            pending += data
            while len(pending) >= 4 and len(pending) >= 4 + int.from_bytes(pending[:3], "little"):
                end = 4 + int.from_bytes(pending[:3], "little")
                packet, pending = pending[:end], pending[end:]
                cut = self._armed.is_set() and packet[4:] == COMMIT_PACKET
                if cut:
                    self._silent.set()  # the server's answer must not slip through
                try:
                    target.sendall(packet)
                except OSError:
                    return
                if cut:
                    self._armed.clear()
                    self.cuts += 1
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_WR)  # FIN after the COMMIT: it runs
                    with contextlib.suppress(OSError):
                        source.shutdown(socket.SHUT_RDWR)  # the client hears nothing more
                    self._silent.clear()
                    return
