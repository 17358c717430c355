"""ping (``/ipfs/ping/1.0.0``): the dialer sends 32 random bytes, the listener echoes them."""

from __future__ import annotations

import asyncio
import logging
import os

from p2pnet.errors import ProtocolError
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.service import Lifecycle
from p2pnet.stream import Stream

PROTOCOL_ID = "/ipfs/ping/1.0.0"
PING_SIZE = 32
#: The ping spec lets a listener refuse more than two concurrent ping streams per peer.
MAX_INBOUND_PER_PEER = 2

log = logging.getLogger("p2pnet.ping")


class PingService:
    """Answers pings and measures round trips to other peers."""

    def __init__(self, host: Host, *, timeout: float = 10.0) -> None:
        self.host = host
        self.timeout = timeout
        self._inbound: dict[PeerID, int] = {}
        # Answering from construction (what every caller relies on): the service starts here.
        self._lifecycle = Lifecycle("ping")
        self._lifecycle.begin_start()
        host.set_stream_handler(PROTOCOL_ID, self._handle)

    async def start(self) -> None:
        """A no-op: ping is answered from construction (RuntimeError once closed)."""
        self._lifecycle.begin_start()

    async def close(self) -> None:
        """Stop answering pings for good (our own pings still work while connected)."""
        if self._lifecycle.begin_close() is not None:
            self.host.remove_stream_handler(PROTOCOL_ID)

    async def _handle(self, stream: Stream) -> None:
        peer = stream.conn.remote_peer
        active = self._inbound.get(peer, 0)
        if active >= MAX_INBOUND_PER_PEER:
            log.debug("refusing a ping stream from %s: %d already open", peer, active)
            await stream.reset()
            return
        self._inbound[peer] = active + 1
        try:
            await self._echo(stream)
        finally:
            left = self._inbound[peer] - 1
            if left:
                self._inbound[peer] = left
            else:
                del self._inbound[peer]

    async def _echo(self, stream: Stream) -> None:
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
                now = self.host.clock.monotonic
                for _ in range(count):
                    payload = os.urandom(PING_SIZE)
                    start = now()
                    await stream.write(payload)
                    echo = await stream.readexactly(PING_SIZE)
                    rtts.append(now() - start)
                    if echo != payload:
                        raise ProtocolError(f"ping reply from {peer} does not match what we sent")
                    self.host.peerstore.record_latency(peer, rtts[-1])
                return rtts
