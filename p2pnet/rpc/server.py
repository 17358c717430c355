"""The gRPC interface of p2p-node: service ``p2pnet.v1.AgentNode`` on ``grpc.aio``, with the
standard health service and server reflection (docs/grpc.md).

Every method calls the same :class:`~p2pnet.cli.node_commands.NodeCommands` as the JSON-lines
interface. Failures become gRPC status codes; the details start with the stable code of
docs/cli.md, which also travels as trailing metadata ``p2pnet-code`` (and the argument at fault
as ``p2pnet-field``).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from p2pnet.agent.constants import ANNOUNCEMENTS_TOPIC, STATUS_TOPIC
from p2pnet.agent.envelope import MAX_ENVELOPE_SIZE
from p2pnet.cli.node_commands import CommandError, NodeCommands, NodeEvent, discovered_event
from p2pnet.crypto.eth import is_eth_address
from p2pnet.errors import P2PError
from p2pnet.peer.peer_id import PeerID
from p2pnet.rpc import agent_node_pb2 as pb
from p2pnet.rpc import convert
from p2pnet.wire.json_bounded import loads_bounded

log = logging.getLogger("p2pnet.rpc.server")

SERVICE = pb.DESCRIPTOR.services_by_name["AgentNode"].full_name  # "p2pnet.v1.AgentNode"
#: Event streams (Events and Messages) open at once; more are RESOURCE_EXHAUSTED.
MAX_EVENT_STREAMS = 1024
#: Largest request accepted (bytes): a message's data is at most MAX_ENVELOPE_SIZE anyway.
MAX_REQUEST = 2 * MAX_ENVELOPE_SIZE
#: Seconds in-flight calls (the Shutdown answer) get to finish when the server stops.
STOP_GRACE = 2.0
MAX_TOPIC = 1024

#: The gRPC status of each stable error code.
STATUS_OF = {
    "INVALID_JSON": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_FIELDS": grpc.StatusCode.INVALID_ARGUMENT,
    "UNKNOWN_COMMAND": grpc.StatusCode.UNIMPLEMENTED,
    "NOT_CONNECTED": grpc.StatusCode.FAILED_PRECONDITION,
    "ALREADY_CONNECTED": grpc.StatusCode.FAILED_PRECONDITION,
    "PORT_IN_USE": grpc.StatusCode.UNAVAILABLE,
    "DIAL_FAILED": grpc.StatusCode.UNAVAILABLE,
    "PEER_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "SEND_FAILED": grpc.StatusCode.UNAVAILABLE,
    "DHT_LOOKUP_FAILED": grpc.StatusCode.UNAVAILABLE,
    "REGISTRY_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "INTERNAL": grpc.StatusCode.INTERNAL,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "TOO_MANY_STREAMS": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class GrpcStartError(Exception):
    """The server cannot start (``code``: PORT_IN_USE or INVALID_FIELDS)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class GrpcOptions:
    host: str = "127.0.0.1"
    port: int | None = None  # None: no TCP port
    socket: str | None = None  # a unix socket path
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_event_streams: int = MAX_EVENT_STREAMS


def status_of(exc: CommandError) -> grpc.StatusCode:
    if exc.too_large:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if exc.timeout:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return STATUS_OF.get(exc.code, grpc.StatusCode.UNKNOWN)


async def abort(context: Any, exc: CommandError, status: grpc.StatusCode | None = None) -> None:
    trailing: list[tuple[str, str]] = [("p2pnet-code", exc.code)]
    if exc.field:
        trailing.append(("p2pnet-field", exc.field))
    details = f"{exc.code}: {exc.message}"
    if exc.field:
        details += f" (field {exc.field})"
    await context.abort(status or status_of(exc), details, tuple(trailing))


def invalid(field: str, message: str) -> CommandError:
    return CommandError("INVALID_FIELDS", f"{field}: {message}", field=field)


