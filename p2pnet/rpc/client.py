"""An asyncio client of the ``p2pnet.v1.AgentNode`` service (docs/grpc.md).

::

    async with AgentNodeClient("127.0.0.1:50051") as client:
        info = await client.connect(port=4001)
        await client.subscribe("news")
        async for event in client.events():
            ...

Calls return the proto's messages; failures raise :class:`P2PNodeError` with the stable code of
docs/cli.md (``status``: the gRPC status name). A service that cannot be reached is
``UNAVAILABLE``; a call without an answer within ``timeout`` is ``TIMEOUT``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from p2pnet.rpc import agent_node_pb2 as pb
from p2pnet.rpc.errors import TIMEOUT, UNAVAILABLE, P2PNodeError

SERVICE = "/p2pnet.v1.AgentNode/"
_UNARY: dict[str, tuple[Any, Any]] = {
    "GetInfo": (pb.GetInfoRequest, pb.NodeInfo),
    "Connect": (pb.ConnectRequest, pb.NodeInfo),
    "Disconnect": (pb.DisconnectRequest, pb.DisconnectResponse),
    "ListPeers": (pb.ListPeersRequest, pb.ListPeersResponse),
    "Send": (pb.SendRequest, pb.SendResponse),
    "Publish": (pb.PublishRequest, pb.PublishResponse),
    "Subscribe": (pb.SubscribeRequest, pb.SubscribeResponse),
    "Unsubscribe": (pb.UnsubscribeRequest, pb.UnsubscribeResponse),
    "Discover": (pb.DiscoverRequest, pb.DiscoverResponse),
    "Shutdown": (pb.ShutdownRequest, pb.ShutdownResponse),
}
_STREAMS: dict[str, Any] = {"Events": pb.EventsRequest, "Messages": pb.MessagesRequest}


def rpc_error(exc: grpc.aio.AioRpcError) -> P2PNodeError:
    """A P2PNodeError from a failed call: the node's stable code, else the status's meaning."""
    trailing = dict(exc.trailing_metadata() or ())
    status = exc.code()
    code = trailing.get("p2pnet-code")
    details = exc.details() or ""
    if code is None:
        if status == grpc.StatusCode.DEADLINE_EXCEEDED:
            code = TIMEOUT
        elif status == grpc.StatusCode.UNAVAILABLE:
            code = UNAVAILABLE
        else:
            code = status.name
        message = details or status.name
    else:
        message = details[len(code) + 2 :] if details.startswith(f"{code}: ") else details
    event: dict[str, Any] = {"type": "error", "code": str(code), "message": message}
    return P2PNodeError(
        str(code), message, event, status=status.name, field=trailing.get("p2pnet-field")
    )


class AgentNodeClient:
    """A channel to one node's gRPC service and its methods."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        server_name: str | None = None,
        timeout: float | None = 90.0,
    ) -> None:
        """``target``: ``host:port`` or ``unix:PATH``. ``token``: sent as ``authorization:
        Bearer TOKEN`` on every call. ``root_certificates``: use TLS, trusting these (PEM)."""
        self.target = target
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        options: list[tuple[str, Any]] = []
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        self._unary = {
            name: self.channel.unary_unary(
                SERVICE + name,
                request_serializer=req.SerializeToString,
                response_deserializer=resp.FromString,
            )
            for name, (req, resp) in _UNARY.items()
        }
        self._streams = {
            name: self.channel.unary_stream(
                SERVICE + name,
                request_serializer=req.SerializeToString,
                response_deserializer=pb.Event.FromString,
            )
            for name, req in _STREAMS.items()
        }

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AgentNodeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def call(
        self, method: str, request: Any, timeout: float | None = None, wait_for_ready: bool = False
    ) -> Any:
        """One unary call; raises :class:`P2PNodeError`."""
        try:
            return await self._unary[method](
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
                wait_for_ready=wait_for_ready,
            )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from None

    async def open_stream(self, method: str, request: Any) -> EventCall:
        """Open a server stream and wait until the node has registered it (its initial
        metadata came): every event from then on is in it. Iterating raises
        :class:`P2PNodeError` if the stream fails."""
        call = self._streams[method](request, metadata=self._metadata)
        try:
            await call.initial_metadata()
            if call.done() and await call.code() != grpc.StatusCode.OK:  # refused at once
                raise grpc.aio.AioRpcError(
                    await call.code(),
                    await call.initial_metadata(),
                    await call.trailing_metadata(),
                    await call.details(),
                )
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise rpc_error(exc) from None
        except BaseException:
            call.cancel()
            raise
        return EventCall(call)

    # -- the methods -----------------------------------------------------------------------

    async def get_info(self, timeout: float | None = None, wait: bool = False) -> pb.NodeInfo:
        info: pb.NodeInfo = await self.call("GetInfo", pb.GetInfoRequest(), timeout, wait)
        return info

    async def connect(
        self,
        port: int = 0,
        bootstrap_peers: Sequence[str] | None = None,
        private_key: str | None = None,
        name: str = "",
        timeout: float | None = None,
        retry_bootstrap: bool = False,
    ) -> pb.NodeInfo:
        req = pb.ConnectRequest(
            port=port, private_key=private_key or "", name=name, retry_bootstrap=retry_bootstrap
        )
        if bootstrap_peers is not None:
            req.bootstrap_peers.CopyFrom(pb.PeerList(addrs=list(bootstrap_peers)))
        info: pb.NodeInfo = await self.call("Connect", req, timeout)
        return info

    async def disconnect(self, peer_id: str = "") -> None:
        await self.call("Disconnect", pb.DisconnectRequest(peer_id=peer_id))

    async def list_peers(self) -> list[pb.ConnectedPeer]:
        answer = await self.call("ListPeers", pb.ListPeersRequest())
        return list(answer.peers)

    async def send(self, to: str, data: Any) -> str:
        """Send ``data`` (any JSON value) to one agent; returns the recipient's PeerID."""
        answer = await self.call("Send", pb.SendRequest(to=to, data_json=_dumps(data)))
        return str(answer.peer_id)

    async def publish(self, topic: str, data: Any) -> None:
        await self.call("Publish", pb.PublishRequest(topic=topic, data_json=_dumps(data)))

    async def subscribe(self, topic: str) -> None:
        await self.call("Subscribe", pb.SubscribeRequest(topic=topic))

    async def unsubscribe(self, topic: str) -> None:
        await self.call("Unsubscribe", pb.UnsubscribeRequest(topic=topic))

    async def discover(self, topic: str) -> list[pb.AgentInfo]:
        answer = await self.call("Discover", pb.DiscoverRequest(topic=topic))
        return list(answer.agents)

    async def shutdown(self, timeout: float | None = None) -> None:
        await self.call("Shutdown", pb.ShutdownRequest(), timeout)

    async def events(self) -> EventCall:
        """The node's event stream from now on (see :meth:`open_stream`)."""
        return await self.open_stream("Events", pb.EventsRequest())

    async def messages(self, topic: str) -> EventCall:
        """The messages of one topic from now on (and ``lagged`` events)."""
        return await self.open_stream("Messages", pb.MessagesRequest(topic=topic))


class EventCall:
    """The events of one server stream: ``async for``; ``await aclose()`` ends the call (also
    before the first event)."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __aiter__(self) -> EventCall:
        return self

    async def __anext__(self) -> pb.Event:
        try:
            event = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from None
        if event is grpc.aio.EOF:
            raise StopAsyncIteration
        return event  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        self._call.cancel()


def _dumps(data: Any) -> str:
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise P2PNodeError(
            "INVALID_FIELDS", f"data is not JSON: {exc}", field="data_json"
        ) from None
