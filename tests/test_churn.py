"""Restarts and churn with real p2p-node processes on loopback (issue 14).

- A bootstrap node restarted with the same key and port: an agent that joined before the restart
  republishes its presence when it gets back in, and a newcomer finds it by ETH address within
  :data:`REJOIN_WITHIN` seconds of the restart.
- Every bootstrap node down when an agent starts (``--connect --ignore-eof``): the agent answers
  ``ready``, reports ``bootstrap_failed`` and joins by itself once the bootstrap node comes up.
- A peer killed mid-conversation: ``peer_disconnected`` at once, and ``discover`` leaves out the
  provider record it left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from test_p2p_node import NodeProc, free_port, peer_id_of

from p2pnet.crypto.keys import KeyPair

#: Seconds from a bootstrap node's restart until a newcomer reaches an agent that joined before
#: it: the agent sees the connection drop at once, retries after 1-2 s of backoff (doubling),
#: and republishes its presence when the retry gets through.
REJOIN_WITHIN = 20.0


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Any]]:
    procs: list[NodeProc] = []

    async def start(*args: str, name: str = "") -> NodeProc:
        proc = await NodeProc.spawn(*args, name=name)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        await asyncio.gather(*(p.close() for p in procs))
        for p in procs:
            p.assert_clean()


async def send_until_sent(sender: NodeProc, to: str, data: Any, deadline: float) -> Any:
    """Send until one ``sent`` answers, or fail at ``deadline`` (loop time) with the last error.

    Used only where the thing under test is *when* the recipient becomes findable."""
    loop = asyncio.get_running_loop()
    last: Any = None
    while loop.time() < deadline:
        last = await sender.request({"type": "send", "peerId": to, "data": data}, "sent", 20)
        if last["type"] == "sent":
            return last
        assert last["code"] in ("PEER_NOT_FOUND", "DHT_LOOKUP_FAILED", "DIAL_FAILED"), last
        await asyncio.sleep(0.5)  # pacing between attempts, not a wait for a condition
    raise AssertionError(f"not reachable before the deadline; last answer: {last}")


async def test_newcomer_finds_agent_after_bootstrap_restart(spawn: Any, tmp_path: Path) -> None:
    key_file = str(tmp_path / "boot.key")
    port = free_port()
    flags = ("--bootstrap", "--key-file", key_file, "--port", str(port), "--bootstrap-peers", "")
    boot = await spawn(*flags, name="boot")
    await boot.connect()
    alice = await spawn("--log-level", "info", name="alice")
    await alice.connect(bootstrapPeers=boot.addrs)

    boot.proc.kill()  # a crash: no leave announcement, no clean close
    await boot.wait_exit()
    await alice.expect("peer_disconnected", peerId=boot.peer_id)
    loop = asyncio.get_running_loop()
    restarted_at = loop.time()
    boot2 = await spawn(*flags, name="boot2")
    await boot2.connect()
    assert boot2.peer_id == boot.peer_id and boot2.addrs == boot.addrs

    # Alice gets back in by herself (the restarted node remembers nothing about her).
    await alice.expect("bootstrap_succeeded", attempt=1)  # at its start
    rejoined = await alice.expect("bootstrap_succeeded", timeout=REJOIN_WITHIN)
    assert rejoined["attempt"] >= 2, rejoined
    bob = await spawn(name="bob")
    await bob.connect(bootstrapPeers=boot2.addrs)
    await send_until_sent(bob, alice.eth, {"after": "restart"}, restarted_at + REJOIN_WITHIN)
    got = await alice.expect("message", timeout=5)
    assert got["data"] == {"after": "restart"} and got["fromEth"].lower() == bob.eth.lower()


async def test_agent_joins_by_itself_when_bootstrap_comes_up_later(spawn: Any) -> None:
    boot_key = "0x" + os.urandom(32).hex()
    key = KeyPair.from_eth_private_key(boot_key)
    port = free_port()
    boot_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_of(key)}"
    alice = await spawn(
        "--connect", "--ignore-eof", "--bootstrap-peers", boot_addr, "--name", "alice"
    )
    alice.ready = await alice.expect("ready")
    failed = await alice.expect("bootstrap_failed")
    assert failed["attempt"] == 1 and failed["retryIn"] > 0 and failed["error"]
    assert alice.proc.stdin is not None
    alice.proc.stdin.close()  # --ignore-eof: it keeps running on its own

    boot = await spawn("--bootstrap", "--port", str(port), "--bootstrap-peers", "", name="boot")
    await boot.connect(privateKey=boot_key)
    # Backoff from 1 s, doubling: a few attempts fit in the time the bootstrap node needed.
    joined = await alice.expect("bootstrap_succeeded", timeout=30)
    assert joined["attempt"] >= 2
    await alice.expect("peer_connected", peerId=boot.peer_id)

    bob = await spawn(name="bob")
    await bob.connect(bootstrapPeers=[boot_addr])
    loop = asyncio.get_running_loop()
    await send_until_sent(bob, alice.eth, "hello", loop.time() + 15)
    assert (await alice.expect("message", timeout=5))["data"] == "hello"
    alice.proc.send_signal(signal.SIGTERM)  # with stdin closed, a signal ends it
    assert await alice.wait_exit() == 0


async def test_killed_peer_is_reported_and_left_out_of_discover(spawn: Any) -> None:
    boot = await spawn("--bootstrap", "--bootstrap-peers", "", name="boot")
    await boot.connect()
    alice = await spawn(name="alice")
    await alice.connect(bootstrapPeers=boot.addrs)
    carol = await spawn(name="carol")
    await carol.connect(bootstrapPeers=boot.addrs)
    await carol.ok({"type": "subscribe", "topic": "jobs"}, "subscribed")
    found = await alice.ok({"type": "discover", "topic": "jobs"}, "discover_done")
    assert found["count"] == 1

    await alice.ok({"type": "send", "peerId": carol.eth, "data": "mid"}, "sent")
    await alice.expect("peer_connected", peerId=carol.peer_id)
    os.kill(carol.proc.pid, signal.SIGKILL)  # mid-conversation
    gone = await alice.expect("peer_disconnected", peerId=carol.peer_id)
    assert gone["ethAddress"].lower() == carol.eth.lower()

    # Carol's provider record is still in the DHT; discover answers about reachable agents.
    after = await alice.ok({"type": "discover", "topic": "jobs"}, "discover_done", timeout=30)
    assert after["count"] == 0, alice.events
    failed = await alice.request({"type": "send", "peerId": carol.eth, "data": 1}, "sent", 30)
    assert failed["type"] == "error" and failed["code"] in ("DIAL_FAILED", "SEND_FAILED")


async def test_agent_reachable_only_through_a_relay_gets_direct_messages(spawn: Any) -> None:
    """An agent with no listener of its own (as behind a NAT) reserves a slot on the bootstrap
    node, publishes its relayed address, and receives direct messages through the relay."""
    boot = await spawn("--bootstrap", "--bootstrap-peers", "", name="boot")
    await boot.connect()
    alice = await spawn("--via-relay", name="alice")
    await alice.connect(bootstrapPeers=boot.addrs)
    relayed = f"{boot.addrs[0]}/p2p-circuit/p2p/{alice.peer_id}"
    assert alice.addrs == [relayed], alice.addrs
    bob = await spawn(name="bob")
    await bob.connect(bootstrapPeers=boot.addrs)

    await bob.ok({"type": "send", "peerId": alice.eth, "data": {"via": "relay"}}, "sent")
    got = await alice.expect("message")
    assert got["data"] == {"via": "relay"} and got["direct"] is True
    conn = await bob.expect("peer_connected", peerId=alice.peer_id)
    assert "/p2p-circuit" in conn["addr"], conn  # the connection that carried it
    status = await alice.ok({"type": "status"}, "node-status")
    assert status["relayReservations"] == [boot.peer_id] and status["relayServing"] is None
    boot_status = await boot.ok({"type": "status"}, "node-status")
    assert boot_status["relayServing"]["reservations"] == 1
    # And back: alice dials bob directly.
    await alice.ok({"type": "send", "peerId": bob.eth, "data": "reply"}, "sent")
    assert (await bob.expect("message"))["data"] == "reply"
