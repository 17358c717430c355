"""The gRPC interface's generated module is up to date with agent_node.proto and ships with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gen_protos_script import load_gen_script

from p2pnet.rpc import agent_node_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
RPC_DIR = ROOT / "p2pnet" / "rpc"


def test_generated_rpc_module_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools.protoc")
    gen = load_gen_script()
    written = gen.generate(tmp_path, gen.RPC_DIR)
    assert sorted(p.name for p in written) == ["agent_node_pb2.py", "agent_node_pb2.pyi"]
    for path in written:
        assert path.read_bytes() == (RPC_DIR / path.name).read_bytes(), (
            f"{path.name} is stale: run `python scripts/gen_protos.py`"
        )


def test_service_shape() -> None:
    service = pb.DESCRIPTOR.services_by_name["AgentNode"]
    assert service.full_name == "p2pnet.v1.AgentNode"
    methods = {m.name: m.server_streaming for m in service.methods}
    assert methods == {
        "GetInfo": False,
        "Connect": False,
        "Disconnect": False,
        "ListPeers": False,
        "Send": False,
        "Publish": False,
        "Subscribe": False,
        "Unsubscribe": False,
        "Discover": False,
        "Shutdown": False,
        "Events": True,
        "Messages": True,
    }
    kinds = [f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["kind"].fields]
    assert kinds == [
        "ready",
        "message",
        "peer_discovered",
        "peer_connected",
        "peer_disconnected",
        "error",
        "log",
        "lagged",
        "bootstrap_failed",
        "bootstrap_succeeded",
    ]
    # The registry issue fills this in; until then it is absent, and typed.
    registry = pb.NodeInfo.DESCRIPTOR.fields_by_name["registry"]
    assert registry.message_type.full_name == "p2pnet.v1.RegistryStatus"
    assert not pb.NodeInfo().HasField("registry")


def test_proto_ships_with_the_package() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"rpc/*.proto"' in text
    assert (RPC_DIR / "agent_node.proto").read_text().count("package p2pnet.v1;") == 1


def test_conversions_round_trip() -> None:
    from p2pnet.rpc import convert

    status = {
        "type": "node-status",
        "connected": True,
        "name": "a",
        "peerId": "16Uiu2x",
        "ethAddress": "0xabc",
        "addrs": ["/ip4/127.0.0.1/tcp/1/p2p/16Uiu2x"],
        "mode": "client",
        "peers": 2,
        "mesh": {"t": 1},
        "dhtTableSize": 3,
        "uptime": 1.5,
        "messagesIn": 4,
        "messagesOut": 5,
        "rejected": 6,
        "registry": {
            "policy": "enforce",
            "registry": "eip155:31337:0x1",
            "registered": True,
            "agentId": 0,
            "error": "",
        },
    }
    info = convert.node_info(status, grpc_port=7)
    assert info.registry.HasField("agent_id") and info.registry.agent_id == 0
    back = convert.info_dict(info)
    assert back == {**{k: v for k, v in status.items() if k != "type"}, "grpcPort": 7}
    message = {
        "type": "message",
        "from": "16Uiu2x",
        "fromEth": "0xabc",
        "data": [1, "é"],
        "direct": False,
        "topic": "t",
    }
    assert convert.event_dict(convert.event(9, message)) == {**message, "seq": 9}
    direct = {
        "type": "message",
        "from": "16Uiu2x",
        "fromEth": None,
        "data": None,
        "direct": True,
        "via": "/ip4/10.0.0.1/tcp/4001/p2p/16Uiu2r/p2p-circuit",
    }
    assert convert.event_dict(convert.event(10, direct)) == {**direct, "seq": 10}
    # With a registry policy, the sender's registration travels with the message and the
    # discovered agent (docs/cli.md): unknown, unregistered, and registered with its file.
    ref = "eip155:31337:0x5FbDB2315678afecb367f032d93F642f64180aa3"
    annotations: list[dict[str, Any]] = [
        {"registered": None, "agentId": None, "agentRegistry": ref},
        {"registered": False, "agentId": None, "agentRegistry": ref},
        {
            "registered": True,
            "agentId": 0,
            "agentRegistry": ref,
            "agentName": "weather",
            "services": [{"name": "A2A", "endpoint": "https://x.example/a2a", "version": "0.3"}],
        },
    ]
    for note in annotations:
        annotated = {**message, "registry": note}
        assert convert.event_dict(convert.event(13, annotated)) == {**annotated, "seq": 13}
        found = {
            "type": "peer_discovered",
            "peerId": "16Uiu2x",
            "ethAddress": "0xabc",
            "topics": ["t"],
            "addrs": [],
            "registry": note,
        }
        assert convert.event_dict(convert.event(14, found)) == {**found, "seq": 14}
    joined = {
        "type": "peer_connected",
        "peerId": "16Uiu2x",
        "ethAddress": "0xabc",
        "addr": "/ip4/127.0.0.1/tcp/1",
        "direction": "inbound",
    }
    assert convert.event_dict(convert.event(11, joined)) == {**joined, "seq": 11}
    for eth in ("0xabc", None):  # null for a peer without a secp256k1 identity
        left = {"type": "peer_disconnected", "peerId": "12D3x", "ethAddress": eth}
        assert convert.event_dict(convert.event(12, left)) == {**left, "seq": 12}
    with pytest.raises(ValueError):
        convert.event(1, {"type": "sent"})


def test_bootstrap_events_have_kinds_of_their_own() -> None:
    from p2pnet.rpc import convert

    failed = {"type": "bootstrap_failed", "attempt": 2, "error": "x", "retryIn": 1.5}
    ev = convert.event(7, failed)
    assert ev.seq == 7 and ev.WhichOneof("kind") == "bootstrap_failed"
    assert convert.event_dict(ev) == {**failed, "seq": 7}
    joined = {"type": "bootstrap_succeeded", "attempt": 1, "dhtTableSize": 3}
    ok = convert.event(8, joined)
    assert ok.WhichOneof("kind") == "bootstrap_succeeded"
    assert convert.event_dict(ok) == {**joined, "seq": 8}


def test_every_stable_error_code_has_a_grpc_status() -> None:
    # An error code without a mapping would reach gRPC clients as UNKNOWN.
    from p2pnet.cli.node_commands import ERROR_CODES
    from p2pnet.rpc.server import STATUS_OF

    missing = [code for code in ERROR_CODES if code not in STATUS_OF]
    assert missing == []
