"""Relay benchmark: one gossipsub node in the middle of K publishing peers, each in its own process.

Run from the repository root::

    .venv/bin/python bench/relay.py                          # p2pnet and js-libp2p in the middle
    .venv/bin/python bench/relay.py --middles p2pnet --peers 8 --messages 3000
    .venv/bin/python bench/relay.py --uvloop                 # the p2pnet middle on uvloop
    .venv/bin/python bench/relay.py --middles p2pnet --messages 300 --callgrind

Every peer (``--role load``, a p2pnet host in its own process) connects to the middle node only,
subscribes to the topic and GRAFTs it, so the middle's mesh holds all K peers. Then:

1. saturation: every peer writes ``--messages`` pre-signed messages (``--size`` bytes of data,
   StrictSign, Ed25519) to its pubsub stream as fast as the middle takes them (TCP and yamux
   backpressure). The middle checks each signature, delivers the message to its subscription and
   forwards it to its mesh (the K - 1 other peers). Printed: messages relayed per second (until
   the last delivery), the middle's CPU (utime + stime from /proc) per relayed message, and the
   delivery ratio (receptions / (messages x (K - 1))).
2. paced: the peers publish ``--paced-rate`` messages per second in all (the same rate for every
   middle, so latencies compare; or ``--paced-fraction`` of each middle's saturation rate) for
   ``--paced-seconds``, each message carrying its send time (CLOCK_MONOTONIC, shared by all
   processes); the receiving peers give p50 / p99 publish -> receive latency: the latency a relay
   adds under moderate load (with the two loopback hops and the peers' own event loops), and the
   middle's CPU per message at that rate.

One Ed25519 verification (p2pnet's ``PublicKey.verify`` on a message of the same size, which is
what the middle calls) is timed in this process before each middle's saturation phase and again
after it, so the CPU per message can be read against it: CPU/verify uses the faster of the two
(the machine's speed drifts over a run; other jobs only ever slow a check down). The peers are
the same p2pnet program for every middle. All processes share the machine's cores: msgs/s
depends on what else runs; CPU per message is the steadier figure.

``--callgrind`` (p2pnet middle only): the middle runs under ``valgrind --tool=callgrind``, its
counters zeroed just before the saturation phase and dumped once it ends (``callgrind_control``),
and the instructions it executed per relayed message are printed: the whole data path (socket
reads, Noise, yamux, framing, the router, the signature checks, delivery, frames to the 7 other
peers, the event loop), a figure that does not depend on what else runs on the machine. The middle
is ~50x slower there, so its reads are always full: compare versions at the same ``--messages``.
One signature check is ~685k instructions (``bench/relay_router.py --verify real`` minus
``--verify stub``); the rates and times printed with it mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

from p2pnet.crypto.keys import KeyPair, KeyType  # noqa: E402
from p2pnet.host.config import HostConfig  # noqa: E402
from p2pnet.host.host import Host  # noqa: E402
from p2pnet.peer.peer_id import PeerID  # noqa: E402
from p2pnet.protocols.identify import IdentifyService  # noqa: E402
from p2pnet.pubsub import GossipsubConfig, Pubsub  # noqa: E402
from p2pnet.pubsub.messages import SIGN_PREFIX, build_message  # noqa: E402
from p2pnet.pubsub.params import SignaturePolicy  # noqa: E402
from p2pnet.stream import Stream  # noqa: E402
from p2pnet.wire.framing import FrameDecoder, length_prefixed_parts  # noqa: E402
from p2pnet.wire.pb import rpc_pb2  # noqa: E402

TOPIC = "relay-bench"
MESHSUB = "/meshsub/1.1.0"
#: data header: phase (0 saturation, 1 paced), publisher index, sequence number, send time
_HEADER = struct.Struct(">BHId")
_BATCH = 64  # frames per stream write during saturation

log = logging.getLogger("bench.relay")


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def use_uvloop() -> None:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        sys.exit("--uvloop needs the extra: pip install 'p2pnet[uvloop]'")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# ---------------------------------------------------------------------------------------------
# child processes: JSON commands on stdin, one JSON answer per line on stdout


async def serve_commands(handlers: dict[str, Any], ready: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"event": "ready", **ready})
    while line := await reader.readline():
        msg = json.loads(line)
        name = msg.pop("cmd")
        if name == "stop":
            emit({"ok": True})
            return
        try:
            result = await handlers[name](**msg)
            emit({"ok": True, **result})
        except Exception as exc:
            log.exception("command %s failed", name)
            emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


async def run_middle(listen: str) -> None:
    """A p2pnet node: host, identify, gossipsub subscribed to TOPIC (messages consumed)."""
    host = Host(KeyPair.generate(KeyType.Ed25519), HostConfig(listen_addrs=[listen]))
    IdentifyService(host)
    async with host:
        pubsub = Pubsub(host, GossipsubConfig())
        await pubsub.start()
        sub = pubsub.subscribe(TOPIC)
        delivered = 0

        async def consume() -> None:
            nonlocal delivered
            async for _ in sub:
                delivered += 1

        consumer = asyncio.create_task(consume())

        async def stats() -> dict[str, Any]:
            return {
                "delivered": delivered,
                "mesh": len(pubsub.mesh_peers(TOPIC)),
                "peers": len(pubsub.peers()),
                "dropped_frames": pubsub.dropped_frames,
            }

        try:
            await serve_commands(
                {"stats": stats},
                {"peerId": str(host.peer_id), "addrs": [str(a) for a in host.p2p_addrs()]},
            )
        finally:
            consumer.cancel()
            await pubsub.close()


@dataclass
class LoadState:
    index: int
    key: KeyPair
    peer: PeerID
    out: Stream | None = None
    middle_subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    frames: list[bytes] = field(default_factory=list)
    received: int = 0
    first_recv: float = 0.0
    last_recv: float = 0.0
    latencies: list[float] = field(default_factory=list)
    seqno: int = 0


def _rpc_frame(msg: rpc_pb2.Message) -> bytes:
    return b"".join(length_prefixed_parts([rpc_pb2.RPC(publish=[msg]).SerializeToString()]))


async def run_load(index: int, listen: str) -> None:
    """One publishing peer: speaks just enough gossipsub to be in the middle's mesh."""
    key = KeyPair.generate(KeyType.Ed25519)
    host = Host(key, HostConfig(listen_addrs=[listen]))
    st = LoadState(index, key, PeerID.from_public_key(key.public_key))

    async def inbound(stream: Stream) -> None:
        decoder = FrameDecoder(4 << 20)
        while chunk := await stream.read():
            decoder.feed(chunk)
            for frame in decoder.frames():
                rpc = rpc_pb2.RPC.FromString(frame)
                for sub in rpc.subscriptions:
                    if sub.topicid == TOPIC and sub.subscribe:
                        st.middle_subscribed.set()
                if not rpc.publish:
                    continue
                now = time.monotonic()
                if not st.received:
                    st.first_recv = now
                st.last_recv = now
                for m in rpc.publish:
                    st.received += 1
                    phase, _, _, sent = _HEADER.unpack_from(m.data)
                    if phase == 1:
                        st.latencies.append(now - sent)

    host.set_stream_handler(MESHSUB, inbound)
    IdentifyService(host)

    def message(phase: int, size: int) -> rpc_pb2.Message:
        st.seqno += 1
        head = _HEADER.pack(phase, index, st.seqno, time.monotonic() if phase else 0.0)
        return build_message(
            TOPIC,
            head + bytes(max(0, size - len(head))),
            policy=SignaturePolicy.STRICT_SIGN,
            key=key,
            peer_id=st.peer,
            seqno=st.seqno,
        )

    async def connect(addr: str) -> dict[str, Any]:
        conn = await host.connect(addr)
        st.out = await host.new_stream(conn.remote_peer, [MESHSUB])
        hello = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=TOPIC)])
        hello.control.graft.add(topicID=TOPIC)
        await st.out.write(b"".join(length_prefixed_parts([hello.SerializeToString()])))
        async with asyncio.timeout(20):
            await st.middle_subscribed.wait()
        return {}

    async def prepare(count: int, size: int) -> dict[str, Any]:
        st.frames = [_rpc_frame(message(0, size)) for _ in range(count)]
        return {}

    async def blast() -> dict[str, Any]:
        assert st.out is not None
        started = time.monotonic()
        frames = st.frames
        for i in range(0, len(frames), _BATCH):
            await st.out.write(b"".join(frames[i : i + _BATCH]))
        st.frames = []
        return {"started": started, "finished": time.monotonic(), "sent": len(frames)}

    async def paced(rate: float, seconds: float, size: int) -> dict[str, Any]:
        assert st.out is not None
        started = time.monotonic()
        sent = 0
        while (now := time.monotonic()) < started + seconds:
            due = int((now - started) * rate) - sent
            if due > 0:
                await st.out.write(b"".join(_rpc_frame(message(1, size)) for _ in range(due)))
                sent += due
            await asyncio.sleep(0.002)
        return {"sent": sent}

    async def stats() -> dict[str, Any]:
        return {"received": st.received, "first": st.first_recv, "last": st.last_recv}

    async def take_latencies() -> dict[str, Any]:
        out, st.latencies = st.latencies, []
        return {"latencies": out}

    async def reset() -> dict[str, Any]:
        st.received = 0
        st.first_recv = st.last_recv = 0.0
        st.latencies = []
        return {}

    async with host:
        await serve_commands(
            {
                "connect": connect,
                "prepare": prepare,
                "blast": blast,
                "paced": paced,
                "stats": stats,
                "latencies": take_latencies,
                "reset": reset,
            },
            {"peerId": str(host.peer_id)},
        )


