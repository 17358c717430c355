"""Turns a raw TCP connection into an authenticated, multiplexed one.

Outbound: multistream ``/noise`` -> Noise XX as initiator -> multistream ``/yamux/1.0.0`` over
the encrypted channel -> yamux as client (odd stream ids). Inbound is the mirror image. The whole
upgrade runs under one timeout, so a peer that connects and then stays silent is dropped.
"""

from __future__ import annotations

import asyncio
import logging

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import ConnectionClosed, HandshakeError
from p2pnet.host.config import HostConfig
from p2pnet.multistream import negotiate_inbound, negotiate_outbound
from p2pnet.mux import yamux
from p2pnet.mux.yamux_connection import StreamCallback, YamuxConnection
from p2pnet.peer.peer_id import PeerID
from p2pnet.security import noise
from p2pnet.security.noise_connection import NoiseConnection, noise_handshake
from p2pnet.transport.tcp import TcpConnection

log = logging.getLogger("p2pnet.upgrader")


async def upgrade(
    raw: TcpConnection,
    key: KeyPair,
    config: HostConfig,
    *,
    initiator: bool,
    expected_peer: PeerID | None = None,
    on_stream: StreamCallback | None = None,
) -> tuple[NoiseConnection, YamuxConnection]:
    """Secure and multiplex ``raw``; on any failure ``raw`` is closed and the error re-raised."""
    try:
        async with asyncio.timeout(config.upgrade_timeout):
            if initiator:
                await negotiate_outbound(raw, [noise.PROTOCOL_ID])
            else:
                await negotiate_inbound(raw, [noise.PROTOCOL_ID])
            secure = await noise_handshake(
                raw,
                key,
                initiator=initiator,
                expected_peer=expected_peer,
                timeout=config.upgrade_timeout,
            )
            if initiator:
                await negotiate_outbound(secure, [yamux.PROTOCOL_ID])
            else:
                await negotiate_inbound(secure, [yamux.PROTOCOL_ID])
    except TimeoutError as exc:
        raw.abort()
        raise HandshakeError(
            f"upgrade of {raw.remote_addr} timed out after {config.upgrade_timeout}s"
        ) from exc
    except ConnectionClosed as exc:
        raw.abort()
        raise HandshakeError(
            f"{raw.remote_addr} closed the connection during the upgrade: {exc}"
        ) from exc
    except BaseException:
        raw.abort()
        raise
    muxer = YamuxConnection(secure, initiator=initiator, config=config.yamux, on_stream=on_stream)
    return secure, muxer
