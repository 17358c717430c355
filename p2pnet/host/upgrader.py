"""Turns a raw connection into an authenticated one and picks its stream muxer.

Outbound: multistream picks a security protocol from ``security`` (``/noise`` by default) -> its
handshake as initiator -> multistream picks a muxer from ``muxers`` (``/yamux/1.0.0`` by default)
over the secured channel. Inbound is the mirror image. The whole upgrade runs under one timeout,
so a peer that connects and then stays silent is dropped. The muxer itself is started by
:class:`~p2pnet.host.connection.Connection`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from p2pnet.crypto.keys import KeyPair
from p2pnet.deadlines import DeadlineQueue
from p2pnet.errors import ConnectionClosed, HandshakeError
from p2pnet.host.config import HostConfig
from p2pnet.multistream import negotiate_inbound, negotiate_outbound
from p2pnet.peer.peer_id import PeerID
from p2pnet.security.base import SecureConnection, SecurityTransport
from p2pnet.stream import StreamMuxer
from p2pnet.transport.base import RawConnection

log = logging.getLogger("p2pnet.upgrader")


@dataclass(frozen=True, slots=True)
class Upgraded:
    """A secured channel and the protocols agreed for it."""

    secure: SecureConnection
    security: str
    muxer: StreamMuxer


async def upgrade(
    raw: RawConnection,
    key: KeyPair,
    config: HostConfig,
    security: Sequence[SecurityTransport],
    muxers: Sequence[StreamMuxer],
    *,
    initiator: bool,
    expected_peer: PeerID | None = None,
    deadlines: DeadlineQueue | None = None,
) -> Upgraded:
    """Secure ``raw`` and agree on a muxer; on any failure ``raw`` is aborted and the error
    re-raised. Both lists are in order of preference (the dialer proposes them in that order).
    ``deadlines``: a queue of ``config.upgrade_timeout`` (the host's) whose one timer bounds
    the upgrade, rather than a timer of its own."""
    by_id = {s.protocol_id: s for s in security}
    muxer_by_id = {m.protocol_id: m for m in muxers}
    bound = (
        deadlines.timeout()
        if deadlines is not None and deadlines.delay == config.upgrade_timeout
        else asyncio.timeout(config.upgrade_timeout)
    )
    try:
        async with bound:
            # (the negotiations need no timeouts of their own: this one bounds the whole)
            if initiator:
                chosen = await negotiate_outbound(raw, list(by_id), timeout=None)
            else:
                chosen = await negotiate_inbound(raw, by_id.keys(), timeout=None)
            secure = await by_id[chosen].secure(
                raw,
                key,
                initiator=initiator,
                expected_peer=expected_peer,
                timeout=None,  # (bounded by the upgrade's timeout)
            )
            if initiator:
                muxer_id = await negotiate_outbound(secure, list(muxer_by_id), timeout=None)
            else:
                muxer_id = await negotiate_inbound(secure, muxer_by_id.keys(), timeout=None)
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
    return Upgraded(secure, chosen, muxer_by_id[muxer_id])
