"""A node retries a failed bootstrap with exponential backoff, on a virtual clock."""

from __future__ import annotations

import itertools
import random

import pytest

from p2pnet.backoff import BootstrapSchedule, BootstrapState, ExponentialBackoff
from p2pnet.clock import VirtualClock
from p2pnet.config import NodeConfig
from p2pnet.crypto.keys import KeyPair
from p2pnet.events import BootstrapFailed, BootstrapSucceeded, NodeEvent
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID
from p2pnet.sim import run_virtual
from p2pnet.transport.memory import MemoryNetwork


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    backoff = ExponentialBackoff(1.0, 8.0, random.Random(3))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert base / 2 <= delay <= base
    assert len(set(delays)) == 6  # jittered
    backoff.reset()
    assert backoff.next_delay() <= 1.0
    again = ExponentialBackoff(1.0, 8.0, random.Random(3))
    assert [again.next_delay() for _ in range(6)] == delays  # the seed decides
    with pytest.raises(ValueError):
        ExponentialBackoff(2.0, 1.0, random.Random())


def test_bootstrap_schedule_states() -> None:
    schedule = BootstrapSchedule(ExponentialBackoff(1.0, 4.0, random.Random(1)))
    assert schedule.state is BootstrapState.IDLE
    assert schedule.peers_lost() is None  # nothing to lose yet
    assert schedule.attempt_started() == 1
    first = schedule.attempt_failed()
    assert schedule.state is BootstrapState.WAITING and 0.5 <= first <= 1.0
    assert schedule.peers_lost() is None  # a retry is already scheduled: no second one
    schedule.attempt_started()
    assert 1.0 <= schedule.attempt_failed() <= 2.0  # backing off
    schedule.attempt_started()
    schedule.attempt_succeeded()
    assert schedule.state is BootstrapState.CONNECTED
    lost = schedule.peers_lost()
    assert lost is not None and lost <= 1.0  # the backoff starts over after a success
    assert schedule.state is BootstrapState.WAITING and schedule.retry_in == lost
    assert schedule.peers_lost() is None  # flapping does not speed retries up


def _memory_node(net: MemoryNetwork, clock: VirtualClock, **kw: object) -> Node:
    config = NodeConfig(
        listen_addrs=[str(kw.pop("listen", "/memory/0"))],
        enable_dht=False,
        clock=clock,
        seed=int(kw.pop("seed", 1)),  # type: ignore[call-overload]
        **kw,  # type: ignore[arg-type]
    )
    return Node(config, transports=[net.transport()])


def test_failed_bootstrap_is_retried_with_backoff_and_after_losing_the_peers() -> None:
    clock = VirtualClock()
    net = MemoryNetwork()
    boot_key = KeyPair.generate()
    boot_addr = f"/memory/4001/p2p/{PeerID.from_public_key(boot_key.public_key)}"

    async def main() -> list[tuple[float, NodeEvent]]:
        seen: list[tuple[float, NodeEvent]] = []
        node = _memory_node(
            net, clock, bootstrap_peers=[boot_addr], bootstrap_retry_max=8.0, seed=7
        )
        events = node.events()

        async def next_bootstrap_event() -> NodeEvent:
            while True:
                ev = await events.next(timeout=60)
                if isinstance(ev, BootstrapFailed | BootstrapSucceeded):
                    seen.append((clock.monotonic(), ev))
                    return ev

        async with node:
            # nothing listens at the bootstrap address: 1, 2, 4, 8, 8 s (minus jitter) ...
            for _ in range(5):
                assert isinstance(await next_bootstrap_event(), BootstrapFailed)
            boot = _memory_node(net, clock, identity=boot_key, listen="/memory/4001")
            async with boot:
                # ... until the bootstrap peer is up
                ev = await next_bootstrap_event()
                while isinstance(ev, BootstrapFailed):
                    ev = await next_bootstrap_event()
                assert isinstance(ev, BootstrapSucceeded)
                assert node.peers() == [boot.peer_id]
            # the bootstrap peer is gone: the node notices and starts over
            ev = await next_bootstrap_event()
            assert isinstance(ev, BootstrapFailed) and "lost" in ev.error
            assert ev.retry_in <= 1.0  # the backoff started again from the beginning
            assert isinstance(await next_bootstrap_event(), BootstrapFailed)
        return seen

    seen = run_virtual(main(), clock)
    failures = [ev for _, ev in seen[:5]]
    assert [ev.attempt for ev in failures] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
    for ev, base in zip(failures, [1, 2, 4, 8, 8], strict=True):
        assert isinstance(ev, BootstrapFailed)
        assert base / 2 <= ev.retry_in <= base
    # each attempt came when the previous event said it would
    for (t0, ev0), (t1, _) in itertools.pairwise(seen[:6]):
        assert isinstance(ev0, BootstrapFailed)
        assert t1 - t0 == pytest.approx(ev0.retry_in, abs=0.5)
