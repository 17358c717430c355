"""DCUtR over streams: upgrades a relayed connection to a direct one (``dcutr/core.py`` decides,
this adapter reads, writes, waits and dials).

When a relayed connection *from* a peer arrives and identify has told us its protocols, we are
``B``: first a plain direct dial if the peer advertises a punchable address (the spec's
unilateral upgrade), else the CONNECT/SYNC exchange on a ``/libp2p/dcutr`` stream over the
relayed connection and dials from our listening port (SO_REUSEPORT) at the agreed moment.
The peer that dialled through the relay is ``A`` and answers on the stream handler.

On success the direct connection joins the host, which opens new streams on it rather than on
the relay (``host.preferred``); the relayed connection is closed after :data:`GRACE` seconds
(the spec's grace period; js-libp2p closes it at once) so streams already on it can finish. On
failure the relayed connection simply stays in use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from multiaddr import Multiaddr

from p2pnet.dcutr.core import (
    ATTEMPTS,
    DIAL_TIMEOUT,
    MAX_MESSAGE_SIZE,
    PROTOCOL,
    STREAM_TIMEOUT,
    Dial,
    Finished,
    Initiator,
    Output,
    Responder,
    Send,
    StartTimer,
    predicted_addrs,
    punchable,
)
from p2pnet.errors import ConnectionClosed, P2PError, StreamError
from p2pnet.host.bus import ConnectionEnded, ConnectionOpened, PeerIdentified
from p2pnet.host.connection import Connection, Direction
from p2pnet.host.dial_ranker import PlannedDial
from p2pnet.host.dialer import DialFailed, dial_first
from p2pnet.host.host import Host, is_relayed_connection
from p2pnet.peer.peer_id import PeerID
from p2pnet.stream import Stream
from p2pnet.tasks import TaskOwner
from p2pnet.transport.base import RawConnection
from p2pnet.transport.tcp import TcpTransport
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed

log = logging.getLogger("p2pnet.dcutr")

#: Seconds the relayed connection stays open after the direct one is up.
GRACE = 5.0


@dataclass(frozen=True)
class HolePunchResult:
    """How one upgrade of a relayed connection ended (``HolePunchService.results``)."""

    peer: PeerID
    role: str  # "initiator" (B) or "responder" (A)
    success: bool
    reason: str
    attempts: int
    #: The direct connection's remote address on success.
    addr: Multiaddr | None = None


class HolePunchService:
    """Serves ``/libp2p/dcutr`` on ``host`` and upgrades inbound relayed connections.

    ``allow_private``: private addresses (RFC 1918, ULA, CGNAT) count as punchable (a LAN, a
    lab); otherwise only global ones are sent, accepted and dialled, as go and js do.
    ``allow_loopback``: loopback addresses too (tests on one machine).
    """

    def __init__(
        self,
        host: Host,
        *,
        allow_private: bool = False,
        allow_loopback: bool = False,
        attempts: int = ATTEMPTS,
        dial_timeout: float = DIAL_TIMEOUT,
        grace: float = GRACE,
    ) -> None:
        self.host = host
        self.allow_private = allow_private
        self.allow_loopback = allow_loopback
        self._scope = {"allow_private": allow_private, "allow_loopback": allow_loopback}
        self.attempts = attempts
        self.dial_timeout = dial_timeout
        self.grace = grace
        self._tasks = TaskOwner("dcutr")
        self._active: set[PeerID] = set()
        self._tried: set[Connection] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        #: Outcomes, most recent last (bounded); ``on_result`` is called with each.
        self.results: list[HolePunchResult] = []
        self.on_result: Callable[[HolePunchResult], None] | None = None

    @property
    def tcp(self) -> TcpTransport | None:
        return next((t for t in self.host.transports if isinstance(t, TcpTransport)), None)

    async def start(self) -> None:
        # Runs on relayed connections: the exchange is small and short (relays allow it).
        self.host.set_stream_handler(PROTOCOL, self._handle)
        bus = self.host.bus
        self._unsubscribe = [
            bus.subscribe(ConnectionOpened, lambda e: self._consider(e.connection)),
            bus.subscribe(PeerIdentified, self._on_identified),
            bus.subscribe(ConnectionEnded, lambda e: self._tried.discard(e.connection)),
        ]

    async def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self.host.remove_stream_handler(PROTOCOL)
        await self._tasks.close()

    # -- which addresses ---------------------------------------------------------------------

    def our_addrs(self) -> list[Multiaddr]:
        """What we offer: advertised (confirmed or listened-on) addresses, and each observed
        IP with our listening port (a port-preserving NAT's mapping of it); only punchable."""
        now = self.host.clock.monotonic()
        tcp = self.tcp
        ports = [port for _, port in tcp.listening_on()] if tcp is not None else []
        observed = [addr for addr, _, _ in self.host.addresses.observed(now)]
        candidates = [*self.host.advertised_addrs, *predicted_addrs(observed, ports)]
        return punchable(candidates, **self._scope)

    # -- B: start on an inbound relayed connection -------------------------------------------

    def _on_identified(self, event: PeerIdentified) -> None:
        for conn in self.host.connections(event.info.peer):
            self._consider(conn)

    def _consider(self, conn: Connection) -> None:
        peer = conn.remote_peer
        if (
            conn.direction is not Direction.INBOUND
            or not is_relayed_connection(conn)
            or conn in self._tried
            or peer in self._active
            or PROTOCOL not in self.host.peerstore.get_protocols(peer)
            or any(not is_relayed_connection(c) for c in self.host.connections(peer))
        ):
            return
        self._tried.add(conn)
        self._active.add(peer)
        self._tasks.spawn(self._upgrade(conn), name=f"dcutr {peer}")

    async def _upgrade(self, relayed: Connection) -> None:
        try:
            await self.upgrade(relayed)
        finally:
            self._active.discard(relayed.remote_peer)

    async def upgrade(self, relayed: Connection, *, unilateral: bool = True) -> HolePunchResult:
        """Upgrade ``relayed`` as B (done by itself for inbound relayed connections): a plain
        dial first when the peer advertises punchable addresses (``unilateral``), then the
        DCUtR exchange. On success the relayed connection is closed after the grace period."""
        peer = relayed.remote_peer
        if unilateral:
            public = punchable(self.host.peerstore.addrs(peer), **self._scope)
            direct = await self._dial_all(peer, public, initiator=True, reuse_port=False)
            if direct is not None:
                result = HolePunchResult(
                    peer, "initiator", True, "unilateral direct dial", 0, direct.remote_addr
                )
                return self._done(relayed, result)
        core = Initiator(self.our_addrs(), attempts=self.attempts, **self._scope)
        outputs = core.start(self.host.clock.monotonic())
        if isinstance(outputs[0], Finished):
            return self._done(relayed, self._result(peer, "initiator", outputs[0]))
        try:
            stream = await asyncio.wait_for(relayed.new_stream([PROTOCOL]), STREAM_TIMEOUT)
        except (P2PError, TimeoutError) as exc:
            result = HolePunchResult(peer, "initiator", False, f"no DCUtR stream: {exc}", 0)
            return self._done(relayed, result)
        result, direct = await self._run(stream, core, outputs, peer, "initiator")
        return self._done(relayed, result, direct)

    # -- A: answer on the stream -------------------------------------------------------------

    async def _handle(self, stream: Stream) -> None:
        conn = stream.conn
        peer = conn.remote_peer
        if not is_relayed_connection(self.host.connection_of(stream)) or peer in self._active:
            await stream.reset()  # only relayed connections are upgraded, one at a time
            return
        self._active.add(peer)
        try:
            core = Responder(self.our_addrs(), attempts=self.attempts, **self._scope)
            result, direct = await self._run(stream, core, [], peer, "responder")
            self._done(self.host.connection_of(stream), result, direct)
        finally:
            self._active.discard(peer)

    # -- both ----------------------------------------------------------------------------------

    async def _run(
        self,
        stream: Stream,
        core: Initiator | Responder,
        first: list[Output],
        peer: PeerID,
        role: str,
    ) -> tuple[HolePunchResult, Connection | None]:
        """Feed ``core`` until it finishes; reset the stream on a protocol error or timeout."""
        queue = list(first)
        direct: Connection | None = None
        clock = self.host.clock
        try:
            async with asyncio.timeout(STREAM_TIMEOUT):
                while True:
                    if not queue:
                        try:
                            data = await read_length_prefixed(stream, MAX_MESSAGE_SIZE)
                        except (ConnectionClosed, StreamError) as exc:  # EOF, reset
                            queue = core.on_closed(f"stream ended: {exc}")
                            continue
                        queue = core.on_message(data, clock.monotonic())
                        continue
                    out = queue.pop(0)
                    if isinstance(out, Send):
                        await write_length_prefixed(stream, out.data)
                    elif isinstance(out, StartTimer):
                        delay = out.at - clock.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        queue.extend(core.on_timer(clock.monotonic()))
                    elif isinstance(out, Dial):
                        direct = await self._dial_all(
                            peer, out.addrs, initiator=out.initiator, reuse_port=True
                        )
                        queue.extend(core.on_dial_result(direct is not None, clock.monotonic()))
                    else:
                        await _close_stream(stream)
                        if not out.success and direct is None:
                            # our dial failed, but the peer's may have made the connection
                            direct = self._direct_connection(peer)
                            if direct is not None:
                                out = Finished(
                                    True, "direct connection (the peer's dial)", out.attempts
                                )
                        return self._result(peer, role, out, direct), direct
        except (P2PError, TimeoutError) as exc:  # DCUtRError is a P2PError
            log.info("DCUtR with %s (%s) failed: %s", peer, role, exc or "timeout")
            await stream.reset()
            return HolePunchResult(peer, role, False, str(exc) or "timeout", core.attempt), direct

    async def _dial_all(
        self, peer: PeerID, addrs: Sequence[Multiaddr], *, initiator: bool, reuse_port: bool
    ) -> Connection | None:
        """Dial every address at once; the first that upgrades to ``peer`` wins, the others
        are cancelled (a raw connection that loses the race is aborted)."""
        tcp = self.tcp
        if tcp is None or not addrs:
            return None

        async def one(addr: Multiaddr) -> Connection:
            raw: RawConnection
            if reuse_port:
                raw = await tcp.dial_from_listen_port(addr, timeout=self.dial_timeout)
            else:
                raw = await tcp.dial(addr, timeout=self.dial_timeout)
            return await self.host.upgrade_dialled(raw, peer, initiator=initiator)

        async def discard(extra: Connection) -> None:  # a second address connected too
            await extra.close()

        winner: Connection | None
        try:
            # every address at once: the punch works only while both sides' SYNs cross
            winner = await dial_first(
                [PlannedDial(a, 0.0) for a in addrs],
                one,
                discard,
                clock=self.host.clock,
                timeout=self.dial_timeout + self.host.config.upgrade_timeout,
                what=f"{peer} (hole punch)",
                max_parallel=len(addrs),
            )
        except DialFailed as exc:
            log.debug("hole punch dials to %s failed: %s", peer, exc)
            winner = None
        if winner is None:
            # The peer's SYN may have reached our listener first (no NAT in its way): then
            # our own dial found the 4-tuple taken, but the host has the connection.
            winner = self._direct_connection(peer)
        return winner

    def _direct_connection(self, peer: PeerID) -> Connection | None:
        return next((c for c in self.host.connections(peer) if not is_relayed_connection(c)), None)

    def _result(
        self, peer: PeerID, role: str, out: Finished, direct: Connection | None = None
    ) -> HolePunchResult:
        addr = direct.remote_addr if direct is not None and out.success else None
        return HolePunchResult(peer, role, out.success, out.reason, out.attempts, addr)

    def _done(
        self, relayed: Connection, result: HolePunchResult, direct: Connection | None = None
    ) -> HolePunchResult:
        log.info(
            "hole punch with %s as %s: %s (%s, %d attempts)",
            result.peer,
            result.role,
            "direct" if result.success else "stays relayed",
            result.reason,
            result.attempts,
        )
        self.results.append(result)
        del self.results[:-64]
        if result.success:
            self._tasks.spawn(self._close_later(relayed), name=f"close relayed {result.peer}")
        if self.on_result is not None:
            self.on_result(result)
        return result

    async def _close_later(self, relayed: Connection) -> None:
        await asyncio.sleep(self.grace)
        if not relayed.is_closed:
            await relayed.close()


async def _close_stream(stream: Stream) -> None:
    try:
        await stream.close()
    except P2PError:
        await stream.reset()
