"""Signed peer records: a peer's own signed list of its addresses.

Identify carries one (field 8), and gossipsub peer exchange (PRUNE.peers) passes them on, so a
peer can trust addresses it learned from a third party.

A record is a signed envelope (specs RFC 0002) whose payload is a peer record (RFC 0003):
the signature covers ``uvarint(len(domain)) ‖ domain ‖ uvarint(len(type)) ‖ type ‖
uvarint(len(payload)) ‖ payload`` with domain ``libp2p-peer-record`` and payload type
``0x03 0x01`` (the values go-libp2p and js-libp2p use).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError, EncodeError
from multiaddr import Multiaddr

from p2pnet.crypto.keys import KeyPair, PublicKey, unmarshal_public_key
from p2pnet.errors import CryptoError, ProtocolError
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.pb import envelope_pb2, peer_record_pb2
from p2pnet.wire.varint import encode_uvarint

PEER_RECORD_DOMAIN = b"libp2p-peer-record"
PEER_RECORD_PAYLOAD_TYPE = b"\x03\x01"
MAX_RECORD_SIZE = 64 * 1024
#: Peer store metadata key under which identify keeps a peer's verified record (envelope bytes).
SIGNED_PEER_RECORD = "signed_peer_record"


class InvalidPeerRecord(ProtocolError):
    """A signed peer record is malformed, badly signed or for another peer."""


def _signed_bytes(domain: bytes, payload_type: bytes, payload: bytes) -> bytes:
    return b"".join(
        (
            encode_uvarint(len(domain)),
            domain,
            encode_uvarint(len(payload_type)),
            payload_type,
            encode_uvarint(len(payload)),
            payload,
        )
    )


def verify_peer_record(
    data: bytes,
    expected: PeerID | None = None,
    *,
    expected_key: tuple[bytes, PublicKey] | None = None,
) -> tuple[PeerID, list[Multiaddr]]:
    """Check a signed peer record; return its peer and addresses, or raise InvalidPeerRecord.

    ``expected_key``: ``expected``'s public key, checked already (its protobuf encoding and
    the key): an envelope signed with it skips decoding the key again."""
    peer, record = check_peer_record(data, expected, expected_key=expected_key)
    addrs: list[Multiaddr] = []
    for info in record.addresses:
        try:
            addrs.append(Multiaddr(info.multiaddr))
        except Exception:  # the multiaddr package raises several unrelated types
            continue
    return peer, addrs


def check_peer_record(
    data: bytes,
    expected: PeerID | None = None,
    *,
    expected_key: tuple[bytes, PublicKey] | None = None,
) -> tuple[PeerID, peer_record_pb2.PeerRecord]:
    """:func:`verify_peer_record` without decoding the addresses (for a caller that only
    keeps the record): the record's peer and the record, or InvalidPeerRecord."""
    if len(data) > MAX_RECORD_SIZE:
        raise InvalidPeerRecord(f"record of {len(data)} bytes is too large")
    try:
        env = envelope_pb2.Envelope.FromString(data)
    except DecodeError as exc:
        raise InvalidPeerRecord(f"undecodable envelope: {exc}") from None
    if env.payload_type != PEER_RECORD_PAYLOAD_TYPE:
        raise InvalidPeerRecord(f"payload type {env.payload_type.hex()} is not a peer record")
    try:
        raw_key = env.public_key.SerializeToString()
        known = expected_key is not None and expected is not None and raw_key == expected_key[0]
        pub = (
            expected_key[1] if known and expected_key is not None else unmarshal_public_key(raw_key)
        )
    except (CryptoError, EncodeError) as exc:  # EncodeError: a key with an unknown type
        raise InvalidPeerRecord(f"bad envelope key: {exc}") from None
    signed = _signed_bytes(PEER_RECORD_DOMAIN, env.payload_type, env.payload)
    if not pub.verify(signed, env.signature):
        raise InvalidPeerRecord("bad envelope signature")
    try:
        record = peer_record_pb2.PeerRecord.FromString(env.payload)
        peer = (
            expected
            if expected is not None and record.peer_id == expected.to_bytes()
            else PeerID.from_bytes(record.peer_id)
        )
    except (DecodeError, CryptoError) as exc:
        raise InvalidPeerRecord(f"undecodable peer record: {exc}") from None
    # (signed with ``expected``'s known key: the record must name ``expected``, checked below)
    if not known and not peer.matches_public_key(pub):
        raise InvalidPeerRecord("record peer ID does not match the signing key")
    if expected is not None and peer != expected:
        raise InvalidPeerRecord(f"record is for {peer}, expected {expected}")
    return peer, record


def make_peer_record(key: KeyPair, addrs: list[Multiaddr], seq: int) -> bytes:
    """A signed peer record for ``key``: ``addrs`` with sequence number ``seq``."""
    peer = PeerID.from_public_key(key.public_key)
    record = peer_record_pb2.PeerRecord(
        peer_id=peer.to_bytes(),
        seq=seq,
        addresses=[peer_record_pb2.PeerRecord.AddressInfo(multiaddr=a.to_bytes()) for a in addrs],
    )
    payload = record.SerializeToString()
    env = envelope_pb2.Envelope(
        payload_type=PEER_RECORD_PAYLOAD_TYPE,
        payload=payload,
        signature=key.sign(_signed_bytes(PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, payload)),
    )
    env.public_key.ParseFromString(key.public_key.to_protobuf())
    return env.SerializeToString()
