"""An in-process transport: ``/memory/<port>`` addresses inside one :class:`MemoryNetwork`.

Large simulations (hundreds of nodes in one event loop) run the real host, muxer and protocols
over it without sockets. There is no global state: every network is its own object, so tests
cannot see each other's nodes. Writes apply backpressure like a socket: a writer waits while the
remote has more than ``high_water`` bytes unread. After the upgrade a connection is attached
(:meth:`MemoryConnection.attach`) and pushes what it receives, like the TCP transport.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Sequence

from multiaddr import Multiaddr

from p2pnet.channel import ChannelReceiver, LostSignal
from p2pnet.errors import ConnectionClosed, DialError
from p2pnet.io import Bytes, ChunkReader
from p2pnet.transport.base import RawConnection, RawConnectionHandler
from p2pnet.waiters import Waiters

DEFAULT_HIGH_WATER = 4 * 1024 * 1024


def memory_port(addr: Multiaddr) -> int | None:
    """The port of a ``/memory/<port>[/p2p/<id>]`` address, else None."""
    return _memory_port(addr.to_bytes())


#: ``/memory/<port>`` in bytes is this prefix and the port as 8 big-endian bytes.
_MEMORY_PREFIX = Multiaddr("/memory/0").to_bytes()[:-8]


def memory_addr(port: int) -> Multiaddr:
    """``/memory/<port>``, built from its bytes (parsing the text form costs ~15x more, and
    every connection has a new port)."""
    return Multiaddr(_MEMORY_PREFIX + port.to_bytes(8, "big"))


@functools.lru_cache(maxsize=8192)
def _memory_port(raw: bytes) -> int | None:
    # memoised: the multiaddr package parses slowly and every dial asks again
    addr = Multiaddr(raw)
    names = [p.name for p in addr.protocols()]
    if not names or names[0] != "memory" or any(n != "p2p" for n in names[1:]):
        return None
    return int(addr.value_for_protocol("memory"))


class MemoryConnection(ChunkReader):
    """One end of an in-process connection.

    Pull mode (the upgrade) reads the inbox; :meth:`attach` switches to push mode, where what the
    other end writes is handed to the receiver from a ``call_soon`` callback, like a socket's
    ``data_received``. Either way the other end is told to wait (``pause_writing`` in push mode)
    while this inbox holds ``high_water`` bytes or more.
    """

    # (two per in-process connection: an attribute dict each would be ~1 KB more)
    __slots__ = (
        "_buffered",
        "_closed",
        "_full",
        "_head",
        "_high_water",
        "_inbox",
        "_lost",
        "_push_scheduled",
        "_read_paused",
        "_readable",
        "_receiver",
        "_remote_eof",
        "_writable",
        "_write_paused",
        "initiator",
        "local_addr",
        "peer",
        "remote_addr",
    )

    def __init__(
        self, local_addr: Multiaddr, remote_addr: Multiaddr, *, high_water: int, initiator: bool
    ) -> None:
        super().__init__()
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self.initiator = initiator
        self.peer: MemoryConnection | None = None
        # what the other end wrote and this end did not take yet: ``_inbox[_head:]`` (a list,
        # emptied once taken, rather than a deque: an empty deque is ~760 bytes, an empty list
        # 56, and most connections are idle most of the time)
        self._inbox: list[bytes] = []
        self._head = 0
        self._buffered = 0
        self._high_water = high_water
        # (Waiters, not asyncio.Events: each Event costs ~800 bytes per connection end, and
        # after the upgrade nobody waits here any more)
        self._readable = Waiters()
        self._writable = Waiters()
        self._full = False  # this inbox holds high_water bytes: the other end waits
        self._remote_eof = False
        self._closed = False
        # push mode
        self._receiver: ChannelReceiver | None = None
        self._lost = LostSignal()
        self._push_scheduled = False
        self._read_paused = False
        self._write_paused = False

    # Called by the other end.
    def _deliver(self, data: bytes) -> None:
        self._inbox.append(data)
        self._buffered += len(data)
        if self._buffered >= self._high_water:
            self._full = True
            writer = self.peer
            if writer is not None and writer._receiver is not None and not writer._write_paused:
                writer._write_paused = True
                writer._receiver.pause_writing()
        if self._receiver is not None:
            self._schedule_push()
        else:
            self._readable.wake()

    def _deliver_eof(self) -> None:
        self._remote_eof = True
        self._readable.wake()
        self._full = False
        self._writable.wake()
        if self._receiver is not None:
            self._schedule_push()

    def _drained(self) -> None:
        """The inbox went down: let the other end write again if it was told to wait."""
        if self._buffered < self._high_water:
            if self._full:
                self._full = False
                self._writable.wake()
            writer = self.peer
            if writer is not None and writer._write_paused and writer._receiver is not None:
                writer._write_paused = False
                writer._receiver.resume_writing()

    def _take(self) -> bytes:
        """The next chunk of the inbox (there is one)."""
        inbox = self._inbox
        head = self._head
        data = inbox[head]
        head += 1
        if head == len(inbox):
            inbox.clear()  # (frees its storage)
            head = 0
        elif head >= 1024 and head * 2 >= len(inbox):
            del inbox[:head]  # (amortised: a long backlog read chunk by chunk)
            head = 0
        self._head = head
        self._buffered -= len(data)
        return data

    async def _read_chunk(self) -> bytes:
        while not self._inbox:
            if self._remote_eof or self._closed:
                return b""
            await self._readable.wait()
        data = self._take()
        self._drained()
        return data

    async def write(self, data: Bytes) -> None:
        peer = self.peer
        if self._closed or peer is None or peer._closed:
            raise ConnectionClosed("memory connection closed")
        if data:
            peer._deliver(bytes(data))
        while peer._full:
            await peer._writable.wait()
            if self._closed or peer._closed:
                raise ConnectionClosed("memory connection closed")

    # -- push mode ------------------------------------------------------------------------------

    def attach(self, receiver: ChannelReceiver) -> MemoryChannel:
        """Push what is unread, then what arrives, to ``receiver``."""
        if self._receiver is not None:
            raise RuntimeError("this memory connection is attached already")
        self._receiver = receiver
        if self._pending_pos < len(self._pending):
            receiver.data_received(self._take_pending(-1))
        if self._closed:
            self._lost.fire(receiver, None)
        else:
            self._push()
        return MemoryChannel(self)

    def _schedule_push(self) -> None:
        if not self._push_scheduled and not self._read_paused:
            self._push_scheduled = True
            asyncio.get_running_loop().call_soon(self._push)

    def _push(self) -> None:
        self._push_scheduled = False
        receiver = self._receiver
        assert receiver is not None
        inbox = self._inbox
        lost = self._lost
        while inbox and not self._read_paused and not lost.lost:
            receiver.data_received(self._take())
        self._drained()
        if not inbox and (self._remote_eof or self._closed):
            lost.fire(receiver, None)

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.clear()
        self._head = 0
        self._buffered = 0
        self._readable.wake()
        self._full = False
        self._writable.wake()
        if self.peer is not None:
            self.peer._deliver_eof()
        if self._receiver is not None:
            self._read_paused = False
            self._schedule_push()

    def __repr__(self) -> str:
        return f"<MemoryConnection {self.local_addr} <-> {self.remote_addr}>"


class MemoryChannel:
    """The push :class:`~p2pnet.channel.Channel` of an attached :class:`MemoryConnection`."""

    __slots__ = ("_conn",)

    def __init__(self, conn: MemoryConnection) -> None:
        self._conn = conn

    def write(self, data: Bytes) -> None:
        conn = self._conn
        peer = conn.peer
        if conn._closed or peer is None or peer._closed:
            raise ConnectionClosed("memory connection closed")
        if data:
            peer._deliver(bytes(data))

    def writelines(self, chunks: Sequence[Bytes]) -> None:
        self.write(b"".join(chunks))

    def pause_reading(self) -> None:
        self._conn._read_paused = True

    def resume_reading(self) -> None:
        conn = self._conn
        if conn._read_paused:
            conn._read_paused = False
            if conn._inbox or conn._remote_eof:
                conn._schedule_push()

    def close(self) -> None:
        # nothing is buffered on the way: what was written is in the other end's inbox already
        self._conn.abort()

    def abort(self) -> None:
        self._conn.abort()

    async def wait_closed(self) -> None:
        await self._conn._lost.wait()


class MemoryListener:
    def __init__(self, network: MemoryNetwork, port: int, handler: RawConnectionHandler) -> None:
        self.network = network
        self.port = port
        self.handler = handler
        self.multiaddrs = [Multiaddr(f"/memory/{port}")]
        self.tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        self.network._listeners.pop(self.port, None)
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)


class MemoryNetwork:
    """A namespace of ``/memory/<port>`` listeners; hosts on one network can reach each other."""

    def __init__(self, *, high_water: int = DEFAULT_HIGH_WATER) -> None:
        self.high_water = high_water
        self._listeners: dict[int, MemoryListener] = {}
        self._ports = itertools.count(1)

    def transport(self) -> MemoryTransport:
        return MemoryTransport(self)

    def _free_port(self) -> int:
        while True:
            port = next(self._ports)
            if port not in self._listeners:
                return port


class MemoryTransport:
    """The :class:`~p2pnet.transport.base.Transport` of one :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network

    def can_dial(self, addr: Multiaddr) -> bool:
        return memory_port(addr) is not None

    def can_listen(self, addr: Multiaddr) -> bool:
        return memory_port(addr) is not None

    async def listen(self, addr: Multiaddr, handler: RawConnectionHandler) -> MemoryListener:
        port = memory_port(addr)
        if port is None:
            raise ValueError(f"not a memory address: {addr}")
        if port == 0:
            port = self.network._free_port()
        if port in self.network._listeners:
            raise OSError(f"memory port {port} is in use")
        listener = MemoryListener(self.network, port, handler)
        self.network._listeners[port] = listener
        return listener

    async def dial(self, addr: Multiaddr, *, timeout: float) -> RawConnection:
        port = memory_port(addr)
        listener = self.network._listeners.get(port) if port is not None else None
        if listener is None or port is None:
            raise DialError(f"nothing listens on {addr}")
        local = memory_addr(self.network._free_port())
        remote = memory_addr(port)
        hw = self.network.high_water
        ours = MemoryConnection(local, remote, high_water=hw, initiator=True)
        theirs = MemoryConnection(remote, local, high_water=hw, initiator=False)
        ours.peer, theirs.peer = theirs, ours
        # The listener's handler runs like an accepted socket's callback: in its own task,
        # owned by the listener until the handler returns.
        task = asyncio.get_running_loop().create_task(self._accept(listener, theirs))
        listener.tasks.add(task)
        task.add_done_callback(listener.tasks.discard)
        return ours

    @staticmethod
    async def _accept(listener: MemoryListener, conn: MemoryConnection) -> None:
        await listener.handler(conn)
