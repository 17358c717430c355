"""ping (``/ipfs/ping/1.0.0``): the dialer sends 32 random bytes, the listener echoes them."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from p2pnet.errors import ProtocolError
from p2pnet.host.host import Host
from p2pnet.mux.yamux_connection import YamuxStream
from p2pnet.peer.peer_id import PeerID

PROTOCOL_ID = "/ipfs/ping/1.0.0"
PING_SIZE = 32

log = logging.getLogger("p2pnet.ping")


class PingService:
    """Answers pings and measures round trips to other peers."""

    def __init__(self, host: Host, *, timeout: float = 10.0) -> None:
        self.host = host
        self.timeout = timeout
        host.set_stream_handler(PROTOCOL_ID, self._handle)

    async def _handle(self, stream: YamuxStream) -> None:
        # Echo 32-byte payloads until the dialer closes its side.
        async with stream:
            while True:
                data = await stream.read(PING_SIZE)
                if not data:
                    return
                if len(data) < PING_SIZE:
                    data += await stream.readexactly(PING_SIZE - len(data))
                await stream.write(data)

    async def ping(self, peer: PeerID, count: int = 1) -> list[float]:
        """Round-trip times in seconds of ``count`` pings over one stream."""
        async with asyncio.timeout(self.timeout * max(1, count)):
            stream = await self.host.new_stream(peer, [PROTOCOL_ID])
            async with stream:
                rtts = []
                for _ in range(count):
                    payload = os.urandom(PING_SIZE)
                    start = time.perf_counter()
                    await stream.write(payload)
                    echo = await stream.readexactly(PING_SIZE)
                    rtts.append(time.perf_counter() - start)
                    if echo != payload:
                        raise ProtocolError(f"ping reply from {peer} does not match what we sent")
                return rtts
