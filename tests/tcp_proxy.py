"""A TCP relay between a client and a server, for tests of network faults: `reset()` cuts every
connection it carries with a TCP RST on both sides, as a failing network or a NAT that forgets its
mapping would; neither end gets a FIN or a WebSocket close frame. A test fixture, not a product part.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class TcpProxy:
    """Relays each connection to `127.0.0.1:<port>` to the target; counts what it relays upstream."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.connections = 0  # accepted so far
        self.upstream_bytes = 0  # client to server, every connection
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def reset(self) -> None:
        """Cut every open connection with an RST on both sides."""
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        up = asyncio.create_task(self._pipe(client_r, server_w, upstream=True))
        down = asyncio.create_task(self._pipe(server_r, client_w, upstream=False))
        self._tasks |= {up, down}
        try:
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._tasks -= {up, down}
            self._writers -= {client_w, server_w}
            for writer in (client_w, server_w):
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if upstream:
                    self.upstream_bytes += len(data)
                writer.write(data)
                await writer.drain()
        if not writer.transport.is_closing() and writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()  # pass the end on as it came: a FIN for a FIN