def check_topic(topic: str, field: str = "topic") -> str:
    if not topic:
        raise invalid(field, "a topic is required")
    if len(topic) > MAX_TOPIC:
        raise invalid(field, f"longer than {MAX_TOPIC} characters")
    return topic


def check_recipient(value: str, field: str = "to") -> str:
    if not value:
        raise invalid(field, "a PeerID or 0x ETH address is required")
    if value.startswith(("0x", "0X")):
        if not is_eth_address(value):
            raise invalid(field, f"not an Ethereum address: {value!r}")
        return value
    check_peer_id(value, field)
    return value


def check_peer_id(value: str, field: str = "peer_id") -> PeerID:
    try:
        return PeerID.from_string(value)
    except (P2PError, ValueError) as exc:
        raise invalid(field, f"not a PeerID: {exc}") from None


def check_json(text: str, field: str = "data_json") -> Any:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ENVELOPE_SIZE:
        raise CommandError(
            "INVALID_FIELDS",
            f"{field}: {len(text)} characters exceed the {MAX_ENVELOPE_SIZE} byte message limit",
            field=field,
            too_large=True,
        )
    if not text:
        raise invalid(field, "JSON text is required (e.g. 'null')")
    try:
        return loads_bounded(text)
    except ValueError as exc:
        raise invalid(field, f"not valid JSON: {exc}") from None


