"""Presence: an agent's signed record under its ETH address in the DHT, kept fresh.

Resolving an address is always a DHT query (``GET_VALUE /agent/0x...``), never a local map: the
record is verified (it must be signed by the address's key) and names the PeerID and the
addresses where the agent listens.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from p2pnet.agent.errors import DhtLookupFailed, InvalidFields, PeerNotFound
from p2pnet.agent.record import AgentPresence, agent_key, sign_agent_record, verify_agent_record
from p2pnet.clock import Clock
from p2pnet.crypto.eth import is_eth_address
from p2pnet.host.host import Host
from p2pnet.kad.dht import KadDHT
from p2pnet.kad.errors import InvalidRecord, KadError, NoPeersError, RecordNotFound

log = logging.getLogger("p2pnet.agent")


class Presence:
    """Publishing and resolving presence records. It owns no stream handler and no task (the
    agent's maintenance loop republishes), so it is a helper, not a service with start/close."""

    def __init__(self, host: Host, dht: KadDHT, clock: Clock) -> None:
        self.host = host
        self.dht = dht
        self.clock = clock
        self.published_seq = 0
        #: ``agentRegistry``/``agentId`` the record states (set when a registry is used).
        self.registry_fields: dict[str, Any] = {}
        #: Set once a record has been stored in the DHT.
        self.published = asyncio.Event()

    async def publish(self) -> int:
        """Sign and store our record; returns the number of DHT peers that took it."""
        # A time-based sequence number keeps increasing across restarts of the agent.
        now = self.clock.time()
        seq = max(self.published_seq + 1, int(now * 1000))
        key, value = sign_agent_record(
            self.host.key,
            self.host.peer_id,
            self.host.advertised_addrs,
            seq,
            int(now),
            agent_registry=self.registry_fields.get("agentRegistry"),
            agent_id=self.registry_fields.get("agentId"),
        )
        stored = await self.dht.put_value(key, value)
        self.published_seq = seq
        if stored > 0:
            self.published.set()
        log.debug("presence seq %d stored on %d peers", seq, stored)
        return stored

    async def resolve(self, address: str) -> AgentPresence:
        """The presence of the agent with ETH ``address``, found through the DHT."""
        if not is_eth_address(address):
            raise InvalidFields(f"not an Ethereum address: {address!r}")
        key = agent_key(address)
        try:
            value = await self.dht.get_value(key, quorum=1)
        except RecordNotFound as exc:
            if len(self.dht.routing_table) == 0:
                # Nobody was asked: that is a failed lookup, not an absent agent.
                raise DhtLookupFailed("no DHT server known to ask (routing table empty)") from exc
            raise PeerNotFound(f"no presence record for {address} in the DHT") from exc
        except NoPeersError as exc:
            raise DhtLookupFailed(f"cannot query the DHT: {exc}") from exc
        except KadError as exc:
            raise DhtLookupFailed(f"DHT lookup of {address} failed: {exc}") from exc
        try:
            return verify_agent_record(key, value)
        except InvalidRecord as exc:  # the DHT validated it already; keep the check anyway
            raise PeerNotFound(f"presence record of {address} is invalid: {exc}") from exc
