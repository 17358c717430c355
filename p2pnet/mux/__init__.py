"""Stream multiplexers: yamux ``/yamux/1.0.0``."""

from p2pnet.mux.yamux import PROTOCOL_ID, YamuxConfig, YamuxSession
from p2pnet.mux.yamux_connection import YamuxConnection, YamuxMuxer, YamuxStream

__all__ = [
    "PROTOCOL_ID",
    "YamuxConfig",
    "YamuxConnection",
    "YamuxMuxer",
    "YamuxSession",
    "YamuxStream",
]
