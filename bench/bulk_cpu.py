"""CPU per byte of the bulk path, both ends in one process: TCP + Noise + yamux, one stream.

Run from the repository root::

    .venv/bin/python bench/bulk_cpu.py                    # 256 MiB in 1 MiB writes, best of 5
    .venv/bin/python bench/bulk_cpu.py --mib 128 --runs 7 --chunk 65536
    PYTHONPATH=/work/base .venv/bin/python bench/bulk_cpu.py    # the same against another tree

Two hosts in one event loop (the sink protocol and the sender of ``bench/pypeer.py``): the sender
writes ``--mib`` MiB over one stream in ``--chunk``-byte writes, closes its side and waits for
the sink's 8-byte count. Everything both hosts do (encryption, decryption, yamux, the socket
calls, the resource accounting) runs in this one process, so its CPU time
(``time.process_time``) per run divided into the bytes moved is the CPU cost per byte of both
ends together, a figure far less sensitive to a busy shared machine than two processes' wall
clock rate. Shown per run: MB (10^6 bytes) per CPU second, wall MB/s, minor page faults per MiB
(``getrusage``); the summary line gives the best and the median run. With ``--setups N``, also
N sequential fresh connections (``dial_bench`` of ``bench/pypeer.py``: TCP + Noise + yamux + a
first stream, closed), ``--runs`` times: CPU ms per setup of both ends together.

    .venv/bin/python bench/bulk_cpu.py --mib 1 --runs 5 --setups 300
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pypeer import SINK, dial_bench, sink_handler, throughput_send

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.resources.limits import ResourceLimits


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


async def run(args: argparse.Namespace) -> tuple[list[tuple[float, float, float]], list[float]]:
    limits = replace(
        ResourceLimits.for_machine(), conn_rate_per_ip=1_000_000.0, conn_burst_per_ip=1_000_000
    )
    receiver = Host(KeyPair.generate(KeyType.Ed25519), HostConfig(resources=limits))
    sender = Host(KeyPair.generate(KeyType.Ed25519), HostConfig(resources=limits))
    receiver.set_stream_handler(SINK, sink_handler)
    results: list[tuple[float, float, float]] = []
    setups: list[float] = []  # CPU ms per setup, per run
    async with receiver, sender:
        addr = str(receiver.p2p_addrs()[0])
        nbytes = args.mib << 20
        if args.warmup_mib:
            await throughput_send(sender, {"addr": addr, "bytes": args.warmup_mib << 20})
        for i in range(args.runs):
            f0, c0, w0 = minor_faults(), time.process_time(), time.perf_counter()
            await throughput_send(sender, {"addr": addr, "bytes": nbytes, "chunk": args.chunk})
            cpu = time.process_time() - c0
            wall = time.perf_counter() - w0
            faults = (minor_faults() - f0) / args.mib
            mb = nbytes / 1e6
            results.append((mb / cpu, mb / wall, faults))
            print(
                f"run {i + 1}: {mb / cpu:7.1f} MB/cpu-s  {mb / wall:7.1f} MB/s wall"
                f"  cpu {cpu:6.3f} s  {faults:6.1f} minor faults/MiB",
                file=sys.stderr,
                flush=True,
            )
        for i in range(args.runs if args.setups else 0):
            c0 = time.process_time()
            out = await dial_bench(sender, {"addr": addr, "count": args.setups})
            ms = (time.process_time() - c0) * 1000 / args.setups
            setups.append(ms)
            print(
                f"setups {i + 1}: {ms:6.2f} CPU ms per setup  {out['perSecond']:6.1f} setups/s",
                file=sys.stderr,
                flush=True,
            )
    return results, setups


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CPU per byte of one bulk stream, one process.")
    p.add_argument("--mib", type=int, default=256, help="MiB per run (256)")
    p.add_argument("--chunk", type=int, default=1 << 20, help="bytes per write (1 MiB)")
    p.add_argument("--runs", type=int, default=5, help="runs (5); the best counts")
    p.add_argument("--warmup-mib", type=int, default=16, help="untimed first transfer (16)")
    p.add_argument("--setups", type=int, default=0, help="fresh connections per run (0: none)")
    args = p.parse_args(argv)
    if args.mib < 1 or args.runs < 1 or args.chunk < 1 or args.warmup_mib < 0 or args.setups < 0:
        p.error("--mib, --runs and --chunk must be >= 1, --warmup-mib and --setups >= 0")
    results, setups = asyncio.run(run(args))
    per_cpu = [r[0] for r in results]
    import p2pnet

    print(
        f"bulk_cpu {args.mib} MiB in {args.chunk}-byte writes, {args.runs} runs"
        f" ({Path(p2pnet.__file__).parent.parent}): best {max(per_cpu):.1f}"
        f" median {statistics.median(per_cpu):.1f} MB per CPU s (both ends);"
        f" wall best {max(r[1] for r in results):.1f} MB/s;"
        f" minor faults/MiB median {statistics.median(r[2] for r in results):.1f}"
    )
    if setups:
        print(
            f"setups: {args.setups} per run, CPU ms per setup (both ends): best {min(setups):.2f}"
            f" median {statistics.median(setups):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
