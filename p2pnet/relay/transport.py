"""Relayed connections as a transport: dial and accept ``/p2p-circuit`` addresses.

Dialling ``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<target>`` connects to the relay (or reuses
the connection), asks it on a ``hop`` stream to CONNECT to the target, and hands the stream to
the host as a raw connection: the host's upgrader then runs multistream, Noise and yamux over
it end to end, so the relay sees only ciphertext. Inbound, the relay opens a ``stop`` stream to
us; when a listener on ``/p2p-circuit`` exists we accept and hand that stream to the host.

:class:`CircuitTransport` also keeps reservations (``reserve``): it refreshes each before it
expires and forgets it when the connection to the relay ends; the listener's addresses (and so
what the host advertises) are ``<relay addr>/p2p/<relay>/p2p-circuit`` for every live one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from multiaddr import Multiaddr

from p2pnet.errors import DialError, P2PError
from p2pnet.host.addresses import is_relayed
from p2pnet.host.bus import AddressesChanged, ConnectionEnded
from p2pnet.host.host import Host
from p2pnet.io import Bytes
from p2pnet.peer.peer_id import PeerID
from p2pnet.relay.messages import (
    HOP_PROTOCOL,
    MAX_MESSAGE_SIZE,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayProtocolError,
    RelayRefused,
    RelayStatus,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
    verify_voucher,
)
from p2pnet.relay.service import MESSAGE_TIMEOUT
from p2pnet.stream import Stream
from p2pnet.tasks import TaskOwner
from p2pnet.transport.base import RawConnectionHandler
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed

log = logging.getLogger("p2pnet.relay")

CIRCUIT = Multiaddr("/p2p-circuit")
#: A reservation is renewed when this fraction of its lifetime is left.
REFRESH_AT = 0.25
#: Seconds before a failed renewal is tried again.
RETRY_DELAY = 10.0


def split_circuit(addr: Multiaddr) -> tuple[Multiaddr, PeerID, PeerID | None]:
    """``(relay addr with /p2p/<relay>, relay, target or None)`` of a circuit address."""
    text = str(addr)
    head, sep, tail = text.partition("/p2p-circuit")
    if not sep or "/p2p-circuit" in tail:
        raise DialError(f"not a single-hop circuit address: {addr}")
    relay_addr = Multiaddr(head)
    names = [p.name for p in relay_addr.protocols()]
    if not names or names[-1] != "p2p":
        raise DialError(f"circuit address without the relay's /p2p/<id>: {addr}")
    relay = PeerID.from_string(str(relay_addr.value_for_protocol("p2p")))
    target = None
    if tail:
        if not tail.startswith("/p2p/") or tail.count("/") != 2:
            raise DialError(f"circuit address must end in /p2p/<target>: {addr}")
        target = PeerID.from_string(tail[len("/p2p/") :])
    return relay_addr, relay, target


class RelayedConnection:
    """A hop or stop stream seen as a raw connection (what the upgrader secures)."""

    def __init__(
        self, stream: Stream, local_addr: Multiaddr, remote_addr: Multiaddr, limit: Limit | None
    ) -> None:
        self._stream = stream
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        #: The relay's limits for this connection (None: unlimited).
        self.limit = limit
        self._reset: asyncio.Task[None] | None = None

    async def read(self, n: int = -1) -> bytes:
        return await self._stream.read(n)

    async def readexactly(self, n: int) -> bytes:
        return await self._stream.readexactly(n)

    async def write(self, data: Bytes) -> None:
        await self._stream.write(data)

    async def close(self) -> None:
        await self._stream.close()

    def abort(self) -> None:
        if self._reset is None:
            self._reset = asyncio.get_running_loop().create_task(self._stream.reset())


@dataclass
class ReservationInfo:
    relay: PeerID
    expire: int
    addrs: list[Multiaddr]
    limit: Limit | None


class CircuitListener:
    def __init__(self, transport: CircuitTransport, handler: RawConnectionHandler) -> None:
        self._transport = transport
        self.handler = handler

    @property
    def multiaddrs(self) -> list[Multiaddr]:
        return self._transport.relay_addrs()

    async def close(self) -> None:
        self._transport._listeners.discard(self)


class CircuitTransport:
    """Add it to a host (``host.transports.append(CircuitTransport(host))``), then
    ``await transport.start()``; ``host.listen(Multiaddr("/p2p-circuit"))`` accepts relayed
    connections and ``reserve(relay)`` makes us reachable through ``relay``."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.reservations: dict[PeerID, ReservationInfo] = {}
        self._listeners: set[CircuitListener] = set()
        self._tasks = TaskOwner("circuit transport")
        self._refresh: dict[PeerID, asyncio.Task[None]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        #: Called (no arguments) when our relay addresses change.
        self.on_addrs_changed: Callable[[], None] | None = None

    async def start(self) -> None:
        # the stop stream carries the relayed connection after the handler returns
        self.host.set_stream_handler(STOP_PROTOCOL, self._handle_stop, keeps_stream=True)
        self._unsubscribe = self.host.bus.subscribe(ConnectionEnded, self._on_ended)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.host.remove_stream_handler(STOP_PROTOCOL)
        await self._tasks.close()

    # -- Transport -----------------------------------------------------------------------------

    def can_dial(self, addr: Multiaddr) -> bool:
        return is_relayed(addr)

    def can_listen(self, addr: Multiaddr) -> bool:
        return str(addr) == "/p2p-circuit"

    async def dial(self, addr: Multiaddr, *, timeout: float) -> RelayedConnection:
        relay_addr, relay, target = split_circuit(addr)
        if target is None:
            raise DialError(f"dialling {addr} needs the target's /p2p/<id>")
        if relay == self.host.peer_id or target == self.host.peer_id:
            raise DialError(f"cannot relay through or to ourselves: {addr}")
        try:
            async with asyncio.timeout(timeout):
                conn = await self.host.connect(relay_addr)
                if is_relayed(conn.remote_addr):
                    raise DialError(f"relay {relay} is itself reached through a relay")
                stream = await conn.new_stream([HOP_PROTOCOL])
                try:
                    await write_length_prefixed(
                        stream, encode_hop(HopMessage(HopType.CONNECT, peer=target))
                    )
                    answer = decode_hop(await read_length_prefixed(stream, MAX_MESSAGE_SIZE))
                    if answer.type is not HopType.STATUS:
                        raise RelayProtocolError(f"relay answered a {answer.type.name}")
                    if answer.status != RelayStatus.OK:
                        raise RelayRefused(answer.status or 0, f"relay {relay} refused {target}")
                except BaseException:
                    await stream.reset()
                    raise
        except TimeoutError as exc:
            raise DialError(f"relayed dial of {addr} timed out") from exc
        except P2PError as exc:
            if isinstance(exc, DialError):
                raise
            raise DialError(f"relayed dial of {addr} failed: {exc}") from exc
        remote = relay_addr.encapsulate(CIRCUIT)
        return RelayedConnection(stream, CIRCUIT, remote, answer.limit)

    async def listen(self, addr: Multiaddr, handler: RawConnectionHandler) -> CircuitListener:
        listener = CircuitListener(self, handler)
        self._listeners.add(listener)
        return listener

    async def _handle_stop(self, stream: Stream) -> None:
        try:
            async with asyncio.timeout(MESSAGE_TIMEOUT):
                msg = decode_stop(await read_length_prefixed(stream, MAX_MESSAGE_SIZE))
        except RelayProtocolError as exc:
            await self._stop_status(stream, exc.status)
            return
        relay = stream.conn.remote_peer
        if msg.type is not StopType.CONNECT or msg.peer is None:
            await self._stop_status(stream, RelayStatus.UNEXPECTED_MESSAGE)
            return
        listener = next(iter(self._listeners), None)
        if listener is None or relay not in self.reservations:
            # Nobody listens on /p2p-circuit, or we never asked this peer to relay for us.
            await self._stop_status(stream, RelayStatus.CONNECTION_FAILED)
            return
        await write_length_prefixed(
            stream, encode_stop(StopMessage(StopType.STATUS, status=RelayStatus.OK))
        )
        relay_addr = Multiaddr(f"/p2p/{relay}")
        if stream.conn.remote_addr is not None and not is_relayed(stream.conn.remote_addr):
            relay_addr = stream.conn.remote_addr.encapsulate(relay_addr)
        remote = relay_addr.encapsulate(CIRCUIT).encapsulate(Multiaddr(f"/p2p/{msg.peer}"))
        log.debug("relayed connection from %s via %s", msg.peer, relay)
        await listener.handler(RelayedConnection(stream, CIRCUIT, remote, msg.limit))

    async def _stop_status(self, stream: Stream, status: RelayStatus) -> None:
        try:
            msg = StopMessage(StopType.STATUS, status=status)
            await write_length_prefixed(stream, encode_stop(msg))
        finally:
            await stream.close()

    # -- reservations ----------------------------------------------------------------------------

    def relay_addrs(self) -> list[Multiaddr]:
        """``<relay addr>/p2p/<relay>/p2p-circuit`` for every live reservation."""
        now = self.host.clock.time()
        return [
            a.encapsulate(CIRCUIT)
            for r in self.reservations.values()
            if r.expire > now
            for a in r.addrs
        ]

    async def reserve(self, relay: PeerID, addr: Multiaddr | None = None) -> ReservationInfo:
        """Reserve a slot on ``relay`` (connecting at ``addr`` if given) and keep it renewed
        while we stay connected. Raises RelayRefused or another P2PError."""
        conn = await (self.host.connect(addr) if addr else self.host.connect_peer(relay))
        if is_relayed(conn.remote_addr):
            raise DialError(f"cannot reserve on {relay} through a relayed connection")
        async with asyncio.timeout(MESSAGE_TIMEOUT):
            stream = await conn.new_stream([HOP_PROTOCOL])
            async with stream:
                await write_length_prefixed(stream, encode_hop(HopMessage(HopType.RESERVE)))
                answer = decode_hop(await read_length_prefixed(stream, MAX_MESSAGE_SIZE))
        if answer.type is not HopType.STATUS:
            raise RelayProtocolError(f"relay answered a {answer.type.name}")
        if answer.status != RelayStatus.OK or answer.reservation is None:
            raise RelayRefused(answer.status or 0, f"reservation on {relay}")
        rsvp = answer.reservation
        if rsvp.voucher is not None:
            verify_voucher(rsvp.voucher, relay, self.host.peer_id)  # a bad one: a lying relay
        addrs = []
        for a in rsvp.addrs:
            if is_relayed(a):
                continue
            names = [p.name for p in a.protocols()]
            if not names or names[-1] != "p2p":
                a = a.encapsulate(Multiaddr(f"/p2p/{relay}"))
            addrs.append(a)
        if not addrs:  # a relay that lists nothing public: the address we reached it on
            addrs = [conn.remote_addr.encapsulate(Multiaddr(f"/p2p/{relay}"))]
        info = ReservationInfo(relay, int(rsvp.expire), addrs, answer.limit)
        changed = relay not in self.reservations
        self.reservations[relay] = info
        task = self._refresh.get(relay)
        if task is None or task.done():
            self._refresh[relay] = self._tasks.spawn(self._keep(relay), name=f"reservation {relay}")
        log.info("reserved a relay slot on %s until %d", relay, info.expire)
        if changed:
            self._changed()
        return info

    async def _keep(self, relay: PeerID) -> None:
        while relay in self.reservations:
            info = self.reservations[relay]
            now = self.host.clock.time()
            left = info.expire - now
            await asyncio.sleep(max(1.0, left * (1 - REFRESH_AT)) if left > 0 else 0)
            if relay not in self.reservations:
                return
            try:
                await self.reserve(relay)
            except (P2PError, TimeoutError) as exc:
                log.info("renewing the reservation on %s failed: %s", relay, exc)
                if self.host.clock.time() >= info.expire:
                    self._forget(relay)
                    return
                await asyncio.sleep(RETRY_DELAY)

    def _on_ended(self, event: ConnectionEnded) -> None:
        relay = event.connection.remote_peer
        if relay in self.reservations and not self.host.is_connected(relay):
            self._forget(relay)  # the reservation holds only while we stay connected

    def _forget(self, relay: PeerID) -> None:
        if self.reservations.pop(relay, None) is not None:
            log.info("relay slot on %s lost", relay)
            task = self._refresh.pop(relay, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
            self._changed()

    def _changed(self) -> None:
        self.host.bus.emit(AddressesChanged())  # identify pushes our new addresses
        if self.on_addrs_changed is not None:
            self.on_addrs_changed()
