"""A live connection to one peer: secured and multiplexed by the protocols negotiated for it."""

from __future__ import annotations

from collections.abc import Sequence

from multiaddr import Multiaddr

from p2pnet.clock import Clock
from p2pnet.multistream import negotiate_outbound
from p2pnet.peer.peer_id import PeerID
from p2pnet.resources.manager import ConnectionScope, stream_scope_of
from p2pnet.security.base import SecureConnection
from p2pnet.stream import (
    Direction,
    MuxedConnection,
    Stream,
    StreamAcceptor,
    StreamCallback,
    StreamMuxer,
)

__all__ = ["Connection", "Direction"]


class Connection:
    """What the host knows about one connection (a :class:`~p2pnet.stream.ConnectionInfo`).

    Streams are opened through it; every stream of it reports it as ``stream.conn``.
    """

    __slots__ = (
        "__weakref__",
        "_direction",
        "_local_addr",
        "_muxer_id",
        "_negotiate_timeout",
        "_opened_at",
        "_remote_addr",
        "_security",
        "muxed",
        "scope",
        "secure",
    )

    def __init__(
        self,
        secure: SecureConnection,
        *,
        security: str,
        muxer: StreamMuxer,
        direction: Direction,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        clock: Clock,
        negotiate_timeout: float,
        on_stream: StreamCallback | None,
        scope: ConnectionScope | None = None,
        accept: StreamAcceptor | None = None,
    ) -> None:
        self.secure = secure
        #: The connection's resource scope (None: not accounted).
        self.scope = scope
        self._security = security
        self._muxer_id = muxer.protocol_id
        self._direction = direction
        self._local_addr = local_addr
        self._remote_addr = remote_addr
        self._opened_at = clock.monotonic()
        self._negotiate_timeout = negotiate_timeout
        #: The multiplexed connection the streams run on.
        self.muxed: MuxedConnection = muxer.create(
            secure,
            initiator=direction is Direction.OUTBOUND,
            info=self,
            on_stream=on_stream,
            clock=clock,
            scope=scope,
            accept=accept,
        )

    @property
    def remote_peer(self) -> PeerID:
        return self.secure.remote_peer

    @property
    def local_peer(self) -> PeerID:
        return self.secure.local_peer

    @property
    def direction(self) -> Direction:
        return self._direction

    @property
    def local_addr(self) -> Multiaddr:
        return self._local_addr

    @property
    def remote_addr(self) -> Multiaddr:
        return self._remote_addr

    @property
    def security(self) -> str:
        return self._security

    @property
    def muxer(self) -> str:
        return self._muxer_id

    @property
    def opened_at(self) -> float:
        return self._opened_at

    @property
    def is_closed(self) -> bool:
        return self.muxed.is_closed

    async def new_stream(
        self, protocols: Sequence[str], *, bounded: bool = False, early_data: bytes = b""
    ) -> Stream:
        """Open a stream and agree on the first of ``protocols`` the remote supports, within
        the host's ``negotiate_timeout``; ``bounded``: the caller runs this under a timeout of
        its own, which then bounds the negotiation instead. ``early_data`` (one protocol
        only): the protocol's first bytes, sent with the proposal rather than after the
        echo (see :class:`~p2pnet.multistream.MultistreamDialer`)."""
        stream = await self.muxed.open_stream()
        try:
            stream.protocol = await negotiate_outbound(
                stream,
                protocols,
                timeout=None if bounded else self._negotiate_timeout,
                early_data=early_data,
            )
            scope = stream_scope_of(stream)
            if scope is not None:
                scope.set_protocol(stream.protocol)
        except BaseException:
            await stream.reset()
            raise
        return stream

    async def close(self) -> None:
        await self.muxed.close()

    def __repr__(self) -> str:
        return (
            f"<Connection {self._direction.value} {self.remote_peer} {self._security} "
            f"{self._muxer_id} {self._local_addr} <-> {self._remote_addr}>"
        )
