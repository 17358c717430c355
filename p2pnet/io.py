"""The byte-stream interface every layer speaks.

A raw TCP connection, a Noise-secured connection and a yamux stream all look the same to the code
above them: ``read``, ``readexactly``, ``write`` (which applies backpressure), ``close``.
:class:`ChunkReader` gives ``read``/``readexactly`` to any class that can produce the next chunk of
bytes, so each layer only writes ``_read_chunk``.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from p2pnet.errors import IncompleteRead

Bytes = bytes | bytearray | memoryview


@runtime_checkable
class ReadWriter(Protocol):
    """What negotiation and protocol code needs from a connection or a stream."""

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (any amount if ``n < 0``); ``b""`` only at EOF."""
        ...

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or :class:`~p2pnet.errors.IncompleteRead` at EOF."""
        ...

    async def write(self, data: Bytes) -> None:
        """Queue ``data`` and wait until the layer below can take more (backpressure)."""
        ...

    async def close(self) -> None: ...


class ChunkReader:
    """``read``/``readexactly`` over a source of chunks.

    Subclasses implement :meth:`_read_chunk`, returning the next non-empty chunk or ``b""`` at EOF.
    Leftover bytes of a chunk are kept for the next call, so a small read never loses data.
    """

    __slots__ = ("_eof", "_pending", "_pending_pos")

    def __init__(self) -> None:
        self._pending = b""
        self._pending_pos = 0
        self._eof = False

    async def _read_chunk(self) -> bytes:
        raise NotImplementedError

    def _take_pending(self, n: int) -> bytes:
        start = self._pending_pos
        avail = len(self._pending) - start
        if n < 0 or n >= avail:
            if start == 0:
                out = self._pending
            else:
                out = self._pending[start:]
            self._pending = b""
            self._pending_pos = 0
            return out
        self._pending_pos = start + n
        return self._pending[start : start + n]

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if self._pending_pos < len(self._pending):
            return self._take_pending(n)
        if self._eof:
            return b""
        chunk = await self._read_chunk()
        if not chunk:
            self._eof = True
            return b""
        if n < 0 or len(chunk) <= n:
            return chunk
        self._pending = chunk
        self._pending_pos = n
        return chunk[:n]

    async def readexactly(self, n: int) -> bytes:
        if n <= 0:
            return b""
        avail = len(self._pending) - self._pending_pos
        if avail >= n:
            return self._take_pending(n)
        parts = [self._take_pending(-1)] if avail else []
        have = avail
        while have < n:
            if self._eof:
                raise IncompleteRead(b"".join(parts), n)
            chunk = await self._read_chunk()
            if not chunk:
                self._eof = True
                raise IncompleteRead(b"".join(parts), n)
            need = n - have
            if len(chunk) > need:
                self._pending = chunk
                self._pending_pos = need
                parts.append(chunk[:need])
                have = n
            else:
                parts.append(chunk)
                have += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def deadline(seconds: float) -> AbstractAsyncContextManager[object]:
    """``async with deadline(s):`` raises TimeoutError if the block takes longer than ``s``.

    Kept here so the sans-IO framing module's adapters need not import asyncio themselves.
    """
    return asyncio.timeout(seconds)
