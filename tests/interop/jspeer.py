"""Asyncio driver for the js-libp2p interop peer (``peer.mjs``).

The peer is a Node.js process speaking JSON lines: commands on its stdin, one response per
command (matched by ``id``) and unsolicited ``{"event": ...}`` lines on its stdout, logs on
stderr. See README.md in this directory for the command protocol.

Typical use::

    async with await JsPeer.start() as js:
        await js.command("dial", addr=some_addr)
        rtt = (await js.command("ping", peerId=other_id))["rtt"]
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

INTEROP_DIR = Path(__file__).resolve().parent
PEER_SCRIPT = INTEROP_DIR / "peer.mjs"
NODE_MODULES = INTEROP_DIR / "node_modules"

# Packages peer.mjs imports; all must be installed (``npm ci`` in INTEROP_DIR).
_REQUIRED_PACKAGES = (
    "libp2p",
    "@libp2p/tcp",
    "@libp2p/noise",
    "@libp2p/yamux",
    "@libp2p/identify",
    "@libp2p/ping",
    "@libp2p/crypto",
    "@libp2p/peer-id",
    "@multiformats/multiaddr",
    # grpc_agent.mjs (the Node.js client of p2p-node's gRPC interface)
    "@grpc/grpc-js",
    "@grpc/proto-loader",
)

_STDERR_KEEP = 200  # lines of stderr kept for error messages
_STDERR_TAIL = 40  # lines of stderr quoted in an error
_EVENT_QUEUE_MAX = 10_000
_STREAM_LIMIT = 16 * 1024 * 1024  # max length of one stdout line


class JsPeerError(Exception):
    """A js peer command failed, the process died, or it did not answer in time.

    ``code`` is the js error name when the peer reported one (e.g. ``TimeoutError``,
    ``UnsupportedProtocolError``); ``stderr_tail`` holds the last lines the process logged.
    """

    def __init__(self, message: str, *, code: str | None = None, stderr_tail: str = "") -> None:
        self.code = code
        self.stderr_tail = stderr_tail
        full = message
        if stderr_tail:
            full += "\n--- js peer stderr (tail) ---\n" + stderr_tail
        super().__init__(full)


def node_executable() -> str | None:
    """Path of the ``node`` binary (``$P2PNET_NODE`` overrides), or None."""
    override = os.environ.get("P2PNET_NODE")
    if override:
        return override if Path(override).exists() else None
    return shutil.which("node")


def missing_requirements() -> str | None:
    """Why the js peer cannot run here, or None when it can."""
    if node_executable() is None:
        return "Node.js ('node') not found on PATH"
    if not PEER_SCRIPT.exists():
        return f"{PEER_SCRIPT} is missing"
    if not NODE_MODULES.is_dir():
        return f"{NODE_MODULES} is missing: run `npm ci` in {INTEROP_DIR}"
    missing = [p for p in _REQUIRED_PACKAGES if not (NODE_MODULES / p / "package.json").exists()]
    if missing:
        return (
            f"npm packages missing in {NODE_MODULES}: {', '.join(missing)}; "
            f"run `npm ci` in {INTEROP_DIR}"
        )
    return None


def interop_available() -> bool:
    """True when node and the npm dependencies of peer.mjs are installed."""
    return missing_requirements() is None


class JsPeer:
    """One running ``peer.mjs`` process. Create with :meth:`start`; always :meth:`stop` it
    (or use ``async with``)."""

    peer_id: str
    addrs: list[str]
    ready: dict[str, Any]

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self._proc = proc
        self.name = name
        self.peer_id = ""
        self.addrs = []
        self.ready = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=_EVENT_QUEUE_MAX)
        self._stashed: list[dict[str, Any]] = []  # events skipped by next_event(type=...)
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_KEEP)
        self._ready_fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._closed_reason: str | None = None
        self._write_lock = asyncio.Lock()
        self._stdout_task = asyncio.create_task(self._read_stdout(), name=f"{name}-stdout")
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"{name}-stderr")
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(
        cls,
        *,
        key_type: str = "ed25519",
        seed: bytes | None = None,
        listen: str | list[str] = "/ip4/127.0.0.1/tcp/0",
        timeout: float = 30.0,
        connection_monitor: bool = True,
        ping_interval_ms: int | None = None,
        env: dict[str, str] | None = None,
        name: str = "js-peer",
        options: dict[str, Any] | None = None,
        prefix: Sequence[str] = (),
    ) -> JsPeer:
        """Spawn peer.mjs and wait for its ``ready`` event.

        ``seed``: for ed25519 the 32-byte seed (or 64-byte priv||pub); for secp256k1 the 32-byte
        private scalar. ``env`` is added to the environment (e.g. ``{"DEBUG": "libp2p:*"}`` for
        js logs on stderr). ``connection_monitor=False`` disables js-libp2p's periodic ping of
        every connection. ``options`` are merged into peer.mjs's startup options, e.g.
        ``{"modules": ["dht"], "dhtClientMode": False}`` (see README.md, "Modules").
        ``prefix``: a command to run node under (``ip netns exec NS``: the NAT lab).
        """
        reason = missing_requirements()
        if reason is not None:
            raise JsPeerError(f"js interop peer unavailable: {reason}")
        opts: dict[str, Any] = {"keyType": key_type, "listen": listen}
        if seed is not None:
            opts["seed"] = seed.hex()
        if not connection_monitor:
            opts["connectionMonitor"] = False
        if ping_interval_ms is not None:
            opts["pingInterval"] = ping_interval_ms
        if options:
            opts.update(options)
        node = node_executable()
        assert node is not None
        proc_env = dict(os.environ)
        if env:
            proc_env.update(env)
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            node,
            str(PEER_SCRIPT),
            json.dumps(opts),
            cwd=str(INTEROP_DIR),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=proc_env,
            limit=_STREAM_LIMIT,
            start_new_session=True,  # a Ctrl-C in pytest does not hit node directly
        )
        peer = cls(proc, name)
        try:
            ready = await asyncio.wait_for(asyncio.shield(peer._ready_fut), timeout)
        except TimeoutError:
            await peer._kill()
            raise JsPeerError(
                f"js peer did not become ready within {timeout} s", stderr_tail=peer.stderr_tail()
            ) from None
        except JsPeerError:
            await peer._kill()  # stderr is complete once the process is reaped
            raise JsPeerError(
                f"js peer failed to start ({peer._closed_reason})", stderr_tail=peer.stderr_tail()
            ) from None
        except BaseException:
            await peer._kill()
            raise
        peer.ready = ready
        peer.peer_id = ready["peerId"]
        peer.addrs = list(ready["addrs"])
        return peer

    async def stop(self, timeout: float = 10.0) -> None:
        """Ask the peer to stop, wait for it to exit, kill it if it does not. Idempotent;
        always reaps the process and the reader tasks."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._proc.returncode is None and self._closed_reason is None:
                with contextlib.suppress(Exception):
                    await self._send({"id": next(self._ids), "cmd": "stop"})
                with contextlib.suppress(Exception):
                    if self._proc.stdin is not None:
                        self._proc.stdin.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), timeout)
        finally:
            await self._kill()

    async def _kill(self) -> None:
        """Kill (if still running) and reap the process, then finish the reader tasks."""
        self._stopped = True
        proc = self._proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10.0)
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        # the readers end at EOF once the process is gone; cancel as a last resort
        for task in (self._stdout_task, self._stderr_task):
            if not task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(task), 5.0)
                except (TimeoutError, asyncio.CancelledError):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                except Exception:
                    pass
        self._fail_all(self._closed_reason or "js peer stopped")

    async def __aenter__(self) -> JsPeer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def addr(self) -> str:
        """The first listen address (with /p2p/<peer id>)."""
        return self.addrs[0]

    def stderr_tail(self, lines: int = _STDERR_TAIL) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    # ------------------------------------------------------------------ commands

    async def command(self, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send one command and return its response (without ``id``/``ok``).

        Raises JsPeerError if the peer answers ``ok: false``, dies, or does not answer within
        ``timeout`` seconds. Unless given, ``timeoutMs`` is passed to the peer slightly below
        ``timeout`` so that js gives up (and says why) before we do.
        """
        if self._closed_reason is not None or self._stopped:
            raise JsPeerError(
                f"js peer is not running ({self._closed_reason or 'stopped'}); cannot send {cmd!r}",
                stderr_tail=self.stderr_tail(),
            )
        cid = next(self._ids)
        msg: dict[str, Any] = {"id": cid, "cmd": cmd}
        if "timeoutMs" not in args and timeout > 2:
            args["timeoutMs"] = int((timeout - 1) * 1000)
        msg.update(args)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            await self._send(msg)
            try:
                resp = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                raise JsPeerError(
                    f"js peer did not answer {cmd!r} within {timeout} s",
                    code="DriverTimeout",
                    stderr_tail=self.stderr_tail(),
                ) from None
        finally:
            self._pending.pop(cid, None)
            if not fut.done():
                fut.cancel()
        if not resp.get("ok"):
            raise JsPeerError(
                f"js peer command {cmd!r} failed: {resp.get('error')}",
                code=resp.get("code"),
                stderr_tail=self.stderr_tail(),
            )
        return {k: v for k, v in resp.items() if k not in ("id", "ok")}

    async def _send(self, msg: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            raise JsPeerError("js peer stdin is closed", stderr_tail=self.stderr_tail())
        data = (json.dumps(msg) + "\n").encode()
        async with self._write_lock:
            try:
                stdin.write(data)
                await stdin.drain()
            except (ConnectionError, BrokenPipeError) as exc:
                raise JsPeerError(
                    f"cannot write to js peer: {exc!r}", stderr_tail=self.stderr_tail()
                ) from None

    # ------------------------------------------------------------------ events

    async def next_event(self, type: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Return the next event (of ``type``, if given). Events of other types seen while
        waiting are kept and returned by later calls, in order."""
        for i, ev in enumerate(self._stashed):
            if type is None or ev.get("event") == type:
                return self._stashed.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise JsPeerError(
                    f"no {type or 'any'!s} event from js peer within {timeout} s",
                    code="DriverTimeout",
                    stderr_tail=self.stderr_tail(),
                )
            if self._events.empty() and self._closed_reason is not None:
                raise JsPeerError(
                    f"js peer ended ({self._closed_reason}) while waiting for {type or 'an'} event",
                    stderr_tail=self.stderr_tail(),
                )
            try:
                ev = await asyncio.wait_for(self._events.get(), min(remaining, 0.5))
            except TimeoutError:
                continue
            if type is None or ev.get("event") == type:
                return ev
            self._stashed.append(ev)

    def drain_events(self) -> list[dict[str, Any]]:
        """All events received so far and not yet consumed, oldest first."""
        out = list(self._stashed)
        self._stashed.clear()
        while not self._events.empty():
            out.append(self._events.get_nowait())
        return out

    # ------------------------------------------------------------------ readers

    async def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        reason = "js peer closed its stdout"
        try:
            while True:
                try:
                    line = await self._proc.stdout.readline()
                except ValueError:  # line longer than the limit; it was discarded
                    self._stderr.append("[driver] dropped an over-long stdout line from js peer")
                    continue
                if not line:
                    break
                text = line.decode("utf-8", "replace").strip()
                if not text:
                    continue
                try:
                    msg = json.loads(text)
                except json.JSONDecodeError:
                    self._stderr.append(f"[non-JSON on stdout] {text[:500]}")
                    continue
                if not isinstance(msg, dict):
                    self._stderr.append(f"[non-object on stdout] {text[:500]}")
                    continue
                self._dispatch(msg)
        finally:
            rc = await self._wait_rc(2.0)
            if rc is not None:
                reason = f"js peer exited with code {rc}"
            self._closed_reason = reason
            self._fail_all(reason)

    async def _wait_rc(self, timeout: float) -> int | None:
        with contextlib.suppress(Exception):
            return await asyncio.wait_for(self._proc.wait(), timeout)
        return self._proc.returncode

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "event" in msg:
            if msg["event"] == "ready" and not self._ready_fut.done():
                self._ready_fut.set_result(msg)
            if self._events.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._events.get_nowait()  # drop the oldest rather than block the reader
            self._events.put_nowait(msg)
            return
        cid = msg.get("id")
        fut = self._pending.get(cid) if isinstance(cid, int) else None
        if fut is not None and not fut.done():
            fut.set_result(msg)
        elif cid is None and not msg.get("ok", True):
            self._stderr.append(f"[uncorrelated error from js peer] {msg.get('error')}")

    def _fail_all(self, reason: str) -> None:
        err = JsPeerError(reason, stderr_tail=self.stderr_tail())
        if not self._ready_fut.done():
            self._ready_fut.set_exception(err)
            self._ready_fut.exception()  # mark retrieved
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(JsPeerError(reason, stderr_tail=self.stderr_tail()))
                fut.exception()

    async def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        while True:
            try:
                line = await self._proc.stderr.readline()
            except ValueError:
                continue
            if not line:
                return
            self._stderr.append(line.decode("utf-8", "replace").rstrip("\n"))


#: The type of the ``js_peer_factory`` fixture: ``await factory(**JsPeer.start kwargs)``.
JsPeerFactory = Callable[..., Awaitable[JsPeer]]