class AgentNodeService:
    """The methods of ``p2pnet.v1.AgentNode`` over one node's commands."""

    def __init__(self, commands: NodeCommands, options: GrpcOptions) -> None:
        self.commands = commands
        self.events = commands.events
        self.options = options
        self.grpc_port = 0

    # -- unary -----------------------------------------------------------------------------

    def info(self) -> pb.NodeInfo:
        return convert.node_info(self.commands.status(), self.grpc_port)

    async def GetInfo(self, request: pb.GetInfoRequest) -> pb.NodeInfo:
        return self.info()

    async def Connect(self, request: pb.ConnectRequest) -> pb.NodeInfo:
        if request.port > 65535:
            raise invalid("port", f"{request.port} is not a TCP port (0-65535)")
        fields: dict[str, Any] = {"port": request.port or None}
        if request.HasField("bootstrap_peers"):
            addrs = list(request.bootstrap_peers.addrs)
            if not all(addrs):
                raise invalid("bootstrap_peers", "an empty multiaddr")
            fields["bootstrapPeers"] = addrs
        if request.private_key:
            from p2pnet.crypto.keys import KeyPair

            try:
                KeyPair.from_eth_private_key(request.private_key)
            except (P2PError, ValueError) as exc:
                raise invalid("private_key", f"not an Ethereum private key: {exc}") from None
            fields["privateKey"] = request.private_key
        if request.name:
            fields["name"] = request.name
        if request.retry_bootstrap:
            fields["retryBootstrap"] = True
        self.commands.begin_connect()
        await self.commands.run("connect", self.commands.connect(fields, origin=self))
        return self.info()

    async def Disconnect(self, request: pb.DisconnectRequest) -> pb.DisconnectResponse:
        if request.peer_id:
            check_peer_id(request.peer_id)
            await self.commands.run("disconnect", self.commands.disconnect_peer(request.peer_id))
        else:
            await self.commands.run("disconnect", self.commands.leave())
        return pb.DisconnectResponse()

    async def ListPeers(self, request: pb.ListPeersRequest) -> pb.ListPeersResponse:
        peers = await self.commands.run("list_peers", _now(self.commands.peers))
        return pb.ListPeersResponse(
            peers=[
                pb.ConnectedPeer(
                    peer_id=p["peerId"],
                    eth_address=p["ethAddress"],
                    addrs=p["addrs"],
                    direction=p["direction"],
                    name=p["name"],
                )
                for p in peers
            ]
        )

    async def Send(self, request: pb.SendRequest) -> pb.SendResponse:
        to = check_recipient(request.to)
        data = check_json(request.data_json)
        peer = await self.commands.run("send", self.commands.send(to, data))
        return pb.SendResponse(peer_id=peer)

    async def Publish(self, request: pb.PublishRequest) -> pb.PublishResponse:
        topic = check_topic(request.topic)
        if topic in (ANNOUNCEMENTS_TOPIC, STATUS_TOPIC):
            raise invalid("topic", f"{topic!r} is reserved for the agents themselves")
        data = check_json(request.data_json)
        await self.commands.run("send", self.commands.broadcast(topic, data))
        return pb.PublishResponse()

    async def Subscribe(self, request: pb.SubscribeRequest) -> pb.SubscribeResponse:
        topic = check_topic(request.topic)
        await self.commands.run("subscribe", self.commands.subscribe(topic))
        return pb.SubscribeResponse()

    async def Unsubscribe(self, request: pb.UnsubscribeRequest) -> pb.UnsubscribeResponse:
        topic = check_topic(request.topic)
        if not await self.commands.run("unsubscribe", self.commands.unsubscribe(topic)):
            raise CommandError("INVALID_FIELDS", f"not subscribed to {topic!r}", field="topic")
        return pb.UnsubscribeResponse()

    async def Discover(self, request: pb.DiscoverRequest) -> pb.DiscoverResponse:
        topic = check_topic(request.topic)
        found = await self.commands.run("discover", self.commands.discover(topic))
        return pb.DiscoverResponse(agents=[convert.agent_info(discovered_event(a)) for a in found])

    async def Shutdown(self, request: pb.ShutdownRequest) -> pb.ShutdownResponse:
        self.commands.request_shutdown(self)
        return pb.ShutdownResponse()

    # -- streams ---------------------------------------------------------------------------

    def _check_streams(self) -> None:
        if self.events.subscribers >= self.options.max_event_streams:
            raise CommandError(
                "TOO_MANY_STREAMS",
                f"{self.options.max_event_streams} event streams are open already",
            )

    async def Events(self, request: pb.EventsRequest, context: Any) -> AsyncIterator[bytes]:
        self._check_streams()
        async for item in self._stream(None, context):
            yield item

    async def Messages(self, request: pb.MessagesRequest, context: Any) -> AsyncIterator[bytes]:
        topic = check_topic(request.topic)
        self._check_streams()

        def wanted(event: NodeEvent) -> bool:
            return event.type == "message" and event.payload.get("topic") == topic

        async for item in self._stream(wanted, context):
            yield item

    async def _stream(
        self, predicate: Callable[[NodeEvent], bool] | None, context: Any
    ) -> AsyncIterator[bytes]:
        """Serialized events from now on; a ``lagged`` event stands for those this subscriber
        lost by falling behind (its queue holds the newest ``--event-backlog`` events).

        The initial metadata goes out once the subscriber is registered, so a client that
        waits for it knows every later event will be in its stream.
        """
        stream = self.events.subscribe(predicate)
        try:
            await context.send_initial_metadata((("p2pnet-last-seq", str(self.events.last_seq)),))
            async for event in stream:
                missed = stream.take_dropped()
                if missed:
                    yield convert.lagged(event.seq - 1, missed).SerializeToString()
                data = encoded(event)
                if data:
                    yield data
        finally:
            stream.close()


def encoded(event: NodeEvent) -> bytes:
    """The event's gRPC form, serialized once for all subscribers."""
    data = event.cache.get("grpc")
    if data is None:
        try:
            data = convert.event(event.seq, event.payload).SerializeToString()
        except ValueError:  # an event with no gRPC form: never sent
            data = b""
        event.cache["grpc"] = data
    return bytes(data)


def encoded_size(event: NodeEvent) -> int:
    """Bytes of the event's gRPC form (what a subscriber's backlog holds)."""
    return len(encoded(event))


async def _now(fn: Callable[[], Any]) -> Any:
    return fn()


# -- method registration ---------------------------------------------------------------------


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


