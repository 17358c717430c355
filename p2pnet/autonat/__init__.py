"""AutoNAT v2 (``/libp2p/autonat/2/dial-request`` and ``/dial-back``), see docs/relay.md."""

from p2pnet.autonat.messages import DIAL_BACK_PROTOCOL, DIAL_REQUEST_PROTOCOL
from p2pnet.autonat.service import AutoNATClient, AutoNATResult, AutoNATServer

__all__ = [
    "DIAL_BACK_PROTOCOL",
    "DIAL_REQUEST_PROTOCOL",
    "AutoNATClient",
    "AutoNATResult",
    "AutoNATServer",
]
