"""The host's service bus: typed events in order, unsubscribe, services that start and close."""

from __future__ import annotations

import asyncio
import logging

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import ProtocolNotSupported
from p2pnet.host.bus import (
    ConnectionEnded,
    ConnectionOpened,
    PeerIdentified,
    ProtocolsChanged,
    ServiceBus,
)
from p2pnet.host.host import Host
from p2pnet.protocols.identify import PROTOCOL_ID, PUSH_PROTOCOL_ID, IdentifyService
from p2pnet.protocols.ping import PROTOCOL_ID as PING_ID
from p2pnet.protocols.ping import PingService
from p2pnet.service import Service
from p2pnet.stream import Stream


def test_bus_delivers_by_type_in_order_and_survives_a_failing_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = ServiceBus()
    seen: list[str] = []

    def boom(_: ProtocolsChanged) -> None:
        raise RuntimeError("handler bug")

    bus.subscribe(ProtocolsChanged, lambda e: seen.append(f"a{len(e.protocols)}"))
    bus.subscribe(ProtocolsChanged, boom)
    stop = bus.subscribe(ProtocolsChanged, lambda e: seen.append("c"))
    bus.subscribe(ConnectionEnded, lambda e: seen.append("wrong type"))
    with caplog.at_level(logging.ERROR, "p2pnet.bus"):
        bus.emit(ProtocolsChanged(("/x",)))
    assert seen == ["a1", "c"]
    assert "handler bug" in caplog.text
    stop()
    stop()  # idempotent
    bus.emit(ProtocolsChanged(()))
    assert seen == ["a1", "c", "a0"]
    assert bus.subscribers(ProtocolsChanged) == 2


async def test_host_emits_connection_and_protocol_events() -> None:
    a, b = Host(KeyPair.generate()), Host(KeyPair.generate())
    events: list[object] = []
    closed = asyncio.Event()
    for event_type in (ConnectionOpened, ConnectionEnded, ProtocolsChanged):
        a.bus.subscribe(event_type, events.append)
    a.bus.subscribe(ConnectionEnded, lambda _: closed.set())
    async with a, b:

        async def nothing(stream: Stream) -> None:
            await stream.close()

        a.set_stream_handler("/p/1", nothing)
        conn = await a.connect(b.p2p_addrs()[0])
        await conn.close()
        await asyncio.wait_for(closed.wait(), 5)
    assert events == [
        ProtocolsChanged(("/p/1",)),
        ConnectionOpened(conn),
        ConnectionEnded(conn),
    ]


async def test_services_run_from_construction_and_close_for_good() -> None:
    a, b = Host(KeyPair.generate()), Host(KeyPair.generate())
    ident_a, ident_b = IdentifyService(a), IdentifyService(b)
    ping_b = PingService(b)
    assert isinstance(ident_a, Service) and isinstance(ping_b, Service)
    identified: list[PeerIdentified] = []
    both_done = asyncio.Event()

    def record(event: PeerIdentified) -> None:
        identified.append(event)
        if len(identified) == 2:
            both_done.set()

    a.bus.subscribe(PeerIdentified, record)
    async with a, b:
        await ident_a.start()  # already running: a no-op
        await a.connect(b.p2p_addrs()[0])  # identifies b in the background
        info = await ident_a.identify(b.peer_id)  # and once more on request
        assert PING_ID in info.protocols and PROTOCOL_ID in info.protocols
        await asyncio.wait_for(both_done.wait(), 5)
        assert info in [e.info for e in identified]
        await ident_b.close()
        await ping_b.close()
        await ident_b.close()  # idempotent
        assert {PROTOCOL_ID, PUSH_PROTOCOL_ID, PING_ID}.isdisjoint(b.protocols)
        assert b.bus.subscribers(ConnectionOpened) == 0
        # b no longer answers identify: a's request fails and nothing is applied
        before = len(identified)
        with pytest.raises(ProtocolNotSupported):
            await ident_a.identify(b.peer_id)
        assert len(identified) == before
        with pytest.raises(RuntimeError, match="cannot be restarted"):
            await ident_b.start()
        with pytest.raises(RuntimeError, match="cannot be restarted"):
            await ping_b.start()
