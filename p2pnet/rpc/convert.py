"""Between the node's events and answers in their JSON-lines form (dicts) and the messages of
``p2pnet.v1`` (agent_node.proto), both ways: the server encodes, the SDK decodes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from p2pnet.rpc import agent_node_pb2 as pb


def dumps(value: Any) -> str:
    """JSON text of an application value (what ``data_json`` carries)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def node_info(info: Mapping[str, Any], grpc_port: int = 0) -> pb.NodeInfo:
    """A NodeInfo from a ``node-status`` or ``ready`` dict."""
    out = pb.NodeInfo(
        connected=bool(info.get("connected", True)),
        peer_id=str(info.get("peerId") or ""),
        eth_address=str(info.get("ethAddress") or ""),
        addrs=[str(a) for a in info.get("addrs", [])],
        mode=str(info.get("mode") or ""),
        name=str(info.get("name") or ""),
        grpc_port=int(info.get("grpcPort", grpc_port) or 0),
    )
    if "peers" in info:
        out.stats.CopyFrom(
            pb.NodeStats(
                peers=int(info.get("peers", 0)),
                mesh={str(k): int(v) for k, v in dict(info.get("mesh", {})).items()},
                dht_table_size=int(info.get("dhtTableSize", 0)),
                uptime=float(info.get("uptime", 0.0)),
                messages_in=int(info.get("messagesIn", 0)),
                messages_out=int(info.get("messagesOut", 0)),
                rejected=int(info.get("rejected", 0)),
            )
        )
    registry = info.get("registry")
    if isinstance(registry, Mapping):
        out.registry.CopyFrom(registry_status(registry))
    return out


def registry_status(r: Mapping[str, Any]) -> pb.RegistryStatus:
    """A RegistryStatus from the ``registry`` object of ``node-status`` (policy, registry,
    registered, agentId, error): where the on-chain registry's state enters GetInfo."""
    out = pb.RegistryStatus(
        policy=str(r.get("policy") or ""),
        registry=str(r.get("registry") or ""),
        registered=bool(r.get("registered")),
        error=str(r.get("error") or ""),
    )
    if r.get("agentId") is not None:
        out.agent_id = int(r["agentId"])
    return out


def agent_registration(r: Mapping[str, Any]) -> pb.AgentRegistration:
    """The ``registry`` annotation of a ``message``/``peer_discovered`` event (registered,
    agentId, agentRegistry, and agentName/services when the registration file resolves)."""
    out = pb.AgentRegistration(agent_registry=str(r.get("agentRegistry") or ""))
    if r.get("registered") is not None:
        out.registered = bool(r["registered"])
    if r.get("agentId") is not None:
        out.agent_id = int(r["agentId"])
    if r.get("agentName") is not None:
        out.agent_name = str(r["agentName"])
    if "services" in r:
        out.services_json = json.dumps(r["services"])
    return out


def registration_dict(r: pb.AgentRegistration) -> dict[str, Any]:
    out: dict[str, Any] = {
        "registered": r.registered if r.HasField("registered") else None,
        "agentId": r.agent_id if r.HasField("agent_id") else None,
        "agentRegistry": r.agent_registry,
    }
    if r.HasField("agent_name"):
        out["agentName"] = r.agent_name
    if r.services_json:
        out["services"] = json.loads(r.services_json)
    return out


def agent_info(d: Mapping[str, Any]) -> pb.AgentInfo:
    out = pb.AgentInfo(
        peer_id=str(d.get("peerId", "")),
        eth_address=str(d.get("ethAddress") or ""),
        topics=[str(t) for t in d.get("topics", [])],
        addrs=[str(a) for a in d.get("addrs", [])],
        name=str(d.get("name") or ""),
    )
    registry = d.get("registry")
    if isinstance(registry, Mapping):
        out.registry.CopyFrom(agent_registration(registry))
    return out


def event(seq: int, payload: Mapping[str, Any]) -> pb.Event:
    """An Event from a node event in its JSON-lines form."""
    kind = payload.get("type")
    if kind == "ready":
        return pb.Event(seq=seq, ready=node_info(payload))
    if kind == "message":
        message = pb.Message(
            from_peer_id=str(payload.get("from", "")),
            from_eth=str(payload.get("fromEth") or ""),
            data_json=dumps(payload.get("data")),
            topic=str(payload.get("topic") or ""),
            direct=bool(payload.get("direct")),
            via=str(payload.get("via") or ""),
        )
        registry = payload.get("registry")
        if isinstance(registry, Mapping):
            message.registry.CopyFrom(agent_registration(registry))
        return pb.Event(seq=seq, message=message)
    if kind == "peer_discovered":
        return pb.Event(seq=seq, peer_discovered=agent_info(payload))
    if kind == "peer_connected":
        return pb.Event(
            seq=seq,
            peer_connected=pb.PeerConnected(
                peer_id=str(payload.get("peerId", "")),
                addr=str(payload.get("addr", "")),
                direction=str(payload.get("direction", "")),
                eth_address=str(payload.get("ethAddress") or ""),
            ),
        )
    if kind == "peer_disconnected":
        return pb.Event(
            seq=seq,
            peer_disconnected=pb.PeerDisconnected(
                peer_id=str(payload.get("peerId", "")),
                eth_address=str(payload.get("ethAddress") or ""),
            ),
        )
    if kind == "error":
        return pb.Event(
            seq=seq,
            error=pb.ErrorEvent(
                code=str(payload.get("code", "")),
                message=str(payload.get("message", "")),
                command=str(payload.get("command", "")),
            ),
        )
    if kind == "log":
        return pb.Event(
            seq=seq,
            log=pb.LogEvent(
                level=str(payload.get("level", "")),
                namespace=str(payload.get("namespace", "")),
                message=str(payload.get("message", "")),
                meta_json=json.dumps(payload.get("meta", {}), default=str),
            ),
        )
    if kind == "bootstrap_failed":
        return pb.Event(
            seq=seq,
            bootstrap_failed=pb.BootstrapFailed(
                attempt=int(payload.get("attempt", 0)),
                error=str(payload.get("error") or ""),
                retry_in=float(payload.get("retryIn", 0.0)),
            ),
        )
    if kind == "bootstrap_succeeded":
        return pb.Event(
            seq=seq,
            bootstrap_succeeded=pb.BootstrapSucceeded(
                attempt=int(payload.get("attempt", 0)),
                dht_table_size=int(payload.get("dhtTableSize", 0)),
            ),
        )
    raise ValueError(f"no gRPC form for a {kind!r} event")


