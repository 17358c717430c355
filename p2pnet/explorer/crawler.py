"""Crawl a DHT server's routing table the way DHT crawlers do: FIND_NODE for a key in each
of its k-buckets.

For bucket ``cpl`` (common prefix length with the server's own key) we ask for a random key
that falls in that bucket; the server answers with the k peers of its table closest to the key,
which are that bucket's peers first. The answers, grouped by each peer's prefix length with the
server, are the server's buckets. We stop after the first bucket whose answer holds no peer at
that depth or deeper: every deeper bucket is then empty. All requests share one stream.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from p2pnet.errors import P2PError
from p2pnet.host.host import Host
from p2pnet.kad import messages as m
from p2pnet.kad.config import KadConfig
from p2pnet.kad.errors import KadProtocolError
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.routing_table import RoutingTable
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed

#: Deepest bucket asked for: 2**16 hashes to find a key for it; real tables are shallower.
MAX_CRAWL_CPL = 15
MAX_PEERS_PER_ANSWER = 20
MAX_ADDRS_PER_PEER = 8


@dataclass
class CrawlResult:
    server: PeerID
    #: prefix length with the server -> the peers (with addresses) seen in that bucket
    buckets: dict[int, dict[PeerID, PeerInfo]] = field(default_factory=dict)
    requests: int = 0
    bad_entries: int = 0

    def peers(self) -> list[PeerInfo]:
        return [info for bucket in self.buckets.values() for info in bucket.values()]


async def crawl(
    host: Host,
    server: PeerID,
    *,
    protocol: str = KadConfig().protocol_id,
    timeout: float = 10.0,
    max_message_size: int = KadConfig().max_message_size,
    rng: random.Random | None = None,
) -> CrawlResult:
    """Ask ``server`` for each of its buckets; raises P2PError or TimeoutError on failure
    (a server that answers garbage raises :class:`KadProtocolError`)."""
    rand = rng or random.Random()
    table = RoutingTable(server)  # only for the key arithmetic around the server's key
    result = CrawlResult(server)
    async with asyncio.timeout(timeout):
        stream = await host.new_stream(server, [protocol])
        try:
            for cpl in range(MAX_CRAWL_CPL + 1):
                key = table.random_key_for_cpl(cpl, rand.randbytes)
                await write_length_prefixed(stream, m.encode(m.find_node(key)))
                resp = m.decode(await read_length_prefixed(stream, max_message_size))
                result.requests += 1
                if resp.type != m.FIND_NODE:
                    raise KadProtocolError(f"{server} answered FIND_NODE with {resp.type}")
                infos, bad = m.peers_from_pb(
                    resp.closerPeers,
                    max_peers=MAX_PEERS_PER_ANSWER,
                    max_addrs=MAX_ADDRS_PER_PEER,
                )
                result.bad_entries += bad
                deepest = -1
                for info in infos:
                    if info.peer == server:
                        continue
                    depth = table.cpl(info.peer)
                    result.buckets.setdefault(depth, {})[info.peer] = info
                    deepest = max(deepest, depth)
                if deepest < cpl:
                    break
        except BaseException:
            await stream.reset()
            raise
        try:
            await stream.close()
        except P2PError:
            pass
    return result
