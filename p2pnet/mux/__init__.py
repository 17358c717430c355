"""Stream multiplexers: yamux ``/yamux/1.0.0``."""

from p2pnet.mux.yamux import PROTOCOL_ID, YamuxConfig, YamuxSession
from p2pnet.mux.yamux_connection import StreamCallback, YamuxConnection, YamuxStream

__all__ = [
    "PROTOCOL_ID",
    "StreamCallback",
    "YamuxConfig",
    "YamuxConnection",
    "YamuxSession",
    "YamuxStream",
]
