"""What every long-lived service of a node has in common: ``start()``, ``close()``, one state.

A service is created idle, runs after ``start()`` and is done after ``close()``; it never goes
back. ``close()`` is idempotent and may be called on a service that never started; ``start()``
on a closed service raises. Services keep their state in a :class:`Lifecycle` instead of loose
``_started``/``_closed`` flags, so the legal transitions are written once.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable


@runtime_checkable
class Service(Protocol):
    """A node service (pubsub, agent messaging, presence, ...)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class ServiceState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class Lifecycle:
    """The state of one service: NEW -> RUNNING -> CLOSED, or NEW -> CLOSED."""

    __slots__ = ("name", "state")

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = ServiceState.NEW

    @property
    def running(self) -> bool:
        return self.state is ServiceState.RUNNING

    @property
    def closed(self) -> bool:
        return self.state is ServiceState.CLOSED

    def begin_start(self) -> bool:
        """Move NEW -> RUNNING: True if the caller must now start the service, False if it runs.

        Raises RuntimeError on a closed service (it cannot be restarted).
        """
        if self.state is ServiceState.RUNNING:
            return False
        if self.state is ServiceState.CLOSED:
            raise RuntimeError(f"{self.name} is closed and cannot be restarted")
        self.state = ServiceState.RUNNING
        return True

    def begin_close(self) -> ServiceState | None:
        """Move to CLOSED; returns the state it was in, or None if it was closed already."""
        if self.state is ServiceState.CLOSED:
            return None
        previous = self.state
        self.state = ServiceState.CLOSED
        return previous

    def __repr__(self) -> str:
        return f"<Lifecycle {self.name}: {self.state.value}>"
