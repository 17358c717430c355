"""The commands of a p2p-node process, whichever interface issued them (JSON lines or gRPC).

:class:`NodeCommands` owns the agent (created by ``connect``) and carries out the commands;
failures come out as :class:`CommandError` with the stable codes of docs/cli.md. What happens
in the node (an agent connected, a message arrived, a peer connected, a log record) is published
on the node's :class:`EventLog`: one sequence of numbered events that the JSON-lines writer and
every gRPC subscriber read, each at its own pace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from p2pnet.agent.errors import MessageTooLarge, NotConnected
from p2pnet.config import ConfigError, split_list
from p2pnet.errors import ConnectionClosed, DialError, StreamError
from p2pnet.eventbus import EventBus, EventStream
from p2pnet.tasks import TaskOwner

if TYPE_CHECKING:
    from p2pnet.agent.agent import Agent, AgentConfig, AgentDiscovered

log = logging.getLogger("p2pnet.cli.node")

T = TypeVar("T")

#: Time limits (seconds) of the commands; a command that takes longer answers an error.
COMMAND_TIMEOUTS = {
    "connect": 60.0,
    "send": 60.0,
    "discover": 60.0,
    "subscribe": 30.0,
    "unsubscribe": 30.0,
    "disconnect": 30.0,
}
#: Error code when a command runs out of time.
TIMEOUT_CODES = {
    "connect": "DIAL_FAILED",
    "send": "SEND_FAILED",
    "discover": "DHT_LOOKUP_FAILED",
    "subscribe": "INTERNAL",
    "unsubscribe": "INTERNAL",
    "disconnect": "INTERNAL",
}
#: Time allowed for closing the agent at shutdown.
CLOSE_TIMEOUT = 10.0
#: Events one subscriber of the event log may fall behind before it loses the oldest.
EVENT_BACKLOG = 1000
#: Bytes of events (serialized) one subscriber may hold before it loses the oldest.
EVENT_BACKLOG_BYTES = 16 << 20
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
    "REGISTRY_UNAVAILABLE",
    "INTERNAL",
)


class CommandError(Exception):
    """A command failed with one of the contract's error codes.

    ``field``: the argument at fault, when one is (the gRPC interface names it); ``timeout``: the
    command ran out of time; ``command``: the JSON-lines command, when the line got that far, so
    the error can carry its ``id``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        command: Any = None,
        *,
        field: str | None = None,
        timeout: bool = False,
        too_large: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command = command
        self.field = field
        self.timeout = timeout
        self.too_large = too_large


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


def error_message(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


# -- the event log ---------------------------------------------------------------------------


@dataclass(eq=False)
class NodeEvent:
    """One event of the node: its number in the node's sequence and its JSON-lines form.

    ``origin``: the command that caused it (e.g. the ``connect`` a ``ready`` answers), so an
    interface can tell its own answers from the others'. ``cache``: per-interface encodings,
    made once however many subscribers read the event.
    """

    seq: int
    payload: dict[str, Any]
    origin: object | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return str(self.payload.get("type", ""))


class EventLog:
    """The node's numbered event stream: sinks see every event at once, in order (the JSON-lines
    writer); subscribers read at their own pace, each bounded to ``backlog`` events."""

    def __init__(
        self,
        backlog: int = EVENT_BACKLOG,
        max_bytes: int | None = None,
        sizeof: Callable[[NodeEvent], int] | None = None,
    ) -> None:
        """``max_bytes``/``sizeof``: a subscriber also loses its oldest events when those it
        holds exceed this many bytes (``sizeof``: an event's size in the subscribers' form)."""
        self._numbers = itertools.count(1)
        self._bus: EventBus[NodeEvent] = EventBus(backlog, max_bytes=max_bytes, sizeof=sizeof)
        self._sinks: list[Callable[[NodeEvent], None]] = []
        self.last_seq = 0

    @property
    def backlog(self) -> int:
        return self._bus.maxsize

    @property
    def subscribers(self) -> int:
        return self._bus.subscribers

    @property
    def closed(self) -> bool:
        return self._bus.closed

    def add_sink(self, sink: Callable[[NodeEvent], None]) -> None:
        self._sinks.append(sink)

    def publish(self, payload: dict[str, Any], origin: object | None = None) -> NodeEvent:
        event = NodeEvent(next(self._numbers), payload, origin)
        self.last_seq = event.seq
        for sink in self._sinks:
            sink(event)
        self._bus.emit(event)
        return event

    def subscribe(
        self, predicate: Callable[[NodeEvent], bool] | None = None
    ) -> EventStream[NodeEvent]:
        return self._bus.subscribe(predicate)

    def close(self) -> None:
        self._bus.close()


# -- the commands ----------------------------------------------------------------------------


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
    if getattr(args, "via_relay", False):
        overrides.update(listen_direct=False, reserve_relay=True)
    if getattr(args, "autonat_allow_private", False):
        overrides["autonat_allow_private"] = True
    if f.get("retryBootstrap"):
        overrides["require_bootstrap"] = False
    if f.get("privateKey"):
        overrides["private_key"] = f["privateKey"]
    if args.key_file:
        overrides["key_file"] = args.key_file
    if getattr(args, "registry_policy", None):
        overrides["registry_policy"] = args.registry_policy
    return AgentConfig.from_env(env, **overrides)


def discovered_event(info: AgentDiscovered) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "peer_discovered",
        "peerId": str(info.peer_id),
        "ethAddress": info.eth_address,
        "topics": list(info.topics),
        "addrs": [str(a) for a in info.addrs],
    }
    if info.name:
        event["name"] = info.name
    if info.registry is not None:
        event["registry"] = info.registry
    return event


