"""A victim node in its own process, a legitimate peer, and the checks every attack must pass.

:func:`under_attack` runs one attack against a fresh victim while a legitimate peer (in a
third process) pings it over its connection and opens new connections (each with a ping)
throughout, then asserts:

* no traceback (and no ERROR log) in the victim's stderr, and the victim still runs;
* the victim's peak RSS stays within :data:`ATTACKER_MEMORY_BOUND` of its RSS before the attack;
* every legitimate ping and new connection succeeds during and after the attack, p99 under 1 s
  (over every operation from the attack's start to the end, so one held up past it counts);
* after the attacker leaves, the resource manager holds no memory, the tasks and connections
  return to what they were, and RSS falls back to within :data:`RSS_SLACK` of the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiaddr import Multiaddr

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import P2PError
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.identify import IdentifyService
from p2pnet.protocols.ping import PingService
from p2pnet.transport import tcp
from p2pnet.transport.base import RawConnection

MiB = 1024 * 1024
#: The total memory one attacking peer may make the victim hold, whatever it does (issue 11).
ATTACKER_MEMORY_BOUND = 64 * MiB
#: How far above its baseline the victim's RSS may stay once the attacker left (the allocator
#: keeps some freed arenas).
RSS_SLACK = 24 * MiB
VICTIM = Path(__file__).with_name("victim.py")
#: The attacker dials from another loopback address, so per-address limits do not hit the
#: legitimate peer (which dials from 127.0.0.1).
ATTACKER_IP = "127.0.0.2"


class SourceTcpTransport(tcp.TcpTransport):
    """TCP dialing from a chosen local address."""

    def __init__(self, local_host: str) -> None:
        super().__init__()
        self.local_host = local_host

    async def dial(self, addr: Multiaddr, *, timeout: float) -> RawConnection:
        return await tcp.dial(addr, timeout=timeout, local_host=self.local_host)


def attacker_host(key: KeyPair | None = None) -> Host:
    """A host dialing from :data:`ATTACKER_IP`, with identify (so the victim knows what it runs)."""
    host = Host(
        key or KeyPair.generate(),
        HostConfig(listen_addrs=[f"/ip4/{ATTACKER_IP}/tcp/0"]),
        transports=[SourceTcpTransport(ATTACKER_IP)],
    )
    IdentifyService(host)
    return host


@dataclass
class Victim:
    proc: asyncio.subprocess.Process
    addr: Multiaddr
    peer_id: PeerID
    samples: list[dict[str, int]] = field(default_factory=list)
    stderr: bytearray = field(default_factory=bytearray)

    @property
    def latest(self) -> dict[str, int]:
        return self.samples[-1]

    async def next_sample(self) -> dict[str, int]:
        count = len(self.samples)
        try:
            async with asyncio.timeout(5):
                while len(self.samples) <= count:
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(
                f"the victim stopped reporting: {self.stderr.decode(errors='replace')[-3000:]}"
            ) from None
        return self.samples[-1]


@contextlib.asynccontextmanager
async def victim_process(env: dict[str, str] | None = None) -> AsyncIterator[Victim]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(VICTIM),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(20):
            first = json.loads(await proc.stdout.readline())
        addr = Multiaddr(first["addrs"][0])
        victim = Victim(proc, addr, PeerID.from_string(addr.value_for_protocol("p2p")))

        async def read_stdout() -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                victim.samples.append(json.loads(line))

        async def read_stderr() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(65536):
                victim.stderr += chunk

        tasks = [asyncio.ensure_future(read_stdout()), asyncio.ensure_future(read_stderr())]
        yield victim
    finally:
        if proc.returncode is None:
            proc.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(2):
                    await task


@dataclass
class LegitPeer:
    """Pings the victim over one connection and keeps opening new connections.

    It runs in its own process (this file run as a script), so an attacker busy in the test's
    process does not slow it down: only the victim may. Each operation is one JSON line.
    """

    victim: Victim
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def mark(self) -> int:
        return len(self.latencies) + len(self.failures)

    async def run(self, stop: asyncio.Event) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            str(self.victim.addr),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdin is not None

        async def read() -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                op = json.loads(line)
                if op["ok"]:
                    self.latencies.append(op["latency"])
                else:
                    self.failures.append(f"{op['what']}: {op['error']}")

        reader = asyncio.ensure_future(read())
        try:
            await stop.wait()
        finally:
            proc.stdin.close()
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
                    await reader
            except TimeoutError:
                proc.kill()
                await proc.wait()
                reader.cancel()


async def _legit_main(addr_text: str) -> None:
    """The legitimate peer's process: ping over one connection, and new connections."""
    addr = Multiaddr(addr_text)
    victim = PeerID.from_string(addr.value_for_protocol("p2p"))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    eof = asyncio.ensure_future(reader.read())

    async def timed(what: str, action: Callable[[], Awaitable[Any]]) -> None:
        start = time.monotonic()
        try:
            async with asyncio.timeout(5):
                await action()
        except (P2PError, TimeoutError, OSError) as exc:
            print(json.dumps({"what": what, "ok": False, "error": repr(exc)}), flush=True)
            return
        latency = time.monotonic() - start
        print(json.dumps({"what": what, "ok": True, "latency": latency}), flush=True)

    async def new_connections() -> None:
        while not eof.done():

            async def connect_and_ping() -> None:
                async with Host(KeyPair.generate()) as host:
                    ping = PingService(host)
                    await host.connect(addr)
                    await ping.ping(victim)

            await timed("new connection", connect_and_ping)
            await asyncio.wait([eof], timeout=0.2)

    async with Host(KeyPair.generate()) as host:
        ping = PingService(host)
        await host.connect(addr)
        fresh = asyncio.ensure_future(new_connections())
        while not eof.done():
            await timed("ping", lambda: ping.ping(victim))
            await asyncio.wait([eof], timeout=0.05)
        await fresh


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


