"""The in-process bus services subscribe to: typed events, delivered synchronously, in order.

The host emits :class:`ConnectionOpened`, :class:`ConnectionEnded` and :class:`ProtocolsChanged`;
identify emits :class:`PeerIdentified`. A service subscribes to the event types it needs when it
starts and unsubscribes when it closes. Handlers run synchronously inside ``emit`` (so a service
sees a connection before any stream on it is handled) and must not block; a handler that raises is
logged and the others still run. Applications get their events from ``Node.events()`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from p2pnet.host.connection import Connection
    from p2pnet.protocols.identify_messages import IdentifyInfo

log = logging.getLogger("p2pnet.bus")

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """A connection is upgraded and its muxer runs."""

    connection: Connection


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """A connection closed (either side, or an error)."""

    connection: Connection


@dataclass(frozen=True, slots=True)
class ProtocolsChanged:
    """The host's stream handlers changed; ``protocols`` is the new list."""

    protocols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AddressesChanged:
    """What the host advertises changed (a relay reservation won or lost, an address confirmed
    by peers): identify pushes the new list to connected peers."""


@dataclass(frozen=True, slots=True)
class PeerIdentified:
    """An identify (or identify push) from a peer was applied to the peer store."""

    info: IdentifyInfo


class ServiceBus:
    """Synchronous, typed fan-out of events to the subscribed handlers."""

    def __init__(self) -> None:
        self._handlers: dict[type, list[Callable[[Any], None]]] = {}

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> Callable[[], None]:
        """Call ``handler`` for every event of ``event_type``; returns the unsubscribe function."""
        handlers = self._handlers.setdefault(event_type, [])
        handlers.append(handler)

        def unsubscribe() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return unsubscribe

    def emit(self, event: object) -> None:
        for handler in list(self._handlers.get(type(event), ())):
            try:
                handler(event)
            except Exception:
                log.exception("handler of %s failed", type(event).__name__)

    def subscribers(self, event_type: type) -> int:
        return len(self._handlers.get(event_type, ()))


__all__ = [
    "ConnectionEnded",
    "ConnectionOpened",
    "PeerIdentified",
    "ProtocolsChanged",
    "ServiceBus",
]
