"""Circuit relay v2 (``/libp2p/circuit/relay/0.2.0/hop`` and ``/stop``), see docs/relay.md.

- :mod:`messages`: the wire messages and reservation vouchers (sans-IO);
- :mod:`reservations`: what a relay accepts: reservations, circuits, limits (sans-IO);
- :mod:`service`: the relay (hop server) on a host;
- :mod:`transport`: relayed connections as a transport (``/p2p-circuit`` multiaddrs), the stop
  handler, and the reservations a client keeps.
"""

from p2pnet.relay.messages import HOP_PROTOCOL, STOP_PROTOCOL, Limit, RelayStatus
from p2pnet.relay.reservations import RelayLimits

__all__ = ["HOP_PROTOCOL", "STOP_PROTOCOL", "Limit", "RelayLimits", "RelayStatus"]
