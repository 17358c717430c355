"""js <-> js through the driver: proves peer.mjs and jspeer.py before the Python stack exists."""

from __future__ import annotations

import asyncio

import pytest

from .jspeer import JsPeer, JsPeerError, JsPeerFactory

ED25519_SEED_1 = bytes(31) + b"\x01"
ED25519_SEED_1_ID = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
SECP256K1_KEY_1_ID = "16Uiu2HAm3cuhhRL2msUuLF62KRSfneFDx94RsuouyW25Ho42cFMq"

ECHO = "/p2pnet/echo/1.0.0"
SINK = "/p2pnet/sink/1.0.0"


async def _pair(js_peer_factory: JsPeerFactory) -> tuple[JsPeer, JsPeer]:
    a, b = await asyncio.gather(js_peer_factory(name="js-a"), js_peer_factory(name="js-b"))
    return a, b


async def test_ready_and_fixed_identities(js_peer_factory: JsPeerFactory) -> None:
    ed = await js_peer_factory(seed=ED25519_SEED_1)
    secp = await js_peer_factory(key_type="secp256k1", seed=ED25519_SEED_1)
    assert ed.peer_id == ED25519_SEED_1_ID
    assert secp.peer_id == SECP256K1_KEY_1_ID
    for p in (ed, secp):
        assert p.addrs and all(a.startswith("/ip4/127.0.0.1/tcp/") for a in p.addrs)
        assert all(a.endswith(f"/p2p/{p.peer_id}") for a in p.addrs)
        info = await p.command("info")
        assert ECHO in info["protocols"] and SINK in info["protocols"]


async def test_dial_ping_peer_info(js_peer_factory: JsPeerFactory) -> None:
    a, b = await _pair(js_peer_factory)
    conn = await a.command("dial", addr=b.addr)
    assert conn["peerId"] == b.peer_id
    assert conn["encryption"] == "/noise"
    assert conn["multiplexer"] == "/yamux/1.0.0"
    assert conn["direction"] == "outbound"

    ev = await a.next_event("connection_open")
    assert ev["peerId"] == b.peer_id

    rtt = (await a.command("ping", peerId=b.peer_id))["rtt"]
    assert isinstance(rtt, (int, float)) and rtt >= 0
    rtt2 = (await b.command("ping", addr=a.addr))["rtt"]
    assert rtt2 >= 0

    info = await a.command("peer_info", peerId=b.peer_id, wait_identify=True)
    assert info["identified"] is True
    assert "/ipfs/id/1.0.0" in info["protocols"]
    assert ECHO in info["protocols"]
    assert info["agentVersion"].startswith("js-libp2p/")
    assert info["protocolVersion"] == "ipfs/0.1.0"
    assert any(addr.startswith("/ip4/127.0.0.1/tcp/") for addr in info["addrs"])

    conns = (await b.command("connections"))["connections"]
    assert [c["peerId"] for c in conns] == [a.peer_id]
    assert conns[0]["direction"] == "inbound"

    await a.command("hangup", peerId=b.peer_id)
    assert (await a.command("connections"))["connections"] == []


async def test_echo_one_stream_1mib(js_peer_factory: JsPeerFactory) -> None:
    a, b = await _pair(js_peer_factory)
    res = await a.command("echo", addr=b.addr, size=1 << 20, streams=1, chunk=65536)
    assert res["bytesEchoed"] == 1 << 20
    done = await b.next_event("echo_done")
    assert done["bytes"] == 1 << 20


async def test_echo_100_concurrent_streams(js_peer_factory: JsPeerFactory) -> None:
    a, b = await _pair(js_peer_factory)
    res = await a.command("echo", addr=b.addr, size=10 * 1024, streams=100, chunk=4096, timeout=60)
    assert res["bytesEchoed"] == 100 * 10 * 1024
    assert res["streams"] == 100
    # everything stayed on one connection
    conns = (await a.command("connections", peerId=b.peer_id))["connections"]
    assert len(conns) == 1


async def test_echo_large_stream_backpressure(js_peer_factory: JsPeerFactory) -> None:
    """A single 32 MiB echo: more than yamux's 16 MiB max window, so both directions must
    respect flow control and the echo handler must pause/resume."""
    a, b = await _pair(js_peer_factory)
    res = await a.command("echo", addr=b.addr, size=32 << 20, streams=1, chunk=1 << 20, timeout=90)
    assert res["bytesEchoed"] == 32 << 20


async def test_throughput_send_64mib(js_peer_factory: JsPeerFactory) -> None:
    a, b = await _pair(js_peer_factory)
    res = await a.command("throughput_send", addr=b.addr, bytes=64 << 20, timeout=120)
    assert res["bytes"] == 64 << 20
    print(f"\njs->js throughput, one stream, 64 MiB: {res['MBps']:.1f} MB/s ({res['ms']:.0f} ms)")
    done = await b.next_event("sink_done")
    assert done["bytes"] == 64 << 20


async def test_errors_are_reported(js_peer: JsPeer) -> None:
    with pytest.raises(JsPeerError) as info:
        await js_peer.command("no_such_command")
    assert info.value.code == "BadCommand"
    # nothing listens on port 1
    with pytest.raises(JsPeerError) as info:
        await js_peer.command(
            "dial", addr=f"/ip4/127.0.0.1/tcp/1/p2p/{ED25519_SEED_1_ID}", timeout=15
        )
    assert "dial" in str(info.value).lower() or info.value.code
    # the peer is still usable afterwards
    assert (await js_peer.command("info"))["peerId"] == js_peer.peer_id


async def test_stop_reaps_process(js_peer_factory: JsPeerFactory) -> None:
    p = await js_peer_factory()
    await p.stop()
    assert p.returncode == 0
    with pytest.raises(JsPeerError):
        await p.command("info")
    await p.stop()  # idempotent