# ---------------------------------------------------------------------------------------------
# the coordinator


class Child:
    """A ``bench/relay.py --role ...`` process driven over JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ready: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    @classmethod
    async def start(
        cls,
        *args: str,
        python: str = sys.executable,
        script: Path = SCRIPT,
        prefix: tuple[str, ...] = (),
        ready_timeout: float = 30,
    ) -> Child:
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            python,
            str(script),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        child = cls(proc)
        child.ready = await asyncio.wait_for(child._line(), ready_timeout)
        return child

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.proc.pid} exited ({await self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def command(self, cmd: str, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            await self.proc.stdin.drain()
            answer = await asyncio.wait_for(self._line(), timeout)
        if not answer.get("ok"):
            raise RuntimeError(f"{cmd} failed: {answer.get('error')}")
        return answer

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command("stop"), 5)
        with contextlib.suppress(ProcessLookupError):
            if self.proc.returncode is None:
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class Middle:
    """The node under test: a p2pnet child or a js-libp2p peer.mjs."""

    def __init__(self, name: str, pid: int, addr: str, stats: Any, stop: Any) -> None:
        self.name, self.pid, self.addr = name, pid, addr
        self.stats, self.stop = stats, stop
        #: where callgrind dumps the middle's counters (``--callgrind``), else None
        self.callgrind_out: Path | None = None


class Callgrind:
    """The middle's instruction counters under callgrind: zeroed, then dumped and read."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def prefix(self) -> tuple[str, ...]:
        return (
            "valgrind",
            "--tool=callgrind",
            "--compress-strings=no",  # each dump readable alone (callgrind_annotate)
            f"--callgrind-out-file={self.out_dir}/middle.%p",
        )

    async def _control(self, pid: int, option: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "callgrind_control", option, str(pid), stdout=asyncio.subprocess.DEVNULL
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"callgrind_control {option} {pid} failed")

    async def zero(self, pid: int) -> None:
        await self._control(pid, "-z")

    async def dump(self, pid: int) -> int:
        """Dump the counters (since :meth:`zero`) and return the instructions counted."""
        await self._control(pid, "-d")
        # the first dump of process pid; callgrind_control returns once it is written
        path = self.out_dir / f"middle.{pid}.1"
        for line in path.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {path}")


