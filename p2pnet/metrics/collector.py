"""Prometheus metrics of one node, read from the node's state when Prometheus scrapes.

Every node gets its own :class:`~prometheus_client.CollectorRegistry` (several nodes share one
process in the devnet). The collector reads connections, streams, the routing table, the
gossipsub mesh and scores at scrape time; the few things that only exist as events (bytes and
dials, lookups, heartbeats, per-topic message counts) are plain integers the services keep
(:mod:`p2pnet.stats`), so the hot paths never call into prometheus-client.

Names follow js-libp2p (``libp2p_connection_manager_connections``,
``libp2p_protocol_streams_total``, ``libp2p_data_transfer_bytes_total``,
``libp2p_kad_dht_wan_*``, ``gossipsub_*``) and rust-libp2p where js has none
(``libp2p_swarm_dial_attempt_total``, ``libp2p_swarm_outgoing_connection_error_total``).
docs/metrics.md lists them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from p2pnet.agent.status import running_router
from p2pnet.host.connection import Direction
from p2pnet.stats import DurationHistogram

if TYPE_CHECKING:
    from p2pnet.agent.agent import Agent
    from p2pnet.node import Node

#: At most this many topics get labels of their own; the rest are summed under ``_other``.
MAX_TOPIC_LABELS = 64
OTHER = "_other"
#: Protocol labels are bounded the same way (we only negotiate protocols we know, but a
#: service may register many).
MAX_PROTOCOL_LABELS = 64
#: Upper bounds of the peer-score distribution (gossipsub scores are unbounded both ways).
SCORE_BUCKETS: tuple[float, ...] = (-100.0, -80.0, -50.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0)


def bounded_labels(names: Iterable[str], first: Iterable[str] = (), limit: int = 64) -> set[str]:
    """Which of ``names`` keep their own label: ``first`` (our own topics) win, then the rest
    in name order, up to ``limit``."""
    keep: list[str] = []
    seen: set[str] = set()
    for name in [*first, *sorted(names)]:
        if name not in seen and len(keep) < limit:
            keep.append(name)
            seen.add(name)
    return seen


class NodeCollector(Collector):
    """Reads one node (and its agent, if any) at scrape time."""

    def __init__(self, node: Node, agent: Agent | None = None) -> None:
        self.node = node
        self.agent = agent

    def describe(self) -> list[Metric]:
        return []  # families depend on state; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._host_metrics()
        yield from self._kad_metrics()
        yield from self._pubsub_metrics()
        yield from self._agent_metrics()

    # -- host ---------------------------------------------------------------------------------

    def _host_metrics(self) -> Iterator[Metric]:
        host = self.node.host
        conns = host.connections()
        by_dir = GaugeMetricFamily(
            "libp2p_connection_manager_connections",
            "Open connections by direction",
            labels=["direction"],
        )
        for direction in Direction:
            by_dir.add_metric([direction.value], sum(1 for c in conns if c.direction is direction))
        yield by_dir
        yield _gauge("libp2p_peers", "Connected peers", len(host.connected_peers()))

        streams: dict[tuple[str, str], int] = {}
        for conn in conns:
            for stream in conn.muxed.streams:
                proto = stream.protocol or "negotiating"
                key = (proto, stream.direction.value)
                streams[key] = streams.get(key, 0) + 1
        keep = bounded_labels({p for p, _ in streams}, limit=MAX_PROTOCOL_LABELS)
        fam = GaugeMetricFamily(
            "libp2p_protocol_streams_total",
            "Open streams by protocol and direction",
            labels=["protocol", "direction"],
        )
        merged: dict[tuple[str, str], int] = {}
        for (proto, side), n in streams.items():
            key = (proto if proto in keep else OTHER, side)
            merged[key] = merged.get(key, 0) + n
        for key, n in sorted(merged.items()):
            fam.add_metric(list(key), n)
        yield fam

        received, sent = host.traffic()
        data = CounterMetricFamily(
            "libp2p_data_transfer_bytes",
            "Bytes of muxed (decrypted) traffic over all connections",
            labels=["protocol"],
        )
        data.add_metric(["global received"], received)
        data.add_metric(["global sent"], sent)
        yield data

        yield _counter(
            "libp2p_swarm_dial_attempt",
            "Outbound connection attempts (one per address tried)",
            host.dial_attempts,
        )
        yield _counter(
            "libp2p_swarm_outgoing_connection_error",
            "Outbound connection attempts that failed",
            host.dial_failures,
        )
        est = CounterMetricFamily(
            "libp2p_swarm_connections_established",
            "Connections established since start, by our role in them",
            labels=["role"],
        )
        est.add_metric(["dialer"], host.connections_opened[Direction.OUTBOUND])
        est.add_metric(["listener"], host.connections_opened[Direction.INBOUND])
        yield est

    # -- DHT ----------------------------------------------------------------------------------

    def _kad_metrics(self) -> Iterator[Metric]:
        dht = self.node.dht
        if dht is None:
            return
        table = dht.routing_table
        yield _gauge(
            "libp2p_kad_dht_wan_routing_table_size", "Peers in the routing table", len(table)
        )
        buckets = GaugeMetricFamily(
            "libp2p_kad_dht_wan_routing_table_bucket_size",
            "Peers per non-empty k-bucket (cpl: common prefix length with our key)",
            labels=["cpl"],
        )
        for cpl, n in sorted(table.bucket_sizes().items()):
            buckets.add_metric([str(cpl)], n)
        yield buckets
        yield _gauge(
            "libp2p_kad_dht_wan_mode",
            "1 when the DHT runs in server mode, 0 in client mode",
            1 if dht.mode.value == "server" else 0,
        )
        hist = HistogramMetricFamily(
            "libp2p_kad_dht_wan_query_time_seconds",
            "Duration of iterative DHT lookups by kind",
            labels=["kind"],
        )
        for kind, durations in sorted(dht.query_durations.items()):
            _add_histogram(hist, [kind], durations)
        yield hist
        requests = CounterMetricFamily(
            "libp2p_kad_dht_wan_requests",
            "DHT requests and failures by kind (sent/received and message type)",
            labels=["kind"],
        )
        for name, n in sorted(dht.counters.items()):
            requests.add_metric([name], n)
        yield requests

    # -- gossipsub ----------------------------------------------------------------------------

    def _pubsub_metrics(self) -> Iterator[Metric]:
        pubsub = self.node.pubsub
        router = None if pubsub is None else running_router(pubsub)
        if pubsub is None or router is None:  # disabled, or not started yet
            return
        ours = sorted(router.subscriptions)
        keep = bounded_labels(
            set(router.topics) | set(router.mesh) | set(router.topic_stats),
            first=ours,
            limit=MAX_TOPIC_LABELS,
        )

        def label(topic: str) -> str:
            return topic if topic in keep else OTHER

        subscribed = GaugeMetricFamily(
            "gossipsub_topic_subscription_status",
            "1 for the topics we subscribe to",
            labels=["topicStr"],
        )
        for topic in ours:
            if topic in keep:
                subscribed.add_metric([topic], 1)
        yield subscribed
        yield _topic_gauge(
            "gossipsub_mesh_peer_count",
            "Peers in our mesh, by topic",
            {t: len(m) for t, m in router.mesh.items()},
            label,
        )
        yield _topic_gauge(
            "gossipsub_topic_peer_count",
            "Peers subscribed to each topic",
            {t: len(p) for t, p in router.topics.items()},
            label,
        )
        per_protocol: dict[str, int] = {}
        for peer in router.peers.values():
            per_protocol[peer.protocol] = per_protocol.get(peer.protocol, 0) + 1
        fam = GaugeMetricFamily(
            "gossipsub_peers_per_protocol_count",
            "Pubsub peers by protocol",
            labels=["protocol"],
        )
        for proto, n in sorted(per_protocol.items()):
            fam.add_metric([proto], n)
        yield fam

        for stat, name, help_text in (
            ("published", "gossipsub_msg_publish_count", "Messages we published, by topic"),
            (
                "delivered",
                "gossipsub_accepted_messages",
                "Messages received, validated and delivered, by topic",
            ),
            (
                "rejected",
                "gossipsub_rejected_messages",
                "Messages our validator rejected, by topic",
            ),
            ("ignored", "gossipsub_ignored_messages", "Messages our validator ignored, by topic"),
            (
                "invalid",
                "gossipsub_msg_received_invalid_by_topic",
                "Messages with a bad signature or ID, by topic",
            ),
        ):
            counter = CounterMetricFamily(name, help_text, labels=["topic"])
            values: dict[str, int] = {}
            for topic, stats in router.topic_stats.items():
                if stat in stats:
                    key = label(topic)
                    values[key] = values.get(key, 0) + stats[stat]
            for topic, n in sorted(values.items()):
                counter.add_metric([topic], n)
            yield counter

        hist = HistogramMetricFamily(
            "gossipsub_heartbeat_duration_seconds",
            "Time one heartbeat takes (router work and sending its output)",
        )
        _add_histogram(hist, [], pubsub.heartbeat_durations)
        yield hist

        now = router.now
        scores = [router.score.score(p, now) for p in router.peers]
        thresholds = router.thresholds
        by_threshold = GaugeMetricFamily(
            "gossipsub_peers_by_score_threshold_count",
            "Peers whose score is below each threshold",
            labels=["threshold"],
        )
        for name, value in (
            ("graylist", thresholds.graylist_threshold),
            ("publish", thresholds.publish_threshold),
            ("gossip", thresholds.gossip_threshold),
            ("mesh", 0.0),
        ):
            by_threshold.add_metric([name], sum(1 for s in scores if s < value))
        yield by_threshold
        dist = GaugeHistogramMetricFamily(
            "gossipsub_score_distribution", "Current scores of our pubsub peers"
        )
        cumulative: list[tuple[str, float]] = []
        for bound in SCORE_BUCKETS:
            cumulative.append((repr(bound), sum(1 for s in scores if s <= bound)))
        cumulative.append(("+Inf", len(scores)))
        dist.add_metric([], cumulative, gsum_value=sum(scores))
        yield dist

    # -- agent --------------------------------------------------------------------------------

    def _agent_metrics(self) -> Iterator[Metric]:
        agent = self.agent
        if agent is None:
            return
        yield _counter("p2pnet_agent_messages_in", "Verified messages delivered", agent.messages_in)
        yield _counter("p2pnet_agent_messages_out", "Messages sent", agent.messages_out)
        yield _counter(
            "p2pnet_agent_messages_rejected",
            "Messages that failed verification",
            agent.rejected + agent.messaging.rejected,
        )
        yield _gauge(
            "p2pnet_agent_known_agents", "Agents seen on agent-announcements", len(agent.announced)
        )
        yield _gauge("p2pnet_agent_uptime_seconds", "Seconds since the agent started", agent.uptime)
        info = GaugeMetricFamily(
            "p2pnet_agent_info",
            "Constant 1, labelled with the agent's identity",
            labels=["peer_id", "eth_address", "name", "agent_version", "mode"],
        )
        info.add_metric(
            [
                str(agent.peer_id),
                agent.eth_address,
                agent.name[:64],
                agent.node.host.config.agent_version,
                agent.mode,
            ],
            1,
        )
        yield info


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _topic_gauge(
    name: str, help_text: str, values: dict[str, int], label: Callable[[str], str]
) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, help_text, labels=["topicStr"])
    merged: dict[str, int] = {}
    for topic, n in values.items():
        key = label(topic)
        merged[key] = merged.get(key, 0) + n
    for topic, n in sorted(merged.items()):
        fam.add_metric([topic], n)
    return fam


def _add_histogram(fam: HistogramMetricFamily, labels: list[str], hist: DurationHistogram) -> None:
    buckets: list[Any] = [(bound, float(n)) for bound, n in hist.cumulative()]
    fam.add_metric(labels, buckets, sum_value=hist.sum)


def node_registry(node: Node, agent: Agent | None = None) -> CollectorRegistry:
    """A fresh registry holding the metrics of ``node`` (and of ``agent``, which owns it).

    The collector keeps no state of its own: it can be created at any time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, agent))
    return registry
