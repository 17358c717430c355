"""Turns a raw connection into an authenticated, multiplexed one.

Outbound: multistream picks a security protocol (``/noise`` by default) -> its handshake as
initiator -> multistream ``/yamux/1.0.0`` over the secured channel -> yamux as client (odd stream
ids). Inbound is the mirror image. The whole upgrade runs under one timeout, so a peer that
connects and then stays silent is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import ConnectionClosed, HandshakeError
from p2pnet.host.config import HostConfig
from p2pnet.multistream import negotiate_inbound, negotiate_outbound
from p2pnet.mux import yamux
from p2pnet.mux.yamux_connection import StreamCallback, YamuxConnection
from p2pnet.peer.peer_id import PeerID
from p2pnet.security.base import SecureConnection, SecurityTransport
from p2pnet.transport.base import RawConnection

log = logging.getLogger("p2pnet.upgrader")


async def upgrade(
    raw: RawConnection,
    key: KeyPair,
    config: HostConfig,
    security: Sequence[SecurityTransport],
    *,
    initiator: bool,
    expected_peer: PeerID | None = None,
    on_stream: StreamCallback | None = None,
) -> tuple[SecureConnection, YamuxConnection]:
    """Secure and multiplex ``raw``; on any failure ``raw`` is aborted and the error re-raised."""
    by_id = {s.protocol_id: s for s in security}
    try:
        async with asyncio.timeout(config.upgrade_timeout):
            if initiator:
                chosen = await negotiate_outbound(raw, list(by_id))
            else:
                chosen = await negotiate_inbound(raw, by_id.keys())
            secure = await by_id[chosen].secure(
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
