"""AutoNAT v2 over streams: the server (answers dial requests by dialling back) and the client
(asks a server whether one of its addresses is reachable).

The server dials back from a throwaway host with its own key (the spec lets a server use another
peer ID for dial-backs), so the dial-back is always a new connection, never one reused from the
request, and never from our listening port (no accidental hole punch). The client trusts only
the nonce that arrives on ``/dial-back``, not the server's word.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from multiaddr import Multiaddr

from p2pnet.autonat.messages import (
    DIAL_BACK_PROTOCOL,
    DIAL_DATA_BYTES,
    DIAL_DATA_CHUNK,
    DIAL_REQUEST_PROTOCOL,
    MAX_DIAL_DATA,
    MAX_MESSAGE_SIZE,
    AutoNATError,
    decode_message,
    needs_dial_data,
    parse_addrs,
    select_address,
)
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.errors import P2PError
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.stream import Stream
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed
from p2pnet.wire.pb import autonat_v2_pb2 as pb

log = logging.getLogger("p2pnet.autonat")

#: Seconds for a whole request on the server (data, dial-back) and for the client's wait.
REQUEST_TIMEOUT = 30.0
#: Seconds the server gives one dial-back (connect, upgrade, nonce, answer).
DIAL_BACK_TIMEOUT = 15.0


async def _send(stream: Stream, msg: pb.Message) -> None:
    await write_length_prefixed(stream, msg.SerializeToString())


async def _receive(stream: Stream) -> pb.Message:
    return decode_message(await read_length_prefixed(stream, MAX_MESSAGE_SIZE))


class AutoNATServer:
    """Serves ``/libp2p/autonat/2/dial-request`` on ``host``.

    ``allow_private``: also dial private and loopback addresses (tests, a lab, a LAN); the spec
    says a public server should not. ``max_concurrent`` requests run at once, one per peer;
    others are answered E_REQUEST_REJECTED.
    """

    def __init__(self, host: Host, *, allow_private: bool = False, max_concurrent: int = 8) -> None:
        self.host = host
        self.allow_private = allow_private
        self.max_concurrent = max_concurrent
        self._active: set[PeerID] = set()
        #: Requests answered, dial-backs that reached the client, dial data bytes received.
        self.requests = 0
        self.dial_backs = 0
        self.dial_data_received = 0

    async def start(self) -> None:
        self.host.set_stream_handler(DIAL_REQUEST_PROTOCOL, self._handle)

    async def close(self) -> None:
        self.host.remove_stream_handler(DIAL_REQUEST_PROTOCOL)

    async def _respond(
        self,
        stream: Stream,
        status: pb.DialResponse.ResponseStatus,
        idx: int = 0,
        dial_status: pb.DialStatus = pb.UNUSED,
    ) -> None:
        msg = pb.Message(
            dialResponse=pb.DialResponse(status=status, addrIdx=idx, dialStatus=dial_status)
        )
        await _send(stream, msg)
        await stream.close()

    async def _handle(self, stream: Stream) -> None:
        peer = stream.conn.remote_peer
        if peer in self._active or len(self._active) >= self.max_concurrent:
            await self._respond(stream, pb.DialResponse.E_REQUEST_REJECTED)
            return
        self._active.add(peer)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._serve(stream, peer)
        except AutoNATError as exc:
            log.info("bad autonat request from %s: %s", peer, exc)
            await stream.reset()
        finally:
            self._active.discard(peer)

    async def _serve(self, stream: Stream, peer: PeerID) -> None:
        msg = await _receive(stream)
        if msg.WhichOneof("msg") != "dialRequest":
            raise AutoNATError(f"expected a dialRequest, got {msg.WhichOneof('msg')}")
        self.requests += 1
        addrs = parse_addrs(list(msg.dialRequest.addrs))
        nonce = msg.dialRequest.nonce
        idx = select_address(
            addrs,
            lambda a: self.host.transport_for(a) is not None,
            allow_private=self.allow_private,
        )
        if idx is None:
            await self._respond(stream, pb.DialResponse.E_DIAL_REFUSED)
            return
        addr = addrs[idx]
        if needs_dial_data(addr, stream.conn.remote_addr):
            await _send(
                stream,
                pb.Message(
                    dialDataRequest=pb.DialDataRequest(addrIdx=idx, numBytes=DIAL_DATA_BYTES)
                ),
            )
            received = 0
            while received < DIAL_DATA_BYTES:
                data_msg = await _receive(stream)
                if data_msg.WhichOneof("msg") != "dialDataResponse":
                    raise AutoNATError("expected dialDataResponse")
                chunk = len(data_msg.dialDataResponse.data)
                if chunk > DIAL_DATA_CHUNK:
                    raise AutoNATError(f"dial data of {chunk} bytes in one message (max 4096)")
                received += chunk
            self.dial_data_received += received
        dial_status = await self._dial_back(peer, addr, nonce)
        await self._respond(stream, pb.DialResponse.OK, idx, dial_status)

    async def _dial_back(self, peer: PeerID, addr: Multiaddr, nonce: int) -> pb.DialStatus:
        key = KeyPair.generate(KeyType.Ed25519)
        dialer = Host(key, HostConfig(listen_addrs=[]), clock=self.host.clock)
        try:
            async with asyncio.timeout(DIAL_BACK_TIMEOUT):
                await dialer.start()
                try:
                    conn = await dialer.connect(addr.encapsulate(Multiaddr(f"/p2p/{peer}")))
                except (P2PError, OSError) as exc:
                    log.debug("dial-back to %s at %s failed: %s", peer, addr, exc)
                    return pb.E_DIAL_ERROR
                try:
                    stream = await conn.new_stream([DIAL_BACK_PROTOCOL])
                    await write_length_prefixed(
                        stream, pb.DialBack(nonce=nonce).SerializeToString()
                    )
                    answer = pb.DialBackResponse.FromString(
                        await read_length_prefixed(stream, MAX_MESSAGE_SIZE)
                    )
                except (P2PError, ValueError) as exc:  # DecodeError is a ValueError
                    log.debug("dial-back stream to %s failed: %s", peer, exc)
                    return pb.E_DIAL_BACK_ERROR
                if answer.status != pb.DialBackResponse.OK:
                    return pb.E_DIAL_BACK_ERROR
                self.dial_backs += 1
                return pb.OK
        except TimeoutError:
            return pb.E_DIAL_ERROR
        finally:
            await dialer.close()


@dataclass(frozen=True)
class AutoNATResult:
    """One server's verdict on one of our addresses.

    ``reachable``: True (dialled back with our nonce), False (the server could not connect),
    None (no verdict: refused, rejected, a dial-back error, or a claim without the nonce).
    """

    server: PeerID
    addr: Multiaddr | None
    reachable: bool | None
    status: str
    dial_data_sent: int = 0


class AutoNATClient:
    """Asks AutoNAT v2 servers about our addresses and answers their dial-backs."""

    def __init__(self, host: Host, rng: random.Random | None = None) -> None:
        self.host = host
        self.rng = rng or random.Random()
        self._pending: dict[int, asyncio.Event] = {}

    async def start(self) -> None:
        self.host.set_stream_handler(DIAL_BACK_PROTOCOL, self._handle_dial_back)

    async def close(self) -> None:
        self.host.remove_stream_handler(DIAL_BACK_PROTOCOL)

    async def _handle_dial_back(self, stream: Stream) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                data = await read_length_prefixed(stream, MAX_MESSAGE_SIZE)
                try:
                    nonce = pb.DialBack.FromString(data).nonce
                except ValueError:
                    await stream.reset()
                    return
                waiter = self._pending.get(nonce)
                if waiter is None:  # not a nonce we sent: no answer
                    await stream.reset()
                    return
                waiter.set()
                answer = pb.DialBackResponse(status=pb.DialBackResponse.OK)
                await write_length_prefixed(stream, answer.SerializeToString())
                await stream.close()
        except TimeoutError:
            await stream.reset()

    async def check(self, server: PeerID, addrs: list[Multiaddr]) -> AutoNATResult:
        """Ask ``server`` to dial one of ``addrs`` (in order of priority)."""
        nonce = self.rng.getrandbits(64)
        arrived = self._pending[nonce] = asyncio.Event()
        sent = 0
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                stream = await self.host.new_stream(server, DIAL_REQUEST_PROTOCOL)
                try:
                    request = pb.DialRequest(addrs=[a.to_bytes() for a in addrs], nonce=nonce)
                    await _send(stream, pb.Message(dialRequest=request))
                    while True:
                        msg = await _receive(stream)
                        kind = msg.WhichOneof("msg")
                        if kind == "dialDataRequest":
                            wanted = msg.dialDataRequest.numBytes
                            if wanted > MAX_DIAL_DATA:
                                raise AutoNATError(f"server wants {wanted} bytes of dial data")
                            chunk = pb.Message(
                                dialDataResponse=pb.DialDataResponse(data=bytes(DIAL_DATA_CHUNK))
                            )
                            while sent < wanted:
                                await _send(stream, chunk)
                                sent += DIAL_DATA_CHUNK
                        elif kind == "dialResponse":
                            break
                        else:
                            raise AutoNATError(f"unexpected {kind} from the server")
                except BaseException:
                    await stream.reset()
                    raise
                await stream.close()
        finally:
            self._pending.pop(nonce, None)
        resp = msg.dialResponse
        if resp.status != pb.DialResponse.OK:
            name = (
                pb.DialResponse.ResponseStatus.Name(resp.status)
                if resp.status in (0, 100, 101, 200)
                else str(resp.status)
            )
            return AutoNATResult(server, None, None, name, sent)
        if resp.addrIdx >= len(addrs):
            raise AutoNATError(f"server answered for address {resp.addrIdx} of {len(addrs)}")
        addr = addrs[resp.addrIdx]
        if resp.dialStatus == pb.OK:
            if not arrived.is_set():  # the server claims a dial-back we never got
                return AutoNATResult(server, addr, None, "UNVERIFIED", sent)
            return AutoNATResult(server, addr, True, "OK", sent)
        if resp.dialStatus == pb.E_DIAL_ERROR:
            return AutoNATResult(server, addr, False, "E_DIAL_ERROR", sent)
        return AutoNATResult(server, addr, None, "E_DIAL_BACK_ERROR", sent)