async def start_middle(
    kind: str, uvloop: bool, pylibp2p_python: str, callgrind: Callgrind | None = None
) -> Middle:
    if kind == "py-libp2p":
        child = await Child.start(
            python=pylibp2p_python, script=ROOT / "bench" / "pylibp2p_relay.py"
        )
        return Middle(
            "py-libp2p",
            child.pid,
            child.ready["addrs"][0],
            lambda: child.command("stats"),
            child.stop,
        )
    if kind == "p2pnet":
        child = await Child.start(
            "--role",
            "middle",
            *(["--uvloop"] if uvloop else []),
            prefix=callgrind.prefix() if callgrind else (),
            ready_timeout=300 if callgrind else 30,
        )
        return Middle(
            "p2pnet" + (" (uvloop)" if uvloop else ""),
            child.pid,
            child.ready["addrs"][0],
            lambda: child.command("stats"),
            child.stop,
        )
    sys.path.insert(0, str(ROOT / "tests" / "interop"))
    from jspeer import JsPeer  # type: ignore[import-not-found,unused-ignore]

    js = await JsPeer.start(
        connection_monitor=False,
        name="js-relay",
        # js refuses more than 5 inbound connections per second from one IP by default
        options={
            "modules": ["gossip_relay"],
            "gossipsub": {"events": False},
            "connectionManager": {"inboundConnectionThreshold": 1_000_000},
        },
    )
    await js.command("relay_subscribe", topic=TOPIC)
    return Middle(
        "js-libp2p",
        js.pid,
        js.addrs[0],
        lambda: js.command("relay_stats", topic=TOPIC),
        js.stop,
    )


