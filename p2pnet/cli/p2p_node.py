"""``p2p-node``: one agent node driven by JSON lines on stdin/stdout (see ``docs/cli.md``).

The process keeps a private handle on the real stdout for its JSON events and points file
descriptor 1 (and so ``print``, C extensions, child processes) at stderr, so nothing but JSON
lines ever reaches stdout. One writer thread writes the lines, so they never interleave; a
reader thread feeds stdin lines (at most :data:`MAX_LINE` bytes) to the event loop, where each
command runs in its own task: a slow ``send`` never blocks a ``shutdown``, and the events that
answer one command are written in order.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import math
import os
import queue
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pnet.agent.errors import NotConnected
from p2pnet.config import ConfigError, read_env_file, split_list
from p2pnet.crypto.eth import is_eth_address
from p2pnet.errors import ConnectionClosed, DialError, InvalidPeerID, StreamError
from p2pnet.metrics.server import serve_agent_metrics
from p2pnet.peer.peer_id import PeerID
from p2pnet.tasks import TaskOwner
from p2pnet.wire.json_bounded import loads_bounded

if TYPE_CHECKING:
    from p2pnet.agent.agent import Agent, AgentConfig, AgentDiscovered, AgentEvent

log = logging.getLogger("p2pnet.cli.p2p_node")

#: Longest stdin line (bytes, without the newline); a longer line is an ``INVALID_JSON`` error.
MAX_LINE = 1 << 20
#: Commands handled at once; more wait (and stdin is read no further meanwhile).
MAX_CONCURRENT_COMMANDS = 256
#: Unwritten ``log`` events kept when stdout is slow; beyond this, log events are dropped.
MAX_LOG_BACKLOG = 1000
#: Lines read from stdin but not yet handled.
STDIN_BACKLOG = 64
#: Time limits (seconds) of the commands; a command that takes longer answers an error.
COMMAND_TIMEOUTS = {"connect": 60.0, "send": 60.0, "discover": 60.0, "subscribe": 30.0}
#: Error code when a command runs out of time.
TIMEOUT_CODES = {
    "connect": "DIAL_FAILED",
    "send": "SEND_FAILED",
    "discover": "DHT_LOOKUP_FAILED",
    "subscribe": "INTERNAL",
}
#: Time allowed for closing the agent at shutdown.
CLOSE_TIMEOUT = 10.0
LOG_LEVELS = ("debug", "info", "warning", "error")
COMMANDS = ("connect", "send", "discover", "subscribe", "status", "shutdown")
ERROR_CODES = (
    "INVALID_JSON",
    "UNKNOWN_COMMAND",
    "INVALID_FIELDS",
    "NOT_CONNECTED",
    "ALREADY_CONNECTED",
    "PORT_IN_USE",
    "DIAL_FAILED",
    "PEER_NOT_FOUND",
    "SEND_FAILED",
    "DHT_LOOKUP_FAILED",
    "INTERNAL",
)


# -- stdout: one writer thread -------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (they are not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode_line(obj: Mapping[str, Any]) -> bytes:
    """One compact JSON line (UTF-8, newline-terminated); never raises for odd values."""
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps(
            _finite(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str
        )
    return text.encode("utf-8", "backslashreplace") + b"\n"


class JsonLineWriter:
    """Writes JSON lines to a file descriptor from one thread, flushing each line.

    ``write`` never blocks the caller (any thread). ``write_log`` drops the event when more
    than :data:`MAX_LOG_BACKLOG` lines wait. When the reader of the pipe goes away,
    ``on_broken`` is called once (from the writer thread) and later lines are discarded.
    """

    def __init__(self, fd: int, on_broken: Callable[[], None] | None = None) -> None:
        self._fd = fd
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._on_broken = on_broken
        self._broken = False
        self._closed = False
        self.dropped_logs = 0
        self._thread = threading.Thread(target=self._run, name="p2p-node-stdout", daemon=True)
        self._thread.start()

    def write(self, obj: Mapping[str, Any]) -> None:
        if not self._closed:
            self._queue.put(encode_line(obj))

    def write_log(self, obj: Mapping[str, Any]) -> None:
        if self._queue.qsize() > MAX_LOG_BACKLOG:
            self.dropped_logs += 1
            return
        self.write(obj)

    def set_on_broken(self, callback: Callable[[], None] | None) -> None:
        self._on_broken = callback

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            if line is None:
                return
            if self._broken:
                continue
            try:
                view = memoryview(line)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError:  # EPIPE: nobody reads our stdout any more
                self._broken = True
                callback = self._on_broken
                if callback is not None:
                    with contextlib.suppress(Exception):
                        callback()


# -- logs as events --------------------------------------------------------------------------

_RECORD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


_FORMATTER = logging.Formatter()


class JsonLogHandler(logging.Handler):
    """Turns log records into ``{"type": "log", ...}`` events."""

    def __init__(self, writer: JsonLineWriter, node_name: str = "") -> None:
        super().__init__()
        self._writer = writer
        self._node_name = node_name

    def emit(self, record: logging.LogRecord) -> None:
        try:
            meta: dict[str, Any] = {
                k: _jsonable(v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRS
            }
            if self._node_name:
                meta.setdefault("node", self._node_name)
            if record.exc_info:
                meta["exception"] = _FORMATTER.formatException(record.exc_info)
            self._writer.write_log(
                {
                    "type": "log",
                    "level": record.levelname.lower(),
                    "namespace": record.name,
                    "message": record.getMessage(),
                    "meta": meta,
                }
            )
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def install_log_handler(writer: JsonLineWriter, level: str, node_name: str) -> JsonLogHandler:
    """Route the ``p2pnet`` (and ``asyncio``) loggers to ``log`` events at ``level``."""
    handler = JsonLogHandler(writer, node_name)
    handler.setLevel(level.upper())
    for name in ("p2pnet", "asyncio"):
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        logger.addHandler(handler)
        logger.propagate = False
    return handler


def remove_log_handler(handler: logging.Handler) -> None:
    for name in ("p2pnet", "asyncio"):
        logging.getLogger(name).removeHandler(handler)


# -- stdin: one reader thread ----------------------------------------------------------------


class LineTooLong:
    """Stands for a stdin line longer than :data:`MAX_LINE` (its bytes are discarded)."""

    def __init__(self, size: int) -> None:
        self.size = size


StdinItem = bytes | LineTooLong | None  # None: end of input


def split_lines(
    read: Callable[[], bytes], deliver: Callable[[StdinItem], bool], max_line: int = MAX_LINE
) -> None:
    """Read chunks until EOF, deliver each line (without its newline), then None.

    A line longer than ``max_line`` is delivered as :class:`LineTooLong` and its bytes are
    dropped up to the next newline. ``deliver`` returns False to stop reading.
    """
    buf = bytearray()
    discarding = 0  # bytes of an overlong line dropped so far (0: not discarding)
    while True:
        try:
            chunk = read()
        except OSError:
            chunk = b""
        if not chunk:
            break
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            piece = chunk[start:nl]
            start = nl + 1
            if discarding:
                size = discarding + len(piece)
                discarding = 0
                if not deliver(LineTooLong(size)):
                    return
                continue
            buf += piece
            if len(buf) > max_line:
                item: StdinItem = LineTooLong(len(buf))
            else:
                item = bytes(buf)
            buf.clear()
            if not deliver(item):
                return
        rest = chunk[start:]
        if discarding:
            discarding += len(rest)
        else:
            buf += rest
            if len(buf) > max_line:
                discarding = len(buf)
                buf.clear()
    if discarding:
        if not deliver(LineTooLong(discarding)):
            return
    elif buf.strip():
        if not deliver(bytes(buf)):
            return
    deliver(None)


class StdinReader:
    """Reads stdin in a daemon thread into a bounded asyncio queue (backpressure on the pipe)."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self._fd = fd
        self._loop = loop
        self.queue: asyncio.Queue[StdinItem] = asyncio.Queue(STDIN_BACKLOG)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="p2p-node-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _deliver(self, item: StdinItem) -> bool:
        while not self._stop.is_set():
            try:
                fut = asyncio.run_coroutine_threadsafe(self.queue.put(item), self._loop)
            except RuntimeError:  # the loop is closed
                return False
            try:
                fut.result(timeout=1.0)
                return True
            except concurrent.futures.TimeoutError:
                fut.cancel()
            except (concurrent.futures.CancelledError, RuntimeError):
                return False
        return False

    def _run(self) -> None:
        split_lines(lambda: os.read(self._fd, 65536), self._deliver)