def lagged(seq: int, missed: int) -> pb.Event:
    return pb.Event(seq=seq, lagged=pb.Lagged(missed=missed))


# -- decoding (the SDK) ----------------------------------------------------------------------


def info_dict(info: pb.NodeInfo) -> dict[str, Any]:
    """A NodeInfo in the form of the JSON ``ready`` / ``node-status`` events."""
    out: dict[str, Any] = {
        "connected": info.connected,
        "name": info.name,
    }
    if info.connected:
        out.update(
            peerId=info.peer_id,
            ethAddress=info.eth_address,
            addrs=list(info.addrs),
            mode=info.mode,
        )
    if info.grpc_port:
        out["grpcPort"] = info.grpc_port
    if info.HasField("stats"):
        s = info.stats
        out.update(
            peers=s.peers,
            mesh=dict(s.mesh),
            dhtTableSize=s.dht_table_size,
            uptime=s.uptime,
            messagesIn=s.messages_in,
            messagesOut=s.messages_out,
            rejected=s.rejected,
        )
    if info.HasField("registry"):
        r = info.registry
        out["registry"] = {
            "policy": r.policy,
            "registry": r.registry,
            "registered": r.registered,
            "agentId": r.agent_id if r.HasField("agent_id") else None,
            "error": r.error,
        }
    return out


def agent_dict(a: pb.AgentInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "peer_discovered",
        "peerId": a.peer_id,
        "ethAddress": a.eth_address or None,
        "topics": list(a.topics),
        "addrs": list(a.addrs),
    }
    if a.name:
        out["name"] = a.name
    if a.HasField("registry"):
        out["registry"] = registration_dict(a.registry)
    return out


def event_dict(ev: pb.Event) -> dict[str, Any]:
    """An Event in its JSON-lines form, with ``seq``."""
    kind = ev.WhichOneof("kind")
    out: dict[str, Any]
    if kind == "ready":
        out = {"type": "ready", **info_dict(ev.ready)}
        out.pop("connected", None)
    elif kind == "message":
        m = ev.message
        out = {
            "type": "message",
            "from": m.from_peer_id,
            "fromEth": m.from_eth or None,
            "data": json.loads(m.data_json) if m.data_json else None,
            "direct": m.direct,
        }
        if m.topic:
            out["topic"] = m.topic
        if m.via:
            out["via"] = m.via
        if m.HasField("registry"):
            out["registry"] = registration_dict(m.registry)
    elif kind == "peer_discovered":
        out = agent_dict(ev.peer_discovered)
    elif kind == "peer_connected":
        c = ev.peer_connected
        out = {
            "type": "peer_connected",
            "peerId": c.peer_id,
            "ethAddress": c.eth_address or None,
            "addr": c.addr,
            "direction": c.direction,
        }
    elif kind == "peer_disconnected":
        d = ev.peer_disconnected
        out = {
            "type": "peer_disconnected",
            "peerId": d.peer_id,
            "ethAddress": d.eth_address or None,
        }
    elif kind == "error":
        e = ev.error
        out = {"type": "error", "code": e.code, "message": e.message}
        if e.command:
            out["command"] = e.command
    elif kind == "log":
        lg = ev.log
        out = {
            "type": "log",
            "level": lg.level,
            "namespace": lg.namespace,
            "message": lg.message,
            "meta": json.loads(lg.meta_json) if lg.meta_json else {},
        }
    elif kind == "lagged":
        out = {"type": "lagged", "missed": ev.lagged.missed}
    elif kind == "bootstrap_failed":
        f = ev.bootstrap_failed
        out = {
            "type": "bootstrap_failed",
            "attempt": f.attempt,
            "error": f.error,
            "retryIn": f.retry_in,
        }
    elif kind == "bootstrap_succeeded":
        s = ev.bootstrap_succeeded
        out = {
            "type": "bootstrap_succeeded",
            "attempt": s.attempt,
            "dhtTableSize": s.dht_table_size,
        }
    else:
        out = {"type": str(kind)}
    out["seq"] = ev.seq
    return out
