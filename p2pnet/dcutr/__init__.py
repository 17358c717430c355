"""DCUtR (``/libp2p/dcutr``): upgrade a relayed connection to a direct one by hole punching."""

from p2pnet.dcutr.core import PROTOCOL
from p2pnet.dcutr.service import HolePunchResult, HolePunchService

__all__ = ["PROTOCOL", "HolePunchResult", "HolePunchService"]
