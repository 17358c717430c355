"""Security transports. libp2p Noise (``/noise``) is the one p2pnet speaks."""

from p2pnet.security.noise import PROTOCOL_ID
from p2pnet.security.noise_connection import NoiseConnection, noise_handshake

__all__ = ["PROTOCOL_ID", "NoiseConnection", "noise_handshake"]
