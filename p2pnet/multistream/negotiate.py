"""multistream-select over asyncio: thin adapters around the sans-IO negotiators.

They write what the core queued and read exactly ``Negotiator.bytes_wanted`` bytes, so they never
consume a byte past the negotiation, and bound the whole negotiation with a timeout. Every decision
is the core's (:mod:`p2pnet.multistream.core`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from p2pnet.errors import NegotiationError
from p2pnet.io import ReadWriter
from p2pnet.multistream.core import (
    MAX_NEGOTIATION_ATTEMPTS,
    MultistreamDialer,
    MultistreamListener,
    NegotiationEvent,
    Negotiator,
    ProtocolAgreed,
    ProtocolLister,
    ProtocolsListed,
    Supported,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "finish_negotiation",
    "list_protocols",
    "negotiate_inbound",
    "negotiate_outbound",
]

#: Default bound, in seconds, on one whole negotiation.
DEFAULT_TIMEOUT: Final = 10.0


async def _drive(
    conn: ReadWriter, neg: Negotiator, timeout: float | None, what: str
) -> NegotiationEvent:
    """Write what ``neg`` queued, read exactly what it wants, until it agrees or lists
    (``timeout`` None: the caller bounds the negotiation with a timeout of its own)."""
    if timeout is None:
        return await _exchange(conn, neg)
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(conn, neg)
    except TimeoutError as exc:
        raise NegotiationError(f"multistream {what} timed out after {timeout:g} s") from exc


async def finish_negotiation(conn: ReadWriter, neg: Negotiator) -> NegotiationEvent:
    """Drive ``neg`` over ``conn`` until it finishes (it may have been fed bytes already,
    by a push consumer that had to stop: what it queued is written first); no timeout."""
    return await _exchange(conn, neg)


async def _exchange(conn: ReadWriter, neg: Negotiator) -> NegotiationEvent:
    write = conn.write
    readexactly = conn.readexactly
    if out := neg.data_to_send():
        await write(out)
    while True:
        data = await readexactly(neg.bytes_wanted)
        try:
            events = neg.receive_data(data)
        finally:
            # what was queued before a failure (the listener's last ``na``) still goes out
            if out := neg.data_to_send():
                await write(out)
        if neg.finished:
            return events[-1]


async def negotiate_outbound(
    conn: ReadWriter,
    protocols: Sequence[str],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    header_exchanged: bool = False,
    early_data: bytes = b"",
) -> str:
    """Dialer side: propose ``protocols`` in order and return the first one the listener accepts.

    See :class:`MultistreamDialer`. Raises :class:`ProtocolNotSupported` if every protocol was
    refused, :class:`NegotiationError` if the listener answers something else than the header /
    the echo / ``na`` or the whole negotiation takes longer than ``timeout`` seconds (None: no
    timeout of its own, for a caller that runs it under one),
    :class:`ProtocolError` on malformed messages, :class:`~p2pnet.errors.IncompleteRead` if the
    connection closes midway, and :class:`ValueError` for an unusable ``protocols`` argument.
    ``early_data``: the protocol's first bytes, sent with the proposal (single protocol only).
    """
    neg = MultistreamDialer(protocols, header_exchanged=header_exchanged, early_data=early_data)
    event = await _drive(conn, neg, timeout, "dial negotiation")
    assert isinstance(event, ProtocolAgreed)
    return event.protocol


async def list_protocols(conn: ReadWriter, *, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Dialer-side ``ls`` (see :class:`ProtocolLister`): the listener's protocol list.

    Afterwards propose with ``negotiate_outbound(conn, protos, header_exchanged=True)`` or close
    ``conn``.
    """
    event = await _drive(conn, ProtocolLister(), timeout, "ls")
    assert isinstance(event, ProtocolsListed)
    return event.protocols


async def negotiate_inbound(
    conn: ReadWriter,
    supported: Supported,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_attempts: int = MAX_NEGOTIATION_ATTEMPTS,
) -> str:
    """Listener side: answer the dialer's proposals and return the protocol agreed on.

    See :class:`MultistreamListener`. Raises :class:`NegotiationError` (wrong header, too many
    attempts, timeout), :class:`ProtocolError` on malformed messages,
    :class:`~p2pnet.errors.IncompleteRead` if the dialer closes midway.
    """
    neg = MultistreamListener(supported, max_attempts=max_attempts)
    event = await _drive(conn, neg, timeout, "listen negotiation")
    assert isinstance(event, ProtocolAgreed)
    return event.protocol
