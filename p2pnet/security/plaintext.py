"""``/plaintext/2.0.0``: identities exchanged in the clear, no encryption.

For tests, simulations and interop suites only (the spec says: never in production). Each side
sends one length-prefixed ``Exchange{id, pubkey}``; the remote's id must be the hash of its key,
and a dialer that expects a peer ID checks it. Nothing authenticates the key: a man in the middle
can claim any identity, which is why hosts use Noise by default.
"""

from __future__ import annotations

import asyncio

from google.protobuf.message import DecodeError

from p2pnet.channel import Channel, ChannelReceiver, attach
from p2pnet.crypto.keys import KeyPair, PublicKey, unmarshal_public_key
from p2pnet.errors import CryptoError, HandshakeError, P2PError, PeerIDMismatch
from p2pnet.io import Bytes, ReadWriter
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.framing import encode_length_prefixed, read_length_prefixed
from p2pnet.wire.pb import keys_pb2, plaintext_pb2

PROTOCOL_ID = "/plaintext/2.0.0"
MAX_EXCHANGE_SIZE = 16 * 1024


class PlaintextConnection:
    """Passes bytes through unchanged; carries the identities both sides claimed."""

    __slots__ = ("local_peer", "raw", "remote_peer", "remote_public_key")

    def __init__(
        self, raw: ReadWriter, *, local_peer: PeerID, remote_peer: PeerID, remote_key: PublicKey
    ) -> None:
        self.raw = raw
        self.local_peer = local_peer
        self.remote_peer = remote_peer
        self.remote_public_key = remote_key

    async def read(self, n: int = -1) -> bytes:
        return await self.raw.read(n)

    async def readexactly(self, n: int) -> bytes:
        return await self.raw.readexactly(n)

    async def write(self, data: Bytes) -> None:
        await self.raw.write(data)

    async def close(self) -> None:
        await self.raw.close()

    def attach(self, receiver: ChannelReceiver) -> Channel:
        """Push mode is the connection below's: nothing to decrypt."""
        return attach(self.raw, receiver)


def _encode_exchange(key: KeyPair, peer: PeerID) -> bytes:
    msg = plaintext_pb2.Exchange()
    msg.id = peer.to_bytes()
    pub = keys_pb2.PublicKey()
    pub.ParseFromString(key.public_key.to_protobuf())
    msg.pubkey.CopyFrom(pub)
    return msg.SerializeToString()


def _decode_exchange(data: bytes) -> tuple[PeerID, PublicKey]:
    msg = plaintext_pb2.Exchange()
    try:
        msg.ParseFromString(data)
        if not msg.HasField("id") or not msg.HasField("pubkey"):
            raise HandshakeError("plaintext exchange lacks the id or the public key")
        key = unmarshal_public_key(msg.pubkey.SerializeToString())
        peer = PeerID.from_bytes(msg.id)
    except (DecodeError, CryptoError) as exc:
        raise HandshakeError(f"malformed plaintext exchange: {exc}") from exc
    if not peer.matches_public_key(key):
        raise HandshakeError(f"plaintext exchange: id {peer} is not the hash of the key sent")
    return peer, key


class PlaintextSecurity:
    """``/plaintext/2.0.0`` as a :class:`~p2pnet.security.base.SecurityTransport`."""

    protocol_id = PROTOCOL_ID

    def __init__(self) -> None:
        self._ours: tuple[KeyPair, PeerID, bytes] | None = None

    async def secure(
        self,
        conn: ReadWriter,
        key: KeyPair,
        *,
        initiator: bool,
        expected_peer: PeerID | None,
        timeout: float | None,
    ) -> PlaintextConnection:
        # (our own Exchange message is the same on every connection: made once per key)
        if self._ours is None or self._ours[0] is not key:
            local = PeerID.from_public_key(key.public_key)
            self._ours = (key, local, encode_length_prefixed(_encode_exchange(key, local)))
        _, local, exchange = self._ours
        try:
            async with asyncio.timeout(timeout):
                # Both sides send first: no round trip is wasted.
                await conn.write(exchange)
                data = await read_length_prefixed(conn, MAX_EXCHANGE_SIZE, timeout=None)
        except TimeoutError as exc:
            raise HandshakeError("plaintext handshake timed out") from exc
        except HandshakeError:
            raise
        except P2PError as exc:
            raise HandshakeError(f"plaintext handshake failed: {exc}") from exc
        remote, remote_key = _decode_exchange(data)
        if expected_peer is not None and remote != expected_peer:
            raise PeerIDMismatch(f"dialed {expected_peer} but the remote is {remote}")
        return PlaintextConnection(
            conn, local_peer=local, remote_peer=remote, remote_key=remote_key
        )
