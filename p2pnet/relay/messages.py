"""Circuit relay v2 messages (sans-IO): build, parse and check; reservation vouchers.

Messages are protobuf (``wire/pb/circuit.proto``, exactly the spec's) framed with a uvarint
length, at most :data:`MAX_MESSAGE_SIZE` bytes (go-libp2p and js-libp2p use 4 KiB). A parser
fed bytes that are not a valid message raises :class:`RelayProtocolError` (a ``ProtocolError``)
carrying the status to answer with (``MALFORMED_MESSAGE`` or ``UNEXPECTED_MESSAGE``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import DecodeError
from multiaddr import Multiaddr

from p2pnet.crypto.keys import KeyPair, unmarshal_public_key
from p2pnet.errors import CryptoError, ProtocolError
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.pb import circuit_pb2, envelope_pb2
from p2pnet.wire.varint import encode_uvarint

HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop"
STOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/stop"
#: Longest hop or stop message accepted (bytes, without the length prefix).
MAX_MESSAGE_SIZE = 4096
#: Addresses taken from one Peer or Reservation message.
MAX_ADDRS = 16

VOUCHER_DOMAIN = b"libp2p-relay-rsvp"
VOUCHER_PAYLOAD_TYPE = b"\x03\x02"  # multicodec 0x0302, as a uvarint


class RelayStatus(enum.IntEnum):
    OK = 100
    RESERVATION_REFUSED = 200
    RESOURCE_LIMIT_EXCEEDED = 201
    PERMISSION_DENIED = 202
    CONNECTION_FAILED = 203
    NO_RESERVATION = 204
    MALFORMED_MESSAGE = 400
    UNEXPECTED_MESSAGE = 401


class HopType(enum.IntEnum):
    RESERVE = 0
    CONNECT = 1
    STATUS = 2


class StopType(enum.IntEnum):
    CONNECT = 0
    STATUS = 1


class RelayProtocolError(ProtocolError):
    """A relay message that cannot be accepted; ``status`` is the answer it deserves."""

    def __init__(self, message: str, status: RelayStatus = RelayStatus.MALFORMED_MESSAGE) -> None:
        super().__init__(message)
        self.status = status


class RelayRefused(ProtocolError):
    """The other side answered with a status other than OK."""

    def __init__(self, status: RelayStatus | int, what: str) -> None:
        name = status.name if isinstance(status, RelayStatus) else str(status)
        super().__init__(f"{what}: {name}")
        self.status = status


@dataclass(frozen=True)
class Limit:
    """Limits of one relayed connection: seconds and bytes per direction (0: none)."""

    duration: int = 0
    data: int = 0


@dataclass(frozen=True)
class Reservation:
    expire: int  # UNIX time (s)
    addrs: list[Multiaddr] = field(default_factory=list)
    voucher: bytes | None = None


@dataclass(frozen=True)
class HopMessage:
    type: HopType
    peer: PeerID | None = None
    peer_addrs: list[Multiaddr] = field(default_factory=list)
    reservation: Reservation | None = None
    limit: Limit | None = None
    status: RelayStatus | int | None = None


@dataclass(frozen=True)
class StopMessage:
    type: StopType
    peer: PeerID | None = None
    limit: Limit | None = None
    status: RelayStatus | int | None = None


def _status(value: int) -> RelayStatus | int:
    try:
        return RelayStatus(value)
    except ValueError:
        return value  # an unknown status is still "not OK"


def _addrs(raw: list[bytes]) -> list[Multiaddr]:
    out = []
    for data in raw[:MAX_ADDRS]:
        try:
            out.append(Multiaddr(data))
        except Exception:  # the multiaddr package raises several unrelated types
            continue
    return out


def _peer_id(data: bytes) -> PeerID:
    try:
        return PeerID.from_bytes(data)
    except (CryptoError, ValueError) as exc:
        raise RelayProtocolError(f"bad peer ID in relay message: {exc}") from None


def _limit_pb(limit: Limit, out: circuit_pb2.Limit) -> None:
    if limit.duration:
        out.duration = limit.duration
    if limit.data:
        out.data = limit.data


_PB = TypeVar("_PB", circuit_pb2.HopMessage, circuit_pb2.StopMessage)
_Type = TypeVar("_Type", HopType, StopType)


def _parse(data: bytes, pb_type: type[_PB], kinds: type[_Type]) -> tuple[_PB, _Type]:
    """Decode a hop or stop message and its type, or raise RelayProtocolError."""
    name = "hop" if kinds is HopType else "stop"
    if len(data) > MAX_MESSAGE_SIZE:
        raise RelayProtocolError(f"relay message of {len(data)} bytes (max {MAX_MESSAGE_SIZE})")
    try:
        pb = pb_type.FromString(data)
    except DecodeError as exc:
        raise RelayProtocolError(f"undecodable {name} message: {exc}") from None
    if not pb.IsInitialized():  # a required field missing (or an unknown type: not set)
        raise RelayProtocolError(f"{name} message lacks a required field (or has an unknown type)")
    try:
        return pb, kinds(pb.type)
    except ValueError:
        raise RelayProtocolError(f"unknown {name} message type {pb.type}") from None


def encode_hop(msg: HopMessage) -> bytes:
    pb = circuit_pb2.HopMessage(type=int(msg.type))  # type: ignore[arg-type]
    if msg.peer is not None:
        pb.peer.id = msg.peer.to_bytes()
        pb.peer.addrs.extend(a.to_bytes() for a in msg.peer_addrs)
    if msg.reservation is not None:
        pb.reservation.expire = msg.reservation.expire
        pb.reservation.addrs.extend(a.to_bytes() for a in msg.reservation.addrs)
        if msg.reservation.voucher is not None:
            pb.reservation.voucher = msg.reservation.voucher
    if msg.limit is not None:
        pb.limit.SetInParent()
        _limit_pb(msg.limit, pb.limit)
    if msg.status is not None:
        pb.status = int(msg.status)  # type: ignore[assignment]
    return pb.SerializeToString()


def decode_hop(data: bytes) -> HopMessage:
    pb, kind = _parse(data, circuit_pb2.HopMessage, HopType)
    peer = _peer_id(pb.peer.id) if pb.HasField("peer") else None
    reservation = None
    if pb.HasField("reservation"):
        r = pb.reservation
        reservation = Reservation(
            r.expire, _addrs(list(r.addrs)), r.voucher if r.HasField("voucher") else None
        )
    limit = Limit(pb.limit.duration, pb.limit.data) if pb.HasField("limit") else None
    status = _status(pb.status) if pb.HasField("status") else None
    return HopMessage(
        kind,
        peer,
        _addrs(list(pb.peer.addrs)) if peer else [],
        reservation,
        limit,
        status,
    )


def encode_stop(msg: StopMessage) -> bytes:
    pb = circuit_pb2.StopMessage(type=int(msg.type))  # type: ignore[arg-type]
    if msg.peer is not None:
        pb.peer.id = msg.peer.to_bytes()
    if msg.limit is not None:
        pb.limit.SetInParent()
        _limit_pb(msg.limit, pb.limit)
    if msg.status is not None:
        pb.status = int(msg.status)  # type: ignore[assignment]
    return pb.SerializeToString()


def decode_stop(data: bytes) -> StopMessage:
    pb, kind = _parse(data, circuit_pb2.StopMessage, StopType)
    peer = _peer_id(pb.peer.id) if pb.HasField("peer") else None
    limit = Limit(pb.limit.duration, pb.limit.data) if pb.HasField("limit") else None
    status = _status(pb.status) if pb.HasField("status") else None
    return StopMessage(kind, peer, limit, status)


# -- vouchers (a signed envelope, RFC 0002) ---------------------------------------------------


def _signed_bytes(payload: bytes) -> bytes:
    parts = (VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE, payload)
    return b"".join(encode_uvarint(len(p)) + p for p in parts)


def make_voucher(relay_key: KeyPair, peer: PeerID, expiration: int) -> bytes:
    """The relay's signed promise to serve ``peer`` until ``expiration`` (UNIX time)."""
    relay = PeerID.from_public_key(relay_key.public_key)
    payload = circuit_pb2.ReservationVoucher(
        relay=relay.to_bytes(), peer=peer.to_bytes(), expiration=expiration
    ).SerializeToString()
    env = envelope_pb2.Envelope(
        payload_type=VOUCHER_PAYLOAD_TYPE,
        payload=payload,
        signature=relay_key.sign(_signed_bytes(payload)),
    )
    env.public_key.ParseFromString(relay_key.public_key.to_protobuf())
    return env.SerializeToString()


def verify_voucher(data: bytes, relay: PeerID, peer: PeerID) -> int:
    """Check a voucher from ``relay`` for ``peer``; returns its expiration (RelayProtocolError
    if it is malformed, badly signed, or for another relay or peer)."""
    try:
        env = envelope_pb2.Envelope.FromString(data)
        key = unmarshal_public_key(env.public_key.SerializeToString())
    except (DecodeError, CryptoError) as exc:
        raise RelayProtocolError(f"undecodable voucher: {exc}") from None
    if env.payload_type != VOUCHER_PAYLOAD_TYPE:
        raise RelayProtocolError("voucher has the wrong payload type")
    if not relay.matches_public_key(key) or not key.verify(
        _signed_bytes(env.payload), env.signature
    ):
        raise RelayProtocolError("voucher is not signed by the relay")
    try:
        v = circuit_pb2.ReservationVoucher.FromString(env.payload)
    except DecodeError as exc:
        raise RelayProtocolError(f"undecodable voucher payload: {exc}") from None
    if not v.IsInitialized():
        raise RelayProtocolError("voucher payload lacks a required field")
    if v.relay != relay.to_bytes() or v.peer != peer.to_bytes():
        raise RelayProtocolError("voucher names another relay or peer")
    return int(v.expiration)
