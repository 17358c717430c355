"""What the explorer knows about the network (sans-IO: facts and ``now`` in, JSON out).

Facts arrive from node-status reports, agent announcements, identify, DHT crawls and the
topic messages the explorer receives. Everything is bounded: at most ``max_nodes`` nodes (the
least recently heard is forgotten first), sanitised status reports with capped lists and
strings, a fixed window of message-rate buckets, a short list of recent announcements. A node
not heard from for ``node_ttl`` seconds is removed, as is one that announces it leaves.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from p2pnet.agent.status import (
    MAX_ADDRS,
    MAX_CONNECTED_PEERS,
    MAX_MESH_PEERS,
    MAX_MESH_TOPICS,
    MAX_NAME,
    MAX_SCORES,
    MAX_STATUS_BYTES,
    MAX_TOPICS,
)

__all__ = ["MAX_STATUS_BYTES", "InvalidStatus", "NetworkView", "ViewConfig", "sanitize_status"]

ROLES = ("bootstrap", "agent", "explorer")
MAX_TEXT = 200
MAX_TOPIC_NAME = 100
#: Topics with a rate series of their own (the agent topics come first).
MAX_RATE_TOPICS = 16
#: Edges sent to the page at most (each node reports at most 50 connections).
MAX_EDGES = 20_000
_PEER_ID_TEXT = re.compile(r"[1-9A-HJ-NP-Za-km-z]{30,64}")


def is_peer_id_text(text: object) -> bool:
    """Cheap shape check of a base58 PeerID (status reports name up to hundreds of them)."""
    return isinstance(text, str) and _PEER_ID_TEXT.fullmatch(text) is not None


class InvalidStatus(ValueError):
    """A node-status report that does not have the documented shape (docs/explorer.md)."""


def _text(value: object, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise InvalidStatus(f"expected a string, got {type(value).__name__}")
    return value[:limit]


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidStatus(f"expected a count, got {value!r:.40}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidStatus(f"expected a number, got {value!r:.40}")
    return float(value)


def _peer_list(value: object, limit: int) -> list[str]:
    if not isinstance(value, list):
        raise InvalidStatus("expected a list of PeerIDs")
    return [p for p in value[:limit] if is_peer_id_text(p)]


def sanitize_status(data: object) -> dict[str, Any]:
    """The report with only documented fields, types checked and lists capped.

    Raises :class:`InvalidStatus` for a report whose fields have the wrong types (the whole
    report is then ignored: a node that lies about one field is not believed on the others).
    The nine original fields are required; the explorer fields are optional (older nodes)."""
    if not isinstance(data, dict):
        raise InvalidStatus("a status report is a JSON object")
    try:
        out: dict[str, Any] = {
            "name": _text(data["name"], MAX_NAME),
            "ethAddress": _text(data["ethAddress"], 42),
            "uptime": _number(data["uptime"]),
            "peers": _count(data["peers"]),
            "dhtTableSize": _count(data["dhtTableSize"]),
            "messagesIn": _count(data["messagesIn"]),
            "messagesOut": _count(data["messagesOut"]),
            "rejected": _count(data["rejected"]),
        }
        mesh = data["mesh"]
    except KeyError as exc:
        raise InvalidStatus(f"missing field {exc}") from None
    if not isinstance(mesh, dict):
        raise InvalidStatus("mesh must map topics to counts")
    out["mesh"] = {_text(t, MAX_TOPIC_NAME): _count(n) for t, n in list(mesh.items())[:MAX_TOPICS]}
    role = data.get("role", "agent")
    out["role"] = role if role in ROLES else "agent"
    for key, limit in (("mode", 16), ("agentVersion", MAX_TEXT)):
        if key in data:
            out[key] = _text(data[key], limit)
    if "addrs" in data:
        addrs = data["addrs"]
        if not isinstance(addrs, list):
            raise InvalidStatus("addrs must be a list")
        out["addrs"] = [_text(a) for a in addrs[:MAX_ADDRS]]
    if "topics" in data:
        topics = data["topics"]
        if not isinstance(topics, list):
            raise InvalidStatus("topics must be a list")
        out["topics"] = [_text(t, MAX_TOPIC_NAME) for t in topics[:MAX_TOPICS]]
    if "connectedPeers" in data:
        out["connectedPeers"] = _peer_list(data["connectedPeers"], MAX_CONNECTED_PEERS)
    if "meshPeers" in data:
        mesh_peers = data["meshPeers"]
        if not isinstance(mesh_peers, dict):
            raise InvalidStatus("meshPeers must map topics to PeerID lists")
        out["meshPeers"] = {
            _text(t, MAX_TOPIC_NAME): _peer_list(ps, MAX_MESH_PEERS)
            for t, ps in list(mesh_peers.items())[:MAX_MESH_TOPICS]
        }
    if "scores" in data:
        scores = data["scores"]
        if not isinstance(scores, dict):
            raise InvalidStatus("scores must map PeerIDs to numbers")
        out["scores"] = {
            p: _number(v) for p, v in list(scores.items())[:MAX_SCORES] if is_peer_id_text(p)
        }
    if "topicCounters" in data:
        counters = data["topicCounters"]
        if not isinstance(counters, dict):
            raise InvalidStatus("topicCounters must map topics to counters")
        clean: dict[str, dict[str, int]] = {}
        for topic, c in list(counters.items())[:MAX_MESH_TOPICS]:
            if not isinstance(c, dict):
                raise InvalidStatus("topicCounters values must be objects")
            clean[_text(topic, MAX_TOPIC_NAME)] = {
                k: _count(c[k]) for k in ("published", "delivered", "rejected", "invalid") if k in c
            }
        out["topicCounters"] = clean
    # Registry status (on-chain agent registry) once nodes report it: kept as a short text.
    registry = data.get("registry")
    out["registry"] = None if registry is None else str(registry)[:MAX_TEXT]
    out["truncated"] = bool(data.get("truncated", False))
    return out


@dataclass
class NodeView:
    id: str
    role: str
    first_seen: float
    last_seen: float
    name: str = ""
    eth: str | None = None
    status: dict[str, Any] | None = None
    status_at: float | None = None
    addrs: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    agent_version: str = ""
    protocols: list[str] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    #: DHT crawl of this server: common prefix length -> PeerIDs in that bucket.
    buckets: dict[int, list[str]] | None = None
    crawled_at: float | None = None


@dataclass
class ViewConfig:
    #: Seconds without news after which a node counts as gone.
    node_ttl: float = 90.0
    max_nodes: int = 2000
    #: Seconds per message-rate bucket, and how many buckets the chart shows.
    rate_bucket: float = 5.0
    rate_buckets: int = 60
    max_announcements: int = 50


class NetworkView:
    """The explorer's bounded picture of the network. Every method takes ``now`` (seconds,
    monotonic). ``version`` grows with every change the page should see."""

    def __init__(self, self_id: str, config: ViewConfig | None = None) -> None:
        self.config = config or ViewConfig()
        self.self_id = self_id
        self.nodes: OrderedDict[str, NodeView] = OrderedDict()  # least recently heard first
        self.own_peers: list[str] = []
        self.version = 0
        self.ignored_statuses = 0
        self.last_ignored: str = ""
        self.evicted = 0
        self.announcements: deque[dict[str, Any]] = deque(maxlen=self.config.max_announcements)
        self.announcements_version = 0
        #: topic -> counts per bucket index (bucket index = floor(now / rate_bucket)).
        self._rates: dict[str, dict[int, float]] = {}
        #: Topics whose rate the explorer counts itself (it subscribes to them); the rates of
        #: other topics come from the published counters in status reports.
        self.observed: set[str] = set()
        self.rates_version = 0
        self.dht_version = 0
        self._graph_cache: tuple[int, dict[str, Any]] | None = None
        #: grows with every accepted status report (the page refreshes node details on it)
        self.status_version = 0

    # -- nodes ----------------------------------------------------------------------------------

    def _touch(self, peer: str, now: float, source: str, role: str | None = None) -> NodeView:
        node = self.nodes.get(peer)
        if node is None:
            node = NodeView(peer, role or "agent", first_seen=now, last_seen=now)
            self.nodes[peer] = node
            self.version += 1
            self._evict()
        node.last_seen = now
        if source not in node.sources:
            node.sources.add(source)
        self.nodes.move_to_end(peer)
        if role is not None and node.role != role and node.role != "explorer":
            node.role = role
            self.version += 1
        return node

    def _evict(self) -> None:
        while len(self.nodes) > self.config.max_nodes:
            oldest = next(iter(self.nodes))
            if oldest == self.self_id:  # never forget ourselves
                self.nodes.move_to_end(oldest)
                oldest = next(iter(self.nodes))
            del self.nodes[oldest]
            self.evicted += 1

    def set_self(self, name: str, eth: str | None, addrs: list[str], now: float) -> None:
        node = self._touch(self.self_id, now, "self", "explorer")
        node.role = "explorer"
        node.name, node.eth, node.addrs = name, eth, addrs

    def set_own_peers(self, peers: list[str], now: float) -> None:
        """Who the explorer itself is connected to (edges from the explorer). A known node we
        are connected to is alive, even if it reports nothing (a plain libp2p peer)."""
        peers = sorted(peers)
        if peers != self.own_peers:
            self.own_peers = peers
            self.version += 1
        for peer in peers:
            node = self.nodes.get(peer)
            if node is not None:
                node.last_seen = now
        self.set_self_seen(now)

    def set_self_seen(self, now: float) -> None:
        node = self.nodes.get(self.self_id)
        if node is not None:
            node.last_seen = now

    def on_status(self, peer: str, eth: str, data: object, size: int, now: float) -> bool:
        """A verified node-status report; False (and counted) when it was ignored."""
        try:
            if size > MAX_STATUS_BYTES:
                raise InvalidStatus(f"{size} bytes exceed {MAX_STATUS_BYTES}")
            status = sanitize_status(data)
        except InvalidStatus as exc:
            self.ignored_statuses += 1
            self.last_ignored = f"{peer[:16]}...: {exc}"[:MAX_TEXT]
            return False
        node = self._touch(peer, now, "status", status["role"])
        node.eth = eth
        node.name = status["name"] or node.name
        node.addrs = status.get("addrs", node.addrs)
        node.topics = status.get("topics", node.topics)
        node.agent_version = status.get("agentVersion", node.agent_version)
        old, old_at = node.status, node.status_at
        node.status, node.status_at = status, now
        self._published_since(old, old_at, status, now)
        self.status_version += 1
        if old is None or _graph_fields(old) != _graph_fields(status):
            self.version += 1
        return True

    def on_announcement(self, peer: str, eth: str, data: object, now: float) -> None:
        if not isinstance(data, dict):
            return
        event = data.get("event")
        name = data.get("name")
        name_text = name[:MAX_NAME] if isinstance(name, str) else ""
        entry: dict[str, Any] = {
            "peerId": peer,
            "ethAddress": eth,
            "event": str(event)[:32],
            "name": name_text,
            "at": now,
        }
        self.announcements.append(entry)
        self.announcements_version += 1
        if event == "leave":
            self.remove(peer)
            return
        node = self._touch(peer, now, "announcement")
        node.eth = eth
        if name_text:
            node.name = name_text
        addrs = data.get("addrs")
        if isinstance(addrs, list):
            node.addrs = [a[:MAX_TEXT] for a in addrs[:MAX_ADDRS] if isinstance(a, str)]
        topics = data.get("topics")
        if isinstance(topics, list):
            node.topics = [t[:MAX_TOPIC_NAME] for t in topics[:MAX_TOPICS] if isinstance(t, str)]

    def on_identify(
        self, peer: str, agent_version: str, protocols: list[str], addrs: list[str], now: float
    ) -> None:
        """A peer the explorer is connected to identified itself (it is alive)."""
        server = any(p.startswith("/ipfs/kad/") for p in protocols)
        node = self.nodes.get(peer)
        role = (
            None
            if node is not None and node.status is not None
            else ("bootstrap" if server else "agent")
        )
        node = self._touch(peer, now, "identify", role)
        node.agent_version = agent_version[:MAX_TEXT] or node.agent_version
        node.protocols = [p[:MAX_TEXT] for p in protocols[:32]]
        if addrs and not node.addrs:
            node.addrs = [a[:MAX_TEXT] for a in addrs[:MAX_ADDRS]]

    def on_crawl(self, server: str, buckets: dict[int, list[str]], now: float) -> None:
        """A DHT server answered the crawl: it is alive and these are its buckets. The peers in
        them are not marked alive (a table may hold dead entries for a while)."""
        node = self._touch(server, now, "crawl", None)
        if node.status is None and node.role == "agent":
            node.role = "bootstrap"  # it answered DHT requests: a server
            self.version += 1
        clean = {cpl: peers[:64] for cpl, peers in sorted(buckets.items())[:64]}
        if clean != node.buckets:
            self.dht_version += 1
        node.buckets = clean
        node.crawled_at = now

    def remove(self, peer: str) -> None:
        if peer != self.self_id and self.nodes.pop(peer, None) is not None:
            self.version += 1

    def expire(self, now: float) -> list[str]:
        """Forget nodes not heard from for ``node_ttl``; returns their IDs."""
        limit = now - self.config.node_ttl
        gone = [p for p, n in self.nodes.items() if n.last_seen < limit and p != self.self_id]
        for peer in gone:
            if self.nodes.pop(peer).buckets is not None:
                self.dht_version += 1
        if gone:
            self.version += 1
        return gone

    # -- messages -------------------------------------------------------------------------------

    def on_message(self, topic: str, now: float) -> None:
        """The explorer received a message on ``topic`` (one it subscribes to)."""
        self._add_rate(topic, int(now // self.config.rate_bucket), 1.0)

    def _add_rate(self, topic: str, index: int, count: float) -> None:
        series = self._rates.get(topic)
        if series is None:
            if len(self._rates) >= MAX_RATE_TOPICS:
                return
            series = self._rates[topic] = {}
        series[index] = series.get(index, 0.0) + count
        if len(series) > self.config.rate_buckets + 1:
            oldest = max(series) - self.config.rate_buckets
            for i in [i for i in series if i <= oldest]:
                del series[i]
        self.rates_version += 1

    def _published_since(
        self, old: dict[str, Any] | None, old_at: float | None, new: dict[str, Any], now: float
    ) -> None:
        """Topics the explorer does not subscribe to: the rate comes from the nodes' own
        ``published`` counters, the growth since their last report spread over that time."""
        if old is None or old_at is None or now <= old_at:
            return
        before = old.get("topicCounters", {})
        width = self.config.rate_bucket
        first, last = int(old_at // width), int(now // width)
        for topic, counters in new.get("topicCounters", {}).items():
            if topic in self.observed or topic not in before:
                continue
            grown = counters.get("published", 0) - before[topic].get("published", 0)
            if grown <= 0:  # nothing new, or the node restarted
                continue
            for index in range(max(first, last - self.config.rate_buckets), last + 1):
                start, end = max(old_at, index * width), min(now, (index + 1) * width)
                if end > start:
                    self._add_rate(topic, index, grown * (end - start) / (now - old_at))

    def rates(self, now: float) -> dict[str, Any]:
        """Messages per second on each topic over the last ``rate_buckets`` buckets (oldest
        first; the last, current bucket is partial)."""
        cfg = self.config
        last = int(now // cfg.rate_bucket)
        first = last - cfg.rate_buckets + 1
        series = {
            topic: [round(counts.get(i, 0) / cfg.rate_bucket, 3) for i in range(first, last + 1)]
            for topic, counts in sorted(self._rates.items())
        }
        totals = {
            topic: round(sum(n for i, n in counts.items() if i >= first))
            for topic, counts in sorted(self._rates.items())
        }
        return {"bucketSeconds": cfg.rate_bucket, "series": series, "totals": totals}

    # -- JSON for the page ----------------------------------------------------------------------

    def graph(self) -> dict[str, Any]:
        """Nodes, edges and per-topic mesh links for the page (cached until ``version``
        changes; edges in no particular order)."""
        if self._graph_cache is not None and self._graph_cache[0] == self.version:
            return self._graph_cache[1]
        graph = self._build_graph()
        self._graph_cache = (self.version, graph)
        return graph

    def _build_graph(self) -> dict[str, Any]:
        nodes = [
            {
                "id": n.id,
                "role": n.role,
                "name": n.name,
                "ethAddress": n.eth,
            }
            for n in self.nodes.values()
        ]
        edges: set[tuple[str, str]] = set()
        mesh: dict[str, set[tuple[str, str]]] = {}
        known = self.nodes
        for n in known.values():
            if n.status is None:
                continue
            for peer in n.status.get("connectedPeers", []):
                if peer in known and peer != n.id:
                    edges.add(_pair(n.id, peer))
            for topic, peers in n.status.get("meshPeers", {}).items():
                links = mesh.setdefault(topic, set())
                for peer in peers:
                    if peer in known and peer != n.id:
                        links.add(_pair(n.id, peer))
        for peer in self.own_peers:
            if peer in known:
                edges.add(_pair(self.self_id, peer))
        return {
            "nodes": nodes,
            "edges": [{"source": a, "target": b} for a, b in itertools.islice(edges, MAX_EDGES)],
            "edgesTruncated": len(edges) > MAX_EDGES,
            "mesh": {
                t: [{"source": a, "target": b} for a, b in itertools.islice(links, MAX_EDGES)]
                for t, links in sorted(mesh.items())[:MAX_RATE_TOPICS]
            },
        }

    def details(self, peer: str, now: float) -> dict[str, Any] | None:
        n = self.nodes.get(peer)
        if n is None:
            return None
        st = n.status or {}
        age = None if n.status_at is None else round(now - n.status_at, 1)
        return {
            "id": n.id,
            "role": n.role,
            "name": n.name,
            "ethAddress": n.eth,
            # the on-chain registry status, once nodes report it (issue: agent registry)
            "registry": st.get("registry"),
            "agentVersion": n.agent_version,
            "addrs": n.addrs,
            "topics": n.topics,
            "uptime": None if age is None else round(st.get("uptime", 0.0) + age, 1),
            "messagesIn": st.get("messagesIn"),
            "messagesOut": st.get("messagesOut"),
            "rejected": st.get("rejected"),
            "peers": st.get("peers"),
            "connectedPeers": st.get("connectedPeers", []),
            "mesh": st.get("mesh", {}),
            "meshPeers": st.get("meshPeers", {}),
            "scores": st.get("scores", {}),
            "topicCounters": st.get("topicCounters", {}),
            "dhtTableSize": st.get("dhtTableSize"),
            "mode": st.get("mode"),
            "protocols": n.protocols,
            "sources": sorted(n.sources),
            "lastSeen": round(now - n.last_seen, 1),
            "statusAge": age,
            "buckets": None
            if n.buckets is None
            else {str(c): peers for c, peers in n.buckets.items()},
        }

    def dht(self, now: float) -> list[dict[str, Any]]:
        """The crawled servers' routing tables: bucket sizes and members."""
        return [
            {
                "id": n.id,
                "name": n.name,
                "crawledAgo": None if n.crawled_at is None else round(now - n.crawled_at, 1),
                "buckets": {str(c): peers for c, peers in n.buckets.items()},
            }
            for n in self.nodes.values()
            if n.buckets is not None
        ]

    def servers(self) -> list[str]:
        """DHT servers to crawl: bootstrap-role nodes (status, identify or crawl said so)."""
        return [n.id for n in self.nodes.values() if n.role == "bootstrap"]


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _graph_fields(status: dict[str, Any]) -> tuple[Any, ...]:
    return (
        status["role"],
        status["name"],
        tuple(status.get("connectedPeers", ())),
        tuple(sorted((t, tuple(p)) for t, p in status.get("meshPeers", {}).items())),
    )
