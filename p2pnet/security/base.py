"""What the upgrader needs from a security protocol and from the channel it produces."""

from __future__ import annotations

from typing import Protocol

from p2pnet.crypto.keys import KeyPair, PublicKey
from p2pnet.io import ReadWriter
from p2pnet.peer.peer_id import PeerID


class SecureConnection(ReadWriter, Protocol):
    """An authenticated channel: the remote proved ``remote_public_key``."""

    local_peer: PeerID
    remote_peer: PeerID
    remote_public_key: PublicKey


class SecurityTransport(Protocol):
    """A security protocol negotiated by multistream-select (``/noise``, ``/plaintext/2.0.0``)."""

    protocol_id: str

    async def secure(
        self,
        conn: ReadWriter,
        key: KeyPair,
        *,
        initiator: bool,
        expected_peer: PeerID | None,
        timeout: float | None,
    ) -> SecureConnection:
        """The handshake over ``conn``, within ``timeout`` seconds (None: the caller bounds
        it, as the upgrade does for the whole upgrade)."""
        ...
