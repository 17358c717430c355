#!/usr/bin/env python3
"""Agent registry benchmark: how fast a node answers "is this agent registered?".

Usage::

    .venv/bin/python bench/registry.py                     # 50 agents, 200000 warm checks
    .venv/bin/python bench/registry.py --agents 20 --warm 50000 --cold 200

Starts anvil (contracts/node_modules, `cd contracts && npm ci`), deploys the IdentityRegistry and
registers ``--agents`` agents (half of them with a data: registration file), then measures:

* **warm checks/s**: ``RegistryGuard.status`` on addresses already in the cache (what every
  message from a known agent costs), one after the other in one task;
* **cold check wait**: the time a message waits when its sender is not in the cache yet: a
  fresh cache each time, ``status`` (balanceOf, plus getAgentWallet/ownerOf/tokenURI when an
  agentId is stated) over HTTP and over WebSocket, and ``topic_verdict`` of the enforce and
  annotate policies (annotate also decodes the registration file); p50/p95/max over ``--cold``
  checks.

anvil runs on this machine (loopback): a remote RPC adds its round-trip time to every cold
figure. Figures depend on the machine: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pnet.registry.anvil import ANVIL_KEYS, Anvil, anvil_binary
from p2pnet.registry.guard import RegistryGuard
from p2pnet.registry.policy import AgentRegistryPolicy
from p2pnet.registry.registration import data_uri
from p2pnet.registry.settings import RegistrySettings
from p2pnet.registry.transactions import RegistryWriter, _web3, deploy_registry


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<34} p50 {pct(ms, 0.5):7.2f} ms  p95 {pct(ms, 0.95):7.2f} ms  "
        f"max {max(ms):7.2f} ms  mean {statistics.fmean(ms):7.2f} ms"
    )


async def main(args: argparse.Namespace) -> int:
    from eth_account import Account

    if anvil_binary() is None:
        print("anvil not installed: cd contracts && npm ci", file=sys.stderr)
        return 2
    anvil = await Anvil.start()
    try:
        address = (await deploy_registry(anvil.url, ANVIL_KEYS[0])).contract_address
        assert address is not None
        keys = [Account.create() for _ in range(args.agents)]
        w3 = await _web3(anvil.url, 10)
        for acct in keys:
            await w3.provider.make_request("anvil_setBalance", [acct.address, hex(10**20)])
        await w3.provider.disconnect()
        ids: dict[str, int] = {}

        async def register(i: int) -> None:
            acct = keys[i]
            uri = data_uri({"name": f"agent-{i}", "services": []}) if i % 2 == 0 else None
            async with RegistryWriter(anvil.url, address, "0x" + bytes(acct.key).hex()) as w:
                ids[acct.address], _ = await w.register(uri)

        await asyncio.gather(*(register(i) for i in range(args.agents)))
        addrs = [a.address for a in keys]
        print(
            f"anvil on loopback, {args.agents} registered agents, registry {address}",
            file=sys.stderr,
        )

        # Warm: every address cached once, then status() in a loop.
        guard = RegistryGuard(RegistrySettings.parse(address, anvil.url, "enforce"), ttl=3600)
        await guard.start()
        for a in addrs:
            await guard.status(a, ids[a])
        t0 = time.perf_counter()
        for n in range(args.warm):
            a = addrs[n % len(addrs)]
            await guard.status(a, ids[a])
        warm = args.warm / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for n in range(args.warm):
            guard.cached(addrs[n % len(addrs)])
        cached = args.warm / (time.perf_counter() - t0)

        # Cold: a fresh cache for every check.
        async def cold(url: str, stated: bool, verdict: str | None) -> list[float]:
            g = RegistryGuard(RegistrySettings.parse(address, url, verdict or "enforce"), ttl=3600)
            await g.start()
            policy = AgentRegistryPolicy(g, addrs[0])
            times = []
            for n in range(args.cold):
                a = addrs[n % len(addrs)]
                g.cache.clear()
                g._files.clear()
                if stated:
                    g.note_stated(a, ids[a])
                t = time.perf_counter()
                if verdict is None:
                    await g.status(a)
                else:
                    await policy.topic_verdict(a, "bench", {})
                times.append(time.perf_counter() - t)
            await policy.close()
            return times

        lines = [
            f"registry checks, warm cache:  {warm:12,.0f} checks/s (RegistryGuard.status)",
            f"registry lookups, cache only: {cached:12,.0f} lookups/s (RegistryGuard.cached)",
            row("cold status, HTTP (balanceOf)", await cold(anvil.url, False, None)),
            row("cold status, HTTP (+agentId)", await cold(anvil.url, True, None)),
            row("cold status, WebSocket (+agentId)", await cold(anvil.ws_url, True, None)),
            row("cold message wait, enforce", await cold(anvil.url, True, "enforce")),
            row("cold message wait, annotate", await cold(anvil.url, True, "annotate")),
        ]
        await guard.close()
        print(f"# bench/registry.py --agents {args.agents} --warm {args.warm} --cold {args.cold}")
        for line in lines:
            print(line)
    finally:
        await anvil.stop()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--warm", type=int, default=200_000)
    parser.add_argument("--cold", type=int, default=300)
    sys.exit(asyncio.run(main(parser.parse_args())))