Attack = Callable[[Victim, asyncio.Event], Awaitable[None]]


async def under_attack(
    attack: Attack,
    *,
    duration: float | None = None,
    env: dict[str, str] | None = None,
    p99_bound: float = 1.0,
    after: Callable[[Victim], Awaitable[None]] | None = None,
) -> Victim:
    """Run ``attack`` for ``duration`` seconds against a fresh victim; assert it stays up.

    ``after`` runs once the attacker left, while the victim still runs (what the attack must
    not have spoiled for others)."""
    if duration is None:
        duration = float(os.environ.get("ADVERSARIAL_DURATION", "3"))
    async with victim_process(env) as victim:
        stop_legit = asyncio.Event()
        legit = LegitPeer(victim)
        legit_task = asyncio.ensure_future(legit.run(stop_legit))
        await asyncio.sleep(1.0)  # warm up: the legitimate connection, identify, a few pings
        for _ in range(3):
            await victim.next_sample()
        baseline = victim.latest
        before_attack = legit.mark()

        stop_attack = asyncio.Event()
        attack_task = asyncio.ensure_future(attack(victim, stop_attack))
        await asyncio.wait([attack_task], timeout=duration)
        stop_attack.set()
        async with asyncio.timeout(15):
            await attack_task  # the attacker leaves: its connections close
        after_attack = legit.mark()
        await asyncio.sleep(1.5)
        stop_legit.set()
        await legit_task
        # Every operation since the attack began, including those it held up until after it
        # ended (a connection stuck in the accept queue finishes late, but it counts).
        during = legit.latencies[before_attack:]

        # what the attacker made the victim hold must be given back
        async with asyncio.timeout(15):
            while True:
                s = await victim.next_sample()
                if (
                    s["memory"] == 0
                    and s["conns"] <= baseline["conns"]
                    and s["tasks"] <= baseline["tasks"] + 5
                    and s["rss_kib"] * 1024 <= baseline["rss_kib"] * 1024 + RSS_SLACK
                ):
                    break
        if after is not None:
            await after(victim)
        peak = max(s["hwm_kib"] for s in victim.samples) * 1024
        print(
            f"baseline RSS {baseline['rss_kib'] // 1024} MiB, peak {peak // MiB} MiB, "
            f"after {victim.latest['rss_kib'] // 1024} MiB; refused {victim.latest['refused']}; "
            f"legit p99 {p99(during) if during else float('nan'):.3f} s over {len(during)}"
        )
        stderr = victim.stderr.decode(errors="replace")
        assert victim.proc.returncode is None, stderr
        assert "Traceback" not in stderr and "ERROR" not in stderr, stderr[-4000:]
        assert peak - baseline["rss_kib"] * 1024 <= ATTACKER_MEMORY_BOUND, (peak, baseline)
        assert not legit.failures, legit.failures[:5]
        assert len(during) >= 3 and p99(during) < p99_bound, during
        assert legit.mark() > after_attack  # it kept working after the attack
        return victim


if __name__ == "__main__":
    asyncio.run(_legit_main(sys.argv[1]))
