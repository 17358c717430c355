"""Direct messages between agents: one stream per message, answered by an acknowledgement.

Why a stream and not the ``agent-messages`` topic with a recipient field: a topic message reaches
every subscriber (only the addressee would keep it, but all would see it, and the network would
carry it everywhere); a stream reaches exactly the recipient, over its Noise-authenticated
connection, and the acknowledgement tells the sender it arrived. Broadcasts use the topic.

Wire: the sender opens ``/p2pnet/agent/message/1.0.0``, writes one length-prefixed envelope
(:mod:`p2pnet.agent.envelope`), closes its side; the recipient answers one length-prefixed JSON
object, ``{"ok": true}`` or ``{"ok": false, "error": "..."}``, and closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from multiaddr import Multiaddr

from p2pnet.agent.constants import DIRECT_MESSAGE_PROTOCOL
from p2pnet.agent.envelope import (
    MAX_ENVELOPE_SIZE,
    Envelope,
    InvalidEnvelope,
    ReplayGuard,
    open_envelope,
)
from p2pnet.agent.errors import DialFailed, SendFailed
from p2pnet.clock import Clock
from p2pnet.errors import DialError, P2PError
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.service import Lifecycle
from p2pnet.stream import Stream
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed
from p2pnet.wire.json_bounded import loads_bounded

log = logging.getLogger("p2pnet.agent")

MAX_ACK_SIZE = 4096


class DirectMessaging:
    """The direct-message service: ``start()`` serves the protocol, ``close()`` stops it."""

    def __init__(
        self,
        host: Host,
        my_address: str,
        deliver: Callable[[Envelope, Multiaddr], None],
        *,
        clock: Clock,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.my_address = my_address.lower()
        self.deliver = deliver
        self.clock = clock
        self.timeout = timeout
        self.replays = ReplayGuard()
        self.rejected = 0
        #: Optional gate after the envelope checks (the registry policy): returns why a
        #: verified message is refused, or None to deliver it.
        self.admit: Callable[[Envelope], Awaitable[str | None]] | None = None
        self._lifecycle = Lifecycle("direct messaging")

    async def start(self) -> None:
        if self._lifecycle.begin_start():
            self.host.set_stream_handler(DIRECT_MESSAGE_PROTOCOL, self._handle)

    async def close(self) -> None:
        if self._lifecycle.begin_close() is not None:
            # Streams being handled finish on their own (each is bounded by ``timeout``).
            self.host.remove_stream_handler(DIRECT_MESSAGE_PROTOCOL)

    async def _handle(self, stream: Stream) -> None:
        remote = stream.conn.remote_peer
        async with asyncio.timeout(self.timeout), stream:
            raw = await read_length_prefixed(stream, MAX_ENVELOPE_SIZE)
            try:
                env = open_envelope(raw, now=self.clock.time())
                if env.kind != "direct":
                    raise InvalidEnvelope(f"a {env.kind} message on the direct protocol")
                if env.peer_id != remote:
                    raise InvalidEnvelope(f"sent by {remote} but signed for {env.peer_id}")
                if env.to != self.my_address:
                    raise InvalidEnvelope(f"addressed to {env.to}, not to us")
                self.replays.check(env)
                refusal = await self.admit(env) if self.admit is not None else None
                if refusal is not None:
                    raise InvalidEnvelope(refusal)
            except InvalidEnvelope as exc:
                self.rejected += 1
                log.info("refused a direct message from %s: %s", remote, exc)
                await write_length_prefixed(stream, _ack(False, str(exc)))
                return
            self.deliver(env, stream.conn.remote_addr)  # which connection carried it
            await write_length_prefixed(stream, _ack(True))

    async def send(self, peer: PeerID, envelope: bytes) -> None:
        """Deliver ``envelope`` to ``peer`` (connected or dialable) and wait for its ack."""
        try:
            async with asyncio.timeout(self.timeout):
                stream = await self.host.new_stream(peer, [DIRECT_MESSAGE_PROTOCOL])
                async with stream:
                    await write_length_prefixed(stream, envelope)
                    await stream.close()
                    ack = loads_bounded(await read_length_prefixed(stream, MAX_ACK_SIZE))
        except TimeoutError as exc:
            raise SendFailed(f"no acknowledgement from {peer} within {self.timeout}s") from exc
        except DialError as exc:
            raise DialFailed(f"cannot reach {peer}: {exc}") from exc
        except (P2PError, ValueError) as exc:
            raise SendFailed(f"sending to {peer} failed: {exc}") from exc
        if not isinstance(ack, dict) or ack.get("ok") is not True:
            why = ack.get("error") if isinstance(ack, dict) else ack
            raise SendFailed(f"{peer} refused the message: {why}")


def _ack(ok: bool, error: str = "") -> bytes:
    return json.dumps({"ok": True} if ok else {"ok": False, "error": error}).encode()
