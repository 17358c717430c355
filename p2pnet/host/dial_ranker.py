"""In which order, and how far apart, to try a peer's addresses (sans-IO).

A peer usually has several addresses (loopback, LAN, public IPv6 and IPv4, relayed ones) and
some of them lead nowhere from here: a LAN address of another network, an address behind a
firewall that drops SYNs, a port that accepts and never speaks. Trying them one after another
makes one dead address cost a whole timeout; trying them all at once wastes sockets and
relays. :func:`rank_addresses` plans a middle way, like go-libp2p's dial ranker and RFC 8305
(happy eyeballs): direct addresses first, loopback and private ones before public ones, IPv6
and IPv4 interleaved (IPv6 first), each started a little after the previous one, and relayed
(``/p2p-circuit``) addresses only :data:`RELAY_DELAY` after the last direct one: a relay is a
shared, limited resource, used when no direct address answers. The
:class:`~p2pnet.host.dial_scheduler.DialScheduler` follows the plan, and starts the next
address at once whenever every attempt under way has failed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from multiaddr import Multiaddr

from p2pnet.host.addresses import ip_of, is_relayed

#: After a loopback or private address, the next starts this much later (a LAN answers fast).
LOCAL_STAGGER = 0.03
#: After a public (or unknown) address, the next starts this much later (about one RTT).
PUBLIC_STAGGER = 0.25
#: Relayed addresses start this long after the last direct one (when there is one).
RELAY_DELAY = 0.5


class AddrClass(enum.IntEnum):
    """The classes in the order they are tried."""

    LOOPBACK = 0
    PRIVATE = 1
    PUBLIC = 2
    OTHER = 3  # neither IP nor DNS (in-process addresses): dialled after the IP ones
    RELAYED = 4


@dataclass(frozen=True)
class PlannedDial:
    """Start dialling ``addr`` ``delay`` seconds after the dial began."""

    addr: Multiaddr
    delay: float


def classify(addr: Multiaddr) -> tuple[AddrClass, int]:
    """The class of ``addr`` and its IP version (6, 4, or 0 when unknown)."""
    if is_relayed(addr):
        return AddrClass.RELAYED, 0
    ip = ip_of(addr)
    if ip is not None:
        if ip.is_loopback:
            return AddrClass.LOOPBACK, ip.version
        if ip.is_global:
            return AddrClass.PUBLIC, ip.version
        # private, link-local, shared (CGNAT) and other non-global ranges: a nearby network
        return AddrClass.PRIVATE, ip.version
    try:
        first = next(iter(addr.protocols())).name
    except Exception:  # an empty or unparsable multiaddr
        return AddrClass.OTHER, 0
    if first in ("dns4", "dns6", "dns"):
        # a name: resolved when dialled, most likely a public address
        return AddrClass.PUBLIC, 6 if first == "dns6" else 4
    return AddrClass.OTHER, 0


def _interleave(addrs: Sequence[tuple[Multiaddr, int]]) -> list[Multiaddr]:
    """IPv6 first, then alternating with IPv4 (RFC 8305 section 4), each family in its order."""
    v6 = [a for a, version in addrs if version == 6]
    rest = [a for a, version in addrs if version != 6]
    out: list[Multiaddr] = []
    for i in range(max(len(v6), len(rest))):
        if i < len(v6):
            out.append(v6[i])
        if i < len(rest):
            out.append(rest[i])
    return out


def rank_addresses(addrs: Iterable[Multiaddr]) -> list[PlannedDial]:
    """The dial plan for ``addrs`` (duplicates dropped): every address with its start delay."""
    groups: dict[AddrClass, list[tuple[Multiaddr, int]]] = {c: [] for c in AddrClass}
    seen: set[Multiaddr] = set()
    for addr in addrs:
        if addr in seen:
            continue
        seen.add(addr)
        cls, version = classify(addr)
        groups[cls].append((addr, version))
    plan: list[PlannedDial] = []
    at = 0.0
    last_direct: float | None = None
    for cls in AddrClass:
        ordered = _interleave(groups[cls])
        if not ordered:
            continue
        if cls is AddrClass.RELAYED and last_direct is not None:
            at = last_direct + RELAY_DELAY
        stagger = LOCAL_STAGGER if cls <= AddrClass.PRIVATE else PUBLIC_STAGGER
        for addr in ordered:
            plan.append(PlannedDial(addr, at))
            if cls is not AddrClass.RELAYED:
                last_direct = at
            at += stagger
    return plan
