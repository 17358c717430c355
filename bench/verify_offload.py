#!/usr/bin/env python3
"""Would verifying gossip signatures on a second thread pay? Inline against a worker thread.

A node at 100 nodes in one process (``bench/gossip.py``) spends per message and node about one
Ed25519 verification (PyNaCl/libsodium, which releases the GIL around the C call) and two to
three times that in Python (router, scoring, yamux, Noise, socket calls). This models that mix:
``--units`` units of work, each ``--python-us`` of Python (dict updates, and every
``--syscall-every`` units a socket send and receive on a socket pair, as the event loop does)
and one verification of a distinct signed 160-byte message. Two ways, alternated ``--runs``
times:

- ``inline``: each unit's verification runs right after its Python work, on the one thread;
- ``worker``: the main thread does the Python work and hands the message to a worker thread
  through a queue, in batches of ``--batch``; the worker verifies (its only Python is the loop
  and the call). A second core is free for it.

Printed per run: wall seconds, process CPU seconds, and the wall time against inline's. A worker
pays only if wall time drops: the verification leaves the main thread, but every return from
the C call needs the GIL back while the main thread holds it.

    .venv/bin/python bench/verify_offload.py
    .venv/bin/python bench/verify_offload.py --python-us 170 --batch 64
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import statistics
import threading
import time

from nacl.bindings import crypto_sign_open
from nacl.signing import SigningKey


def calibrate(python_us: float) -> int:
    """Dict updates per unit so that one unit of Python takes about ``python_us``."""
    d: dict[int, int] = {}
    n = 20000
    t = time.perf_counter()
    for i in range(n):
        d[i & 63] = d.get(i & 63, 0) + i
    per = (time.perf_counter() - t) / n
    return max(1, int(python_us * 1e-6 / per))


def python_work(d: dict[int, int], steps: int, i: int) -> None:
    for j in range(steps):
        d[j & 63] = d.get(j & 63, 0) + i


def run_inline(
    signed: list[bytes], pk: bytes, steps: int, every: int, pair: tuple[socket.socket, ...]
) -> tuple[float, float]:
    a, b = pair
    d: dict[int, int] = {}
    t, c = time.perf_counter(), time.process_time()
    for i, sm in enumerate(signed):
        python_work(d, steps, i)
        if i % every == 0:
            a.send(b"x" * 100)
            b.recv(100)
        crypto_sign_open(sm, pk)
    return time.perf_counter() - t, time.process_time() - c


def run_worker(
    signed: list[bytes],
    pk: bytes,
    steps: int,
    every: int,
    pair: tuple[socket.socket, ...],
    batch: int,
) -> tuple[float, float]:
    a, b = pair
    jobs: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
    verified = 0

    def worker() -> None:
        nonlocal verified
        while True:
            items = jobs.get()
            if items is None:
                return
            for sm in items:
                crypto_sign_open(sm, pk)
            verified += len(items)

    th = threading.Thread(target=worker)
    d: dict[int, int] = {}
    t, c = time.perf_counter(), time.process_time()
    th.start()
    pending: list[bytes] = []
    for i, sm in enumerate(signed):
        python_work(d, steps, i)
        if i % every == 0:
            a.send(b"x" * 100)
            b.recv(100)
        pending.append(sm)
        if len(pending) >= batch:
            jobs.put(pending)
            pending = []
    jobs.put(pending)
    jobs.put(None)
    th.join()
    assert verified == len(signed)
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--units", type=int, default=5000)
    ap.add_argument("--python-us", type=float, default=170.0)
    ap.add_argument("--syscall-every", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    sk = SigningKey.generate()
    pk = bytes(sk.verify_key)
    signed = [bytes(sk.sign(os.urandom(160))) for _ in range(args.units)]
    steps = calibrate(args.python_us)
    a, b = socket.socketpair()
    pair = (a, b)

    t = time.perf_counter()
    for sm in signed[:1000]:
        crypto_sign_open(sm, pk)
    verify_us = (time.perf_counter() - t) / 1000 * 1e6
    print(
        f"{args.units} units of ~{args.python_us:.0f} us Python + 1 verification "
        f"(~{verify_us:.0f} us alone), a socket send+recv every {args.syscall_every} units, "
        f"worker batches of {args.batch}, {os.cpu_count()} CPUs"
    )
    print("| run | way | wall s | CPU s | wall vs inline |")
    print("|---|---|---|---|---|")
    ratios = []
    for r in range(args.runs):
        wi, ci = run_inline(signed, pk, steps, args.syscall_every, pair)
        ww, cw = run_worker(signed, pk, steps, args.syscall_every, pair, args.batch)
        ratios.append(ww / wi)
        print(f"| {r + 1} | inline | {wi:.3f} | {ci:.3f} | 1.00x |")
        print(f"| {r + 1} | worker | {ww:.3f} | {cw:.3f} | {ww / wi:.2f}x |")
    print(f"median wall, worker against inline: {statistics.median(ratios):.2f}x")
    a.close()
    b.close()


if __name__ == "__main__":
    main()
