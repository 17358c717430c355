"""identify messages as pure functions: build ours, parse theirs, apply what was learned.

No I/O and no clock: :func:`build_identify` encodes what a host announces, :func:`parse_identify`
decodes and checks a remote's message into an :class:`IdentifyInfo` without touching any state,
and :func:`apply_identify` writes an :class:`IdentifyInfo` into a peer store. The service in
:mod:`p2pnet.protocols.identify` only moves these bytes over streams.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from multiaddr import Multiaddr

from p2pnet.crypto.keys import PublicKey, unmarshal_public_key
from p2pnet.errors import CryptoError, ProtocolError
from p2pnet.host.addresses import is_unspecified
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import CONNECTED_ADDR_TTL, PeerStore
from p2pnet.peer.record import SIGNED_PEER_RECORD, InvalidPeerRecord, check_peer_record
from p2pnet.wire.pb import identify_pb2

log = logging.getLogger("p2pnet.identify")


#: Addresses and protocols taken from one identify message (the rest is ignored), and the
#: longest protocol id kept (multistream refuses longer ones anyway).
MAX_IDENTIFY_ADDRS = 64
MAX_IDENTIFY_PROTOCOLS = 128  # the peer store keeps at most 128 per peer
MAX_PROTOCOL_ID_LENGTH = 1024


@dataclass
class IdentifyInfo:
    """What a peer told us about itself.

    For a push, only the fields the push carried are set (a push may carry only what changed):
    empty lists and strings, and None, mean "not sent".
    """

    peer: PeerID
    protocols: list[str] = field(default_factory=list)
    listen_addrs: list[Multiaddr] = field(default_factory=list)
    observed_addr: Multiaddr | None = None
    agent_version: str = ""
    protocol_version: str = ""
    public_key: PublicKey | None = None
    #: The signed peer record (RFC 0003) when it verified for ``peer``; else None.
    signed_peer_record: bytes | None = None
    #: Whether this came from an identify push rather than a requested identify.
    push: bool = False


def build_identify(
    *,
    public_key: PublicKey,
    listen_addrs: Sequence[Multiaddr],
    protocols: Sequence[str],
    observed_addr: Multiaddr | None,
    protocol_version: str,
    agent_version: str,
    signed_peer_record: bytes | None,
) -> bytes:
    """Our identify message (also what an identify push sends)."""
    msg = identify_pb2.Identify()
    msg.protocolVersion = protocol_version
    msg.agentVersion = agent_version
    msg.publicKey = public_key.to_protobuf()
    msg.listenAddrs.extend(a.to_bytes() for a in listen_addrs)
    msg.protocols.extend(protocols)
    if observed_addr is not None:
        msg.observedAddr = observed_addr.to_bytes()
    if signed_peer_record is not None:
        msg.signedPeerRecord = signed_peer_record
    return msg.SerializeToString()


def _decode_addr(raw: bytes) -> Multiaddr | None:
    try:
        return Multiaddr(raw)
    except Exception:  # the multiaddr package raises several unrelated types
        return None


def identify_parts(
    *,
    public_key: PublicKey,
    listen_addrs: Sequence[Multiaddr],
    protocols: Sequence[str],
    protocol_version: str,
    agent_version: str,
    signed_peer_record: bytes | None,
) -> tuple[bytes, bytes]:
    """:func:`build_identify` without the observed address, in the two parts that surround
    it: ``before + observed_addr_field(addr) + after`` is the message ``build_identify``
    makes, byte for byte (protobuf writes fields in the order of their numbers: 1-3, then the
    observed address, 4, then 5, 6 and 8). What a host sends every peer is made once."""
    msg = identify_pb2.Identify()
    msg.publicKey = public_key.to_protobuf()
    msg.listenAddrs.extend(a.to_bytes() for a in listen_addrs)
    msg.protocols.extend(protocols)
    before = msg.SerializeToString()
    msg = identify_pb2.Identify()
    msg.protocolVersion = protocol_version
    msg.agentVersion = agent_version
    if signed_peer_record is not None:
        msg.signedPeerRecord = signed_peer_record
    return before, msg.SerializeToString()


def observed_addr_field(addr: Multiaddr | None) -> bytes:
    """The observed-address field of an identify message (empty for None)."""
    if addr is None:
        return b""
    msg = identify_pb2.Identify()
    msg.observedAddr = addr.to_bytes()
    return msg.SerializeToString()


def parse_identify(
    peer: PeerID, data: bytes, *, push: bool, known_key: PublicKey | None = None
) -> IdentifyInfo:
    """Decode and check ``peer``'s identify message.

    Raises :class:`ProtocolError` for a malformed message or a public key that is not ``peer``'s.
    Undecodable addresses are dropped; an invalid signed peer record is dropped (and logged).
    ``known_key``: ``peer``'s key as the connection authenticated it; a message carrying the
    same key (byte for byte) is not decoded and checked again.
    """
    msg = identify_pb2.Identify()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise ProtocolError(f"malformed identify message from {peer}") from exc
    info = IdentifyInfo(peer=peer, push=push)
    signing_key: tuple[bytes, PublicKey] | None = None
    if msg.HasField("publicKey"):
        key = _public_key_of(peer, msg.publicKey, known_key)
        info.public_key = key
        signing_key = (msg.publicKey, key)
    # Capped however many the peer sends (a push of 6000 addresses used to be stored whole).
    # An unspecified address (0.0.0.0, ::) is nobody's address: an old or misconfigured
    # peer may send one; dialling it would reach ourselves.
    addrs = [
        a
        for a in map(_decode_addr, msg.listenAddrs[:MAX_IDENTIFY_ADDRS])
        if a is not None and not is_unspecified(a)
    ]
    info.listen_addrs = list(dict.fromkeys(addrs))
    info.protocols = [
        p for p in msg.protocols[:MAX_IDENTIFY_PROTOCOLS] if 0 < len(p) <= MAX_PROTOCOL_ID_LENGTH
    ]
    if msg.HasField("observedAddr"):
        info.observed_addr = _decode_addr(msg.observedAddr)
    if msg.HasField("agentVersion"):
        info.agent_version = msg.agentVersion
    if msg.HasField("protocolVersion"):
        info.protocol_version = msg.protocolVersion
    if msg.HasField("signedPeerRecord"):
        try:
            check_peer_record(msg.signedPeerRecord, peer, expected_key=signing_key)
        except InvalidPeerRecord as exc:
            log.info("identify from %s carries an invalid peer record: %s", peer, exc)
        else:
            info.signed_peer_record = msg.signedPeerRecord
    return info


def _public_key_of(peer: PeerID, raw: bytes, known: PublicKey | None) -> PublicKey:
    """The public key ``raw`` (protobuf), which must be ``peer``'s (else ProtocolError)."""
    if known is not None and raw == known.to_protobuf():
        return known
    try:
        key = unmarshal_public_key(raw)
    except CryptoError as exc:
        raise ProtocolError(f"identify from {peer} carries a bad public key") from exc
    if PeerID.from_public_key(key) != peer:
        raise ProtocolError(f"identify from {peer} carries another peer's public key")
    return key


def apply_identify(store: PeerStore, info: IdentifyInfo) -> None:
    """Write what ``info`` says into ``store``.

    A requested identify sets the peer's protocols and (re)news its listed addresses even when
    a list is empty; a push changes only what it carried.
    """
    peer = info.peer
    if info.public_key is not None:
        store.add_pubkey(peer, info.public_key)
    if info.listen_addrs or not info.push:
        store.set_addrs(peer, info.listen_addrs, CONNECTED_ADDR_TTL)
    if info.protocols or not info.push:
        store.set_protocols(peer, info.protocols)
    if info.agent_version:
        store.set_agent_version(peer, info.agent_version)
    if info.protocol_version:
        store.set_protocol_version(peer, info.protocol_version)
    if info.observed_addr is not None:
        store.set_observed_addr(peer, info.observed_addr)
    if info.signed_peer_record is not None:
        # Kept for gossipsub peer exchange, which passes records on to third parties.
        store.put_metadata(peer, SIGNED_PEER_RECORD, info.signed_peer_record)
