"""An in-memory, connected pair of ReadWriters for tests that need no sockets."""

from __future__ import annotations

import asyncio

from p2pnet.errors import ConnectionClosed
from p2pnet.io import Bytes, ChunkReader


class MemoryEnd(ChunkReader):
    def __init__(self) -> None:
        super().__init__()
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: MemoryEnd | None = None
        self.closed = False

    async def _read_chunk(self) -> bytes:
        return await self.inbox.get()

    async def write(self, data: Bytes) -> None:
        if self.closed:
            raise ConnectionClosed("closed")
        if data:
            assert self.peer is not None
            self.peer.inbox.put_nowait(bytes(data))

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.peer is not None
            self.peer.inbox.put_nowait(b"")


def memory_pipe() -> tuple[MemoryEnd, MemoryEnd]:
    a, b = MemoryEnd(), MemoryEnd()
    a.peer, b.peer = b, a
    return a, b
