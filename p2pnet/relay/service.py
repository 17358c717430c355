"""The relay: serves ``/libp2p/circuit/relay/0.2.0/hop`` on a host (a "hop" node).

Reservations and circuits are decided by :class:`~p2pnet.relay.reservations.RelayTable`; this
adapter reads and writes the messages, opens the ``stop`` stream to the destination and moves
bytes between the two streams, enforcing each circuit's limits: past ``duration`` seconds, or
past ``data`` bytes in either direction, both streams are reset. Relay stream handlers run in
the tasks the host gives each inbound stream, so closing the host ends every circuit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from p2pnet.errors import P2PError
from p2pnet.host.addresses import ip_of, is_relayed
from p2pnet.host.bus import ConnectionEnded
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.relay.messages import (
    HOP_PROTOCOL,
    MAX_MESSAGE_SIZE,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    RelayProtocolError,
    RelayStatus,
    Reservation,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
    make_voucher,
)
from p2pnet.relay.reservations import RelayLimits, RelayTable
from p2pnet.service import Lifecycle
from p2pnet.stream import Stream
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed

log = logging.getLogger("p2pnet.relay")

#: Seconds a peer has to send its hop message, and the destination to answer the stop message.
MESSAGE_TIMEOUT = 10.0


class RelayService:
    """The hop server. Its limits are the host's ``ResourceLimits.relay`` unless ``limits``
    are given; either way it accounts in the host's resource manager (the ``relay`` scope)."""

    def __init__(self, host: Host, limits: RelayLimits | None = None) -> None:
        self.host = host
        self.table = RelayTable(limits or host.resources.limits.relay, host.resources)
        self._lifecycle = Lifecycle("relay")
        self._unsubscribe: Callable[[], None] | None = None
        #: Bytes relayed, both directions together (for metrics and tests).
        self.bytes_relayed = 0
        #: Hop requests answered with an error, by status name (``RESERVATION_REFUSED``,
        #: ``RESOURCE_LIMIT_EXCEEDED``, ``NO_RESERVATION``...); the resource manager's
        #: ``refused`` says which scope refused.
        self.refused: Counter[str] = Counter()

    async def start(self) -> None:
        if not self._lifecycle.begin_start():
            return
        self.host.set_stream_handler(HOP_PROTOCOL, self._handle_hop)
        self._unsubscribe = self.host.bus.subscribe(ConnectionEnded, self._on_ended)

    async def close(self) -> None:
        if self._lifecycle.begin_close() is None:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.host.remove_stream_handler(HOP_PROTOCOL)
        self.table.clear()

    def _on_ended(self, event: ConnectionEnded) -> None:
        peer = event.connection.remote_peer
        if not self.host.is_connected(peer):
            self.table.drop(peer)

    async def _answer(self, stream: Stream, status: RelayStatus, **fields: object) -> None:
        if status is not RelayStatus.OK:
            self.refused[status.name] += 1
        msg = HopMessage(HopType.STATUS, status=status, **fields)  # type: ignore[arg-type]
        await write_length_prefixed(stream, encode_hop(msg))

    async def _handle_hop(self, stream: Stream) -> None:
        try:
            async with asyncio.timeout(MESSAGE_TIMEOUT):
                msg = decode_hop(await read_length_prefixed(stream, MAX_MESSAGE_SIZE))
        except RelayProtocolError as exc:
            log.info("bad hop message from %s: %s", stream.conn.remote_peer, exc)
            await self._answer(stream, exc.status)
            await stream.close()
            return
        if msg.type is HopType.RESERVE:
            await self._reserve(stream)
        elif msg.type is HopType.CONNECT:
            await self._connect(stream, msg)
        else:
            await self._answer(stream, RelayStatus.UNEXPECTED_MESSAGE)
            await stream.close()

    async def _reserve(self, stream: Stream) -> None:
        conn = stream.conn
        peer = conn.remote_peer
        ip = ip_of(conn.remote_addr)
        if is_relayed(conn.remote_addr) or ip is None:
            # A reservation must come over a direct connection (it is what we relay to).
            await self._answer(stream, RelayStatus.PERMISSION_DENIED)
            await stream.close()
            return
        now = self.host.clock.time()
        status, expire = self.table.reserve(peer, str(ip), now)
        if status is not RelayStatus.OK:
            log.debug("reservation of %s refused: %s", peer, status.name)
            await self._answer(stream, status)
            await stream.close()
            return
        addrs = [a for a in self.host.p2p_addrs() if not is_relayed(a)]
        reservation = Reservation(expire, addrs, make_voucher(self.host.key, peer, expire))
        log.info("reservation for %s until %d", peer, expire)
        await self._answer(stream, RelayStatus.OK, reservation=reservation, limit=self.table.limit)
        await stream.close()

    async def _connect(self, src_stream: Stream, msg: HopMessage) -> None:
        src = src_stream.conn.remote_peer
        dst = msg.peer
        if dst is None:
            await self._answer(src_stream, RelayStatus.MALFORMED_MESSAGE)
            await src_stream.close()
            return
        if is_relayed(src_stream.conn.remote_addr):
            await self._answer(src_stream, RelayStatus.PERMISSION_DENIED)  # no relay chains
            await src_stream.close()
            return
        status, circuit = self.table.open_circuit(src, dst, self.host.clock.time())
        if circuit is None:
            log.debug("circuit %s -> %s refused: %s", src, dst, status.name)
            await self._answer(src_stream, status)
            await src_stream.close()
            return
        try:
            dst_stream = await self._stop(src, dst)
            if dst_stream is None:
                await self._answer(src_stream, RelayStatus.CONNECTION_FAILED)
                await src_stream.close()
                return
            try:
                await self._answer(src_stream, RelayStatus.OK, limit=self.table.limit)
            except P2PError:
                await dst_stream.reset()
                raise
            log.debug("relaying %s -> %s", src, dst)
            await self._splice(src_stream, dst_stream)
        finally:
            circuit.done()

    async def _stop(self, src: PeerID, dst: PeerID) -> Stream | None:
        """Open the stop stream to ``dst`` and have it accept ``src``; None if it did not."""
        conns = self.host.connections(dst)
        if not conns:  # the reservation holds only while dst is connected to us
            return None
        try:
            async with asyncio.timeout(MESSAGE_TIMEOUT):
                stream = await conns[0].new_stream([STOP_PROTOCOL])
                try:
                    msg = StopMessage(StopType.CONNECT, peer=src, limit=self.table.limit)
                    await write_length_prefixed(stream, encode_stop(msg))
                    answer = decode_stop(await read_length_prefixed(stream, MAX_MESSAGE_SIZE))
                except BaseException:
                    await stream.reset()
                    raise
        except (P2PError, TimeoutError) as exc:
            log.info("stop to %s failed: %s", dst, exc)
            return None
        if answer.type is not StopType.STATUS or answer.status != RelayStatus.OK:
            log.info("%s refused the circuit from %s: %s", dst, src, answer.status)
            await stream.reset()
            return None
        return stream

    async def _splice(self, a: Stream, b: Stream) -> None:
        """Move bytes both ways until both sides closed, or a limit ends the circuit."""
        limit = self.table.limits

        async def pump(src: Stream, dst: Stream) -> None:
            moved = 0
            while True:
                # at most one buffer's worth held here: what the circuit's scope reserved
                chunk = await src.read(limit.buffer)
                if not chunk:
                    await dst.close()  # pass the half-close on
                    return
                moved += len(chunk)
                if limit.data and moved > limit.data:
                    raise RelayProtocolError("circuit data limit reached")
                self.bytes_relayed += len(chunk)
                await dst.write(chunk)

        try:
            async with asyncio.timeout(limit.duration or None):
                async with asyncio.TaskGroup() as group:
                    group.create_task(pump(a, b))
                    group.create_task(pump(b, a))
        except (TimeoutError, ExceptionGroup) as exc:
            log.debug("circuit ended: %r", exc)
            await a.reset()
            await b.reset()
