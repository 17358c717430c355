"""kad-dht wire messages: the spec's protobuf ``Message``, built and checked.

Every message travels as one unsigned-varint length-prefixed protobuf; a stream may carry
several request/response pairs. Parsing is defensive: bad peer IDs and addresses in peer lists
are skipped (and counted), a message that does not decode raises :class:`KadProtocolError`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from multiaddr import Multiaddr

from p2pnet.errors import CryptoError
from p2pnet.kad.errors import KadProtocolError
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.pb import kad_pb2
from p2pnet.wire.varint import encode_uvarint

Message = kad_pb2.Message
MessageType = kad_pb2.Message.MessageType
ConnectionType = kad_pb2.Message.ConnectionType

PUT_VALUE = kad_pb2.Message.PUT_VALUE
GET_VALUE = kad_pb2.Message.GET_VALUE
ADD_PROVIDER = kad_pb2.Message.ADD_PROVIDER
GET_PROVIDERS = kad_pb2.Message.GET_PROVIDERS
FIND_NODE = kad_pb2.Message.FIND_NODE
PING = kad_pb2.Message.PING

TYPE_NAMES: dict[int, str] = {
    PUT_VALUE: "PUT_VALUE",
    GET_VALUE: "GET_VALUE",
    ADD_PROVIDER: "ADD_PROVIDER",
    GET_PROVIDERS: "GET_PROVIDERS",
    FIND_NODE: "FIND_NODE",
    PING: "PING",
}


@dataclass
class PeerInfo:
    """A peer and the addresses it can be reached at."""

    peer: PeerID
    addrs: list[Multiaddr] = field(default_factory=list)


def type_name(t: int) -> str:
    return TYPE_NAMES.get(t, f"type {t}")


def encode(msg: kad_pb2.Message) -> bytes:
    return msg.SerializeToString()


def decode(data: bytes) -> kad_pb2.Message:
    """Parse one message; raises :class:`KadProtocolError` on bytes that are not one."""
    msg = kad_pb2.Message()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise KadProtocolError(f"malformed kad message ({len(data)} bytes): {exc}") from None
    if msg.type not in TYPE_NAMES:
        raise KadProtocolError(f"unknown kad message type {msg.type}")
    return msg


def peer_to_pb(
    info: PeerInfo, connection: int = kad_pb2.Message.NOT_CONNECTED
) -> kad_pb2.Message.Peer:
    return kad_pb2.Message.Peer(
        id=info.peer.to_bytes(),
        addrs=[a.to_bytes() for a in info.addrs],
        connection=connection,  # type: ignore[arg-type]
    )


#: Tags (field number << 3 | length-delimited) of a Message's peer lists.
CLOSER_PEERS_TAG = b"\x42"  # closerPeers = 8
PROVIDER_PEERS_TAG = b"\x4a"  # providerPeers = 9


def encode_peer_entry(tag: bytes, peer_id: bytes, addrs: Sequence[bytes], connection: int) -> bytes:
    """One ``Peer`` of a Message's peer list ``tag`` as it is on the wire, for
    ``Message.MergeFromString``: an answer's peers are encoded with a few concatenations and
    parsed in C, where adding each to the message field by field cost ~2-3x more (answers are
    most of what a DHT server does). Encoding then parsing gives the message
    ``peer_to_pb`` would, and so the same bytes."""
    return tag + encode_peer(peer_id, addrs, connection)


def encode_peer(peer_id: bytes, addrs: Sequence[bytes], connection: int) -> bytes:
    """:func:`encode_peer_entry` without the list's tag: the length-prefixed ``Peer``."""
    body = b"\x0a" + encode_uvarint(len(peer_id)) + peer_id
    for addr in addrs:
        body += b"\x12" + encode_uvarint(len(addr)) + addr
    if connection:  # proto3: the default (NOT_CONNECTED) is not sent
        body += b"\x18" + encode_uvarint(connection)
    return encode_uvarint(len(body)) + body


def peers_from_pb(
    peers: Iterable[kad_pb2.Message.Peer], *, max_peers: int = 64, max_addrs: int = 32
) -> tuple[list[PeerInfo], int]:
    """Decode a peer list; returns ``(peers, number of entries skipped as malformed)``.

    Duplicate peers are merged; at most ``max_peers`` peers and ``max_addrs`` addresses per peer
    are kept (the rest count as skipped).
    """
    out: dict[PeerID, PeerInfo] = {}
    bad = 0
    for pb in peers:
        if len(out) >= max_peers:
            bad += 1
            continue
        decoded = decode_peer(pb, max_addrs)
        if decoded is None:
            bad += 1
            continue
        peer, addrs = decoded
        info = out.get(peer)
        if info is None:
            out[peer] = PeerInfo(peer, list(addrs[:max_addrs]))
            continue
        for addr in addrs:  # the same peer again: its addresses are merged
            if len(info.addrs) >= max_addrs:
                break
            if addr not in info.addrs:
                info.addrs.append(addr)
    return list(out.values()), bad


