"""The network explorer: a client node that watches the agent network and serves a live page
(docs/explorer.md)."""

from __future__ import annotations

from p2pnet.explorer.service import Explorer, ExplorerConfig
from p2pnet.explorer.view import NetworkView, ViewConfig
from p2pnet.explorer.web import ExplorerWeb

__all__ = ["Explorer", "ExplorerConfig", "ExplorerWeb", "NetworkView", "ViewConfig"]
