"""``p2p-node``: one agent node driven by JSON lines on stdin/stdout (see ``docs/cli.md``) and, with
``--grpc-port``/``--grpc-socket``, by gRPC as well (see ``docs/grpc.md``).

The commands themselves live in :mod:`p2pnet.cli.node_commands`, shared by both interfaces;
this module is the JSON-lines interface and the process around them.

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
import ipaddress
import itertools
import json
import logging
import math
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pnet.cli.node_commands import (
    CLOSE_TIMEOUT,
    COMMAND_TIMEOUTS,
    ERROR_CODES,
    EVENT_BACKLOG,
    EVENT_BACKLOG_BYTES,
    TIMEOUT_CODES,
    CommandError,
    EventLog,
    NodeCommands,
    NodeEvent,
    agent_config,
    discovered_event,
    error_code,
    error_message,
)
from p2pnet.config import ConfigError, read_env_file
from p2pnet.crypto.eth import is_eth_address
from p2pnet.errors import InvalidPeerID
from p2pnet.metrics.server import serve_agent_metrics
from p2pnet.peer.peer_id import PeerID
from p2pnet.registry.cli import add_registry_arguments
from p2pnet.tasks import TaskOwner
from p2pnet.wire.json_bounded import loads_bounded

if TYPE_CHECKING:
    from p2pnet.rpc.server import GrpcServer

log = logging.getLogger("p2pnet.cli.p2p_node")

#: Longest stdin line (bytes, without the newline); a longer line is an ``INVALID_JSON`` error.
MAX_LINE = 1 << 20
#: Commands handled at once; more wait (and stdin is read no further meanwhile).
MAX_CONCURRENT_COMMANDS = 256
#: Unwritten ``log`` events kept when stdout is slow; beyond this, log events are dropped.
MAX_LOG_BACKLOG = 1000
#: Lines read from stdin but not yet handled.
STDIN_BACKLOG = 64
LOG_LEVELS = ("debug", "info", "warning", "error")
COMMANDS = ("connect", "send", "discover", "subscribe", "status", "shutdown")
#: Events of the node's event log that the JSON lines carry (the others are gRPC's only).
JSON_STREAM_EVENTS = frozenset(
    {
        "ready",
        "message",
        "peer_discovered",
        "peer_connected",
        "peer_disconnected",
        "bootstrap_failed",
        "bootstrap_succeeded",
    }
)

__all__ = [
    "CLOSE_TIMEOUT",
    "COMMAND_TIMEOUTS",
    "ERROR_CODES",
    "TIMEOUT_CODES",
    "CommandError",
    "agent_config",
    "discovered_event",
    "error_code",
    "main",
    "run",
]


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
            self._writer.write_log(log_event(record, self._node_name))
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def log_event(record: logging.LogRecord, node_name: str) -> dict[str, Any]:
    """A log record as a ``log`` event."""
    meta: dict[str, Any] = {
        k: _jsonable(v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRS
    }
    if node_name:
        meta.setdefault("node", node_name)
    if record.exc_info:
        meta["exception"] = _FORMATTER.formatException(record.exc_info)
    return {
        "type": "log",
        "level": record.levelname.lower(),
        "namespace": record.name,
        "message": record.getMessage(),
        "meta": meta,
    }


class EventLogHandler(logging.Handler):
    """Publishes log records on the node's event log (for gRPC subscribers); records from
    other threads are handed to the event loop."""

    def __init__(
        self, events: EventLog, loop: asyncio.AbstractEventLoop, node_name: str = ""
    ) -> None:
        super().__init__()
        self._events = events
        self._loop = loop
        self._thread = threading.get_ident()
        self._node_name = node_name

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = log_event(record, self._node_name)
            if threading.get_ident() == self._thread:
                self._events.publish(event)
            else:
                self._loop.call_soon_threadsafe(self._events.publish, event)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def install_log_handler(
    writer: JsonLineWriter | logging.Handler, level: str, node_name: str
) -> logging.Handler:
    """Route the ``p2pnet`` (and ``asyncio``) loggers to ``log`` events at ``level``."""
    handler = JsonLogHandler(writer, node_name) if isinstance(writer, JsonLineWriter) else writer
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
        _field(f, "retryBootstrap", bool, "a boolean")
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


def _error_message(exc: BaseException) -> str:
    return error_message(exc)


# -- the JSON-lines interface ----------------------------------------------------------------


class NodeProcess:
    """The JSON-lines interface of a p2p-node process: commands from stdin, events to stdout."""

    def __init__(
        self,
        commands: NodeCommands,
        writer: JsonLineWriter,
        ignore_eof: bool = False,
        stream_events: bool = True,
    ) -> None:
        self.commands = commands
        self.args = commands.args
        self.out = writer
        self.ignore_eof = ignore_eof
        self._tasks = TaskOwner("p2p-node")
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_COMMANDS)
        self._numbers = itertools.count(1)
        self._running = 0  # commands in flight
        self._idle = asyncio.Event()
        self._idle.set()
        if stream_events:
            commands.events.add_sink(self._on_event)

    @property
    def stopping(self) -> asyncio.Event:
        return self.commands.stopping

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

    def _on_event(self, event: NodeEvent) -> None:
        """The node's event log, as JSON lines: ``ready`` (with the id of the ``connect`` it
        answers, if it came from here), ``message``, ``peer_discovered``, ``peer_connected``,
        ``peer_disconnected`` and ``bootstrap_failed`` / ``bootstrap_succeeded``."""
        if event.type not in JSON_STREAM_EVENTS:
            return
        origin = event.origin
        if isinstance(origin, Command):
            self.emit(dict(event.payload), origin)
        else:
            self.out.write(event.payload)

    # -- input -----------------------------------------------------------------------------

    def request_shutdown(self, cmd: Command | None = None) -> None:
        self.commands.request_shutdown(cmd)

    async def read_commands(self, lines: asyncio.Queue[StdinItem]) -> None:
        """Handle stdin lines until EOF or shutdown."""
        while not self.stopping.is_set():
            item = await lines.get()
            if item is None:
                if self.ignore_eof:
                    if self.args.ignore_eof:
                        log.info("stdin closed: running until SIGTERM (--ignore-eof)")
                    else:
                        log.info("stdin closed: serving gRPC until Shutdown or SIGTERM")
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
            self.emit(self.commands.status(), cmd)
            return
        if cmd.type == "connect":
            try:
                self.commands.begin_connect()
            except CommandError as exc:
                self.emit_error(exc.code, exc.message, cmd)
                return
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
            await self.commands.run(cmd.type, handler(cmd))
        except CommandError as exc:
            self.emit_error(exc.code, exc.message, cmd)
        finally:
            self._command_done()

    # -- the commands ----------------------------------------------------------------------

    async def _cmd_connect(self, cmd: Command) -> None:
        # The ready event answering it comes through the event log (_on_event), in order with
        # the events that follow it.
        await self.commands.connect(cmd.fields, origin=cmd)

    async def _cmd_send(self, cmd: Command) -> None:
        f = cmd.fields
        topic = f.get("topic")
        if topic is not None:
            await self.commands.broadcast(topic, f["data"])
            self.emit({"type": "sent", "topic": topic}, cmd)
            return
        peer = await self.commands.send(f["peerId"], f["data"])
        self.emit({"type": "sent", "to": peer}, cmd)

    async def _cmd_subscribe(self, cmd: Command) -> None:
        topic = cmd.fields["topic"]
        await self.commands.subscribe(topic)
        self.emit({"type": "subscribed", "topic": topic}, cmd)

    async def _cmd_discover(self, cmd: Command) -> None:
        topic = cmd.fields["topic"]
        found = await self.commands.discover(topic)
        for info in found:
            self.emit(discovered_event(info), cmd)
        self.emit({"type": "discover_done", "topic": topic, "count": len(found)}, cmd)

    # -- shutdown --------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` with the commands (cancelled with them at shutdown)."""
        self._tasks.spawn(work, name=name)

    async def close_commands(self) -> None:
        """Abandon the commands still running (they get no answer)."""
        await self._tasks.close()

    def write_shutdown(self) -> None:
        ids = [o.id for o in self.commands.shutdown_origins if isinstance(o, Command) and o.has_id]
        if not ids:
            self.out.write({"type": "shutdown"})
        for cid in ids:
            self.out.write({"type": "shutdown", "id": cid})


