"""A p2pnet peer driven by JSON lines: the Python twin of tests/interop/peer.mjs for benchmarks.

Run from the repository root: ``.venv/bin/python bench/pypeer.py [--listen MULTIADDR]``.

stdout carries only JSON lines (logs go to stderr):

* first ``{"event": "ready", "peerId": ..., "addrs": [...with /p2p/...], "protocols": [...]}``;
* one response per command line ``{"id": N, "cmd": NAME, ...args}`` read from stdin:
  ``{"id": N, "ok": true, ...result}`` or ``{"id": N, "ok": false, "error": ..., "code": ...}``.
  Commands run concurrently; unknown arguments (e.g. ``timeoutMs``) are ignored.

Commands (the same names and results as peer.mjs):

* ``throughput_send {addr, bytes=64 MiB, chunk=1 MiB}``: one stream on /p2pnet/sink/1.0.0, send
  ``bytes``, close the write side, check the 8-byte count: ``{bytes, ms, MBps, peerId}``;
* ``dial_bench {addr, count=100}``: ``count`` sequential fresh connections (TCP + Noise + yamux),
  each with a first sink stream (close write, read the 8-byte count) and then closed:
  ``{count, ms, perSecond, dialMs, streamMs, closeMs}`` (the last three summed over all setups:
  dial + upgrade, first stream + reply, close);
* ``info``: ``{peerId, addrs, protocols}``; ``stop``: ``{}``, then the process exits 0.

Served: /p2pnet/sink/1.0.0 (read to EOF, reply with the byte count as 8 bytes big-endian, close).
EOF on stdin, SIGTERM or SIGINT also stop the peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from typing import Any

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.protocols.identify import IdentifyService
from p2pnet.protocols.ping import PingService
from p2pnet.resources.limits import ResourceLimits
from p2pnet.stream import Stream

SINK = "/p2pnet/sink/1.0.0"
DEFAULT_CHUNK = 1 << 20
DEFAULT_TIMEOUT = 300.0

log = logging.getLogger("p2pnet.bench.pypeer")


class CommandError(Exception):
    """A command failed in a way the caller should read (bad arguments, wrong reply)."""


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def sink_handler(stream: Stream) -> None:
    total = 0
    read = stream.read
    while data := await read():
        total += len(data)
    await stream.write(total.to_bytes(8, "big"))
    await stream.close()


async def read_count(stream: Stream) -> int:
    """The sink's reply: exactly 8 bytes, then EOF."""
    reply = b""
    while data := await stream.read():
        reply += data
        if len(reply) > 8:
            break
    if len(reply) != 8:
        raise CommandError(f"sink replied with {len(reply)} bytes, expected an 8-byte count")
    return int.from_bytes(reply, "big")


def int_arg(args: dict[str, Any], name: str, default: int, minimum: int) -> int:
    value = args.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CommandError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def addr_arg(args: dict[str, Any]) -> str:
    addr = args.get("addr")
    if not isinstance(addr, str) or not addr:
        raise CommandError('need "addr" (a multiaddr with /p2p/<peer id>)')
    return addr


