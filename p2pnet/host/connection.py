"""A live connection to one peer: authenticated (Noise) and multiplexed (yamux)."""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence

from multiaddr import Multiaddr

from p2pnet.multistream import negotiate_outbound
from p2pnet.mux.yamux_connection import YamuxConnection, YamuxStream
from p2pnet.peer.peer_id import PeerID
from p2pnet.security.base import SecureConnection


class Direction(enum.Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Connection:
    """What the host knows about one connection; streams are opened through it."""

    def __init__(
        self,
        secure: SecureConnection,
        muxer: YamuxConnection,
        *,
        direction: Direction,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        negotiate_timeout: float,
    ) -> None:
        self.secure = secure
        self.muxer = muxer
        self.direction = direction
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self.opened_at = time.time()
        self._negotiate_timeout = negotiate_timeout

    @property
    def remote_peer(self) -> PeerID:
        return self.secure.remote_peer

    @property
    def local_peer(self) -> PeerID:
        return self.secure.local_peer

    @property
    def is_closed(self) -> bool:
        return self.muxer.is_closed

    async def new_stream(self, protocols: Sequence[str]) -> YamuxStream:
        """Open a stream and agree on the first of ``protocols`` the remote supports."""
        stream = await self.muxer.open_stream()
        try:
            stream.protocol = await negotiate_outbound(
                stream, protocols, timeout=self._negotiate_timeout
            )
        except BaseException:
            await stream.reset()
            raise
        return stream

    async def close(self) -> None:
        await self.muxer.close()

    def __repr__(self) -> str:
        return (
            f"<Connection {self.direction.value} {self.remote_peer} "
            f"{self.local_addr} <-> {self.remote_addr}>"
        )