def check_startup_config(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Fail early on a bad env file (e.g. a malformed PRIVATE_KEY); raises ConfigError."""
    from p2pnet.agent.errors import InvalidFields

    try:
        agent_config(args, env).node_config()
    except InvalidFields as exc:
        raise ConfigError(str(exc)) from exc


def check_grpc_flags(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """Check the gRPC flags; returns the token (flag, else ``GRPC_TOKEN``). Raises ConfigError.

    A non-loopback address needs a token or TLS: an open port would let anyone on the network
    act as this agent.
    """
    token = args.grpc_token if args.grpc_token is not None else environ.get("GRPC_TOKEN")
    token = token or None
    on = grpc_enabled(args)
    if not on:
        for flag, value in (
            ("--grpc-host", args.grpc_host != "127.0.0.1"),
            ("--grpc-token", args.grpc_token is not None),
            ("--grpc-tls-cert", args.grpc_tls_cert is not None),
            ("--no-json-lines", not args.json_lines),
        ):
            if value:
                raise ConfigError(f"{flag} needs --grpc-port or --grpc-socket")
        return None
    if (args.grpc_tls_cert is None) != (args.grpc_tls_key is None):
        raise ConfigError("--grpc-tls-cert and --grpc-tls-key go together")
    if args.grpc_port is not None and not _is_loopback(args.grpc_host):
        if token is None and args.grpc_tls_cert is None:
            raise ConfigError(
                f"refusing to serve gRPC on {args.grpc_host}, which is not a loopback address, "
                "without --grpc-token (or GRPC_TOKEN) or --grpc-tls-cert/--grpc-tls-key"
            )
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def grpc_enabled(args: argparse.Namespace) -> bool:
    return args.grpc_port is not None or args.grpc_socket is not None


# -- entry point -----------------------------------------------------------------------------


def build_parser(prog: str = "p2p-node") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run one p2pnet agent node driven by JSON lines on stdin/stdout "
        "(see docs/cli.md) and, with --grpc-port, by gRPC (docs/grpc.md).",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of p2p-node, one group per concern (other features add their own group
    here, and read it in :func:`serve` or :func:`agent_config`)."""
    add_node_arguments(parser.add_argument_group("node"))
    add_json_lines_arguments(parser.add_argument_group("JSON lines (docs/cli.md)"))
    add_grpc_arguments(parser.add_argument_group("gRPC (docs/grpc.md)"))
    add_metrics_arguments(parser.add_argument_group("metrics (docs/metrics.md)"))
    add_registry_arguments(parser.add_argument_group("agent registry (docs/registry.md)"))


def add_node_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("-p", "--port", type=_port, default=0, help="TCP port (default: free)")
    group.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    group.add_argument("-n", "--name", default="", help="a name shown in logs and events")
    group.add_argument("-e", "--env-file", help="KEY=value file (PRIVATE_KEY, BOOTSTRAP_PEERS…)")
    group.add_argument(
        "--key-file",
        help="keep the identity in this file: read PRIVATE_KEY from it, or create it with a new "
        "key (used when no PRIVATE_KEY is given)",
    )
    group.add_argument(
        "--bootstrap", action="store_true", help="run as a bootstrap node (DHT server mode)"
    )
    group.add_argument(
        "--bootstrap-peers",
        help="comma-separated multiaddrs (overrides the env file and the defaults; '' for none)",
    )
    group.add_argument(
        "--via-relay",
        action="store_true",
        help="no direct listener: reserve a slot on the bootstrap nodes (circuit relay v2) and "
        "be reachable through them only (an agent behind NAT)",
    )
    group.add_argument(
        "--autonat-allow-private",
        action="store_true",
        help="as an AutoNAT v2 server (bootstrap nodes), also dial back private and loopback "
        "addresses (a LAN or a lab; not on the internet); hole punching (DCUtR) then also "
        "offers and dials private addresses",
    )
    group.add_argument(
        "--connect", action="store_true", help="connect at start, without a connect command"
    )
    group.add_argument(
        "--log-level", default="warning", choices=LOG_LEVELS, help="level of log events"
    )


def add_json_lines_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--ignore-eof",
        action="store_true",
        help="keep running when stdin closes (a service with stdin at /dev/null; stop it with "
        "SIGTERM)",
    )
    group.add_argument(
        "--exit-on-eof",
        action="store_true",
        help="with gRPC on: shut down when stdin closes (the parent is gone); by default a node "
        "serving gRPC keeps running",
    )
    group.add_argument(
        "--no-json-lines",
        dest="json_lines",
        action="store_false",
        help="with gRPC on: read no commands from stdin and write no events to stdout except "
        "the start lines (grpc_listening, metrics) and a start failure",
    )


