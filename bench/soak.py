"""Soak: a devnet-like network under churn, printing RSS, tasks, fds and delivery over time.

    python bench/soak.py [--seconds 120] [--agents 8] [--churn 10] [--boot-restart 45]

Two bootstrap agents (DHT servers) and N agents in this process, all on loopback TCP, all
subscribed to one topic. Every second each live agent broadcasts one message. Every ``--churn``
seconds one agent is closed and a fresh one joins; every ``--boot-restart`` seconds a bootstrap
node is closed and started again on its address with its key. Every 5 s a line reports the
process's RSS, asyncio tasks and open fds, and the delivery ratio of the messages of the last
window: a message counts as expected at every agent that was up from 5 s before it was sent
until 5 s after (gossipsub's promise to meshed peers), delivered if it arrived there.

Flat RSS, tasks and fds and a delivery ratio of 1.0 are what a healthy node shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass, field

from p2pnet.agent.agent import Agent, AgentConfig, AgentMessage
from p2pnet.pubsub.params import GossipsubConfig

TOPIC = "soak"
SETTLE = 5.0


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Member:
    agent: Agent
    up_since: float
    down_at: float | None = None
    received: set[str] = field(default_factory=set)
    listener: asyncio.Task[None] | None = None


@dataclass
class Sent:
    msg_id: str
    sender: Member
    at: float


async def listen(member: Member) -> None:
    async for ev in member.agent.events():
        if isinstance(ev, AgentMessage) and ev.topic == TOPIC and isinstance(ev.data, dict):
            member.received.add(str(ev.data.get("id")))


async def start_member(name: str, seeds: list[str], fast: GossipsubConfig) -> Member:
    agent = Agent(AgentConfig(name=name, bootstrap_peers=seeds, pubsub=fast, status_interval=5.0))
    await agent.start()
    await agent.subscribe(TOPIC)
    member = Member(agent, time.monotonic())
    member.listener = asyncio.ensure_future(listen(member))
    return member


async def stop_member(member: Member) -> None:
    member.down_at = time.monotonic()
    await member.agent.close()
    if member.listener is not None:
        member.listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await member.listener


def ratio(sent: list[Sent], members: list[Member]) -> tuple[int, int]:
    expected = delivered = 0
    for s in sent:
        for m in members:
            if m is s.sender or m.up_since > s.at - SETTLE:
                continue
            if m.down_at is not None and m.down_at < s.at + SETTLE:
                continue
            expected += 1
            delivered += s.msg_id in m.received
    return delivered, expected


async def run(seconds: float, agents: int, churn: float, boot_restart: float) -> None:
    rng = random.Random(1)
    fast = GossipsubConfig(heartbeat_interval=0.5)
    boots: list[Agent] = []
    for i in range(2):
        boot = Agent(
            AgentConfig(
                name=f"boot-{i}",
                bootstrap_node=True,
                bootstrap_peers=[str(b.p2p_addrs()[0]) for b in boots],
                pubsub=fast,
                private_key=os.urandom(32).hex(),
            )
        )
        await boot.start()
        await boot.subscribe(TOPIC)  # the bootstrap nodes relay the topic too
        boots.append(boot)
    seeds = [str(b.p2p_addrs()[0]) for b in boots]
    members = [await start_member(f"agent-{i}", seeds, fast) for i in range(agents)]
    everyone = list(members)
    sent: list[Sent] = []
    start = time.monotonic()
    next_churn = start + churn
    next_boot = start + boot_restart
    next_report = start + SETTLE
    count = 0
    print("   t   RSS MiB  tasks  fds  sent  delivered/expected (messages of the last window)")
    try:
        while (now := time.monotonic()) < start + seconds:
            for m in [m for m in members if m.down_at is None]:
                count += 1
                msg_id = f"m{count}"
                with contextlib.suppress(Exception):
                    await m.agent.broadcast({"id": msg_id}, TOPIC)
                    sent.append(Sent(msg_id, m, time.monotonic()))
            if now >= next_churn:
                victim = rng.choice(members)
                members.remove(victim)
                await stop_member(victim)
                fresh = await start_member(f"agent-{count}", seeds, fast)
                members.append(fresh)
                everyone.append(fresh)
                next_churn += churn
            if now >= next_boot:
                old = boots.pop(0)
                config = old.config
                addr = old.p2p_addrs()[0]
                await old.close()
                config.port = int(addr.value_for_protocol("tcp"))
                config.bootstrap_peers = [str(b.p2p_addrs()[0]) for b in boots]
                again = Agent(config)
                await again.start()
                await again.subscribe(TOPIC)
                boots.append(again)
                next_boot += boot_restart
            if now >= next_report:
                window = [
                    s for s in sent if next_report - 2 * SETTLE <= s.at < next_report - SETTLE
                ]
                delivered, expected = ratio(window, everyone)
                fds = len(os.listdir("/proc/self/fd"))
                print(
                    f"{now - start:5.0f} {rss_mib():8.1f} {len(asyncio.all_tasks()):6d} {fds:4d} "
                    f"{len(sent):5d}  {delivered}/{expected}"
                    f" = {delivered / expected if expected else float('nan'):.3f}",
                    flush=True,
                )
                next_report += SETTLE
            await asyncio.sleep(1.0)
    finally:
        for m in members:
            await stop_member(m)
        for b in boots:
            await b.close()
    delivered, expected = ratio([s for s in sent if s.at < time.monotonic() - SETTLE], everyone)
    print(f"total: {delivered}/{expected} delivered where promised, {len(sent)} sent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--churn", type=float, default=10.0)
    parser.add_argument("--boot-restart", type=float, default=45.0)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.agents, args.churn, args.boot_restart))


if __name__ == "__main__":
    main()
