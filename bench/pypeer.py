"""A p2pnet peer driven by JSON lines, the Python twin of tests/interop/peer.mjs for benchmarks.

stdout carries only JSON: first {"event": "ready", "peerId": ..., "addrs": [...]}, then one
response per command: {"id": .., "ok": true, ...} or {"id": .., "ok": false, "error": ...}.
Commands: throughput_send {addr, bytes}, dial_bench {addr, count}, stop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.mux.yamux_connection import YamuxStream

SINK = "/p2pnet/sink/1.0.0"
CHUNK = 1 << 20


async def sink_handler(stream: YamuxStream) -> None:
    total = 0
    while True:
        data = await stream.read()
        if not data:
            break
        total += len(data)
    await stream.write(total.to_bytes(8, "big"))
    await stream.close()


async def throughput_send(host: Host, addr: str, nbytes: int) -> dict[str, Any]:
    conn = await host.connect(addr)
    stream = await conn.new_stream([SINK])
    chunk = memoryview(os.urandom(CHUNK))
    start = time.perf_counter()
    left = nbytes
    while left > 0:
        n = min(left, CHUNK)
        await stream.write(chunk[:n])
        left -= n
    await stream.close()
    count = int.from_bytes(await stream.readexactly(8), "big")
    ms = (time.perf_counter() - start) * 1000
    if count != nbytes:
        raise RuntimeError(f"sink counted {count} bytes, sent {nbytes}")
    return {"bytes": nbytes, "ms": ms, "MBps": nbytes / 1e6 / (ms / 1000)}


async def dial_bench(host: Host, addr: str, count: int) -> dict[str, Any]:
    """``count`` sequential fresh connections: TCP + Noise + yamux + a first stream."""
    start = time.perf_counter()
    for _ in range(count):
        conn = await host.connect(addr)
        stream = await conn.new_stream([SINK])
        await stream.close()
        await stream.readexactly(8)
        await conn.close()
    secs = time.perf_counter() - start
    return {"count": count, "ms": secs * 1000, "perSecond": count / secs}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    args = parser.parse_args()
    host = Host(KeyPair.generate(KeyType.Ed25519), HostConfig(listen_addrs=[args.listen]))
    host.set_stream_handler(SINK, sink_handler)
    async with host:
        emit({"event": "ready", "peerId": str(host.peer_id), "addrs": list(map(str, host.p2p_addrs()))})
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            try:
                if cmd["cmd"] == "throughput_send":
                    res = await throughput_send(host, cmd["addr"], int(cmd["bytes"]))
                elif cmd["cmd"] == "dial_bench":
                    res = await dial_bench(host, cmd["addr"], int(cmd["count"]))
                elif cmd["cmd"] == "stop":
                    emit({"id": cmd.get("id"), "ok": True})
                    return
                else:
                    raise ValueError(f"unknown command {cmd['cmd']}")
                emit({"id": cmd.get("id"), "ok": True, **res})
            except Exception as exc:
                emit({"id": cmd.get("id"), "ok": False, "error": repr(exc)})


if __name__ == "__main__":
    asyncio.run(main())
