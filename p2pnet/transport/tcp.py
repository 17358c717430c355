"""TCP transport: listen on and dial ``/ip4|ip6|dns4|dns6/<host>/tcp/<port>`` multiaddrs."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from multiaddr import Multiaddr

from p2pnet.errors import ConnectionClosed, DialError
from p2pnet.io import Bytes, ChunkReader
from p2pnet.transport.addr import host_port_of, is_tcp_multiaddr, tcp_multiaddr
from p2pnet.transport.base import RawConnection, RawConnectionHandler

log = logging.getLogger("p2pnet.tcp")

# Big reads amortise the per-call cost of the event loop; the StreamReader limit bounds how much is
# buffered before asyncio pauses the socket (backpressure towards the remote's TCP window).
READ_SIZE = 1 << 20
STREAM_LIMIT = 1 << 20


class TcpConnection(ChunkReader):
    """A raw TCP connection, speaking the :class:`~p2pnet.io.ReadWriter` interface."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        initiator: bool,
    ) -> None:
        super().__init__()
        self._reader = reader
        self._writer = writer
        self.initiator = initiator
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local_addr = tcp_multiaddr(writer.get_extra_info("sockname"))
        self.remote_addr = tcp_multiaddr(writer.get_extra_info("peername"))
        self._closed = False

    async def _read_chunk(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"TCP connection lost: {exc}") from exc

    async def write(self, data: Bytes) -> None:
        if self._closed:
            raise ConnectionClosed("write on a closed TCP connection")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"TCP connection lost: {exc}") from exc

    async def writelines(self, chunks: list[Bytes]) -> None:
        """Several buffers in one call, so the transport can send them in one syscall."""
        if self._closed:
            raise ConnectionClosed("write on a closed TCP connection")
        try:
            self._writer.writelines(chunks)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(f"TCP connection lost: {exc}") from exc

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), timeout=2.0)
        except (TimeoutError, ConnectionError, OSError):
            self._writer.transport.abort()

    def abort(self) -> None:
        """Drop the connection at once, without flushing."""
        self._closed = True
        self._writer.transport.abort()

    def __repr__(self) -> str:
        return f"<TcpConnection {self.local_addr} <-> {self.remote_addr}>"


ConnectionHandler = Callable[[TcpConnection], Awaitable[None]]


class TcpListener:
    """A listening socket; each accepted connection is handed to ``handler``.

    The handler runs in the task asyncio creates per connection; :meth:`close` stops accepting
    (the owner of the accepted connections closes them).
    """

    def __init__(self, server: asyncio.Server, requested: Multiaddr) -> None:
        self._server = server
        self.requested = requested
        self.multiaddrs = [tcp_multiaddr(s.getsockname()) for s in server.sockets]

    async def close(self) -> None:
        self._server.close()
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)
        except TimeoutError:  # pragma: no cover - connections still open are closed by their owner
            pass


async def listen(addr: Multiaddr, handler: ConnectionHandler) -> TcpListener:
    host, port = host_port_of(addr)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = TcpConnection(reader, writer, initiator=False)
        except OSError:  # the peer went away before we looked at it
            writer.transport.abort()
            return
        await handler(conn)

    server = await asyncio.start_server(
        on_connect, host, port, limit=STREAM_LIMIT, reuse_address=True
    )
    return TcpListener(server, addr)


async def dial(addr: Multiaddr, *, timeout: float = 10.0) -> TcpConnection:
    host, port = host_port_of(addr)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=STREAM_LIMIT), timeout
        )
    except TimeoutError as exc:
        raise DialError(f"TCP dial to {addr} timed out after {timeout}s") from exc
    except OSError as exc:
        raise DialError(f"TCP dial to {addr} failed: {exc}") from exc
    return TcpConnection(reader, writer, initiator=True)


class TcpTransport:
    """The :class:`~p2pnet.transport.base.Transport` for ``/ip4|ip6|dns4|dns6/.../tcp/N``."""

    def can_dial(self, addr: Multiaddr) -> bool:
        return is_tcp_multiaddr(addr)

    def can_listen(self, addr: Multiaddr) -> bool:
        return is_tcp_multiaddr(addr)

    async def dial(self, addr: Multiaddr, *, timeout: float) -> RawConnection:
        return await dial(addr, timeout=timeout)

    async def listen(self, addr: Multiaddr, handler: RawConnectionHandler) -> TcpListener:
        return await listen(addr, handler)
