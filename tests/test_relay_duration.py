"""Circuit relay v2: a relayed connection ends when its duration limit runs out, as the limit
the relay announced says (the data limit: tests/test_relay.py)."""

from __future__ import annotations

import asyncio

from test_relay import ECHO, Trio

from p2pnet.relay.messages import Limit
from p2pnet.relay.reservations import RelayLimits


async def test_duration_limit_ends_the_circuit() -> None:
    async with Trio(RelayLimits(duration=1)) as trio:
        info = await trio.private_circuit.reserve(trio.relay.peer_id, trio.relay.p2p_addrs()[0])
        assert info.limit == Limit(1, 1 << 20)  # announced to the reserving peer
        loop = asyncio.get_running_loop()
        opened = loop.time()
        await trio.dialer.connect(trio.circuit_addr())
        (conn,) = trio.dialer.host.connections(trio.private.peer_id)
        stream = await trio.dialer.new_stream(trio.private.peer_id, ECHO)
        await stream.write(b"within the limit")
        assert await stream.read(64) == b"within the limit"  # usable until the limit
        await asyncio.wait_for(conn.muxed.wait_closed(), 10)
        assert loop.time() - opened >= 0.9  # ended by the limit, not at once
        async with asyncio.timeout(5):
            while trio.service.table.circuits:
                await asyncio.sleep(0.01)
        # The reservation outlives the circuit: the peer is still reachable through the relay.
        assert trio.service.table.reservations == 1
        await trio.dialer.connect(trio.circuit_addr())
        assert await trio.dialer.ping(trio.private.peer_id) > 0
