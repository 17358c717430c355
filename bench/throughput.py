"""Throughput and connection-setup benchmark: p2pnet against js-libp2p, two processes on loopback.

Run from the repository root::

    .venv/bin/python bench/throughput.py                 # 256 MiB x 3 runs, 200 setups
    .venv/bin/python bench/throughput.py --mib 64 --runs 5 --setups 500 --json out.json

For each ordered pair of stacks (p2pnet->p2pnet, p2pnet->js, js->p2pnet, js->js) a sender process
dials a receiver process and pushes ``--mib`` MiB over ONE stream (TCP + Noise + yamux) on
/p2pnet/sink/1.0.0; the receiver counts the bytes and replies with the count. The sender measures
the time from the first byte to the count reply. CPU seconds of both processes come from
/proc/<pid>/stat (utime + stime) around each run. Then ``--setups`` sequential fresh connections
(TCP + Noise + yamux + a first sink stream, then closed) per pair give setups per second.

The p2pnet peer is bench/pypeer.py, the js peer tests/interop/peer.mjs; both are driven over JSON
lines with tests/interop/jspeer.py's JsPeer. Compare figures only within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYPEER = ROOT / "bench" / "pypeer.py"
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from jspeer import (  # noqa: E402
    INTEROP_DIR,
    PEER_SCRIPT,
    JsPeer,
    JsPeerError,
    missing_requirements,
    node_executable,
)

STACKS = ("p2pnet", "js")
PAIRS = [(s, r) for s in STACKS for r in STACKS]
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 30.0
# js-libp2p refuses more than 5 inbound connections per second from one IP by default
JS_CONNECTION_MANAGER = {"inboundConnectionThreshold": 1_000_000}

_live: set[JsPeer] = set()  # every peer process started and not yet stopped


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def peak_rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def python_executable() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


async def spawn(stack: str, name: str) -> JsPeer:
    """Start a pypeer.py or peer.mjs process and wait for its ``ready`` event.

    JsPeer only needs a process that speaks the JSON-lines protocol, so it drives both.
    """
    if stack == "js":
        node = node_executable()
        assert node is not None
        opts = {"connectionMonitor": False, "connectionManager": JS_CONNECTION_MANAGER}
        argv = [node, str(PEER_SCRIPT), json.dumps(opts)]
        cwd = INTEROP_DIR
    else:
        argv = [python_executable(), str(PYPEER)]
        cwd = ROOT
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=16 << 20,
        start_new_session=True,  # Ctrl-C reaches only us; we stop the peers
    )
    peer = JsPeer(proc, name)
    _live.add(peer)
    try:
        ready = await peer.next_event("ready", timeout=READY_TIMEOUT)
    except BaseException as exc:
        await stop(peer)
        if isinstance(exc, JsPeerError):
            raise BenchError(
                f"{name} ({' '.join(argv[:2])}) did not start: {exc}\n{peer.stderr_tail()}"
            ) from None
        raise
    peer.ready = ready
    peer.peer_id = ready["peerId"]
    peer.addrs = list(ready["addrs"])
    return peer


async def stop(peer: JsPeer) -> None:
    try:
        await peer.stop(timeout=5.0)
    finally:
        _live.discard(peer)


def kill_leftovers() -> None:
    """Last resort (atexit / after a crash): SIGKILL every peer process still alive."""
    for peer in list(_live):
        if peer.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(peer.pid, signal.SIGKILL)


async def command(peer: JsPeer, cmd: str, timeout: float, **args: Any) -> dict[str, Any]:
    try:
        return await peer.command(cmd, timeout=timeout, **args)
    except JsPeerError as exc:
        raise BenchError(f"{peer.name}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# measurements


@dataclass
class Run:
    mbps: float
    secs: float
    send_cpu: float
    recv_cpu: float


@dataclass
class PairResult:
    sender: str
    receiver: str
    runs: list[Run] = field(default_factory=list)
    setups_per_sec: float | None = None
    setup_ms: float | None = None
    setup_phases: dict[str, float] | None = None  # mean ms per setup: dial, stream, close
    setup_cpu_ms: tuple[float, float] | None = None  # CPU ms per setup: sender, receiver
    send_rss_mib: float | None = None
    recv_rss_mib: float | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.sender} -> {self.receiver}"

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


async def measure_pair(res: PairResult, args: argparse.Namespace) -> None:
    """Fill ``res`` in place, so the runs done before a failure are kept."""
    sender_stack, receiver_stack = res.sender, res.receiver
    nbytes = args.mib << 20
    # generous: a broken peer still fails fast (it answers ok: false or dies)
    send_timeout = 60.0 + nbytes / 5e6
    receiver = await spawn(receiver_stack, f"{receiver_stack}-receiver")
    try:
        sender = await spawn(sender_stack, f"{sender_stack}-sender")
        try:
            addr = receiver.addr
            if args.warmup_mib > 0:
                await command(
                    sender, "throughput_send", send_timeout, addr=addr, bytes=args.warmup_mib << 20
                )
            for _ in range(args.runs):
                s0, r0 = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
                out = await command(
                    sender, "throughput_send", send_timeout, addr=addr, bytes=nbytes
                )
                s1, r1 = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
                res.runs.append(
                    Run(out["MBps"], out["ms"] / 1000, round(s1 - s0, 3), round(r1 - r0, 3))
                )
                progress(
                    f"  {res.label}: {out['MBps']:8.1f} MB/s  cpu send {s1 - s0:5.2f} s"
                    f"  recv {r1 - r0:5.2f} s"
                )
            res.send_rss_mib = peak_rss_mib(sender.pid)
            res.recv_rss_mib = peak_rss_mib(receiver.pid)
            if args.setups > 0 and (sender_stack == receiver_stack or not args.no_mixed_setups):
                s0, r0 = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
                out = await command(
                    sender, "dial_bench", 60.0 + args.setups, addr=addr, count=args.setups
                )
                s1, r1 = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
                res.setup_cpu_ms = (
                    (s1 - s0) * 1000 / args.setups,
                    (r1 - r0) * 1000 / args.setups,
                )
                res.setups_per_sec = out["perSecond"]
                res.setup_ms = out["ms"] / args.setups
                res.setup_phases = {
                    k[:-2]: out[k] / args.setups
                    for k in ("dialMs", "streamMs", "closeMs")
                    if isinstance(out.get(k), int | float)
                }
                progress(f"  {res.label}: {res.setups_per_sec:8.1f} setups/s")
        finally:
            await stop(sender)
    finally:
        await stop(receiver)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# output


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[PairResult], args: argparse.Namespace) -> str:
    head = (
        f"{'pair':<18}{'MB/s med':>10}{'MB/s best':>11}{'cpu send':>10}{'cpu recv':>10}"
        f"{'MB/cpu-s':>10}{'peak rss send/recv':>20}"
    )
    lines = [
        f"Throughput: {args.mib} MiB over one stream, {args.runs} run(s) per pair; MB/s median and"
        " best; cpu = median CPU seconds per run; MB/cpu-s = MB per CPU second of both processes",
        head,
        "-" * len(head),
    ]
    for r in results:
        if r.error is not None and not r.runs:
            lines.append(f"{r.label:<18}  FAILED: {r.error.splitlines()[0][:200]}")
            continue
        med = r.median("mbps")
        best = max(x.mbps for x in r.runs)
        send_cpu, recv_cpu = r.median("send_cpu"), r.median("recv_cpu")
        total_cpu = send_cpu + recv_cpu
        per_cpu = args.mib * 1.048576 / total_cpu if total_cpu > 0 else None
        rss = f"{fmt(r.send_rss_mib, '.0f')}/{fmt(r.recv_rss_mib, '.0f')} MiB"
        lines.append(
            f"{r.label:<18}{med:>10.1f}{best:>11.1f}{send_cpu:>10.2f}{recv_cpu:>10.2f}"
            f"{fmt(per_cpu, '.0f'):>10}{rss:>20}"
        )
    setups = [r for r in results if r.setups_per_sec is not None]
    if setups:
        head = (
            f"{'pair':<18}{'setups/s':>10}{'ms/setup':>10}{'dial+upgrade':>14}"
            f"{'1st stream':>12}{'close':>8}{'cpu ms send/recv':>18}"
        )
        lines += [
            "",
            f"Connection setups: {args.setups} sequential fresh connections per pair (TCP + Noise +"
            " yamux + a first sink stream with its reply, then close); ms per setup by phase;"
            " CPU ms per setup of each process",
            head,
            "-" * len(head),
        ]
        for r in setups:
            ph = r.setup_phases or {}
            cpu = "-" if r.setup_cpu_ms is None else "{:.2f}/{:.2f}".format(*r.setup_cpu_ms)
            lines.append(
                f"{r.label:<18}{fmt(r.setups_per_sec, '.1f'):>10}{fmt(r.setup_ms, '.2f'):>10}"
                f"{fmt(ph.get('dial'), '.2f'):>14}{fmt(ph.get('stream'), '.2f'):>12}"
                f"{fmt(ph.get('close'), '.2f'):>8}{cpu:>18}"
            )
    failed = [r for r in results if r.error is not None and r.runs]
    for r in failed:
        lines.append(
            f"{r.label}: FAILED after the throughput runs: {r.error.splitlines()[0][:200]}"
        )
    lines.append("")
    by_label = {r.label: r for r in results if r.error is None and r.runs}
    py, js = by_label.get("p2pnet -> p2pnet"), by_label.get("js -> js")
    if py is not None and js is not None:
        ratio = py.median("mbps") / js.median("mbps")
        text = (
            f"p2pnet->p2pnet vs js->js: throughput {py.median('mbps'):.0f} vs"
            f" {js.median('mbps'):.0f} MB/s ({ratio:.2f}x)"
        )
        py_cpu = py.median("send_cpu") + py.median("recv_cpu")
        js_cpu = js.median("send_cpu") + js.median("recv_cpu")
        if py_cpu > 0 and js_cpu > 0:
            text += f", CPU per byte {py_cpu / js_cpu:.2f}x of js"
        if py.setups_per_sec and js.setups_per_sec:
            text += (
                f", setups {py.setups_per_sec:.0f} vs {js.setups_per_sec:.0f}/s"
                f" ({py.setups_per_sec / js.setups_per_sec:.2f}x)"
            )
        lines.append(text)
    return "\n".join(lines)


def as_json(results: list[PairResult], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "mib": args.mib,
        "runs": args.runs,
        "setups": args.setups,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pairs": [
            {
                "sender": r.sender,
                "receiver": r.receiver,
                "error": r.error,
                "runs": [vars(x) for x in r.runs],
                "setupsPerSec": r.setups_per_sec,
                "setupPhasesMs": r.setup_phases,
                "setupCpuMs": r.setup_cpu_ms,
                "sendPeakRssMiB": r.send_rss_mib,
                "recvPeakRssMiB": r.recv_rss_mib,
            }
            for r in results
        ],
    }


# ---------------------------------------------------------------------------------------------
# main


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        parts = item.strip().replace("->", "-").split("-")
        if len(parts) != 2 or any(p not in STACKS for p in parts):
            raise argparse.ArgumentTypeError(f"bad pair {item!r}: use e.g. p2pnet-js,js-js")
        pairs.append((parts[0], parts[1]))
    return pairs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Throughput and connection setups: p2pnet vs js-libp2p, two processes."
    )
    p.add_argument("--mib", type=int, default=256, help="MiB per run over one stream (256)")
    p.add_argument("--runs", type=int, default=3, help="runs per pair (3)")
    p.add_argument(
        "--warmup-mib", type=int, default=16, help="untimed transfer before the runs (16)"
    )
    p.add_argument(
        "--setups", type=int, default=200, help="sequential setups per pair (200; 0=off)"
    )
    p.add_argument(
        "--no-mixed-setups", action="store_true", help="measure setups only for same-stack pairs"
    )
    p.add_argument(
        "--pairs",
        type=parse_pairs,
        default=PAIRS,
        help="comma-separated sender-receiver pairs (default: all four)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.mib < 1 or args.runs < 1 or args.setups < 0 or args.warmup_mib < 0:
        p.error("--mib and --runs must be >= 1, --setups and --warmup-mib >= 0")
    return args


async def amain(args: argparse.Namespace, results: list[PairResult]) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        for sender, receiver in args.pairs:
            progress(f"{sender} -> {receiver} ...")
            res = PairResult(sender, receiver)
            results.append(res)
            try:
                await measure_pair(res, args)
            except BenchError as exc:
                progress(f"  FAILED: {exc}")
                res.error = str(exc)
    finally:
        await asyncio.gather(*(stop(p) for p in list(_live)), return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if any("js" in pair for pair in args.pairs):
        reason = missing_requirements()
        if reason is not None:
            hint = (
                "install Node.js 20+"
                if "node_modules" not in reason and "npm" not in reason
                else (f"install the js dependencies:  cd {INTEROP_DIR} && npm ci")
            )
            print(
                f"error: the js peer cannot run: {reason}\n{hint}\n"
                "or measure only p2pnet:  --pairs p2pnet-p2pnet",
                file=sys.stderr,
            )
            return 2
    results: list[PairResult] = []
    try:
        asyncio.run(amain(args, results))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; peer processes stopped", file=sys.stderr)
        return 130
    finally:
        kill_leftovers()
    print(table(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(results, args), indent=2) + "\n")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