def verify_cost_us(size: int, rounds: int = 1000) -> float:
    """µs of one p2pnet Ed25519 verification of a pubsub message of ``size`` bytes: the best of
    seven rounds, since other processes on the machine only ever make it slower."""
    key = KeyPair.generate(KeyType.Ed25519)
    msg = build_message(
        TOPIC,
        bytes(size),
        policy=SignaturePolicy.STRICT_SIGN,
        key=key,
        peer_id=PeerID.from_public_key(key.public_key),
        seqno=1,
    )
    unsigned = rpc_pb2.Message()
    unsigned.CopyFrom(msg)
    unsigned.ClearField("signature")
    signed = SIGN_PREFIX + unsigned.SerializeToString()
    pub = key.public_key
    samples = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(rounds):
            if not pub.verify(signed, msg.signature):
                raise RuntimeError("verification failed")
        samples.append((time.perf_counter() - t) / rounds * 1e6)
    return min(samples)


@dataclass
class Result:
    middle: str
    mesh: int
    verify_us: float
    #: the same check timed again after the saturation phase: the machine's speed drifts
    verify_after_us: float = 0.0
    #: instructions of the middle per relayed message, under ``--callgrind``
    instructions: float = 0.0
    msgs_per_s: float = 0.0
    cpu_us: float = 0.0
    delivery: float = 0.0
    paced_rate: float = 0.0
    paced_delivery: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    paced_cpu_us: float = 0.0
    note: str = ""

    @property
    def check_us(self) -> float:
        """One check, the faster of the two timings (other jobs only ever slow it down)."""
        return min(self.verify_us, self.verify_after_us or self.verify_us)


