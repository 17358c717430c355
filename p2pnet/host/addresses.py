"""Which addresses a host advertises (identify, peer records, presence records, the DHT).

A listener bound to an unspecified address (``0.0.0.0``, ``::``) accepts on every interface, but
no one can dial ``/ip4/0.0.0.0/...``: such an address is replaced by the address of each
interface (with the listener's port) and is never advertised itself.

:class:`AddressBook` (sans-IO: peers, addresses and ``now`` in; address lists out) also keeps
what peers tell us through identify about how they see us (the *observed* address):

- observed on a connection *we* dialled, it is our NAT's mapping of an ephemeral port: kept as
  a hint of our public IP (``observed()``), never advertised;
- observed on a connection a peer dialled *to us*, it is an address that peer reached us on.
  Once :attr:`AddressBook.activation` peers from different IP addresses report the same one,
  it is *confirmed* and advertised beside the interface addresses (a port forwarded through a
  NAT or a container shows up this way). One host with many peer IDs counts once.

Entries expire ``ttl`` seconds after they were last reported, and both tables are bounded, so a
peer that lies about what it observes can neither grow memory nor keep a stale address alive.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from multiaddr import Multiaddr

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Distinct observer IPs that must report an inbound-observed address before we advertise it.
ACTIVATION = 2
#: Seconds an observation counts after it was last reported.
OBSERVED_TTL = 30 * 60.0
#: Observed addresses kept (the least recently reported are forgotten first).
MAX_OBSERVED = 64
#: Observer IPs remembered per observed address.
MAX_OBSERVERS = 16


#: The first byte of an address whose first protocol is ip4 (code 4) or ip6 (41).
_IP_CODES = frozenset((0x04, 0x29))


def ip_of(addr: Multiaddr) -> IPAddress | None:
    """The IP address of an ``/ip4/...`` or ``/ip6/...`` multiaddr, else None.

    Memoised (a bounded cache of a pure function of the address's bytes): the multiaddr
    package parses slowly and every identify, peer record and DHT answer asks again. An
    address that does not start with an IP (an in-process one: each connection has its own)
    is answered from its first byte, neither parsed nor cached."""
    raw = addr.to_bytes()
    if not raw or raw[0] not in _IP_CODES:
        return None
    return _ip_of(addr)


@functools.lru_cache(maxsize=4096)
def _ip_of(addr: Multiaddr) -> IPAddress | None:
    try:
        protocols = list(addr.protocols())
    except Exception:  # the multiaddr package parses lazily and raises several unrelated types
        return None
    for proto in protocols:
        if proto.name in ("ip4", "ip6"):
            try:
                return ipaddress.ip_address(str(addr.value_for_protocol(proto.name)))
            except Exception:  # a bad address, whatever the multiaddr package raises
                return None
        break
    return None


@functools.lru_cache(maxsize=4096)
def is_relayed(addr: Multiaddr) -> bool:
    """Whether ``addr`` goes through a circuit relay (has ``/p2p-circuit``). Memoised like
    :func:`ip_of`: every dial plan and every new stream (the preferred connection) asks."""
    try:
        return any(p.name == "p2p-circuit" for p in addr.protocols())
    except Exception:  # the multiaddr package parses lazily and raises unrelated types
        return False


def is_unspecified(addr: Multiaddr) -> bool:
    ip = ip_of(addr)
    return ip is not None and ip.is_unspecified


@functools.lru_cache(maxsize=4096)
def is_advertisable(addr: Multiaddr) -> bool:
    """Whether another machine could try to dial ``addr``: not unspecified, not a link-local
    IPv6 address (meaningless without the interface's zone), not port 0."""
    ip = ip_of(addr)
    if ip is not None and (ip.is_unspecified or (ip.version == 6 and ip.is_link_local)):
        return False
    names = [p.name for p in addr.protocols()]
    return not ("tcp" in names and str(addr.value_for_protocol("tcp")) == "0")


def expand_unspecified(addrs: Iterable[Multiaddr], ips: Sequence[IPAddress]) -> list[Multiaddr]:
    """``addrs`` with each unspecified IP replaced by every interface IP of its family
    (loopback included: another process on this machine dials it); without duplicates."""
    out: dict[bytes, Multiaddr] = {}
    for addr in addrs:
        ip = ip_of(addr)
        if ip is None or not ip.is_unspecified:
            out.setdefault(addr.to_bytes(), addr)
            continue
        family = f"/ip{ip.version}/{ip}"
        rest = str(addr)[len(family) :]
        for local in ips:
            if local.version == ip.version and not (local.version == 6 and local.is_link_local):
                expanded = Multiaddr(f"/ip{local.version}/{local}{rest}")
                out.setdefault(expanded.to_bytes(), expanded)
    return [a for a in out.values() if is_advertisable(a)]


@dataclass
class ObservedAddr:
    addr: Multiaddr
    #: True when reported on connections the peers dialled to us.
    inbound: bool
    #: Observer IP -> when it last reported this address.
    observers: dict[str, float] = field(default_factory=dict)

    def live_observers(self, now: float, ttl: float) -> int:
        return sum(1 for seen in self.observers.values() if now - seen <= ttl)


class AddressBook:
    """Observed and confirmed addresses of one host; see the module docstring."""

    def __init__(
        self,
        *,
        activation: int = ACTIVATION,
        ttl: float = OBSERVED_TTL,
        max_observed: int = MAX_OBSERVED,
        max_observers: int = MAX_OBSERVERS,
    ) -> None:
        self.activation = activation
        self.ttl = ttl
        self.max_observed = max_observed
        self.max_observers = max_observers
        self._observed: dict[tuple[bytes, bool], ObservedAddr] = {}
        #: Addresses an AutoNAT server dialled back on: address -> when.
        self._dialled_back: dict[bytes, tuple[Multiaddr, float]] = {}

    def observe(
        self, observed: Multiaddr, *, observer: Multiaddr, inbound: bool, now: float
    ) -> bool:
        """A peer (at ``observer``) says it sees us at ``observed`` on a connection that it
        dialled (``inbound``) or we dialled. Returns True if the confirmed set changed."""
        observer_ip = ip_of(observer)
        if observer_ip is None or not is_advertisable(observed) or ip_of(observed) is None:
            return False
        before = self.confirmed(now)
        key = (observed.to_bytes(), inbound)
        entry = self._observed.pop(key, None) or ObservedAddr(observed, inbound)
        self._observed[key] = entry  # most recently reported last
        entry.observers.pop(str(observer_ip), None)
        entry.observers[str(observer_ip)] = now
        while len(entry.observers) > self.max_observers:
            del entry.observers[next(iter(entry.observers))]
        while len(self._observed) > self.max_observed:
            del self._observed[next(iter(self._observed))]
        return self.confirmed(now) != before

    def confirm(self, addr: Multiaddr, now: float) -> None:
        """An AutoNAT v2 server dialled us back on ``addr``: confirmed for ``ttl`` seconds."""
        if is_advertisable(addr):
            self._dialled_back[addr.to_bytes()] = (addr, now)
            while len(self._dialled_back) > self.max_observed:
                del self._dialled_back[next(iter(self._dialled_back))]

    def expire(self, now: float) -> None:
        for key, entry in list(self._observed.items()):
            entry.observers = {
                ip: seen for ip, seen in entry.observers.items() if now - seen <= self.ttl
            }
            if not entry.observers:
                del self._observed[key]

    def observed(self, now: float) -> list[tuple[Multiaddr, bool, int]]:
        """Every observed address: ``(addr, inbound, distinct live observers)``."""
        return [
            (e.addr, e.inbound, e.live_observers(now, self.ttl))
            for e in self._observed.values()
            if e.live_observers(now, self.ttl)
        ]

    def confirmed(self, now: float) -> list[Multiaddr]:
        """Inbound-observed addresses reported by at least ``activation`` observer IPs, and
        addresses an AutoNAT server dialled us back on (within ``ttl``)."""
        found = {
            e.addr.to_bytes(): e.addr
            for e in self._observed.values()
            if e.inbound and e.live_observers(now, self.ttl) >= self.activation
        }
        for key, (addr, when) in self._dialled_back.items():
            if now - when <= self.ttl:
                found.setdefault(key, addr)
        return list(found.values())

    def advertised(
        self, listen: Iterable[Multiaddr], ips: Sequence[IPAddress], now: float
    ) -> list[Multiaddr]:
        """What we tell others: listen addresses (unspecified ones expanded to ``ips``), then
        the confirmed addresses; never an unspecified or otherwise undialable address."""
        out = {a.to_bytes(): a for a in expand_unspecified(listen, ips)}
        for addr in self.confirmed(now):
            out.setdefault(addr.to_bytes(), addr)
        return list(out.values())
