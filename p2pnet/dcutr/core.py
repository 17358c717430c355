"""DCUtR (``/libp2p/dcutr``, libp2p/specs relay/DCUtR.md), sans-IO: messages, the addresses a
hole punch may use, and the two sides' state machines (bytes, results and ``now`` in; messages
to send, timers and dials out). The adapter (``dcutr/service.py``) does the I/O.

Roles, as the spec names them: ``A`` dialled ``B`` through a relay; ``B`` (behind a NAT, the
side that received the relayed connection) runs :class:`Initiator`, ``A`` runs
:class:`Responder`:

1. B sends CONNECT with its addresses and starts an RTT timer;
2. A answers CONNECT with its addresses;
3. B sends SYNC and waits half the RTT; A dials on receiving SYNC, B when its timer fires, so
   both SYNs leave at about the same moment (a TCP simultaneous open through both NATs);
4. a failed attempt is retried on the same stream (B makes :data:`ATTEMPTS` in all).

On the connection that results, A is the initiator of the security and muxer negotiation and
B the responder, whoever's SYN got through (go-libp2p: B dials with ``isClient=false``;
js-libp2p: B dials with ``initiator: false``); the adapter passes that role to the host.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from multiaddr import Multiaddr

from p2pnet.errors import ProtocolError
from p2pnet.host.addresses import ip_of
from p2pnet.wire.pb import holepunch_pb2 as pb

PROTOCOL = "/libp2p/dcutr"
P2P_CODE = 0x01A5  # the multiaddr code of /p2p
#: Longest message accepted (bytes, without the length prefix): the spec's 4 KiB, as go and js.
MAX_MESSAGE_SIZE = 4096
#: Addresses taken from (and sent in) one CONNECT.
MAX_ADDRS = 16
#: Hole punch attempts B makes (the spec: retry twice); A follows as many as B starts.
ATTEMPTS = 3
#: Seconds one round of dials may take (go's dialTimeout, js's timeout).
DIAL_TIMEOUT = 5.0
#: Seconds the whole exchange on one stream may take (go's StreamTimeout).
STREAM_TIMEOUT = 60.0


class MessageType(enum.IntEnum):
    CONNECT = 100
    SYNC = 300


class DCUtRError(ProtocolError):
    """A DCUtR message that cannot be accepted (malformed, oversized, out of order)."""


@dataclass(frozen=True)
class Message:
    type: MessageType
    addrs: list[bytes] = field(default_factory=list)


def encode_message(msg: Message) -> bytes:
    wire_type = pb.HolePunch.CONNECT if msg.type is MessageType.CONNECT else pb.HolePunch.SYNC
    data: bytes = pb.HolePunch(type=wire_type, ObsAddrs=msg.addrs).SerializeToString()
    if len(data) > MAX_MESSAGE_SIZE:
        raise DCUtRError(f"DCUtR message of {len(data)} bytes (max {MAX_MESSAGE_SIZE})")
    return data


def decode_message(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE_SIZE:
        raise DCUtRError(f"DCUtR message of {len(data)} bytes (max {MAX_MESSAGE_SIZE})")
    try:
        msg = pb.HolePunch.FromString(data)
    except DecodeError as exc:
        raise DCUtRError(f"malformed DCUtR message: {exc}") from exc
    kind = int(msg.type) if msg.HasField("type") else None
    if kind not in (MessageType.CONNECT, MessageType.SYNC):
        raise DCUtRError(f"DCUtR message of unknown type {kind}")
    return Message(MessageType(kind), list(msg.ObsAddrs))


# -- addresses ---------------------------------------------------------------------------------


def is_punchable(
    addr: Multiaddr, *, allow_private: bool = False, allow_loopback: bool = False
) -> bool:
    """Whether a hole punch may dial (or name) ``addr``: ``/ip4|ip6/<ip>/tcp/<port>`` (our
    transport), never relayed, unspecified, link-local or multicast, and not a private
    (RFC 1918, ULA, CGNAT...) address unless ``allow_private`` (a LAN or a lab), nor a
    loopback one unless ``allow_loopback`` (tests on one machine)."""
    try:
        names = [p.name for p in addr.protocols()]
    except Exception:  # the multiaddr package raises several unrelated types
        return False
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        return False
    ip = ip_of(addr)
    if ip is None or ip.is_unspecified or ip.is_link_local or ip.is_multicast:
        return False
    if ip.is_loopback:
        return allow_loopback
    try:
        if int(str(addr.value_for_protocol("tcp"))) == 0:
            return False
    except Exception:  # a malformed port
        return False
    return allow_private or ip.is_global


def punchable(
    addrs: Iterable[Multiaddr], *, allow_private: bool = False, allow_loopback: bool = False
) -> list[Multiaddr]:
    """The punchable ones of ``addrs``, without duplicates, at most :data:`MAX_ADDRS`."""
    out: dict[bytes, Multiaddr] = {}
    for addr in addrs:
        if len(out) >= MAX_ADDRS:
            break
        if is_punchable(addr, allow_private=allow_private, allow_loopback=allow_loopback):
            out.setdefault(addr.to_bytes(), addr)
    return list(out.values())


def parse_addrs(
    raw: Sequence[bytes], *, allow_private: bool = False, allow_loopback: bool = False
) -> list[Multiaddr]:
    """The punchable addresses a peer sent (undecodable, relayed and private ones dropped; a
    trailing ``/p2p/<id>``, which js-libp2p appends, removed: the dial checks who answers)."""
    decoded = []
    for data in raw[: 4 * MAX_ADDRS]:
        try:
            addr = Multiaddr(data)
            names = [p.name for p in addr.protocols()]
            if names and names[-1] == "p2p":
                addr = addr.decapsulate_code(P2P_CODE)
            decoded.append(addr)
        except Exception:  # the multiaddr package raises several unrelated types
            continue
    return punchable(decoded, allow_private=allow_private, allow_loopback=allow_loopback)


def predicted_addrs(observed: Iterable[Multiaddr], listen_ports: Iterable[int]) -> list[Multiaddr]:
    """Where a NAT that keeps the source port maps our listening port: each observed IP with
    each TCP port we listen on (Linux masquerade and most home routers keep the port when it
    is free; what peers observe are mappings of our dials' ephemeral ports)."""
    ports = sorted(set(listen_ports))
    out: dict[bytes, Multiaddr] = {}
    for addr in observed:
        ip = ip_of(addr)
        if ip is None:
            continue
        family = "ip4" if isinstance(ip, ipaddress.IPv4Address) else "ip6"
        for port in ports:
            guess = Multiaddr(f"/{family}/{ip}/tcp/{port}")
            out.setdefault(guess.to_bytes(), guess)
    return list(out.values())


# -- what the state machines ask of the adapter -------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Write this message (length-prefixed) on the DCUtR stream."""

    data: bytes


@dataclass(frozen=True)
class StartTimer:
    """Call ``on_timer`` at ``at`` (the node's monotonic clock)."""

    at: float


@dataclass(frozen=True)
class Dial:
    """Dial ``addrs`` from our listening port, all at once; report with ``on_dial_result``.
    ``initiator``: our role in the security and muxer negotiation on the connection."""

    addrs: list[Multiaddr]
    initiator: bool
    attempt: int


@dataclass(frozen=True)
class Finished:
    """The exchange is over: a direct connection (``success``) or why not."""

    success: bool
    reason: str
    attempts: int


Output = Send | StartTimer | Dial | Finished


class _State(enum.Enum):
    IDLE = "idle"
    AWAIT_CONNECT = "await-connect"
    AWAIT_SYNC = "await-sync"
    AWAIT_TIMER = "await-timer"
    DIALLING = "dialling"
    DONE = "done"


class _Side:
    """What both sides of the exchange share: the addresses offered, the attempts, the end."""

    _initial_state = _State.IDLE

    def __init__(
        self,
        our_addrs: Sequence[Multiaddr],
        *,
        attempts: int = ATTEMPTS,
        allow_private: bool = False,
        allow_loopback: bool = False,
    ) -> None:
        self._scope = {"allow_private": allow_private, "allow_loopback": allow_loopback}
        self.our_addrs = punchable(our_addrs, **self._scope)
        self.attempts = attempts
        self.attempt = 0
        self.their_addrs: list[Multiaddr] = []
        self._state = self._initial_state

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def on_closed(self, reason: str) -> list[Output]:
        """The stream ended (EOF, reset, timeout) before the exchange finished."""
        if self._state is _State.DONE:
            return []
        return self._finish(False, reason)

    def _finish(self, success: bool, reason: str) -> list[Output]:
        self._state = _State.DONE
        return [Finished(success, reason, self.attempt)]


class Initiator(_Side):
    """B's side: the peer that received the relayed connection and starts the exchange."""

    #: The round trip of our last CONNECT (set when the answer arrives).
    rtt: float | None = None
    _sent_at = 0.0

    def start(self, now: float) -> list[Output]:
        if self._state is not _State.IDLE:
            raise RuntimeError("the exchange has started already")
        if not self.our_addrs:
            return self._finish(False, "no public address of ours to offer")
        return self._connect(now)

    def _connect(self, now: float) -> list[Output]:
        self.attempt += 1
        self._state = _State.AWAIT_CONNECT
        self._sent_at = now
        msg = Message(MessageType.CONNECT, [a.to_bytes() for a in self.our_addrs])
        return [Send(encode_message(msg))]

    def on_message(self, data: bytes, now: float) -> list[Output]:
        msg = decode_message(data)
        if self._state is not _State.AWAIT_CONNECT or msg.type is not MessageType.CONNECT:
            raise DCUtRError(f"unexpected {msg.type.name} while {self._state.value}")
        self.rtt = max(0.0, now - self._sent_at)
        self.their_addrs = parse_addrs(msg.addrs, **self._scope)
        if not self.their_addrs:
            return self._finish(False, "the peer offered no public address")
        self._state = _State.AWAIT_TIMER
        return [Send(encode_message(Message(MessageType.SYNC))), StartTimer(now + self.rtt / 2)]

    def on_timer(self, now: float) -> list[Output]:
        if self._state is not _State.AWAIT_TIMER:
            return []
        self._state = _State.DIALLING
        return [Dial(list(self.their_addrs), initiator=False, attempt=self.attempt)]

    def on_dial_result(self, ok: bool, now: float) -> list[Output]:
        if self._state is not _State.DIALLING:
            return []
        if ok:
            return self._finish(True, "direct connection")
        if self.attempt >= self.attempts:
            return self._finish(False, f"no direct connection after {self.attempt} attempts")
        return self._connect(now)


class Responder(_Side):
    """A's side: answers B's CONNECT with our addresses and dials when SYNC arrives."""

    _initial_state = _State.AWAIT_CONNECT

    def on_message(self, data: bytes, now: float) -> list[Output]:
        msg = decode_message(data)
        if self._state is _State.AWAIT_CONNECT and msg.type is MessageType.CONNECT:
            if self.attempt >= self.attempts:
                raise DCUtRError(f"more than {self.attempts} hole punch attempts")
            self.attempt += 1
            self.their_addrs = parse_addrs(msg.addrs, **self._scope)
            if not self.their_addrs:
                return self._finish(False, "the peer offered no public address")
            self._state = _State.AWAIT_SYNC
            answer = Message(MessageType.CONNECT, [a.to_bytes() for a in self.our_addrs])
            return [Send(encode_message(answer))]
        if self._state is _State.AWAIT_SYNC and msg.type is MessageType.SYNC:
            self._state = _State.DIALLING
            return [Dial(list(self.their_addrs), initiator=True, attempt=self.attempt)]
        raise DCUtRError(f"unexpected {msg.type.name} while {self._state.value}")

    def on_timer(self, now: float) -> list[Output]:
        return []  # A sets no timers: it dials as SYNC arrives

    def on_dial_result(self, ok: bool, now: float) -> list[Output]:
        if self._state is not _State.DIALLING:
            return []
        if ok:
            return self._finish(True, "direct connection")
        if self.attempt >= self.attempts:
            return self._finish(False, f"no direct connection after {self.attempt} attempts")
        self._state = _State.AWAIT_CONNECT  # B may try again on the same stream
        return []
