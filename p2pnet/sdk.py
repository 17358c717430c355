"""A Python client of ``p2p-node``: spawns the executable and drives it through JSON lines.

::

    async with P2PNode("alice", bootstrap_peers=[...]) as node:
        print(node.peer_id, node.eth_address)
        await node.subscribe("news")
        await node.send("0x1234...", {"hello": "world"})
        async for event in node.events():
            if event["type"] == "message":
                print(event["from"], event["data"])

Every call sends one command with a fresh ``id`` and waits for the events that answer it; an
``error`` event becomes a :class:`P2PNodeError` with the contract's ``code`` (docs/cli.md). When
the process dies, pending calls fail with code ``PROCESS_EXITED`` and event iterators end.
:meth:`P2PNode.stop` always reaps the process (shutdown, then SIGTERM, then SIGKILL).

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
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from p2pnet.errors import P2PError
from p2pnet.eventbus import EventBus, EventStream

log = logging.getLogger("p2pnet.sdk")

#: Code of a P2PNodeError when the p2p-node process is gone (not a p2p-node error code).
PROCESS_EXITED = "PROCESS_EXITED"
#: Code of a P2PNodeError when an answer did not come in time (not a p2p-node error code).
TIMEOUT = "TIMEOUT"

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


class P2PNodeError(P2PError):
    """A command failed (``code`` from docs/cli.md), the process died (``PROCESS_EXITED``) or an
    answer did not come in time (``TIMEOUT``). ``event`` is the error event, if there was one."""

    def __init__(self, code: str, message: str, event: Event | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.event = event


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
        name: str = "",
        port: int = 0,
        private_key: str | None = None,
        bootstrap_peers: Sequence[str] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        bootstrap: bool = False,
        executable: str | Sequence[str] | None = None,
        log_level: str = "warning",
        *,
        host: str = "127.0.0.1",
        include_logs: bool = False,
        start_timeout: float = 30.0,
        command_timeout: float = 90.0,
        stop_timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """
        ``bootstrap_peers``: multiaddrs with ``/p2p/``; None leaves the choice to p2p-node (env
        file, then the default list); ``[]`` means none. ``bootstrap``: run as a bootstrap node
        (DHT server). ``executable``: a program path, or a full command as a list; default
        :func:`default_command`. ``include_logs``: :meth:`events` also yields ``log`` events (they
        always go to the ``p2pnet.sdk`` logger). ``private_key`` travels in the ``connect``
        command, never on the command line.
        """
        if log_level not in _LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
        self.name = name
        self.port = port
        self.private_key = private_key
        self.bootstrap_peers = None if bootstrap_peers is None else list(bootstrap_peers)
        self.env_file = env_file
        self.bootstrap = bootstrap
        self.executable = executable
        self.log_level = log_level
        self.host = host
        self.include_logs = include_logs
        self.start_timeout = start_timeout
        self.command_timeout = command_timeout
        self.stop_timeout = stop_timeout
        self.env = dict(env) if env is not None else None
        self.extra_args = list(extra_args)

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
        self._log = logging.getLogger(f"p2pnet.sdk.{name}" if name else "p2pnet.sdk.node")

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
        return cmd

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Event:
        """Spawn p2p-node, connect, and wait for ``ready``; returns the ready event.

        Raises :class:`P2PNodeError` (``PORT_IN_USE``, ``DIAL_FAILED``, ``INVALID_FIELDS``,
        ``PROCESS_EXITED``, ``TIMEOUT``, ...); the process is reaped before it raises.
        """
        if self._proc is not None:
            raise RuntimeError("this P2PNode was already started")
        proc_env = dict(os.environ)
        if self.env:
            proc_env.update(self.env)
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
        fields: dict[str, Any] = {"port": self.port}
        if self.bootstrap_peers is not None:
            fields["bootstrapPeers"] = self.bootstrap_peers
        if self.private_key:
            fields["privateKey"] = self.private_key
        try:
            answer = await self._request("connect", fields, {"ready"}, self.start_timeout)
        except P2PNodeError as exc:
            # A node that answered can shut down cleanly; one that did not is terminated.
            await self._stop(graceful=exc.code != TIMEOUT)
            raise
        except BaseException:
            await self._stop(graceful=False)
            raise
        self.ready = answer[-1]
        return self.ready

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
        try:
            if proc.returncode is None:
                if graceful:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
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
            for task in self._readers:
                task.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            self._readers = []
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

    async def send(self, peer_or_eth: str, data: Any) -> str:
        """Send ``data`` (any JSON value) to one agent; returns the recipient's PeerID."""
        answer = await self._request("send", {"peerId": peer_or_eth, "data": data}, {"sent"})
        return str(answer[-1].get("to", ""))

    async def broadcast(self, data: Any, topic: str = "agent-messages") -> None:
        """Publish ``data`` on a pubsub topic."""
        await self._request("send", {"topic": topic, "data": data}, {"sent"})

    async def subscribe(self, topic: str) -> None:
        """Join ``topic``: its messages arrive as ``message`` events."""
        await self._request("subscribe", {"topic": topic}, {"subscribed"})

    async def discover(self, topic: str) -> list[Event]:
        """The agents on ``topic``: ``peer_discovered`` events (peerId, ethAddress, addrs, ...)."""
        answer = await self._request("discover", {"topic": topic}, {"discover_done"})
        return [e for e in answer if e.get("type") == "peer_discovered"]

    async def status(self) -> Event:
        """The node's ``node-status`` event (peers, mesh sizes, message counters, ...)."""
        return (await self._request("status", {}, {"node-status"}))[-1]

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
                    self._dispatch(event)
        finally:
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


__all__ = ["PROCESS_EXITED", "TIMEOUT", "EventIterator", "P2PNode", "P2PNodeError"]
