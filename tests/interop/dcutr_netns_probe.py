"""Run inside the NAT lab's private host behind one NAT (see test_dcutr_interop.py): a p2pnet
node reachable only through a relay; a js-libp2p peer behind another NAT dials it through the
relay, and p2pnet (B) runs DCUtR with js's @libp2p/dcutr (A) and hole punches.

Prints a JSON line ``{"circuit": <our relayed address>}`` once reserved, then one with what
happened; exits 0 if it got there."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from multiaddr import Multiaddr

from p2pnet.config import NodeConfig
from p2pnet.dcutr import HolePunchResult, HolePunchService
from p2pnet.host.host import is_relayed_connection, preferred
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID
from p2pnet.relay.transport import CircuitTransport


async def main(relay_addr: str) -> dict[str, object]:
    out: dict[str, object] = {}
    config = NodeConfig(listen_addrs=["/ip4/0.0.0.0/tcp/0"], enable_dht=False, enable_pubsub=False)
    node = Node(config)
    circuit = CircuitTransport(node.host)
    punch = HolePunchService(node.host)  # global addresses only, as js
    got: asyncio.Future[HolePunchResult] = asyncio.get_running_loop().create_future()
    punch.on_result = lambda r: got.done() or got.set_result(r)
    try:
        await node.start()
        node.host.transports.append(circuit)
        await circuit.start()
        await punch.start()
        await node.host.listen(Multiaddr("/p2p-circuit"))
        relay = Multiaddr(relay_addr)
        relay_id = PeerID.from_string(relay_addr.rsplit("/", 1)[-1])
        info = await circuit.reserve(relay_id, relay)
        await node.identify_service.wait_identified(relay_id)
        # identify with the relay told us our NAT's public IP (a port-preserving NAT)
        out["offered"] = [str(a) for a in punch.our_addrs()]
        mine = f"{info.addrs[0]}/p2p-circuit/p2p/{node.peer_id}"
        print(json.dumps({"circuit": mine}), flush=True)
        result = await asyncio.wait_for(got, 60)
        out["result"] = {
            "success": result.success,
            "role": result.role,
            "reason": result.reason,
            "attempts": result.attempts,
            "addr": str(result.addr) if result.addr else None,
        }
        conns = node.host.connections(result.peer)
        out["connections"] = [str(c.remote_addr) for c in conns]
        if conns and not is_relayed_connection(preferred(conns)):
            out["direct_direction"] = preferred(conns).direction.value
            out["rtt_direct"] = await node.ping(result.peer)  # over the direct connection
    finally:
        await punch.close()
        await circuit.close()
        await node.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))), flush=True)