#: Peer entries up to this size are decoded once (a memo keyed by their bytes); larger ones,
#: which no honest peer sends, are decoded every time and never held.
MAX_MEMO_PEER_ENTRY = 512


def decode_peer(
    pb: kad_pb2.Message.Peer, max_addrs: int
) -> tuple[PeerID, tuple[Multiaddr, ...]] | None:
    """The peer and its distinct valid addresses (at least the first ``max_addrs``), or None
    when its ID does not parse. The same entries come back in answer after answer (a server
    names its closest peers to everyone), so small ones are memoised by their bytes."""
    raw = pb.SerializeToString()
    if len(raw) <= MAX_MEMO_PEER_ENTRY:
        return _decode_peer_entry(raw)
    return _decode_peer(pb, max_addrs)


@functools.lru_cache(maxsize=8192)
def _decode_peer_entry(raw: bytes) -> tuple[PeerID, tuple[Multiaddr, ...]] | None:
    return _decode_peer(kad_pb2.Message.Peer.FromString(raw), MAX_MEMO_PEER_ENTRY)


def _decode_peer(
    pb: kad_pb2.Message.Peer, max_addrs: int
) -> tuple[PeerID, tuple[Multiaddr, ...]] | None:
    try:
        peer = parse_peer_id(pb.id)
    except (CryptoError, ValueError):
        return None
    addrs: list[Multiaddr] = []
    for raw in pb.addrs:
        if len(addrs) >= max_addrs:
            break
        addr = parse_multiaddr(raw)
        if addr is not None and addr not in addrs:
            addrs.append(addr)
    return peer, tuple(addrs)


def parse_peer_id(raw: bytes) -> PeerID:
    """A binary peer ID (raises like :meth:`PeerID.from_bytes`). The same peers come back in
    answer after answer: parsed ones are memoised (PeerIDs are immutable), which saves the
    validation and lets every table and lookup of a process share one object per peer."""
    return _parse_peer_id(bytes(raw))


@functools.lru_cache(maxsize=65536)
def _parse_peer_id(raw: bytes) -> PeerID:
    return PeerID.from_bytes(raw)


def parse_multiaddr(raw: bytes) -> Multiaddr | None:
    """A binary multiaddr, or None unless it parses completely and re-encodes to the same
    bytes (the multiaddr package parses lazily and tolerates truncated input).

    Parsing is slow in the multiaddr package and the same addresses come back in answer after
    answer, so results are memoised (a bounded cache of a pure function)."""
    return _parse_multiaddr(bytes(raw))


@functools.lru_cache(maxsize=8192)
def _parse_multiaddr(raw: bytes) -> Multiaddr | None:
    if len(raw) > 1024:
        return None
    try:
        addr = Multiaddr(raw)
        if Multiaddr(str(addr)).to_bytes() != raw:
            return None
    except Exception:  # the multiaddr package raises several unrelated types
        return None
    return addr


def make_record(key: bytes, value: bytes, time_received: str = "") -> kad_pb2.Record:
    rec = kad_pb2.Record()
    rec.key = key
    rec.value = value
    if time_received:
        rec.timeReceived = time_received
    return rec


def request(msg_type: int, key: bytes) -> kad_pb2.Message:
    msg = kad_pb2.Message()
    msg.type = msg_type  # type: ignore[assignment]
    msg.key = key
    return msg


def find_node(key: bytes) -> kad_pb2.Message:
    return request(FIND_NODE, key)


def get_value(key: bytes) -> kad_pb2.Message:
    return request(GET_VALUE, key)


def get_providers(key: bytes) -> kad_pb2.Message:
    return request(GET_PROVIDERS, key)


def put_value(key: bytes, value: bytes, time_received: str = "") -> kad_pb2.Message:
    msg = request(PUT_VALUE, key)
    msg.record.CopyFrom(make_record(key, value, time_received))
    return msg


def add_provider(key: bytes, provider: PeerInfo) -> kad_pb2.Message:
    msg = request(ADD_PROVIDER, key)
    msg.providerPeers.append(peer_to_pb(provider))
    return msg