# -- commands --------------------------------------------------------------------------------


class CommandError(Exception):
    """A command failed with one of the contract's error codes (``command``: the parsed command,
    when the line got that far, so the error can carry its ``id``)."""

    def __init__(self, code: str, message: str, command: Command | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command = command


@dataclass
class Command:
    type: str
    fields: dict[str, Any]
    id: Any
    has_id: bool


def _field(cmd: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = cmd.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise CommandError("INVALID_FIELDS", f"{name!r} must be {what}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _topic(cmd: dict[str, Any], required: bool = True) -> str | None:
    topic = _field(cmd, "topic", str, "a non-empty string")
    if topic is None:
        if required:
            raise CommandError("INVALID_FIELDS", "'topic' is required")
        return None
    if not topic or len(topic) > 1024:
        raise CommandError("INVALID_FIELDS", "'topic' must be a non-empty string")
    return str(topic)


def _recipient(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise CommandError("INVALID_FIELDS", "'peerId' must be a PeerID or a 0x ETH address")
    if value.startswith(("0x", "0X")):
        if not is_eth_address(value):
            raise CommandError("INVALID_FIELDS", f"not an Ethereum address: {value!r}")
        return value
    try:
        PeerID.from_string(value)
    except InvalidPeerID as exc:
        raise CommandError("INVALID_FIELDS", f"not a PeerID: {exc}") from None
    return value


def parse_command(line: bytes) -> Command:
    """Parse and validate one stdin line; raises :class:`CommandError`."""
    try:
        obj = loads_bounded(line)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CommandError("INVALID_JSON", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CommandError("INVALID_JSON", "a command must be a JSON object")
    ctype = obj.get("type")
    cmd = Command(ctype if isinstance(ctype, str) else "", obj, obj.get("id"), "id" in obj)
    if not isinstance(ctype, str) or ctype not in COMMANDS:
        shown = "missing" if ctype is None else repr(ctype)
        raise CommandError("UNKNOWN_COMMAND", f"unknown command type {shown}", cmd)
    try:
        _validate(cmd)
    except CommandError as exc:
        exc.command = cmd
        raise
    return cmd


def _validate(cmd: Command) -> None:
    f = cmd.fields
    if cmd.type == "connect":
        port = _field(f, "port", int, "an integer 0-65535")
        if port is not None and not 0 <= port <= 65535:
            raise CommandError("INVALID_FIELDS", "'port' must be an integer 0-65535")
        peers = f.get("bootstrapPeers")
        if peers is not None and (
            not isinstance(peers, list) or not all(isinstance(p, str) and p for p in peers)
        ):
            raise CommandError("INVALID_FIELDS", "'bootstrapPeers' must be a list of multiaddrs")
        _field(f, "privateKey", str, "a hex string")
        _field(f, "name", str, "a string")
    elif cmd.type == "send":
        if "data" not in f:
            raise CommandError("INVALID_FIELDS", "'data' is required")
        topic = _topic(f, required=False)
        peer = f.get("peerId")
        if topic is not None and peer is not None:
            raise CommandError("INVALID_FIELDS", "give 'peerId' or 'topic', not both")
        if topic is None:
            if peer is None:
                raise CommandError("INVALID_FIELDS", "'peerId' (or 'topic') is required")
            _recipient(peer)
    elif cmd.type in ("discover", "subscribe"):
        _topic(f)


def error_code(exc: BaseException) -> str:
    """The contract's error code for an exception raised by the agent layer."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in ERROR_CODES:
        return code
    if isinstance(exc, ConfigError):
        return "INVALID_FIELDS"
    try:
        from p2pnet.kad.errors import KadError, NotFound

        if isinstance(exc, NotFound):
            return "PEER_NOT_FOUND"
        if isinstance(exc, KadError):
            return "DHT_LOOKUP_FAILED"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, DialError):
        return "DIAL_FAILED"
    if isinstance(exc, StreamError | ConnectionClosed):
        return "SEND_FAILED"
    return "INTERNAL"


def _error_message(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


def _addr_text(addr: Any) -> str:
    return str(addr)


# -- the process -----------------------------------------------------------------------------


class NodeProcess:
    """The state of one p2p-node process: the agent, running commands, shutdown."""

    def __init__(
        self, args: argparse.Namespace, writer: JsonLineWriter, env: Mapping[str, str]
    ) -> None:
        self.args = args
        self.out = writer
        self.env = env
        self.agent: Agent | None = None
        self._connecting: asyncio.Future[Agent] | None = None
        self._tasks = TaskOwner("p2p-node")
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_COMMANDS)
        self.stopping = asyncio.Event()
        self._shutdown_ids: list[Any] = []
        self._numbers = itertools.count(1)
        self._running = 0  # commands in flight
        self._idle = asyncio.Event()
        self._idle.set()

    # -- output ----------------------------------------------------------------------------

    def emit(self, event: dict[str, Any], cmd: Command | None = None) -> None:
        if cmd is not None and cmd.has_id:
            event["id"] = cmd.id
        self.out.write(event)

    def emit_error(self, code: str, message: str, cmd: Command | None = None) -> None:
        event: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if cmd is not None and cmd.type:
            event["command"] = cmd.type
        self.emit(event, cmd)

    # -- input -----------------------------------------------------------------------------

    def request_shutdown(self, cmd: Command | None = None) -> None:
        if cmd is not None and cmd.has_id:
            self._shutdown_ids.append(cmd.id)
        self.stopping.set()

    async def read_commands(self, lines: asyncio.Queue[StdinItem]) -> None:
        """Handle stdin lines until EOF or shutdown."""
        while not self.stopping.is_set():
            item = await lines.get()
            if item is None:
                if self.args.ignore_eof:
                    log.info("stdin closed: running until SIGTERM (--ignore-eof)")
                    return
                # The commands already sent still get their answers, then the node stops.
                log.debug("end of stdin: shutting down after %d running commands", self._running)
                await self._idle.wait()
                self.request_shutdown()
                return
            if isinstance(item, LineTooLong):
                self.emit_error(
                    "INVALID_JSON", f"line of {item.size} bytes exceeds the {MAX_LINE} byte limit"
                )
                continue
            if not item.strip():
                continue
            await self.handle_line(item)

    async def handle_line(self, line: bytes) -> None:
        try:
            cmd = parse_command(line)
        except CommandError as exc:
            self.emit_error(exc.code, exc.message, exc.command)
            return
        try:
            await self._dispatch(cmd)
        except Exception as exc:  # a bug: report it and keep going
            log.error("%s failed unexpectedly", cmd.type, exc_info=exc)
            self.emit_error("INTERNAL", _error_message(exc), cmd)

    async def _dispatch(self, cmd: Command) -> None:
        if cmd.type == "shutdown":
            self.request_shutdown(cmd)
            return
        if cmd.type == "status":
            self.emit(self._status(), cmd)
            return
        if cmd.type == "connect":
            if self.agent is not None or self._connecting is not None:
                self.emit_error("ALREADY_CONNECTED", "the node is already connected", cmd)
                return
            self._connecting = asyncio.get_running_loop().create_future()
        await self._slots.acquire()
        self._running += 1
        self._idle.clear()
        try:
            self._tasks.spawn(self._run_command(cmd), name=f"cmd-{cmd.type}-{next(self._numbers)}")
        except RuntimeError:  # closing
            self._command_done()

    def _command_done(self) -> None:
        self._slots.release()
        self._running -= 1
        if self._running == 0:
            self._idle.set()

    async def _run_command(self, cmd: Command) -> None:
        try:
            handler = getattr(self, f"_cmd_{cmd.type}")
            async with asyncio.timeout(COMMAND_TIMEOUTS[cmd.type]):
                await handler(cmd)
        except TimeoutError:
            self.emit_error(
                TIMEOUT_CODES[cmd.type],
                f"{cmd.type} did not finish within {COMMAND_TIMEOUTS[cmd.type]:.0f} s",
                cmd,
            )
        except CommandError as exc:
            self.emit_error(exc.code, exc.message, cmd)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code = error_code(exc)
            if code == "INTERNAL":
                log.error("%s failed unexpectedly", cmd.type, exc_info=exc)
            self.emit_error(code, _error_message(exc), cmd)
        finally:
            self._command_done()

    # -- the agent -------------------------------------------------------------------------

    def agent_config(self, cmd: Command) -> AgentConfig:
        return agent_config(self.args, self.env, cmd.fields)

    async def _cmd_connect(self, cmd: Command) -> None:
        connecting = self._connecting
        assert connecting is not None
        agent: Agent | None = None
        try:
            from p2pnet.agent.agent import Agent

            agent = Agent(self.agent_config(cmd))
            events = agent.events()  # from before the start: nothing it sees is lost
            try:
                await agent.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(agent.close(), CLOSE_TIMEOUT)
                raise
        except BaseException as exc:
            self._connecting = None
            if not connecting.done():
                connecting.set_exception(NotConnected(f"connect failed: {_error_message(exc)}"))
                connecting.exception()  # retrieved: waiters get it, nobody else must
            raise
        self.agent = agent
        self._connecting = None
        connecting.set_result(agent)
        self.emit(
            {
                "type": "ready",
                "peerId": str(agent.peer_id),
                "ethAddress": agent.eth_address,
                "addrs": [_addr_text(a) for a in agent.p2p_addrs()],
                "name": agent.name,
                "mode": agent.mode,
            },
            cmd,
        )
        self._tasks.spawn(self._pump_events(events), name="agent-events")

    async def _need_agent(self) -> Agent:
        if self.agent is not None:
            return self.agent
        if self._connecting is not None:
            try:
                return await asyncio.shield(self._connecting)
            except NotConnected:
                pass
        raise NotConnected("not connected: send a 'connect' command first")

    async def _cmd_send(self, cmd: Command) -> None:
        agent = await self._need_agent()
        f = cmd.fields
        topic = f.get("topic")
        if topic is not None:
            await agent.broadcast(f["data"], topic=topic)
            self.emit({"type": "sent", "topic": topic}, cmd)
            return
        peer = await agent.send(f["peerId"], f["data"])
        self.emit({"type": "sent", "to": str(peer)}, cmd)

    async def _cmd_subscribe(self, cmd: Command) -> None:
        agent = await self._need_agent()
        topic = cmd.fields["topic"]
        await agent.subscribe(topic)
        self.emit({"type": "subscribed", "topic": topic}, cmd)

    async def _cmd_discover(self, cmd: Command) -> None:
        agent = await self._need_agent()
        topic = cmd.fields["topic"]
        found = await agent.discover(topic)
        for info in found:
            self.emit(discovered_event(info), cmd)
        self.emit({"type": "discover_done", "topic": topic, "count": len(found)}, cmd)

    def _status(self) -> dict[str, Any]:
        agent = self.agent
        status: dict[str, Any] = {
            "type": "node-status",
            "connected": agent is not None,
            "name": self.args.name or "",
        }
        if agent is not None:
            status.update(agent.status())
            status.update(
                peerId=str(agent.peer_id),
                ethAddress=agent.eth_address,
                addrs=[_addr_text(a) for a in agent.p2p_addrs()],
                name=agent.name,
                mode=agent.mode,
            )
        return status

    async def _pump_events(self, events: AsyncIterator[AgentEvent]) -> None:
        from p2pnet.agent.agent import AgentDiscovered, AgentMessage

        async for event in events:
            if isinstance(event, AgentMessage):
                out: dict[str, Any] = {
                    "type": "message",
                    "from": str(event.from_peer),
                    "fromEth": event.from_eth,
                    "data": event.data,
                    "direct": event.direct,
                }
                if event.topic is not None:
                    out["topic"] = event.topic
                self.emit(out)
            elif isinstance(event, AgentDiscovered):
                self.emit(discovered_event(event))

    # -- shutdown --------------------------------------------------------------------------

    async def close(self) -> None:
        await self._tasks.close()
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        agent, self.agent = self.agent, None
        if agent is not None:
            try:
                await asyncio.wait_for(agent.close(), CLOSE_TIMEOUT)
            except Exception as exc:
                log.error("closing the agent failed: %r", exc)
        if not self._shutdown_ids:
            self.out.write({"type": "shutdown"})
        for cid in self._shutdown_ids:
            self.out.write({"type": "shutdown", "id": cid})


def agent_config(
    args: argparse.Namespace, env: Mapping[str, str], fields: Mapping[str, Any] | None = None
) -> AgentConfig:
    """The agent's settings: a connect command's fields, else the flags, else the env file."""
    from p2pnet.agent.agent import AgentConfig

    f = fields or {}
    overrides: dict[str, Any] = {
        "name": f.get("name") or args.name or "",
        "listen_host": args.host,
        "port": f["port"] if f.get("port") is not None else args.port,
        "bootstrap_node": bool(args.bootstrap),
    }
    if f.get("bootstrapPeers") is not None:
        overrides["bootstrap_peers"] = list(f["bootstrapPeers"])
    elif args.bootstrap_peers is not None:
        overrides["bootstrap_peers"] = split_list(args.bootstrap_peers)
    if f.get("privateKey"):
        overrides["private_key"] = f["privateKey"]
    if args.key_file:
        overrides["key_file"] = args.key_file
    return AgentConfig.from_env(env, **overrides)


def check_startup_config(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Fail early on a bad env file (e.g. a malformed PRIVATE_KEY); raises ConfigError."""
    from p2pnet.agent.errors import InvalidFields

    try:
        agent_config(args, env).node_config()
    except InvalidFields as exc:
        raise ConfigError(str(exc)) from exc


def discovered_event(info: AgentDiscovered) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "peer_discovered",
        "peerId": str(info.peer_id),
        "ethAddress": info.eth_address,
        "topics": list(info.topics),
        "addrs": [_addr_text(a) for a in info.addrs],
    }
    if info.name:
        event["name"] = info.name
    return event


# -- entry point -----------------------------------------------------------------------------


def build_parser(prog: str = "p2p-node") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run one p2pnet agent node driven by JSON lines on stdin/stdout "
        "(see docs/cli.md).",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--port", type=_port, default=0, help="TCP port (default: free)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("-n", "--name", default="", help="a name shown in logs and events")
    parser.add_argument("-e", "--env-file", help="KEY=value file (PRIVATE_KEY, BOOTSTRAP_PEERS…)")
    parser.add_argument(
        "--key-file",
        help="keep the identity in this file: read PRIVATE_KEY from it, or create it with a new "
        "key (used when no PRIVATE_KEY is given)",
    )
    parser.add_argument(
        "--bootstrap", action="store_true", help="run as a bootstrap node (DHT server mode)"
    )
    parser.add_argument(
        "--bootstrap-peers",
        help="comma-separated multiaddrs (overrides the env file and the defaults; '' for none)",
    )
    parser.add_argument(
        "--connect", action="store_true", help="connect at start, without a connect command"
    )
    parser.add_argument(
        "--ignore-eof",
        action="store_true",
        help="keep running when stdin closes (a service with stdin at /dev/null; stop it with "
        "SIGTERM)",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=LOG_LEVELS, help="level of log events"
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="serve Prometheus /metrics and /healthz on 127.0.0.1:PORT (docs/metrics.md)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _take_stdout() -> int:
    """A private duplicate of stdout for JSON; fd 1 then points at stderr."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    return fd


async def serve(args: argparse.Namespace, writer: JsonLineWriter, env: Mapping[str, str]) -> int:
    loop = asyncio.get_running_loop()
    node = NodeProcess(args, writer, env)

    def on_broken() -> None:  # from the writer thread: our reader is gone
        loop.call_soon_threadsafe(node.request_shutdown)

    writer.set_on_broken(on_broken)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, node.request_shutdown)
    metrics = None
    if args.metrics_port is not None:
        try:
            metrics = await serve_agent_metrics(
                args.metrics_port, lambda: [node.agent] if node.agent else []
            )
        except OSError as exc:
            writer.write({"type": "error", "code": "PORT_IN_USE", "message": f"metrics: {exc}"})
            return 2
        writer.write({"type": "metrics", "port": metrics.port, "url": metrics.url})
    reader = StdinReader(sys.stdin.fileno(), loop)
    reader.start()
    try:
        if args.connect:
            await node.handle_line(b'{"type":"connect"}')
        commands = asyncio.create_task(node.read_commands(reader.queue), name="stdin-commands")
        stopping = asyncio.create_task(node.stopping.wait(), name="stopping")
        try:
            # Ends at shutdown, SIGTERM, EOF, or if reading commands failed (a bug: logged).
            await asyncio.wait({commands, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if commands.done() and not commands.cancelled():
                if commands.exception() is not None:
                    log.error("reading commands failed", exc_info=commands.exception())
                else:  # EOF with --ignore-eof: a signal ends the node
                    await node.stopping.wait()
        finally:
            for task in (commands, stopping):
                task.cancel()
            await asyncio.gather(commands, stopping, return_exceptions=True)
    finally:
        reader.stop()
        await node.close()
        if metrics is not None:
            await metrics.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run p2p-node with parsed arguments (the ``p2pnet node`` subcommand calls this)."""
    json_fd = _take_stdout()
    writer = JsonLineWriter(json_fd)
    handler = install_log_handler(writer, args.log_level, args.name)
    try:
        env: dict[str, str] = {}
        try:
            if args.env_file:
                env = read_env_file(args.env_file)
            check_startup_config(args, env)
        except ConfigError as exc:
            writer.write({"type": "error", "code": "INVALID_FIELDS", "message": str(exc)})
            return 2
        try:
            return asyncio.run(serve(args, writer, env))
        except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled in the loop
            return 0
    finally:
        remove_log_handler(handler)
        writer.close()
        with contextlib.suppress(OSError):
            os.close(json_fd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