def _unary(fn: Callable[[Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Any) -> Any:
        try:
            return await fn(request)
        except CommandError as exc:
            await abort(context, exc)

    return handler


def _streaming(fn: Callable[[Any, Any], AsyncIterator[bytes]]) -> Callable[[Any, Any], Any]:
    async def handler(request: Any, context: Any) -> AsyncIterator[bytes]:
        try:
            async for item in fn(request, context):
                yield item
        except CommandError as exc:
            await abort(context, exc)

    return handler


def method_handlers(service: AgentNodeService) -> Any:
    """The generic handler of ``p2pnet.v1.AgentNode``, from the proto's service descriptor."""
    handlers = {}
    descriptor = pb.DESCRIPTOR.services_by_name["AgentNode"]
    for method in descriptor.methods:
        request_type = getattr(pb, method.input_type.name)
        impl = getattr(service, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(impl),
                request_deserializer=request_type.FromString,
                response_serializer=_serialize,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(impl),
                request_deserializer=request_type.FromString,
                response_serializer=_serialize,
            )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


# -- authentication --------------------------------------------------------------------------


class TokenAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every call must carry ``authorization: Bearer <token>``; others are UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        given = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode("latin-1")
        if hmac.compare_digest(given.encode("utf-8", "replace"), self._expected):
            return handler
        return _denied(handler)


def _denied(handler: Any) -> Any:
    if handler is None:
        return None
    failure = CommandError("UNAUTHENTICATED", "missing or wrong token (authorization: Bearer ...)")

    async def deny(request: Any, context: Any) -> Any:
        await abort(context, failure)

    async def deny_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        await abort(context, failure)
        yield  # pragma: no cover - abort raises

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(deny, **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kw)


# -- the server ------------------------------------------------------------------------------


def _read_tls(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    try:
        with open(cert_path, "rb") as f:
            cert = f.read()
        with open(key_path, "rb") as f:
            key = f.read()
    except OSError as exc:
        raise GrpcStartError("INVALID_FIELDS", f"cannot read the TLS files: {exc}") from exc
    return cert, key


class GrpcServer:
    """One ``grpc.aio`` server for a node: AgentNode, health, reflection."""

    def __init__(self, commands: NodeCommands, options: GrpcOptions) -> None:
        self.options = options
        self.service = AgentNodeService(commands, options)
        self.port: int | None = None
        self._health = health.aio.HealthServicer()
        self._server: Any = None

    async def start(self) -> None:
        opts = self.options
        interceptors = [TokenAuth(opts.token)] if opts.token else []
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                # Without this, a second process could bind the same port (SO_REUSEPORT).
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_REQUEST),
            ],
        )
        server.add_generic_rpc_handlers((method_handlers(self.service),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [
                SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        credentials = None
        if opts.tls_cert is not None and opts.tls_key is not None:
            cert, key = _read_tls(opts.tls_cert, opts.tls_key)
            credentials = grpc.ssl_server_credentials([(key, cert)])
        if opts.port is not None:
            host = f"[{opts.host}]" if ":" in opts.host else opts.host
            self.port = self._bind(server, f"{host}:{opts.port}", credentials)
            self.service.grpc_port = self.port
        if opts.socket is not None:
            self._bind(server, f"unix:{opts.socket}", credentials)
        await server.start()
        self._server = server
        for name in ("", SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _bind(self, server: Any, address: str, credentials: Any) -> int:
        """Add a listening address; grpc answers 0 (or raises) when it cannot bind."""
        try:
            if credentials is not None:
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise GrpcStartError("PORT_IN_USE", f"cannot serve gRPC on {address}: {exc}") from exc
        if not port:
            raise GrpcStartError(
                "PORT_IN_USE", f"cannot serve gRPC on {address}: it is in use or not ours"
            )
        return int(port)

    async def set_not_serving(self) -> None:
        if self._server is not None:
            await self._health.enter_graceful_shutdown()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(STOP_GRACE)
