"""AutoNAT v2 messages and the server's decisions (sans-IO).

Which address a server dials (the first it can and may dial: never a private one unless the
server is told to, e.g. in a lab), and when it first asks for dial data (the selected address's
IP differs from the IP the request came from: the amplification guard). Messages are the
spec's protobuf (``wire/pb/autonat_v2.proto``) with a uvarint length prefix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError
from multiaddr import Multiaddr

from p2pnet.errors import ProtocolError
from p2pnet.host.addresses import ip_of, is_advertisable, is_relayed
from p2pnet.wire.pb import autonat_v2_pb2 as pb

DIAL_REQUEST_PROTOCOL = "/libp2p/autonat/2/dial-request"
DIAL_BACK_PROTOCOL = "/libp2p/autonat/2/dial-back"
#: Longest message on either stream (a DialDataResponse carries at most 4096 bytes of data).
MAX_MESSAGE_SIZE = 8192
#: Addresses of one request the server looks at.
MAX_ADDRS = 32
#: Bytes of data in one DialDataResponse (spec).
DIAL_DATA_CHUNK = 4096
#: What the server asks for before dialling an IP other than the requester's (spec: 30k-100k).
DIAL_DATA_BYTES = 30_000
#: The most a client agrees to send.
MAX_DIAL_DATA = 100_000


class AutoNATError(ProtocolError):
    """A malformed or unexpected AutoNAT message."""


def decode_message(data: bytes) -> pb.Message:
    try:
        msg = pb.Message.FromString(data)
    except DecodeError as exc:
        raise AutoNATError(f"undecodable autonat message: {exc}") from None
    if msg.WhichOneof("msg") is None:
        raise AutoNATError("empty autonat message")
    return msg


def is_public(addr: Multiaddr) -> bool:
    ip = ip_of(addr)
    return ip is not None and ip.is_global


def select_address(
    addrs: Sequence[Multiaddr], can_dial: Callable[[Multiaddr], bool], *, allow_private: bool
) -> int | None:
    """Index of the first address the server will dial, or None (E_DIAL_REFUSED)."""
    for i, addr in enumerate(addrs[:MAX_ADDRS]):
        if not is_advertisable(addr) or ip_of(addr) is None:
            continue
        if any(p.name in ("p2p-circuit",) for p in addr.protocols()):
            continue  # a relayed address says nothing about the requester's own reachability
        if not allow_private and not is_public(addr):
            continue
        if can_dial(addr):
            return i
    return None


def needs_dial_data(addr: Multiaddr, observed: Multiaddr) -> bool:
    """The amplification guard: a dial to an IP other than the one the request came from
    costs the requester DIAL_DATA_BYTES first."""
    target, source = ip_of(addr), ip_of(observed)
    if target is None or source is None:
        return True
    return ipaddress.ip_address(target) != ipaddress.ip_address(source)


def parse_addrs(raw: Sequence[bytes]) -> list[Multiaddr]:
    out = []
    for data in raw[:MAX_ADDRS]:
        try:
            out.append(Multiaddr(data))
        except Exception:  # undecodable: keep the index aligned with a placeholder
            out.append(Multiaddr("/p2p-circuit"))
    return out


class Reachability:
    """What a node concludes from several servers' verdicts (sans-IO)."""

    PUBLIC = "public"
    PRIVATE = "private"
    UNKNOWN = "unknown"


def conclude(verdicts: Sequence[bool | None]) -> str:
    """PUBLIC if any server dialled us back; PRIVATE if at least one could not and none could;
    UNKNOWN without a verdict (refused, rejected, unverified). With the few bootstrap nodes an
    agent knows, one confirmed dial-back is evidence enough; the spec's suggestion (more than
    three servers agreeing) fits large networks."""
    if any(v is True for v in verdicts):
        return Reachability.PUBLIC
    if any(v is False for v in verdicts):
        return Reachability.PRIVATE
    return Reachability.UNKNOWN


def candidate_order(addrs: Sequence[Multiaddr]) -> list[Multiaddr]:
    """Our addresses to have checked, most useful first: public, then private, loopback last;
    relayed and undialable ones left out."""

    def rank(addr: Multiaddr) -> int:
        ip = ip_of(addr)
        if ip is None:
            return 3
        if ip.is_global:
            return 0
        return 2 if ip.is_loopback else 1

    usable = [a for a in addrs if is_advertisable(a) and ip_of(a) is not None and not is_relayed(a)]
    return sorted(usable, key=rank)
