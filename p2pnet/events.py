"""Node events an application iterates: ``async for event in node.events(): ...``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from multiaddr import Multiaddr

from p2pnet.peer.peer_id import PeerID

log = logging.getLogger("p2pnet.node")


@dataclass(frozen=True)
class PeerConnected:
    peer: PeerID
    addr: Multiaddr
    direction: str  # "inbound" or "outbound"


@dataclass(frozen=True)
class PeerDisconnected:
    peer: PeerID


@dataclass(frozen=True)
class PeerDiscovered:
    """We learned of a peer and where to reach it (identify, the DHT, ...)."""

    peer: PeerID
    addrs: list[Multiaddr] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    source: str = ""


@dataclass(frozen=True)
class MessageReceived:
    """A pubsub message on a topic the node subscribed to through the node API."""

    topic: str
    from_peer: PeerID | None
    data: bytes
    seqno: int | None
    msg_id: bytes


NodeEvent = PeerConnected | PeerDisconnected | PeerDiscovered | MessageReceived
E = TypeVar("E")


class EventStream(Generic[E]):
    """One consumer's view of the bus; registered from creation, so nothing is missed between
    ``node.events()`` and the first ``async for`` step."""

    def __init__(self, bus: EventBus[E]) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[E | None] = asyncio.Queue(bus.maxsize)
        self._done = False
        if bus.closed:
            self._queue.put_nowait(None)
        else:
            bus._streams.add(self)

    def _put(self, event: E | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self._bus.dropped += 1
        self._queue.put_nowait(event)

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event

    async def next(self, timeout: float) -> E:
        """The next event, or TimeoutError after ``timeout`` seconds."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def close(self) -> None:
        self._done = True
        self._bus._streams.discard(self)


class EventBus(Generic[E]):
    """Fan-out of events to any number of :class:`EventStream` consumers, each bounded.

    A consumer that falls ``maxsize`` events behind loses the oldest ones (counted in
    ``dropped``) instead of growing memory without bound or blocking the network code.
    """

    def __init__(self, maxsize: int = 1000) -> None:
        self.maxsize = maxsize
        self._streams: set[EventStream[E]] = set()
        self.dropped = 0
        self.closed = False

    def emit(self, event: E) -> None:
        for stream in self._streams:
            stream._put(event)

    def subscribe(self) -> EventStream[E]:
        return EventStream(self)

    def close(self) -> None:
        """End every stream (after the events already queued)."""
        self.closed = True
        for stream in list(self._streams):
            stream._put(None)
