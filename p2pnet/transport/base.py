"""What the host needs from a transport and from the connections it produces."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from multiaddr import Multiaddr

from p2pnet.io import ReadWriter


class RawConnection(ReadWriter, Protocol):
    """An unsecured byte stream between two transport addresses."""

    local_addr: Multiaddr
    remote_addr: Multiaddr

    def abort(self) -> None:
        """Drop the connection at once, without flushing."""
        ...


RawConnectionHandler = Callable[[RawConnection], Awaitable[None]]


class Listener(Protocol):
    @property
    def multiaddrs(self) -> list[Multiaddr]:
        """Where it listens now (a relayed listener's addresses change with its reservations)."""
        ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """Dials and listens on the multiaddrs it recognises."""

    def can_dial(self, addr: Multiaddr) -> bool: ...

    def can_listen(self, addr: Multiaddr) -> bool: ...

    async def dial(self, addr: Multiaddr, *, timeout: float) -> RawConnection: ...

    async def listen(self, addr: Multiaddr, handler: RawConnectionHandler) -> Listener: ...
