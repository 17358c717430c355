"""The Python SDK of ``p2p-node``: :class:`P2PNode` spawns and manages the executable, and
:class:`Agent` is an application's handle on its node, over the node's gRPC interface -- the
shape of the original design::

    node = P2PNode("alice", grpc_port, private_key)    # the node process, serving gRPC
    await node.start()
    agent = Agent("alice", p2p_port, private_key)      # joins the network through it
    await agent.start()
    await agent.subscribe("news")
    async for message in agent.messages():
        print(message.from_eth, message.data)

``P2PNode`` can also be used on its own (it joins at start unless it was given a ``grpc_port``
for an :class:`Agent` to use)::

    async with P2PNode("alice", bootstrap_peers=[...]) as node:
        await node.send("0x1234...", {"hello": "world"})
        async for event in node.events():
            ...

With ``interface="json"`` it drives the node through its JSON lines instead of gRPC (docs/cli.md);
the calls and events are the same dicts either way. Every call raises :class:`P2PNodeError`
with the contract's ``code`` (docs/cli.md) on failure; when the process dies, pending calls fail
with code ``PROCESS_EXITED`` and event iterators end. :meth:`P2PNode.stop` always reaps the
process (shutdown, then SIGTERM, then SIGKILL).

This module imports nothing of the network stack: an application that only drives nodes stays
light.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from p2pnet.eventbus import EventBus, EventStream
from p2pnet.rpc.errors import PROCESS_EXITED, TIMEOUT, UNAVAILABLE, P2PNodeError

if TYPE_CHECKING:
    from p2pnet.rpc.client import AgentNodeClient

log = logging.getLogger("p2pnet.sdk")

_STDOUT_LIMIT = 16 * 1024 * 1024  # longest stdout line accepted (a message carries <= 1 MiB)
_STDERR_KEEP = 100  # stderr lines kept for error messages
_EVENT_QUEUE_MAX = 10_000  # events kept per iterator; the oldest are dropped beyond
_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

Event = dict[str, Any]
T = TypeVar("T")
INTERFACES = ("grpc", "json")

#: P2PNodes started in this process, by agent name: where an Agent finds its node (joined,
#: or waiting for an Agent to join).
_started_nodes: dict[str, P2PNode] = {}
_waiting_nodes: dict[str, P2PNode] = {}


def default_command() -> list[str]:
    """How the SDK starts p2p-node by default: this interpreter, ``-m p2pnet.cli.p2p_node``."""
    return [sys.executable, "-m", "p2pnet.cli.p2p_node"]


class EventIterator(EventStream[Event]):
    """Events of one node, from the moment the iterator was made; ends when the node stops.

    ``async for event in it``, ``await it.next(timeout)`` or ``await it.wait_for("message")``.
    """

    async def wait_for(
        self,
        type: str | None = None,
        predicate: Callable[[Event], bool] | None = None,
        timeout: float = 30.0,
    ) -> Event:
        """The next event of ``type`` for which ``predicate`` holds (others are skipped)."""

        def wanted(event: Event) -> bool:
            if type is not None and event.get("type") != type:
                return False
            return predicate is None or predicate(event)

        try:
            return await self.first(wanted, timeout)
        except StopAsyncIteration:
            raise P2PNodeError(
                PROCESS_EXITED, f"node ended before a {type or 'matching'} event"
            ) from None


class P2PNode:
    """One ``p2p-node`` process. ``await start()`` (or ``async with``), then call commands."""

    def __init__(
        self,
        agent_name: str = "",
        grpc_port: int | None = None,
        private_key: str | None = None,
        bootstrap_peers: Sequence[str] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        bootstrap: bool = False,
        executable: str | Sequence[str] | None = None,
        log_level: str = "warning",
        *,
        port: int = 0,
        interface: str = "grpc",
        join: bool | None = None,
        grpc_host: str = "127.0.0.1",
        grpc_token: str | None = None,
        host: str = "127.0.0.1",
        include_logs: bool = False,
        start_timeout: float = 30.0,
        command_timeout: float = 90.0,
        stop_timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        retry_bootstrap: bool = False,
    ) -> None:
        """
        ``grpc_port``: the node's gRPC port (None or 0: a free one). ``port``: its P2P (TCP)
        port when it joins the network itself. ``join``: whether :meth:`start` also joins the
        network (``connect``); by default it does unless ``grpc_port`` was given, the original
        design's form in which an :class:`Agent` joins through the node.
        ``bootstrap_peers``: multiaddrs with ``/p2p/``; None leaves the choice to p2p-node (env
        file, then the default list); ``[]`` means none. ``bootstrap``: run as a bootstrap node
        (DHT server). ``interface``: ``"grpc"`` (default) or ``"json"`` (JSON lines on the
        process's stdin/stdout). ``grpc_token``: required on every gRPC call (passed to the
        process in its environment, never on the command line). ``executable``: a program path,
        or a full command as a list; default :func:`default_command`. ``include_logs``:
        :meth:`events` also yields ``log`` events (they always go to the ``p2pnet.sdk``
        logger). ``private_key`` travels in the ``connect`` command, never on the command line.
        ``retry_bootstrap``: joining succeeds even when no bootstrap peer answers yet; the node
        keeps trying with backoff and joins by itself (``bootstrap_failed`` /
        ``bootstrap_succeeded`` events).
        """
        if log_level not in _LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
        if interface not in INTERFACES:
            raise ValueError(f"interface must be one of {', '.join(INTERFACES)}")
        if grpc_port is not None and not 0 <= grpc_port <= 65535:
            raise ValueError(f"grpc_port out of range: {grpc_port}")
        self.name = agent_name
        self.grpc_port = grpc_port or 0
        self.port = port
        self.private_key = private_key
        self.bootstrap_peers = None if bootstrap_peers is None else list(bootstrap_peers)
        self.env_file = env_file
        self.bootstrap = bootstrap
        self.executable = executable
        self.log_level = log_level
        self.interface = interface
        self.join = (grpc_port is None or interface == "json") if join is None else join
        self.grpc_host = grpc_host
        self.grpc_token = grpc_token
        self.host = host
        self.include_logs = include_logs
        self.start_timeout = start_timeout
        self.command_timeout = command_timeout
        self.stop_timeout = stop_timeout
        self.env = dict(env) if env is not None else None
        self.extra_args = list(extra_args)
        self.retry_bootstrap = retry_bootstrap

        self.ready: Event = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Queue[Event | None]] = {}
        self._events: EventBus[Event] = EventBus(_EVENT_QUEUE_MAX)
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_KEEP)
        self._write_lock = asyncio.Lock()
        self._readers: list[asyncio.Task[None]] = []
        self._exited = False
        self._stopping = False
        self._last_error: Event | None = None
        self._log = logging.getLogger(
            f"p2pnet.sdk.{agent_name}" if agent_name else "p2pnet.sdk.node"
        )
        #: The gRPC client of the running node (interface "grpc").
        self.client: AgentNodeClient | None = None
        self._first_line: asyncio.Future[Event] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._pump_ready: asyncio.Event = asyncio.Event()

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the node's gRPC service (once started)."""
        host = f"[{self.grpc_host}]" if ":" in self.grpc_host else self.grpc_host
        return f"{host}:{self.grpc_port}"

    # -- what the node is ----------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return str(self.ready.get("peerId", ""))

    @property
    def eth_address(self) -> str:
        return str(self.ready.get("ethAddress", ""))

    @property
    def addrs(self) -> list[str]:
        return list(self.ready.get("addrs", []))

    @property
    def mode(self) -> str:
        return str(self.ready.get("mode", ""))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._exited and self._proc.returncode is None

    def command(self) -> list[str]:
        """The command line that starts the process."""
        if self.executable is None:
            cmd = default_command()
        elif isinstance(self.executable, str):
            cmd = [self.executable]
        else:
            cmd = list(self.executable)
        if self.name:
            cmd += ["--name", self.name]
        if self.env_file is not None:
            cmd += ["--env-file", os.fspath(self.env_file)]
        if self.bootstrap:
            cmd.append("--bootstrap")
        if self.host != "127.0.0.1":
            cmd += ["--host", self.host]
        cmd += ["--log-level", self.log_level, *self.extra_args]
        if self.interface == "grpc":
            # Commands and events over gRPC; stdin stays a pipe so the node ends with us.
            cmd += ["--grpc-port", str(self.grpc_port), "--no-json-lines", "--exit-on-eof"]
            if self.grpc_host != "127.0.0.1":
                cmd += ["--grpc-host", self.grpc_host]
        return cmd

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Event:
        """Spawn p2p-node and wait until it answers; join the network if :attr:`join`.

        Returns the ``ready`` event when it joined, else the node's info (``connected``
        False). Raises :class:`P2PNodeError` (``PORT_IN_USE``, ``DIAL_FAILED``,
        ``INVALID_FIELDS``, ``PROCESS_EXITED``, ``TIMEOUT``, ...); the process is reaped before
        it raises.
        """
        if self._proc is not None:
            raise RuntimeError("this P2PNode was already started")
        proc_env = dict(os.environ)
        if self.env:
            proc_env.update(self.env)
        if self.grpc_token:
            proc_env["GRPC_TOKEN"] = self.grpc_token
        self._first_line = asyncio.get_running_loop().create_future()
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=proc_env,
            limit=_STDOUT_LIMIT,
            start_new_session=True,  # a Ctrl-C at the terminal reaches only us; we stop it
        )
        self._readers = [
            asyncio.create_task(self._read_stdout(), name=f"p2p-node {self.name} stdout"),
            asyncio.create_task(self._read_stderr(), name=f"p2p-node {self.name} stderr"),
        ]
        try:
            if self.interface == "grpc":
                await self._start_grpc()
            if self.join:
                return await self.connect()
            self.ready = await self.get_info()
            if self.name:
                _waiting_nodes[self.name] = self
            return self.ready
        except P2PNodeError as exc:
            # A node that answered can shut down cleanly; one that did not is terminated.
            await self._stop(graceful=exc.code not in (TIMEOUT, UNAVAILABLE))
            raise
        except BaseException:
            await self._stop(graceful=False)
            raise

    async def _start_grpc(self) -> None:
        """Learn the gRPC port from the node's first line, then open the client and the event
        stream (before anything happens on the node, so no event is missed)."""
        from p2pnet.rpc.client import AgentNodeClient

        assert self._first_line is not None
        try:
            async with asyncio.timeout(self.start_timeout):
                first = await asyncio.shield(self._first_line)
        except TimeoutError:
            raise P2PNodeError(
                TIMEOUT, f"p2p-node did not start within {self.start_timeout:.1f} s"
            ) from None
        if first.get("type") == "error":
            await self._wait_exit(2.0)
            raise P2PNodeError(str(first.get("code")), str(first.get("message")), first)
        if first.get("type") == "exit":
            await self._wait_exit(2.0)
            raise self._exit_error()
        if first.get("type") != "grpc_listening" or not isinstance(first.get("grpcPort"), int):
            raise P2PNodeError(
                UNAVAILABLE,
                f"p2p-node reported no gRPC port (its first line: {json.dumps(first)[:200]}); "
                "does this executable serve gRPC? (interface='json' drives JSON lines only)",
            )
        self.grpc_port = int(first["grpcPort"])
        self.client = AgentNodeClient(
            self.grpc_target, token=self.grpc_token, timeout=self.command_timeout
        )
        self._pump = asyncio.create_task(self._pump_events(), name=f"p2p-node {self.name} events")
        try:
            async with asyncio.timeout(self.start_timeout):
                await self._pump_ready.wait()
        except TimeoutError:
            raise P2PNodeError(TIMEOUT, "the node's event stream did not open") from None
        if self._pump.done():
            await self._pump  # raises what failed

    async def _pump_events(self) -> None:
        from p2pnet.rpc import convert

        client = self.client
        assert client is not None
        try:
            await client.get_info(timeout=self.start_timeout, wait=True)
            stream = await client.events()
        finally:
            self._pump_ready.set()
        try:
            async for event in stream:
                self._dispatch(convert.event_dict(event))
        except P2PNodeError as exc:
            if not self._stopping:
                self._log.debug("event stream ended: %s", exc)
        finally:
            await stream.aclose()
            await self._wait_exit(2.0)
            self._finish(None)

    async def _wait_exit(self, timeout: float) -> None:
        if self._proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout)

    async def stop(self) -> int | None:
        """Shut the node down (shutdown command and EOF, then SIGTERM, then SIGKILL) and reap it.

        Idempotent; returns the exit status. Pending calls fail, event iterators end.
        """
        return await self._stop(graceful=True)

    async def _stop(self, graceful: bool) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        self._stopping = True
        for registry in (_started_nodes, _waiting_nodes):
            if registry.get(self.name) is self:
                del registry[self.name]
        try:
            if proc.returncode is None:
                if graceful:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            if self.client is not None:
                                await self.client.shutdown(timeout=1.0)
                            else:
                                # With an id nobody waits for: not passed on to events().
                                await self._write({"type": "shutdown", "id": next(self._ids)})
                await self._close_stdin()
                await self._wait_or_escalate(proc, self.stop_timeout if graceful else 0.0)
        finally:
            if proc.returncode is None:  # cancelled on the way: never leave it running
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            elif self._readers:  # let the readers see EOF, so the pipes close cleanly
                await asyncio.wait(self._readers, timeout=2.0)
            tasks = [*self._readers, *([self._pump] if self._pump is not None else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._readers = []
            self._pump = None
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await self.client.close()
            self._finish(f"p2p-node {self.name} was stopped")
        return proc.returncode

    async def _wait_or_escalate(self, proc: asyncio.subprocess.Process, grace: float) -> None:
        if grace > 0:
            try:
                await asyncio.wait_for(proc.wait(), grace)
                return
            except TimeoutError:
                self._log.warning("p2p-node did not stop within %.1f s: terminating", grace)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), min(3.0, max(1.0, grace)))
            return
        except TimeoutError:
            self._log.warning("p2p-node ignored SIGTERM: killing it")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.wait_for(proc.wait(), 5.0)

    async def _close_stdin(self) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(Exception):
            proc.stdin.close()
            await asyncio.wait_for(proc.stdin.wait_closed(), 1.0)

    async def __aenter__(self) -> P2PNode:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- commands --------------------------------------------------------------------------

    async def connect(
        self,
        port: int | None = None,
        bootstrap_peers: Sequence[str] | None = None,
        private_key: str | None = None,
        name: str | None = None,
    ) -> Event:
        """Join the network (the ``connect`` command); returns the ``ready`` event. Without
        arguments, with the node's own settings (``port``, ``bootstrap_peers``, ...)."""
        port = self.port if port is None else port
        peers = self.bootstrap_peers if bootstrap_peers is None else list(bootstrap_peers)
        key = private_key or self.private_key
        name = self.name if name is None else name
        if self.client is not None:
            from p2pnet.rpc import convert

            info = await self._grpc(
                self.client.connect(
                    port,
                    peers,
                    key,
                    name,
                    timeout=self.start_timeout,
                    retry_bootstrap=self.retry_bootstrap,
                )
            )
            ready = {"type": "ready", **convert.info_dict(info)}
            ready.pop("connected", None)
        else:
            fields: dict[str, Any] = {"port": port}
            if peers is not None:
                fields["bootstrapPeers"] = peers
            if key:
                fields["privateKey"] = key
            if name and name != self.name:
                fields["name"] = name
            if self.retry_bootstrap:
                fields["retryBootstrap"] = True
            ready = (await self._request("connect", fields, {"ready"}, self.start_timeout))[-1]
        self.ready = ready
        if self.name:
            _started_nodes[self.name] = self
        return ready

    async def send(self, peer_or_eth: str, data: Any) -> str:
        """Send ``data`` (any JSON value) to one agent; returns the recipient's PeerID."""
        if self.client is not None:
            return await self._grpc(self.client.send(peer_or_eth, data))
        answer = await self._request("send", {"peerId": peer_or_eth, "data": data}, {"sent"})
        return str(answer[-1].get("to", ""))

    async def broadcast(self, data: Any, topic: str = "agent-messages") -> None:
        """Publish ``data`` on a pubsub topic."""
        if self.client is not None:
            await self._grpc(self.client.publish(topic, data))
            return
        await self._request("send", {"topic": topic, "data": data}, {"sent"})

    async def subscribe(self, topic: str) -> None:
        """Join ``topic``: its messages arrive as ``message`` events."""
        if self.client is not None:
            await self._grpc(self.client.subscribe(topic))
            return
        await self._request("subscribe", {"topic": topic}, {"subscribed"})

    async def unsubscribe(self, topic: str) -> None:
        """Leave ``topic`` (gRPC only)."""
        await self._grpc(self._need_client().unsubscribe(topic))

    async def discover(self, topic: str) -> list[Event]:
        """The agents on ``topic``: ``peer_discovered`` events (peerId, ethAddress, addrs, ...)."""
        if self.client is not None:
            from p2pnet.rpc import convert

            return [convert.agent_dict(a) for a in await self._grpc(self.client.discover(topic))]
        answer = await self._request("discover", {"topic": topic}, {"discover_done"})
        return [e for e in answer if e.get("type") == "peer_discovered"]

    async def status(self) -> Event:
        """The node's ``node-status`` event (peers, mesh sizes, message counters, ...)."""
        if self.client is not None:
            return {"type": "node-status", **await self.get_info()}
        return (await self._request("status", {}, {"node-status"}))[-1]

    async def get_info(self) -> Event:
        """What the node is (``connected``, ``peerId``, ... as in ``node-status``)."""
        if self.client is None:
            status = await self.status()
            status.pop("type", None)
            return status
        from p2pnet.rpc import convert

        return convert.info_dict(await self._grpc(self.client.get_info()))

    async def list_peers(self) -> list[Event]:
        """The peers the node is connected to (gRPC only): peerId, ethAddress, addrs,
        direction, name."""
        peers = await self._grpc(self._need_client().list_peers())
        return [
            {
                "peerId": p.peer_id,
                "ethAddress": p.eth_address or None,
                "addrs": list(p.addrs),
                "direction": p.direction,
                "name": p.name,
            }
            for p in peers
        ]

    async def disconnect(self, peer_id: str = "") -> None:
        """Close the connections to one peer; without one, leave the network (gRPC only)."""
        await self._grpc(self._need_client().disconnect(peer_id))

    def _need_client(self) -> AgentNodeClient:
        if self.client is None:
            if self._proc is None or self._exited:
                raise P2PNodeError(PROCESS_EXITED, "the node is not started")
            raise P2PNodeError("UNKNOWN_COMMAND", "this call needs interface='grpc'")
        return self.client

    async def _grpc(self, call: Awaitable[T]) -> T:
        """A gRPC call; a node that went away is PROCESS_EXITED (with its exit status)."""
        if self._exited:
            if isinstance(call, Coroutine):
                call.close()
            raise self._exit_error()
        try:
            return await call
        except P2PNodeError as exc:
            if exc.code in (UNAVAILABLE, "CANCELLED") and exc.status is not None:
                await self._wait_exit(2.0)
                if self.returncode is not None or self._stopping:
                    raise self._exit_error() from None
            raise

    def events(self) -> EventIterator:
        """Events not answering a call (``message``, ``peer_discovered``; ``log`` with
        ``include_logs``), from now on. Ends when the process exits."""
        return EventIterator(self._events)

    async def _request(
        self,
        ctype: str,
        fields: Mapping[str, Any],
        final: set[str],
        timeout: float | None = None,
    ) -> list[Event]:
        """Send a command; collect its events up to one of ``final`` types (raise on error)."""
        if self._proc is None:
            raise P2PNodeError(PROCESS_EXITED, "the node is not started")
        if self._exited:
            raise self._exit_error()
        cid = next(self._ids)
        answers: asyncio.Queue[Event | None] = asyncio.Queue()
        self._pending[cid] = answers
        collected: list[Event] = []
        limit = self.command_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                await self._write({"type": ctype, "id": cid, **fields})
                while True:
                    event = await answers.get()
                    if event is None:
                        raise self._exit_error()
                    if event.get("type") == "error":
                        raise P2PNodeError(
                            str(event.get("code", "INTERNAL")), str(event.get("message", "")), event
                        )
                    collected.append(event)
                    if event.get("type") in final:
                        return collected
        except TimeoutError:
            raise P2PNodeError(TIMEOUT, f"no answer to {ctype!r} within {limit:.1f} s") from None
        finally:
            self._pending.pop(cid, None)

    async def _write(self, obj: Mapping[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise P2PNodeError(PROCESS_EXITED, "the node is not started")
        line = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        async with self._write_lock:
            try:
                proc.stdin.write(line)
                await proc.stdin.drain()
            except (ConnectionError, RuntimeError, OSError) as exc:
                raise self._exit_error(f"cannot write to p2p-node: {exc}") from None

    # -- reading ---------------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                try:
                    line = await proc.stdout.readline()
                except ValueError:  # a line beyond the limit: skip it
                    self._log.warning("p2p-node wrote a line longer than %d bytes", _STDOUT_LIMIT)
                    continue
                if not line:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    self._log.warning("p2p-node wrote a line that is not JSON: %r", line[:200])
                    continue
                if isinstance(event, dict):
                    if self._first_line is not None and not self._first_line.done():
                        self._first_line.set_result(event)
                        if event.get("type") == "grpc_listening":
                            continue
                    self._dispatch(event)
        finally:
            if self._first_line is not None and not self._first_line.done():
                self._first_line.set_result({"type": "exit"})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(proc.wait()), 2.0)
            self._finish(None)

    async def _read_stderr(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        while True:
            try:
                line = await proc.stderr.readline()
            except ValueError:
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            self._stderr.append(text)
            self._log.debug("stderr: %s", text)

    def _dispatch(self, event: Event) -> None:
        etype = event.get("type")
        cid = event.get("id")
        if isinstance(cid, int) and cid in self._pending:
            self._pending[cid].put_nowait(event)
            return
        if etype == "error":
            self._last_error = event
            self._log.warning("p2p-node error: %s: %s", event.get("code"), event.get("message"))
        if etype == "log":
            level = _LOG_LEVELS.get(str(event.get("level")), logging.INFO)
            self._log.log(level, "%s: %s", event.get("namespace"), event.get("message"))
            if not self.include_logs:
                return
        if etype == "shutdown" and cid is not None:
            return
        if etype == "ready" and self.interface == "grpc":
            return  # the answer of a Connect (made here or by an Agent), as over JSON lines
        self._events.emit(event)

    def _finish(self, reason: str | None) -> None:
        """The process is gone (or going): fail pending calls, end iterators."""
        if self._exited:
            return
        self._exited = True
        if reason is None:
            self._log.debug("p2p-node exited with status %s", self.returncode)
        for answers in self._pending.values():
            answers.put_nowait(None)
        self._events.close()

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def _exit_error(self, message: str | None = None) -> P2PNodeError:
        if message is None:
            if self._stopping:
                message = "the node was stopped"
            else:
                message = f"p2p-node exited (status {self.returncode})"
        last = self._last_error
        if last is not None:
            message += f"; its last error: {last.get('code')}: {last.get('message')}"
            if self.returncode == 2 and not self._stopping:  # a startup failure (bad env file)
                return P2PNodeError(str(last.get("code", PROCESS_EXITED)), message, last)
        tail = self.stderr_tail()
        if tail:
            message += "\n--- p2p-node stderr (tail) ---\n" + tail
        return P2PNodeError(PROCESS_EXITED, message)


@dataclass(frozen=True)
class Message:
    """A message that reached an :class:`Agent`."""

    from_peer: str
    from_eth: str | None
    data: Any
    topic: str | None  # None for a direct message
    direct: bool
    seq: int
    #: Direct messages: the remote address of the connection that carried it
    #: (``<relay>/p2p-circuit/p2p/<sender>`` through a relay); None for topic messages.
    via: str | None = None
    #: With a registry policy, what the on-chain registry says of the sender (``registered``,
    #: ``agentId``, ``agentRegistry``, ``agentName``/``services``: docs/cli.md); else None.
    registry: dict[str, Any] | None = None


class Agent:
    """An application's handle on its node: the original design's ``Agent(agentName, p2pPort,
    privateKey)``. :meth:`start` reaches the node's gRPC service and joins the network through
    it, listening on ``p2p_port`` with the identity ``private_key``.

    The node is ``node`` (a :class:`P2PNode`), else the one at ``grpc_target``/``grpc_port``,
    else the :class:`P2PNode` of the same ``agent_name`` started in this process.
    """

    def __init__(
        self,
        agent_name: str,
        p2p_port: int = 0,
        private_key: str | None = None,
        *,
        node: P2PNode | None = None,
        grpc_target: str | None = None,
        grpc_port: int | None = None,
        grpc_token: str | None = None,
        bootstrap_peers: Sequence[str] | None = None,
        timeout: float = 90.0,
    ) -> None:
        self.agent_name = agent_name
        self.p2p_port = p2p_port
        self.private_key = private_key
        self.bootstrap_peers = None if bootstrap_peers is None else list(bootstrap_peers)
        self._node = node
        self._target = grpc_target or (f"127.0.0.1:{grpc_port}" if grpc_port else None)
        self._token = grpc_token
        self.timeout = timeout
        self.client: AgentNodeClient | None = None
        self.info: Event = {}
        self._messages: EventBus[Message | Lagged] = EventBus(_EVENT_QUEUE_MAX)
        self._pump: asyncio.Task[None] | None = None
        self._handler_tasks: list[asyncio.Task[None]] = []

    @property
    def peer_id(self) -> str:
        return str(self.info.get("peerId", ""))

    @property
    def eth_address(self) -> str:
        return str(self.info.get("ethAddress", ""))

    @property
    def addrs(self) -> list[str]:
        return list(self.info.get("addrs", []))

    def _find_node(self) -> tuple[str, str | None]:
        node = self._node
        if node is None and self._target is None:
            node = _started_nodes.get(self.agent_name) or _waiting_nodes.get(self.agent_name)
        if node is not None:
            # What the agent leaves open, its P2PNode's settings fill in.
            if self.private_key is None:
                self.private_key = node.private_key
            if self.bootstrap_peers is None:
                self.bootstrap_peers = node.bootstrap_peers
            if node.client is None:
                raise P2PNodeError(
                    PROCESS_EXITED, f"the node of {self.agent_name!r} is not started (with gRPC)"
                )
            self._node = node
            return node.grpc_target, node.grpc_token
        if self._target is None:
            raise P2PNodeError(
                UNAVAILABLE,
                f"no node for agent {self.agent_name!r}: start P2PNode({self.agent_name!r}, ...) "
                "first, or pass node=, grpc_target= or grpc_port=",
            )
        return self._target, self._token

    async def start(self) -> Event:
        """Reach the node and join the network (if the node has not joined yet); returns the
        node's info (``peerId``, ``ethAddress``, ``addrs``, ...)."""
        from p2pnet.rpc import convert
        from p2pnet.rpc.client import AgentNodeClient

        target, token = self._find_node()
        self.client = AgentNodeClient(target, token=token or self._token, timeout=self.timeout)
        try:
            info = convert.info_dict(await self.client.get_info(wait=False))
            if not info["connected"]:
                info = convert.info_dict(
                    await self.client.connect(
                        self.p2p_port, self.bootstrap_peers, self.private_key, self.agent_name
                    )
                )
            elif self.p2p_port and not any(
                f"/tcp/{self.p2p_port}/" in a for a in info.get("addrs", [])
            ):
                raise P2PNodeError(
                    "ALREADY_CONNECTED",
                    f"the node already joined the network on other ports: {info.get('addrs')}",
                )
            # One event stream for the agent, registered on the node before start() returns:
            # messages() iterators made from now on miss nothing.
            stream = await self.client.events()
        except BaseException:
            await self.client.close()
            self.client = None
            raise
        self.info = info
        self._pump = asyncio.create_task(self._pump_messages(stream), name="agent events")
        return info

    async def _pump_messages(self, stream: Any) -> None:
        from p2pnet.rpc import convert

        try:
            async for event in stream:
                kind = event.WhichOneof("kind")
                if kind == "message":
                    m = event.message
                    data = json.loads(m.data_json) if m.data_json else None
                    self._messages.emit(
                        Message(
                            m.from_peer_id,
                            m.from_eth or None,
                            data,
                            m.topic or None,
                            m.direct,
                            event.seq,
                            m.via or None,
                            convert.registration_dict(m.registry)
                            if m.HasField("registry")
                            else None,
                        )
                    )
                elif kind == "lagged":
                    self._messages.emit(Lagged(event.lagged.missed, event.seq))
        except P2PNodeError as exc:
            log.debug("%s: the node's event stream ended: %s", self.agent_name, exc)
        finally:
            await stream.aclose()
            self._messages.close()

    async def stop(self) -> None:
        """Let go of the node (the node itself keeps running: stop it with its P2PNode).
        Message iterators end."""
        tasks = [*self._handler_tasks, *([self._pump] if self._pump is not None else [])]
        self._handler_tasks, self._pump = [], None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._messages.close()
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _client(self) -> AgentNodeClient:
        if self.client is None:
            raise P2PNodeError(PROCESS_EXITED, "the agent is not started")
        return self.client

    async def _call(self, call: Awaitable[T]) -> T:
        """A call to the node; a node that went away is PROCESS_EXITED (with its exit status,
        when it is our P2PNode) or UNAVAILABLE naming where it was."""
        try:
            return await call
        except P2PNodeError as exc:
            if exc.code not in (UNAVAILABLE, "CANCELLED"):
                raise
            node = self._node
            if node is not None:
                return await node._grpc(_raise(exc))  # PROCESS_EXITED if the process is gone
            target = self.client.target if self.client is not None else "?"
            raise P2PNodeError(
                UNAVAILABLE,
                f"the node of {self.agent_name!r} at {target} is unreachable: {exc.message}",
                status=exc.status,
            ) from None

    async def send(self, to: str, data: Any) -> str:
        """A direct message to one agent (PeerID or ETH address); returns its PeerID once it
        acknowledged."""
        return await self._call(self._client().send(to, data))

    async def broadcast(self, data: Any, topic: str = "agent-messages") -> None:
        await self._call(self._client().publish(topic, data))

    async def subscribe(self, topic: str) -> None:
        await self._call(self._client().subscribe(topic))

    async def unsubscribe(self, topic: str) -> None:
        await self._call(self._client().unsubscribe(topic))

    async def discover(self, topic: str) -> list[Event]:
        from p2pnet.rpc import convert

        return [convert.agent_dict(a) for a in await self._call(self._client().discover(topic))]

    async def peers(self) -> list[str]:
        return [p.peer_id for p in await self._call(self._client().list_peers())]

    def messages(self, topic: str | None = None) -> MessageIterator:
        """The messages that reach the agent from the moment of the call (direct ones and
        those of its topics), or those of one ``topic``; ``async for`` or ``await .next()``.

        Ends when the agent stops or the node goes away. Raises P2PNodeError ``LAGGED`` if
        messages were lost because the application fell behind (the node keeps at most
        ``--event-backlog`` events for the agent, the agent 10,000 per iterator).
        """
        self._client()

        def wanted(item: Message | Lagged) -> bool:
            return isinstance(item, Lagged) or topic is None or item.topic == topic

        return MessageIterator(self._messages, wanted)

    def on_message(
        self, handler: Callable[[Message], Awaitable[None]]
    ) -> Callable[[Message], Awaitable[None]]:
        """Call ``await handler(message)`` for each message from now on (usable as a
        decorator); a handler that raises is logged and the next message still comes."""
        messages = self.messages()
        self._handler_tasks.append(
            asyncio.create_task(self._run_handler(handler, messages), name="agent handler")
        )
        return handler

    async def _run_handler(
        self, handler: Callable[[Message], Awaitable[None]], messages: MessageIterator
    ) -> None:
        async for message in messages:
            try:
                await handler(message)
            except Exception:
                log.exception("message handler of %s failed", self.agent_name)


async def _raise(exc: BaseException) -> Any:
    raise exc


@dataclass(frozen=True)
class Lagged:
    """Messages lost before this point (the node's ``lagged`` event)."""

    missed: int
    seq: int


class MessageIterator(EventStream["Message | Lagged"]):
    """An agent's messages, registered from creation (see :meth:`Agent.messages`)."""

    def __init__(
        self, bus: EventBus[Message | Lagged], predicate: Callable[[Message | Lagged], bool]
    ) -> None:
        super().__init__(bus, predicate)

    def __aiter__(self) -> MessageIterator:
        return self

    async def __anext__(self) -> Message:
        item = await super().__anext__()
        if isinstance(item, Lagged):
            raise P2PNodeError("LAGGED", f"{item.missed} events lost: the agent fell behind")
        if self.take_dropped():
            raise P2PNodeError("LAGGED", "messages lost: the application fell behind")
        return item

    async def next(self, timeout: float | None = None) -> Message:
        async with asyncio.timeout(timeout):
            return await self.__anext__()


__all__ = [
    "PROCESS_EXITED",
    "TIMEOUT",
    "UNAVAILABLE",
    "Agent",
    "EventIterator",
    "Message",
    "P2PNode",
    "P2PNodeError",
]
