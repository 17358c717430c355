"""Run inside a network namespace whose loopback carries a global IPv4 address (see
test_autonat_interop.py): AutoNAT v2 between p2pnet and js-libp2p both ways. Prints one JSON
line with what happened; exits 0 if it got that far."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from interop.jspeer import JsPeer
from p2pnet.autonat import AutoNATClient, AutoNATServer
from p2pnet.config import NodeConfig
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID


async def main(ip: str) -> dict[str, object]:
    out: dict[str, object] = {}
    # A fixed port (the namespace is ours alone): js announces a public address only once
    # AutoNAT verified it, so its ready event lists none.
    js_addr = f"/ip4/{ip}/tcp/40001"
    js = await JsPeer.start(listen=js_addr, options={"modules": ["autonat"]})
    node = Node(
        NodeConfig(listen_addrs=[f"/ip4/{ip}/tcp/0"], enable_dht=False, enable_pubsub=False)
    )
    client = AutoNATClient(node.host)
    server = AutoNATServer(node.host)  # a public server: global addresses only
    try:
        await node.start()
        await client.start()
        await server.start()
        await node.connect(f"{js_addr}/p2p/{js.peer_id}")
        # p2pnet asks js's server about our address (the IP the request comes from).
        result = await client.check(PeerID.from_string(js.peer_id), [node.listen_addrs[0]])
        out["py_asks_js"] = {"reachable": result.reachable, "status": result.status}
        # js's client asks every peer serving AutoNAT about its unverified public addresses.
        async with asyncio.timeout(20):
            while server.dial_backs == 0:
                await asyncio.sleep(0.1)
        out["js_asks_py"] = {"requests": server.requests, "dial_backs": server.dial_backs}
        out["js_addrs"] = (await js.command("autonat_addrs"))["addrs"]
    finally:
        await node.close()
        await js.stop()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))), flush=True)