def add_grpc_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "-g", "--grpc-port", type=_port, help="serve gRPC on this TCP port (0: a free one)"
    )
    group.add_argument(
        "--grpc-host", default="127.0.0.1", help="gRPC listen address (default 127.0.0.1)"
    )
    group.add_argument("--grpc-socket", metavar="PATH", help="serve gRPC on this unix socket")
    group.add_argument(
        "--grpc-token",
        help="require this token on every call (metadata 'authorization: Bearer TOKEN'); "
        "default: the GRPC_TOKEN environment variable",
    )
    group.add_argument("--grpc-tls-cert", metavar="PEM", help="serve gRPC over TLS: certificate")
    group.add_argument("--grpc-tls-key", metavar="PEM", help="serve gRPC over TLS: private key")
    group.add_argument(
        "--grpc-max-streams",
        type=_positive,
        default=1024,
        help="event streams (Events, Messages) open at once (default 1024)",
    )
    group.add_argument(
        "--event-backlog",
        type=_positive,
        default=EVENT_BACKLOG,
        help=f"events a gRPC event stream may fall behind before it lags (default {EVENT_BACKLOG})",
    )


def add_metrics_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _take_stdout() -> int:
    """A private duplicate of stdout for JSON; fd 1 then points at stderr."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    return fd


async def _watch_eof(lines: asyncio.Queue[StdinItem]) -> None:
    """Without JSON lines: stdin is only watched for its end."""
    while await lines.get() is not None:
        pass


def _start_failure(writer: JsonLineWriter, code: str, message: str) -> int:
    writer.write({"type": "error", "code": code, "message": message})
    print(f"p2p-node: {message}", file=sys.stderr, flush=True)
    return 2


async def serve(
    args: argparse.Namespace,
    writer: JsonLineWriter,
    env: Mapping[str, str],
    grpc_token: str | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    grpc_server: GrpcServer | None = None
    grpc_on = grpc_enabled(args)
    if grpc_on:
        from p2pnet.rpc.server import GrpcOptions, GrpcServer, GrpcStartError, encoded_size

        # Subscribers (gRPC streams) hold their events serialized: the budget counts those bytes.
        events = EventLog(args.event_backlog, EVENT_BACKLOG_BYTES, encoded_size)
    else:
        events = EventLog(args.event_backlog)
    commands = NodeCommands(args, env, events)
    if grpc_on:
        grpc_server = GrpcServer(
            commands,
            GrpcOptions(
                host=args.grpc_host,
                port=args.grpc_port,
                socket=args.grpc_socket,
                token=grpc_token,
                tls_cert=args.grpc_tls_cert,
                tls_key=args.grpc_tls_key,
                max_event_streams=args.grpc_max_streams,
            ),
        )
        try:
            await grpc_server.start()
        except GrpcStartError as exc:
            return _start_failure(writer, exc.code, str(exc))
        listening: dict[str, Any] = {"type": "grpc_listening"}
        if grpc_server.port is not None:
            listening["grpcPort"] = grpc_server.port
            listening["grpcHost"] = args.grpc_host
            commands.ready_extra["grpcPort"] = grpc_server.port
        if args.grpc_socket is not None:
            listening["grpcSocket"] = args.grpc_socket
        writer.write(listening)
        event_logs = EventLogHandler(events, loop, args.name)
        install_log_handler(event_logs, args.log_level, args.name)
    # A node serving gRPC is a service: the end of stdin ends it only with --exit-on-eof.
    ignore_eof = args.ignore_eof or (grpc_on and not args.exit_on_eof)
    json_lines = NodeProcess(commands, writer, ignore_eof, stream_events=args.json_lines)

    def on_broken() -> None:  # from the writer thread: our reader is gone
        if args.json_lines:
            loop.call_soon_threadsafe(commands.request_shutdown)

    writer.set_on_broken(on_broken)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, commands.request_shutdown)
    metrics = None
    if args.metrics_port is not None:
        try:
            metrics = await serve_agent_metrics(
                args.metrics_port, lambda: [commands.agent] if commands.agent else []
            )
        except OSError as exc:
            if grpc_server is not None:
                await grpc_server.stop()
            writer.write({"type": "error", "code": "PORT_IN_USE", "message": f"metrics: {exc}"})
            return 2
        writer.write({"type": "metrics", "port": metrics.port, "url": metrics.url})
    watch_stdin = args.json_lines or (args.exit_on_eof and not args.ignore_eof)
    reader = StdinReader(sys.stdin.fileno(), loop) if watch_stdin else None
    if reader is not None:
        reader.start()
    try:
        if args.connect:
            if args.json_lines:
                # Nobody is there to send connect again: the node keeps retrying its
                # bootstrap peers until they answer (a service may start before them).
                await json_lines.handle_line(b'{"type":"connect","retryBootstrap":true}')
            else:  # in the background, like a command: a signal still stops the node
                commands.begin_connect()
                json_lines.spawn(_connect_at_start(commands), "connect-at-start")
        commands_task: asyncio.Task[Any]
        if reader is None:
            commands_task = asyncio.create_task(commands.stopping.wait(), name="no-stdin")
        elif args.json_lines:
            commands_task = asyncio.create_task(
                json_lines.read_commands(reader.queue), name="stdin-commands"
            )
        else:
            commands_task = asyncio.create_task(_watch_eof(reader.queue), name="stdin-eof")
        stopping = asyncio.create_task(commands.stopping.wait(), name="stopping")
        try:
            # Ends at shutdown, SIGTERM, EOF, or if reading commands failed (a bug: logged).
            await asyncio.wait({commands_task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if commands_task.done() and not commands_task.cancelled():
                if commands_task.exception() is not None:
                    log.error("reading commands failed", exc_info=commands_task.exception())
                elif not args.json_lines and not json_lines.ignore_eof:
                    commands.request_shutdown()  # stdin closed: the parent is gone
                else:  # EOF while ignoring it: shutdown, a signal or gRPC ends the node
                    await commands.stopping.wait()
        finally:
            for task in (commands_task, stopping):
                task.cancel()
            await asyncio.gather(commands_task, stopping, return_exceptions=True)
    finally:
        if reader is not None:
            reader.stop()
        if grpc_server is not None:
            await grpc_server.set_not_serving()
        await json_lines.close_commands()
        await commands.close()
        events.close()  # ends the event streams of gRPC clients
        if grpc_server is not None:
            await grpc_server.stop()
        if metrics is not None:
            await metrics.close()
        if args.json_lines:
            json_lines.write_shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0


async def _connect_at_start(commands: NodeCommands) -> None:
    try:
        await commands.run("connect", commands.connect({"retryBootstrap": True}))
    except CommandError as exc:
        log.warning("connect at start failed: %s: %s", exc.code, exc.message)
        commands.events.publish(
            {"type": "error", "code": exc.code, "message": exc.message, "command": "connect"}
        )


def run(args: argparse.Namespace) -> int:
    """Run p2p-node with parsed arguments (the ``p2pnet node`` subcommand calls this)."""
    json_fd = _take_stdout()
    writer = JsonLineWriter(json_fd)
    handler = install_log_handler(writer, args.log_level, args.name) if args.json_lines else None
    try:
        env: dict[str, str] = {}
        try:
            grpc_token = check_grpc_flags(args, os.environ)
        except ConfigError as exc:
            return _start_failure(writer, "INVALID_FIELDS", str(exc))
        try:
            if args.env_file:
                env = read_env_file(args.env_file)
            check_startup_config(args, env)
        except ConfigError as exc:
            writer.write({"type": "error", "code": "INVALID_FIELDS", "message": str(exc)})
            return 2
        try:
            return asyncio.run(serve(args, writer, env, grpc_token))
        except KeyboardInterrupt:  # pragma: no cover - SIGINT is handled in the loop
            return 0
    finally:
        for name in ("p2pnet", "asyncio"):
            for h in list(logging.getLogger(name).handlers):
                if h is handler or isinstance(h, EventLogHandler):
                    logging.getLogger(name).removeHandler(h)
        writer.close()
        with contextlib.suppress(OSError):
            os.close(json_fd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
