"""Multiaddr helpers for the TCP transport."""

from __future__ import annotations

import ipaddress
from typing import Any

from multiaddr import Multiaddr

from p2pnet.errors import DialError

_HOST_PROTOCOLS = ("ip4", "ip6", "dns4", "dns6", "dns")


def host_port_of(addr: Multiaddr) -> tuple[str, int]:
    """``(host, port)`` of a ``/ip4|ip6|dns4|dns6/<host>/tcp/<port>[/p2p/<id>]`` address."""
    protos = [p.name for p in addr.protocols()]
    if len(protos) < 2 or protos[0] not in _HOST_PROTOCOLS or protos[1] != "tcp":
        raise DialError(f"not a TCP multiaddr: {addr}")
    if any(p not in ("p2p",) for p in protos[2:]):
        raise DialError(f"unsupported multiaddr (only .../tcp/N[/p2p/ID] is dialable): {addr}")
    host = addr.value_for_protocol(protos[0])
    port = int(addr.value_for_protocol("tcp"))
    return str(host), port


def tcp_multiaddr(sockname: Any) -> Multiaddr:
    """The multiaddr of a socket address tuple as asyncio reports it."""
    host, port = sockname[0], sockname[1]
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    proto = "ip4" if ip.version == 4 else "ip6"
    return Multiaddr(f"/{proto}/{ip}/tcp/{port}")


def is_tcp_multiaddr(addr: Multiaddr) -> bool:
    try:
        host_port_of(addr)
    except DialError:
        return False
    return True


def split_peer_id(addr: Multiaddr) -> tuple[Multiaddr, str | None]:
    """Split off a trailing ``/p2p/<id>``: returns ``(transport_addr, id_text or None)``."""
    names = [p.name for p in addr.protocols()]
    if names and names[-1] == "p2p":
        # The last /p2p/: a relayed address names the relay first (.../p2p/R/p2p-circuit/p2p/T).
        head, _, peer = str(addr).rpartition("/p2p/")
        return Multiaddr(head), peer
    return addr, None