async def run_one(kind: str, args: argparse.Namespace) -> Result:
    k = args.peers
    callgrind = None
    if args.callgrind and kind == "p2pnet":
        out_dir = Path(tempfile.mkdtemp(prefix="relay-callgrind-"))
        callgrind = Callgrind(out_dir)
    middle = await start_middle(kind, args.uvloop, args.pylibp2p_python, callgrind)
    loads: list[Child] = []
    try:
        starts = (Child.start("--role", "load", "--index", str(i)) for i in range(k))
        loads = list(await asyncio.gather(*starts))
        await asyncio.gather(*(c.command("connect", addr=middle.addr) for c in loads))
        deadline = time.monotonic() + 30
        # the middle is another process: poll it
        while (mesh := (await middle.stats())["mesh"]) < k and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        print(f"  {middle.name}: mesh of {mesh}/{k} peers", file=sys.stderr)
        await asyncio.gather(
            *(c.command("prepare", count=args.messages, size=args.size) for c in loads)
        )
        result = Result(middle.name, mesh, verify_cost_us(args.size))

        # 1. saturation
        expected = args.messages * k * (k - 1)
        idle_timeout = args.idle_timeout
        if callgrind is not None:
            await callgrind.zero(middle.pid)
            idle_timeout = max(idle_timeout, 120.0)  # a middle under valgrind can stall that long
        cpu0 = cpu_seconds(middle.pid)
        blasts = [asyncio.create_task(c.command("blast", timeout=600)) for c in loads]
        total, last_change, cpu_at_last = -1, time.monotonic(), cpu0
        while True:
            await asyncio.sleep(0.25)
            stats = await asyncio.gather(*(c.command("stats") for c in loads))
            now_total = sum(s["received"] for s in stats)
            if now_total != total:
                total, last_change = now_total, time.monotonic()
                cpu_at_last = cpu_seconds(middle.pid)
            if total >= expected or time.monotonic() - last_change > idle_timeout:
                break
        started = min(r["started"] for r in await asyncio.gather(*blasts))
        last = max(s["last"] for s in stats)
        relayed = total / (k - 1)
        result.msgs_per_s = relayed / max(1e-9, last - started)
        result.cpu_us = (cpu_at_last - cpu0) / max(1.0, relayed) * 1e6
        result.delivery = total / expected
        if callgrind is not None:
            if total < expected:
                raise RuntimeError(f"under callgrind only {total} of {expected} receptions")
            result.instructions = await callgrind.dump(middle.pid) / max(1.0, relayed)
            print(
                f"  callgrind: {result.instructions:,.0f} instructions per relayed message "
                f"({callgrind.out_dir})",
                file=sys.stderr,
            )
        print(
            f"  saturation: {relayed:,.0f} relayed in {last - started:.2f} s, "
            f"delivery {result.delivery:.2%}",
            file=sys.stderr,
        )
        result.verify_after_us = verify_cost_us(args.size)

        # 2. paced, at a fraction of the saturation rate
        await asyncio.gather(*(c.command("reset") for c in loads))
        if args.paced_fraction is not None:
            rate = max(1.0, result.msgs_per_s * args.paced_fraction)
        else:
            rate = args.paced_rate
        result.paced_rate = rate
        cpu0 = cpu_seconds(middle.pid)
        sent = await asyncio.gather(
            *(
                c.command("paced", rate=rate / k, seconds=args.paced_seconds, size=args.size)
                for c in loads
            )
        )
        n_sent = sum(s["sent"] for s in sent)
        deadline = time.monotonic() + args.idle_timeout + 2
        while time.monotonic() < deadline:
            stats = await asyncio.gather(*(c.command("stats") for c in loads))
            if sum(s["received"] for s in stats) >= n_sent * (k - 1):
                break
            await asyncio.sleep(0.1)
        result.paced_cpu_us = (cpu_seconds(middle.pid) - cpu0) / max(1, n_sent) * 1e6
        lat: list[float] = []
        for c in loads:
            lat += (await c.command("latencies"))["latencies"]
        result.paced_delivery = len(lat) / max(1, n_sent * (k - 1))
        if len(lat) >= 2:
            q = statistics.quantiles(lat, n=100)
            result.p50_ms, result.p99_ms = q[49] * 1e3, q[98] * 1e3
        return result
    finally:
        await asyncio.gather(*(c.stop() for c in loads), return_exceptions=True)
        await middle.stop()