class NodeCommands:
    """The agent of one p2p-node process and the commands on it (any interface)."""

    def __init__(
        self,
        args: argparse.Namespace,
        env: Mapping[str, str],
        events: EventLog,
        ready_extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.args = args
        self.env = env
        self.events = events
        #: Fields added to every ``ready`` event (e.g. ``grpcPort``).
        self.ready_extra = dict(ready_extra or {})
        self.agent: Agent | None = None
        self._connecting: asyncio.Future[Agent] | None = None
        self._agent_tasks: TaskOwner | None = None
        self.stopping = asyncio.Event()
        self.shutdown_origins: list[object] = []
        self._closed = False

    # -- running a command -----------------------------------------------------------------

    async def run(self, name: str, work: Awaitable[T]) -> T:
        """Await ``work`` under the command's time limit; every failure comes out as a
        :class:`CommandError` (an unexpected one as ``INTERNAL``, logged with its traceback)."""
        limit = COMMAND_TIMEOUTS.get(name)
        try:
            async with asyncio.timeout(limit):
                return await work
        except TimeoutError:
            raise CommandError(
                TIMEOUT_CODES.get(name, "INTERNAL"),
                f"{name} did not finish within {limit:.0f} s",
                timeout=True,
            ) from None
        except CommandError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code = error_code(exc)
            if code == "INTERNAL":
                log.error("%s failed unexpectedly", name, exc_info=exc)
            raise CommandError(
                code, error_message(exc), too_large=isinstance(exc, MessageTooLarge)
            ) from exc

    # -- connect ---------------------------------------------------------------------------

    def begin_connect(self) -> None:
        """Claim the connect (synchronously, so commands read after it wait for it)."""
        if self.agent is not None or self._connecting is not None:
            raise CommandError("ALREADY_CONNECTED", "the node is already connected")
        self._connecting = asyncio.get_running_loop().create_future()

    async def connect(self, fields: Mapping[str, Any], origin: object | None = None) -> Agent:
        """Start the agent (after :meth:`begin_connect`); publishes ``ready``."""
        connecting = self._connecting
        assert connecting is not None, "begin_connect() first"
        agent: Agent | None = None
        tasks = TaskOwner("p2p-node agent events")
        try:
            from p2pnet.agent.agent import Agent

            agent = Agent(agent_config(self.args, self.env, fields))
            events = agent.events()  # from before the start: nothing it sees is lost
            node_events = agent.node.events()
            try:
                await agent.start()
            except BaseException:
                events.close()
                node_events.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(agent.close(), CLOSE_TIMEOUT)
                raise
        except BaseException as exc:
            self._connecting = None
            if not connecting.done():
                connecting.set_exception(NotConnected(f"connect failed: {error_message(exc)}"))
                connecting.exception()  # retrieved: waiters get it, nobody else must
            raise
        self.agent = agent
        self._agent_tasks = tasks
        self._connecting = None
        connecting.set_result(agent)
        self.events.publish({"type": "ready", **self.identity(agent), **self.ready_extra}, origin)
        tasks.spawn(self._pump_agent_events(events), name="agent-events")
        tasks.spawn(self._pump_node_events(node_events), name="node-events")
        return agent

    @staticmethod
    def identity(agent: Agent) -> dict[str, Any]:
        return {
            "peerId": str(agent.peer_id),
            "ethAddress": agent.eth_address,
            "addrs": [str(a) for a in agent.p2p_addrs()],
            "name": agent.name,
            "mode": agent.mode,
        }

    async def need_agent(self) -> Agent:
        if self.agent is not None:
            return self.agent
        if self._connecting is not None:
            try:
                return await asyncio.shield(self._connecting)
            except NotConnected:
                pass
        raise NotConnected("not connected: send a 'connect' command first")

    @property
    def connected(self) -> bool:
        return self.agent is not None

    # -- the other commands ----------------------------------------------------------------

    async def send(self, to: str, data: Any) -> str:
        agent = await self.need_agent()
        return str(await agent.send(to, data))

    async def broadcast(self, topic: str, data: Any) -> None:
        agent = await self.need_agent()
        await agent.broadcast(data, topic=topic)

    async def subscribe(self, topic: str) -> None:
        agent = await self.need_agent()
        await agent.subscribe(topic)

    async def unsubscribe(self, topic: str) -> bool:
        agent = await self.need_agent()
        return await agent.unsubscribe(topic)

    async def discover(self, topic: str) -> list[AgentDiscovered]:
        agent = await self.need_agent()
        return await agent.discover(topic)

    async def disconnect_peer(self, peer_text: str) -> None:
        """Close our connections to one peer; ``PEER_NOT_FOUND`` if we have none."""
        from p2pnet.peer.peer_id import PeerID

        agent = await self.need_agent()
        peer = PeerID.from_string(peer_text)
        if not agent.node.host.is_connected(peer):
            raise CommandError("PEER_NOT_FOUND", f"not connected to {peer}", field="peer_id")
        await agent.node.disconnect(peer)

    async def leave(self) -> None:
        """Close the agent (leave the network); another connect may follow."""
        agent = await self.need_agent()
        self.agent = None
        await self._close_agent(agent)

    def peers(self) -> list[dict[str, Any]]:
        """The peers we are connected to (for ListPeers)."""
        from p2pnet.crypto.eth import eth_address
        from p2pnet.errors import CryptoError

        agent = self.agent
        if agent is None:
            raise NotConnected("not connected: send a 'connect' command first")
        host = agent.node.host
        out = []
        for peer in agent.node.peers():
            conns = host.connections(peer)
            try:
                eth = eth_address(peer)
            except CryptoError:
                eth = ""
            known = agent.announced.get(peer)
            out.append(
                {
                    "peerId": str(peer),
                    "ethAddress": eth,
                    "addrs": [str(c.remote_addr) for c in conns],
                    "direction": conns[0].direction.value if conns else "",
                    "name": known.name if known is not None else "",
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        agent = self.agent
        status: dict[str, Any] = {
            "type": "node-status",
            "connected": agent is not None,
            "name": self.args.name or "",
        }
        if agent is not None:
            status.update(agent.status())
            status.update(self.identity(agent))
        return status

    # -- events of the agent ---------------------------------------------------------------

    async def _pump_agent_events(self, events: EventStream[Any]) -> None:
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
                if event.registry is not None:
                    out["registry"] = event.registry
                if event.via is not None:
                    out["via"] = event.via
                self.events.publish(out)
            elif isinstance(event, AgentDiscovered):
                self.events.publish(discovered_event(event))

    async def _pump_node_events(self, events: EventStream[Any]) -> None:
        from p2pnet.crypto.eth import eth_address
        from p2pnet.errors import CryptoError
        from p2pnet.events import (
            BootstrapFailed,
            BootstrapSucceeded,
            PeerConnected,
            PeerDisconnected,
        )

        def eth_of(peer: Any) -> str | None:
            try:
                return eth_address(peer)
            except CryptoError:
                return None

        async for event in events:
            if isinstance(event, PeerConnected):
                self.events.publish(
                    {
                        "type": "peer_connected",
                        "peerId": str(event.peer),
                        "ethAddress": eth_of(event.peer),
                        "addr": str(event.addr),
                        "direction": event.direction,
                    }
                )
            elif isinstance(event, PeerDisconnected):
                self.events.publish(
                    {
                        "type": "peer_disconnected",
                        "peerId": str(event.peer),
                        "ethAddress": eth_of(event.peer),
                    }
                )
            elif isinstance(event, BootstrapFailed):
                self.events.publish(
                    {
                        "type": "bootstrap_failed",
                        "attempt": event.attempt,
                        "error": event.error,
                        "retryIn": round(event.retry_in, 3),
                    }
                )
            elif isinstance(event, BootstrapSucceeded):
                self.events.publish(
                    {
                        "type": "bootstrap_succeeded",
                        "attempt": event.attempt,
                        "dhtTableSize": event.routing_table,
                    }
                )

    # -- shutdown --------------------------------------------------------------------------

    def request_shutdown(self, origin: object | None = None) -> None:
        if origin is not None:
            self.shutdown_origins.append(origin)
        self.stopping.set()

    async def _close_agent(self, agent: Agent) -> None:
        tasks, self._agent_tasks = self._agent_tasks, None
        try:
            await asyncio.wait_for(agent.close(), CLOSE_TIMEOUT)
        except Exception as exc:
            log.error("closing the agent failed: %r", exc)
        if tasks is not None:
            await tasks.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        agent, self.agent = self.agent, None
        if agent is not None:
            await self._close_agent(agent)
        elif self._agent_tasks is not None:
            await self._agent_tasks.close()
