"""identify (``/ipfs/id/1.0.0``) and identify push (``/ipfs/id/push/1.0.0``).

On every new connection we ask the remote who it is; the answer (protocols, listen addresses,
public key, versions, the address it sees us at) goes into the peer store. When our own protocols
change we push a fresh record to every connected peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from multiaddr import Multiaddr

from p2pnet.crypto.keys import unmarshal_public_key
from p2pnet.errors import CryptoError, P2PError, ProtocolError
from p2pnet.host.connection import Connection
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import CONNECTED_ADDR_TTL
from p2pnet.peer.record import (
    SIGNED_PEER_RECORD,
    InvalidPeerRecord,
    make_peer_record,
    verify_peer_record,
)
from p2pnet.stream import ConnectionInfo, Stream
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed
from p2pnet.wire.pb import identify_pb2

PROTOCOL_ID = "/ipfs/id/1.0.0"
PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"
# go caps identify messages at 4 KiB per message and js at 8 KiB; we accept more but not unbounded.
MAX_IDENTIFY_SIZE = 64 * 1024

log = logging.getLogger("p2pnet.identify")


@dataclass
class IdentifyInfo:
    """What a peer told us about itself."""

    peer: PeerID
    protocols: list[str] = field(default_factory=list)
    listen_addrs: list[Multiaddr] = field(default_factory=list)
    observed_addr: Multiaddr | None = None
    agent_version: str = ""
    protocol_version: str = ""


def _decode_addr(raw: bytes) -> Multiaddr | None:
    try:
        return Multiaddr(raw)
    except Exception:  # the multiaddr package raises several unrelated types
        return None


class IdentifyService:
    def __init__(self, host: Host, *, timeout: float = 10.0) -> None:
        self.host = host
        self.timeout = timeout
        self._identified: dict[PeerID, asyncio.Event] = {}
        self._push_pending = False
        self._listeners: list[Callable[[IdentifyInfo], None]] = []
        self._record: tuple[tuple[bytes, ...], bytes] | None = None
        host.set_stream_handler(PROTOCOL_ID, self._handle_identify)
        host.set_stream_handler(PUSH_PROTOCOL_ID, self._handle_push)
        host.on_connected(self._on_connected)
        host.on_disconnected(self._on_disconnected)
        host.on_protocols_changed(self._schedule_push)

    def on_identified(self, callback: Callable[[IdentifyInfo], None]) -> None:
        """Call ``callback`` after every identify or push from a peer has been applied.

        For a push, ``info`` holds only the fields the push carried.
        """
        self._listeners.append(callback)

    # -- our side ------------------------------------------------------------------------------

    def build_message(self, conn: ConnectionInfo) -> identify_pb2.Identify:
        msg = identify_pb2.Identify()
        msg.protocolVersion = self.host.config.protocol_version
        msg.agentVersion = self.host.config.agent_version
        msg.publicKey = self.host.key.public_key.to_protobuf()
        msg.listenAddrs.extend(a.to_bytes() for a in self.host.listen_addrs)
        msg.protocols.extend(self.host.protocols)
        msg.observedAddr = conn.remote_addr.to_bytes()
        msg.signedPeerRecord = self.signed_peer_record()
        return msg

    def signed_peer_record(self) -> bytes:
        """Our signed peer record (RFC 0003), re-signed only when our addresses change."""
        addrs = self.host.listen_addrs
        key = tuple(a.to_bytes() for a in addrs)
        if self._record is None or self._record[0] != key:
            # Milliseconds since the epoch: a later record always has a higher sequence number.
            seq = time.time_ns() // 1_000_000
            self._record = (key, make_peer_record(self.host.key, addrs, seq))
        return self._record[1]

    async def _handle_identify(self, stream: Stream) -> None:
        conn = stream.conn
        async with stream:
            await write_length_prefixed(stream, self.build_message(conn).SerializeToString())

    # -- their side ------------------------------------------------------------------------------

    def _on_connected(self, conn: Connection) -> None:
        self._identified.setdefault(conn.remote_peer, asyncio.Event())
        self.host.spawn(self._identify(conn), name=f"identify {conn.remote_peer}")

    def _on_disconnected(self, conn: Connection) -> None:
        if not self.host.is_connected(conn.remote_peer):
            self._identified.pop(conn.remote_peer, None)

    async def _identify(self, conn: Connection) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                stream = await conn.new_stream([PROTOCOL_ID])
                async with stream:
                    data = await read_length_prefixed(stream, MAX_IDENTIFY_SIZE)
            self._apply(conn.remote_peer, data, push=False)
        except (P2PError, TimeoutError) as exc:
            log.info("identify of %s failed: %s", conn.remote_peer, exc)

    async def _handle_push(self, stream: Stream) -> None:
        conn = stream.conn
        async with stream:
            data = await read_length_prefixed(stream, MAX_IDENTIFY_SIZE)
        self._apply(conn.remote_peer, data, push=True)

    def _apply(self, peer: PeerID, data: bytes, *, push: bool) -> IdentifyInfo:
        msg = identify_pb2.Identify()
        try:
            msg.ParseFromString(data)
        except DecodeError as exc:
            raise ProtocolError(f"malformed identify message from {peer}") from exc
        store = self.host.peerstore
        info = IdentifyInfo(peer=peer)
        if msg.HasField("publicKey"):
            try:
                key = unmarshal_public_key(msg.publicKey)
            except CryptoError as exc:
                raise ProtocolError(f"identify from {peer} carries a bad public key") from exc
            if PeerID.from_public_key(key) != peer:
                raise ProtocolError(f"identify from {peer} carries another peer's public key")
            store.add_pubkey(peer, key)
        # A push may carry only the fields that changed (spec): leave the others alone.
        if msg.listenAddrs or not push:
            addrs = [a for a in map(_decode_addr, msg.listenAddrs) if a is not None]
            info.listen_addrs = addrs
            store.set_addrs(peer, addrs, CONNECTED_ADDR_TTL)
        if msg.protocols or not push:
            info.protocols = list(msg.protocols)
            store.set_protocols(peer, info.protocols)
        if msg.HasField("observedAddr"):
            info.observed_addr = _decode_addr(msg.observedAddr)
        if msg.HasField("agentVersion"):
            info.agent_version = msg.agentVersion
            store.set_agent_version(peer, msg.agentVersion)
        if msg.HasField("protocolVersion"):
            info.protocol_version = msg.protocolVersion
            store.set_protocol_version(peer, msg.protocolVersion)
        if info.observed_addr is not None:
            store.set_observed_addr(peer, info.observed_addr)
        if msg.HasField("signedPeerRecord"):
            try:
                verify_peer_record(msg.signedPeerRecord, peer)
            except InvalidPeerRecord as exc:
                log.info("identify from %s carries an invalid peer record: %s", peer, exc)
            else:
                # Kept for gossipsub peer exchange, which passes records on to third parties.
                store.put_metadata(peer, SIGNED_PEER_RECORD, msg.signedPeerRecord)
        event = self._identified.setdefault(peer, asyncio.Event())
        event.set()
        log.debug("identified %s: %s", peer, info)
        for cb in self._listeners:
            try:
                cb(info)
            except Exception:
                log.exception("identify listener failed")
        return info

    async def wait_identified(self, peer: PeerID, timeout: float = 10.0) -> None:
        """Wait until the first identify exchange with ``peer`` completed."""
        event = self._identified.setdefault(peer, asyncio.Event())
        await asyncio.wait_for(event.wait(), timeout)

    # -- push --------------------------------------------------------------------------------

    def _schedule_push(self) -> None:
        # Several handler changes in a row produce one push.
        if self._push_pending or not self.host.connected_peers():
            return
        self._push_pending = True
        self.host.spawn(self._push_all(), name="identify push")

    async def _push_all(self) -> None:
        await asyncio.sleep(0)
        self._push_pending = False
        await asyncio.gather(
            *(self._push(c) for c in self.host.connections()), return_exceptions=True
        )

    async def _push(self, conn: Connection) -> None:
        if PUSH_PROTOCOL_ID not in self.host.peerstore.get_protocols(conn.remote_peer):
            return
        try:
            async with asyncio.timeout(self.timeout):
                stream = await conn.new_stream([PUSH_PROTOCOL_ID])
                async with stream:
                    data = self.build_message(conn).SerializeToString()
                    await write_length_prefixed(stream, data)
        except (P2PError, TimeoutError) as exc:
            log.debug("identify push to %s failed: %s", conn.remote_peer, exc)
