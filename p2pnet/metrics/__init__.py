"""Prometheus metrics of nodes (``collector``) and the HTTP server that exposes them
(``server``). docs/metrics.md lists every metric."""

from __future__ import annotations

from p2pnet.metrics.collector import NodeCollector, node_registry
from p2pnet.metrics.server import MetricsServer, render

__all__ = ["MetricsServer", "NodeCollector", "node_registry", "render"]
