"""The node-status report: what each node tells the network about itself, signed.

Every ``status_interval`` an agent publishes this dict (inside a signed envelope) on
``node-status``. The first nine fields are the original report; the rest were added for the
network explorer (docs/explorer.md). Every list and map is bounded, so a report stays a few KiB
whatever the node's size; ``truncated`` says when something was cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from p2pnet.pubsub.errors import NotStartedError

if TYPE_CHECKING:
    from p2pnet.agent.agent import Agent
    from p2pnet.pubsub.gossipsub import Pubsub
    from p2pnet.pubsub.router import GossipsubRouter

#: Bounds of the report (receivers, such as the explorer, check them again).
MAX_CONNECTED_PEERS = 50
MAX_MESH_TOPICS = 8
MAX_MESH_PEERS = 12
MAX_SCORES = 50
MAX_TOPICS = 32
MAX_ADDRS = 8
MAX_NAME = 64
#: A report larger than this (the whole signed envelope) is not kept by receivers; real
#: reports, bounded as above, stay far below it.
MAX_STATUS_BYTES = 32 * 1024


def node_role(agent: Agent) -> str:
    """``bootstrap`` for a DHT server, ``agent`` otherwise, unless the config names one."""
    if agent.config.role:
        return agent.config.role
    return "bootstrap" if agent.mode == "server" else "agent"


def running_router(pubsub: Pubsub) -> GossipsubRouter | None:
    """The gossipsub router, or None before start / after close."""
    try:
        return pubsub.router
    except NotStartedError:
        return None


def build_status(agent: Agent) -> dict[str, Any]:
    node = agent.node
    pubsub = agent.pubsub
    router = running_router(pubsub)
    topics = pubsub.topics() if router is not None else []
    peers = sorted(node.peers(), key=str)
    truncated = len(peers) > MAX_CONNECTED_PEERS or len(topics) > MAX_TOPICS
    mesh_peers: dict[str, list[str]] = {}
    for topic in topics[:MAX_MESH_TOPICS]:
        members = sorted(str(p) for p in pubsub.mesh_peers(topic))
        truncated |= len(members) > MAX_MESH_PEERS
        mesh_peers[topic] = members[:MAX_MESH_PEERS]
    truncated |= len(topics) > MAX_MESH_TOPICS
    scores: dict[str, float] = {}
    if router is not None:
        scored = sorted(pubsub.peers(), key=str)
        truncated |= len(scored) > MAX_SCORES
        for peer in scored[:MAX_SCORES]:
            scores[str(peer)] = round(pubsub.peer_score(peer), 3)
    counters: dict[str, dict[str, int]] = {}
    if router is not None:
        for topic in topics[:MAX_MESH_TOPICS]:
            stats = router.topic_stats.get(topic, {})
            counters[topic] = {
                k: stats.get(k, 0) for k in ("published", "delivered", "rejected", "invalid")
            }
    return {
        # the original report
        "name": agent.name[:MAX_NAME],
        "ethAddress": agent.eth_address,
        "uptime": round(agent.uptime, 1),
        "peers": len(peers),
        "mesh": {t: len(pubsub.mesh_peers(t)) for t in topics},
        "dhtTableSize": len(agent.dht.routing_table),
        "messagesIn": agent.messages_in,
        "messagesOut": agent.messages_out,
        "rejected": agent.rejected + agent.messaging.rejected,
        # added for the explorer
        "role": node_role(agent),
        "mode": agent.mode,
        "agentVersion": node.host.config.agent_version,
        "addrs": [str(a) for a in agent.p2p_addrs()[:MAX_ADDRS]],
        "topics": topics[:MAX_TOPICS],
        "connectedPeers": [str(p) for p in peers[:MAX_CONNECTED_PEERS]],
        "meshPeers": mesh_peers,
        "scores": scores,
        "topicCounters": counters,
        # the on-chain agent registry as this node sees it (docs/registry.md); None when off
        "registry": agent.registry_status(),
        # NAT traversal (docs/relay.md): what AutoNAT concluded, the relays holding a slot for
        # us, and (on a relay) the reservations and circuits it serves
        "reachability": agent.reachability,
        "relayReservations": sorted(str(p) for p in agent.circuit.reservations)[:MAX_ADDRS],
        "relayServing": (
            {"reservations": agent.relay.table.reservations, "circuits": agent.relay.table.circuits}
            if agent.relay is not None
            else None
        ),
        "truncated": truncated,
    }
