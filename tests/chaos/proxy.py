"""A small TCP proxy on 127.0.0.1 whose network can be made to fail on demand.

``Mode.PASS`` forwards; ``REFUSE`` stops listening and resets what is open (connect
gets ECONNREFUSED); ``BLACK_HOLE`` accepts connections and holds every byte, in both
directions, until the mode changes (a partition: nothing answers, nothing is closed;
the held bytes flow once it heals, as TCP retransmission would deliver them);
``RESET`` answers every connection, new and open, with a TCP reset.
It runs its own event loop on a thread, so a test drives it from plain code.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
import threading
from typing import Self


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    BLACK_HOLE = "black hole"
    RESET = "reset"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets RST, not FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.mode = Mode.PASS
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="faulty-proxy")
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def _call(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)  # type: ignore[arg-type]

    def start(self) -> Self:
        self._thread.start()
        self._call(self._listen())
        return self

    def set_mode(self, mode: Mode) -> None:
        self._call(self._set_mode(mode))

    def close(self) -> None:
        self._call(self._set_mode(Mode.REFUSE))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> None:
        self._flowing = self._flowing or asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: Mode) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode in (Mode.REFUSE, Mode.RESET):
            for writer in list(self._open):
                _reset(writer)
            self._open.clear()
        if mode is Mode.REFUSE and self._server is not None:
            self._server.close()
            self._server = None
        elif mode is not Mode.REFUSE and self._server is None:
            await self._listen()
        if mode is Mode.BLACK_HOLE:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _accepted(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode is Mode.RESET:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1",
                                                                 self.upstream_port)
        except OSError:
            _reset(writer)
            return
        self._open |= {writer, up_writer}
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                             return_exceptions=True)
        self._open -= {writer, up_writer}
        for end in (writer, up_writer):
            end.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()  # a black hole holds the bytes here
                writer.write(data)
                await writer.drain()
        finally:
            if not writer.is_closing():
                writer.close()
