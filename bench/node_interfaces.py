"""p2p-node driven through gRPC next to the same through JSON lines, in one run.

Run from the repository root::

    .venv/bin/python bench/node_interfaces.py      # 2000 status, 500 sends, 5000 events
    .venv/bin/python bench/node_interfaces.py --status 5000 --sends 1000 --events 20000 --size 256

One network of p2p-node processes on loopback: a bootstrap node, a producer ``bob``, and two
consumers, ``alice-json`` driven by the SDK over JSON lines (``interface="json"``) and
``alice-grpc`` driven by the SDK over gRPC (the default). Both consumers do the same work:

- status round trips/s: ``status()`` (JSON ``status`` / gRPC ``GetInfo``) one after another:
  the interface's own cost (process boundary, encoding, the SDK);
- send round trips/s: ``send()`` of ``--size`` bytes to bob, one after another; each waits for
  bob's acknowledgement over the P2P network, so it includes a P2P round trip;
- events msgs/s: bob publishes ``--events`` messages on a topic both consumers subscribed to
  (``--window`` publishes in flight); each consumer's rate is messages received / time from its
  first to its last message. Both receive the same stream in the same run, so the figures are
  side by side; bob's publish rate is printed as well (no consumer can exceed it), and how many
  messages each consumer got: over gRPC a consumer that falls more than ``--event-backlog``
  events behind is told so by ``lagged`` events (counted here); messages that never reached a
  node were dropped by gossipsub under load (the producer logs "queue ... full").

Then the capacity of each interface alone (``--capacity N``, 20000; 0 skips it): a child process
holds a node's event log and its interface without any network, and publishes N synthetic
``message`` events as fast as its event loop allows, yielding to the loop every 50; the parent
reads them over JSON lines (stdout) or over one gRPC ``Events`` stream. Shown: events delivered
per second, and over gRPC how many the reader was told it lost (``lagged``) because the producer
outran it; JSON lines never drop such events (its writer queue grows instead).

Figures vary with the machine and its load: compare them within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pnet.sdk import P2PNode  # noqa: E402

TOPIC = "bench-events"


async def timed_calls(count: int, call: Any) -> float:
    """Calls per second of ``count`` sequential awaits of ``call()``."""
    start = time.perf_counter()
    for _ in range(count):
        await call()
    return count / (time.perf_counter() - start)


async def receive(node: P2PNode, count: int, events: Any) -> tuple[float, int, int]:
    """Messages/s over the bench's messages, how many arrived, and how many the node reported
    lost to this slow consumer (``lagged``; gRPC only)."""
    first = last = 0.0
    got = lagged = 0
    try:
        while got + lagged < count:
            event = await events.next(timeout=10)
            if event.get("type") == "lagged":
                lagged += int(event["missed"])
                continue
            if event.get("type") != "message" or event.get("topic") != TOPIC:
                continue
            got += 1
            last = time.perf_counter()
            if got == 1:
                first = last
    except TimeoutError:
        pass  # the rest never reached this node (see the publisher's pubsub warnings)
    return ((got - 1) / (last - first) if got > 1 and last > first else 0.0), got, lagged


async def run(args: argparse.Namespace) -> None:
    boot = P2PNode("boot", bootstrap=True, bootstrap_peers=[])
    await boot.start()
    nodes = {
        "bob": P2PNode("bob", bootstrap_peers=boot.addrs),
        "json": P2PNode("alice-json", bootstrap_peers=boot.addrs, interface="json"),
        "grpc": P2PNode("alice-grpc", bootstrap_peers=boot.addrs),
    }
    try:
        await asyncio.gather(*(n.start() for n in nodes.values()))
        bob = nodes["bob"]
        payload = "x" * args.size
        results: dict[str, dict[str, float]] = {"json": {}, "grpc": {}}
        for kind in ("json", "grpc"):
            node = nodes[kind]
            await node.send(bob.peer_id, "warm-up")
            print(f"{node.name}: status ...", file=sys.stderr)
            results[kind]["status"] = await timed_calls(args.status, node.status)
            print(f"{node.name}: send ...", file=sys.stderr)
            results[kind]["send"] = await timed_calls(
                args.sends, lambda n=node: n.send(bob.peer_id, payload)
            )

        consumers = [nodes["json"], nodes["grpc"]]
        await asyncio.gather(bob.subscribe(TOPIC), *(c.subscribe(TOPIC) for c in consumers))
        streams = [c.events() for c in consumers]
        # The mesh forms within a few heartbeats: publish probes until both consumers hear one.
        async with asyncio.timeout(30):
            heard = [False, False]
            while not all(heard):
                await bob.broadcast("probe", TOPIC)
                for i, s in enumerate(streams):
                    with_probe = True
                    while with_probe:
                        try:
                            e = await s.next(timeout=0.2)
                        except TimeoutError:
                            break
                        if e.get("type") == "message" and e.get("data") == "probe":
                            heard[i] = True
                            with_probe = False
        print(f"events: bob publishes {args.events} messages ...", file=sys.stderr)
        window = asyncio.Semaphore(args.window)

        async def publish(n: int) -> None:
            async with window:
                await bob.broadcast({"n": n, "p": payload}, TOPIC)

        receivers = [
            asyncio.create_task(receive(c, args.events, s))
            for c, s in zip(consumers, streams, strict=True)
        ]
        start = time.perf_counter()
        await asyncio.gather(*(publish(n) for n in range(args.events)))
        publish_rate = args.events / (time.perf_counter() - start)
        (json_rate, json_got, _), (grpc_rate, grpc_got, grpc_lagged) = await asyncio.gather(
            *receivers
        )
        results["json"]["events"], results["grpc"]["events"] = json_rate, grpc_rate

        print(f"\np2p-node: JSON lines vs gRPC (SDK client; {args.size}-byte payloads)")
        print(f"{'':32} {'JSON lines':>12} {'gRPC':>12}")
        rows = (
            ("status round trips/s", "status", args.status),
            ("send round trips/s", "send", args.sends),
            ("events msgs/s", "events", args.events),
        )
        for label, key, count in rows:
            print(
                f"{label + f' (n={count})':32} {results['json'][key]:12.0f} "
                f"{results['grpc'][key]:12.0f}"
            )
        print(
            f"bob published {publish_rate:.0f} msgs/s; received of {args.events}: JSON lines "
            f"{json_got}, gRPC {grpc_got} (+{grpc_lagged} reported lost by lagged events)"
        )
    finally:
        await asyncio.gather(*(n.stop() for n in nodes.values()), return_exceptions=True)
        await boot.stop()


# -- the interfaces alone --------------------------------------------------------------------


def _synthetic(n: int) -> dict[str, Any]:
    return {
        "type": "message",
        "from": "16Uiu2HAmBUswuXdATx1MDhJ8NhisSbp2De8YyDSkHz35ZWeRfL9p",
        "fromEth": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "data": {"n": n, "p": "x" * 100},
        "direct": True,
    }


async def feed(kind: str, count: int) -> None:
    """The child: an event log with one interface, fed ``count`` synthetic events."""
    from p2pnet.cli.node_commands import EventLog, NodeCommands
    from p2pnet.cli.p2p_node import JsonLineWriter, NodeProcess

    events = EventLog()
    commands = NodeCommands(argparse.Namespace(name="feed"), {}, events)
    writer = JsonLineWriter(sys.stdout.fileno())
    server = None
    if kind == "grpc":
        from p2pnet.rpc.server import GrpcOptions, GrpcServer

        server = GrpcServer(commands, GrpcOptions(port=0))
        await server.start()
        writer.write({"type": "grpc_listening", "grpcPort": server.port})
        while events.subscribers == 0:  # noqa: ASYNC110 - the reader is in another process
            await asyncio.sleep(0.01)
    else:
        NodeProcess(commands, writer)
    for n in range(count):
        events.publish(_synthetic(n))
        if n % 50 == 49:
            await asyncio.sleep(0)
    if server is not None:
        while events.subscribers:  # noqa: ASYNC110 - until the reader (another process) is done
            await asyncio.sleep(0.05)
        await server.stop()
    writer.close(timeout=60)


async def capacity(kind: str, count: int) -> tuple[float, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--feed",
        kind,
        "--capacity",
        str(count),
        stdout=asyncio.subprocess.PIPE,
        limit=1 << 20,
    )
    assert proc.stdout is not None
    got = lost = 0
    start = time.perf_counter()
    if kind == "json":
        while got < count and await proc.stdout.readline():
            got += 1
    else:
        import json

        from p2pnet.rpc.client import AgentNodeClient

        port = json.loads(await proc.stdout.readline())["grpcPort"]
        client = AgentNodeClient(f"127.0.0.1:{port}")
        stream = await client.events()
        start = time.perf_counter()
        async for event in stream:
            if event.WhichOneof("kind") == "lagged":
                lost += event.lagged.missed
            else:
                got += 1
            if got + lost >= count:
                break
        await stream.aclose()
        await client.close()
    elapsed = time.perf_counter() - start
    await proc.wait()
    return got / elapsed, lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--status", type=int, default=2000, help="status round trips")
    parser.add_argument("--sends", type=int, default=500, help="send round trips")
    parser.add_argument("--events", type=int, default=5000, help="messages published")
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--window", type=int, default=8, help="publishes in flight")
    parser.add_argument(
        "--capacity", type=int, default=20000, help="synthetic events per interface (0: none)"
    )
    parser.add_argument("--feed", choices=["json", "grpc"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-network", action="store_true", help="only the interfaces alone (--capacity)"
    )
    args = parser.parse_args()
    if args.feed:
        asyncio.run(feed(args.feed, args.capacity))
        return
    if not args.no_network:
        asyncio.run(run(args))
    if args.capacity:
        rates = {kind: asyncio.run(capacity(kind, args.capacity)) for kind in ("json", "grpc")}
        print(f"\nthe interfaces alone: {args.capacity} synthetic events, one reader")
        print(f"{'':32} {'JSON lines':>12} {'gRPC':>12}")
        print(f"{'events delivered/s':32} {rates['json'][0]:12.0f} {rates['grpc'][0]:12.0f}")
        print(f"{'events lost (lagged)':32} {rates['json'][1]:12d} {rates['grpc'][1]:12d}")


if __name__ == "__main__":
    main()