async def coordinate(args: argparse.Namespace) -> int:
    results: list[Result] = []
    for kind in args.middles:
        print(f"middle: {kind}", file=sys.stderr)
        try:
            results.append(await run_one(kind, args))
        except Exception as exc:  # one stack failing must not hide the others' figures
            print(f"  {kind} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            results.append(Result(kind, 0, 0.0, note=f"failed: {exc}"))
    print(
        f"\n{args.peers} peers, {args.messages} messages of {args.size} bytes each, "
        + (
            f"paced at {args.paced_fraction:.0%} of saturation"
            if args.paced_fraction is not None
            else f"paced at {args.paced_rate:g} msgs/s"
        )
        + f" for {args.paced_seconds:g} s\n"
    )
    print(
        "| middle | msgs/s | CPU µs/msg | 1 verify µs, before / after | CPU/verify | delivery | "
        "paced msgs/s | paced CPU µs/msg | paced p50 / p99 ms | paced delivery |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.note:
            print(f"| {r.middle} | {r.note} ||||||||")
            continue
        print(
            f"| {r.middle} | {r.msgs_per_s:,.0f} | {r.cpu_us:.1f} | "
            f"{r.verify_us:.1f} / {r.verify_after_us:.1f} | "
            f"{r.cpu_us / r.check_us:.2f}x | {r.delivery:.2%} | {r.paced_rate:,.0f} | "
            f"{r.paced_cpu_us:.1f} | "
            f"{r.p50_ms:.1f} / {r.p99_ms:.1f} | {r.paced_delivery:.2%} |"
        )
    for r in results:
        if r.instructions:
            print(f"\n{r.middle} under callgrind: {r.instructions:,.0f} instructions per message")
    by_name = {r.middle.split(" ")[0]: r for r in results if not r.note}
    if "p2pnet" in by_name and "js-libp2p" in by_name:
        p, j = by_name["p2pnet"], by_name["js-libp2p"]
        print(
            f"\np2pnet vs js-libp2p: relay rate {p.msgs_per_s / j.msgs_per_s:.2f}x, "
            f"CPU per message {p.cpu_us / j.cpu_us:.2f}x of js"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["coordinator", "middle", "load"], default="coordinator")
    parser.add_argument(
        "--middles", nargs="+", default=["p2pnet", "js"], choices=["p2pnet", "js", "py-libp2p"]
    )
    parser.add_argument(
        "--pylibp2p-python",
        default="python3",
        help="an interpreter with py-libp2p installed, for --middles py-libp2p",
    )
    parser.add_argument("--peers", type=int, default=8, help="K publishing peers")
    parser.add_argument("--messages", type=int, default=3000, help="per peer, saturation phase")
    parser.add_argument("--size", type=int, default=128, help="bytes of data per message")
    parser.add_argument("--paced-rate", type=float, default=200.0, help="msgs/s, all peers")
    parser.add_argument("--paced-fraction", type=float, default=None)
    parser.add_argument("--paced-seconds", type=float, default=3.0)
    parser.add_argument("--idle-timeout", type=float, default=3.0)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--uvloop", action="store_true", help="run the p2pnet middle on uvloop")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count the p2pnet middle's instructions per relayed message (valgrind)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.peers < 2:
        parser.error("--peers must be >= 2")
    if args.role == "middle":
        if args.uvloop:
            use_uvloop()
        profile_to = os.environ.get("P2PNET_RELAY_PROFILE")  # cProfile the middle into FILE
        if not profile_to:
            asyncio.run(run_middle(args.listen))
            return 0
        import cProfile

        with cProfile.Profile() as prof:
            try:
                asyncio.run(run_middle(args.listen))
            finally:
                prof.dump_stats(profile_to)
        return 0
    if args.role == "load":
        asyncio.run(run_load(args.index, args.listen))
        return 0
    return asyncio.run(coordinate(args))


if __name__ == "__main__":
    sys.exit(main())