async def throughput_send(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    addr = addr_arg(args)
    total = int_arg(args, "bytes", 64 << 20, 0)
    size = int_arg(args, "chunk", DEFAULT_CHUNK, 1)
    conn = await host.connect(addr)
    stream = await conn.new_stream([SINK])
    try:
        # One bytes object written again and again: Stream.write keeps views of bytes
        # without copying them, and the content is never modified.
        chunk = os.urandom(size)
        write = stream.write
        start = time.perf_counter()
        left = total
        while left >= size:
            await write(chunk)
            left -= size
        if left:
            await write(chunk[:left])
        await stream.close()
        count = await read_count(stream)
        ms = (time.perf_counter() - start) * 1000
    except BaseException:
        await stream.reset()
        raise
    if count != total:
        raise CommandError(f"sink counted {count} bytes, sent {total}")
    return {
        "bytes": total,
        "ms": ms,
        "MBps": total / 1e6 / (ms / 1000) if ms > 0 else None,
        "peerId": str(conn.remote_peer),
    }


async def dial_bench(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    """``count`` sequential fresh connections: TCP + Noise + yamux + a first stream."""
    addr = addr_arg(args)
    count = int_arg(args, "count", 100, 1)
    previous: object = None
    clock = time.perf_counter
    dial = stream_s = close = 0.0  # summed over all setups
    start = clock()
    for i in range(count):
        conn = None
        try:
            t0 = clock()
            conn = await host.connect(addr)
            t1 = clock()
            if conn is previous or len(host.connections(conn.remote_peer)) != 1:
                raise CommandError("host.connect reused a connection; dial_bench needs fresh ones")
            previous = conn
            stream = await conn.new_stream([SINK])
            await stream.close()
            await read_count(stream)
            t2 = clock()
            await conn.close()
            dial += t1 - t0
            stream_s += t2 - t1
            close += clock() - t2
        except Exception as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            raise CommandError(f"setup {i + 1}/{count}: {type(exc).__name__}: {exc}") from exc
    secs = clock() - start
    return {
        "count": count,
        "ms": secs * 1000,
        "perSecond": count / secs,
        "dialMs": dial * 1000,
        "streamMs": stream_s * 1000,
        "closeMs": close * 1000,
    }


class Peer:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def info(self) -> dict[str, Any]:
        return {
            "peerId": str(self.host.peer_id),
            "addrs": [str(a) for a in self.host.p2p_addrs()],
            "protocols": self.host.protocols,
        }

    async def run_command(self, msg: dict[str, Any]) -> None:
        cid = msg.get("id")
        name = msg.get("cmd")
        try:
            if name == "throughput_send":
                coro = throughput_send(self.host, msg)
            elif name == "dial_bench":
                coro = dial_bench(self.host, msg)
            elif name == "info":
                emit({"id": cid, "ok": True, **self.info()})
                return
            elif name == "stop":
                emit({"id": cid, "ok": True})
                self.stopping.set()
                return
            else:
                raise CommandError(f"unknown command {name!r}")
            timeout = msg.get("timeoutMs")
            secs = timeout / 1000 if isinstance(timeout, int | float) else DEFAULT_TIMEOUT
            result = await asyncio.wait_for(coro, secs)
            emit({"id": cid, "ok": True, **result})
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                text = f"TimeoutError: {name} did not finish in time"
            else:
                text = f"{type(exc).__name__}: {exc}"
            log.debug("command %s failed", name, exc_info=True)
            emit({"id": cid, "ok": False, "error": text, "code": type(exc).__name__})

    async def read_commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                emit(
                    {
                        "id": None,
                        "ok": False,
                        "error": f"bad JSON command: {exc}",
                        "code": "BadCommand",
                    }
                )
                continue
            task = asyncio.create_task(self.run_command(msg))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        self.stopping.set()  # EOF on stdin


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--log", default="WARNING", help="log level on stderr")
    args = parser.parse_args()
    logging.basicConfig(level=args.log.upper(), stream=sys.stderr)

    # The setup benchmark opens hundreds of connections a second from 127.0.0.1, which the
    # default per-IP connection rate limit (docs/limits.md) rightly refuses from a real peer;
    # lift it here as the js side lifts its inboundConnectionThreshold.
    limits = replace(
        ResourceLimits.for_machine(), conn_rate_per_ip=1_000_000.0, conn_burst_per_ip=1_000_000
    )
    config = HostConfig(listen_addrs=[args.listen], resources=limits)
    host = Host(KeyPair.generate(KeyType.Ed25519), config)
    host.set_stream_handler(SINK, sink_handler)
    # Like js-libp2p, run identify (and answer ping) on every connection, so that the setup
    # figures of both stacks include the same work.
    IdentifyService(host)
    PingService(host)
    async with host:
        peer = Peer(host)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, peer.stopping.set)
        emit({"event": "ready", **peer.info(), "keyType": "ed25519"})
        reader = asyncio.create_task(peer.read_commands())
        try:
            await peer.stopping.wait()
        finally:
            reader.cancel()
            for task in [reader, *peer.tasks]:
                task.cancel()
            await asyncio.gather(reader, *peer.tasks, return_exceptions=True)


if __name__ == "__main__":
    # P2PNET_PYPEER_PROFILE=FILE: run under cProfile and write the stats to FILE at exit
    profile_to = os.environ.get("P2PNET_PYPEER_PROFILE")
    if profile_to:
        import cProfile

        with cProfile.Profile() as prof:
            try:
                asyncio.run(main())
            finally:
                prof.dump_stats(profile_to)
    else:
        asyncio.run(main())
