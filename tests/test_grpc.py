"""p2p-node's gRPC interface (docs/grpc.md) against real p2p-node processes: every RPC, the
numbered event stream, lagging subscribers, authentication, and the failures around it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_p2p_node import free_port, peer_id_of

from p2pnet.crypto.keys import KeyPair
from p2pnet.rpc import agent_node_pb2 as pb
from p2pnet.rpc.client import AgentNodeClient
from p2pnet.sdk import PROCESS_EXITED, P2PNode, P2PNodeError

P2P_NODE = [sys.executable, "-m", "p2pnet.cli.p2p_node"]
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
TIMEOUT = 20.0


class GrpcNode:
    """A p2p-node process with gRPC on a free port, and a client of it."""

    def __init__(self, proc: asyncio.subprocess.Process, first: dict[str, Any]) -> None:
        self.proc = proc
        self.first = first
        self.port = int(first.get("grpcPort", 0))
        self.client = AgentNodeClient(f"127.0.0.1:{self.port}", timeout=TIMEOUT)

    async def close(self) -> None:
        await self.client.close()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn_raw(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *P2P_NODE,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        limit=16 << 20,
    )


async def first_line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    assert line, "p2p-node wrote nothing"
    event: dict[str, Any] = json.loads(line)
    return event


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Any]]:
    nodes: list[GrpcNode] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> GrpcNode:
        proc = await spawn_raw("-g", "0", "--bootstrap-peers", "", *args, env=env)
        node = GrpcNode(proc, await first_line(proc))
        nodes.append(node)
        assert node.first["type"] == "grpc_listening", node.first
        return node

    try:
        yield start
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def rpc_fails(call: Any, status: str, code: str, field: str | None = None) -> None:
    with pytest.raises(P2PNodeError) as err:
        await call
    assert (err.value.status, err.value.code) == (status, code), err.value
    if field is not None:
        assert err.value.field == field, err.value


async def until(predicate: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)


async def test_every_rpc_between_three_nodes(spawn: Any) -> None:
    boot = await spawn("--bootstrap")
    alice = await spawn("--name", "alice")
    bob = await spawn("--name", "bob")

    # Before Connect: the service answers, commands that need the network do not.
    info = await alice.client.get_info()
    assert not info.connected and info.grpc_port == alice.port and info.name == "alice"
    assert not info.HasField("registry")
    await rpc_fails(alice.client.send(ANVIL_ADDRESS, 1), "FAILED_PRECONDITION", "NOT_CONNECTED")
    await rpc_fails(alice.client.subscribe("t"), "FAILED_PRECONDITION", "NOT_CONNECTED")
    await rpc_fails(alice.client.list_peers(), "FAILED_PRECONDITION", "NOT_CONNECTED")
    # Invalid arguments name their field.
    await rpc_fails(alice.client.send("0x12", 1), "INVALID_ARGUMENT", "INVALID_FIELDS", "to")
    await rpc_fails(alice.client.send("", 1), "INVALID_ARGUMENT", "INVALID_FIELDS", "to")
    bad_json = alice.client.call("Send", pb.SendRequest(to=ANVIL_ADDRESS, data_json="{nope"))
    await rpc_fails(bad_json, "INVALID_ARGUMENT", "INVALID_FIELDS", "data_json")
    await rpc_fails(alice.client.subscribe(""), "INVALID_ARGUMENT", "INVALID_FIELDS", "topic")
    reserved = alice.client.publish("agent-announcements", 1)
    await rpc_fails(reserved, "INVALID_ARGUMENT", "INVALID_FIELDS", "topic")
    big_port = alice.client.call("Connect", pb.ConnectRequest(port=70000))
    await rpc_fails(big_port, "INVALID_ARGUMENT", "INVALID_FIELDS", "port")
    bad_key = alice.client.connect(private_key="0x1234")
    await rpc_fails(bad_key, "INVALID_ARGUMENT", "INVALID_FIELDS", "private_key")

    boot_info = await boot.client.connect(bootstrap_peers=[])
    assert boot_info.connected and boot_info.mode == "server"
    events = await alice.client.events()
    a_info = await alice.client.connect(
        bootstrap_peers=list(boot_info.addrs), private_key=ANVIL_KEY
    )
    assert a_info.eth_address == ANVIL_ADDRESS and a_info.grpc_port == alice.port
    await rpc_fails(alice.client.connect(), "FAILED_PRECONDITION", "ALREADY_CONNECTED")
    b_info = await bob.client.connect(bootstrap_peers=list(boot_info.addrs))

    # JSON lines saw the same ready, with grpcPort.
    assert alice.proc.stdout is not None
    ready = json.loads(await asyncio.wait_for(alice.proc.stdout.readline(), TIMEOUT))
    assert ready["type"] == "ready" and ready["grpcPort"] == alice.port
    assert ready["peerId"] == a_info.peer_id

    first = await anext(events)
    assert first.WhichOneof("kind") == "ready" and first.ready.peer_id == a_info.peer_id

    await asyncio.gather(alice.client.subscribe("room"), bob.client.subscribe("room"))
    room = await bob.client.messages("room")

    async def found_bob() -> bool:
        return b_info.peer_id in {a.peer_id for a in await alice.client.discover("room")}

    await until(found_bob)
    assert await alice.client.send(b_info.eth_address, {"n": 1}) == b_info.peer_id
    assert await alice.client.send(b_info.peer_id, {"n": 2}) == b_info.peer_id
    await rpc_fails(
        alice.client.send("0x" + os.urandom(20).hex(), 1), "NOT_FOUND", "PEER_NOT_FOUND"
    )
    too_big = alice.client.send(b_info.peer_id, "x" * 300_000)
    await rpc_fails(too_big, "RESOURCE_EXHAUSTED", "INVALID_FIELDS", "data_json")

    async with asyncio.timeout(TIMEOUT):
        while True:
            await alice.client.publish("room", {"b": "hello"})
            try:
                got = await asyncio.wait_for(anext(room), 0.5)
                break
            except TimeoutError:
                continue
    assert got.message.topic == "room" and json.loads(got.message.data_json) == {"b": "hello"}
    assert got.message.from_eth == ANVIL_ADDRESS and not got.message.direct

    peers = {p.peer_id: p for p in await alice.client.list_peers()}
    assert b_info.peer_id in peers and boot_info.peer_id in peers
    assert peers[b_info.peer_id].eth_address == b_info.eth_address

    # Alice's stream: strictly increasing seq; peer events; the direct messages are there.
    seen: list[pb.Event] = [first]
    await alice.client.disconnect(b_info.peer_id)
    unknown = "16Uiu2HAmBUswuXdATx1MDhJ8NhisSbp2De8YyDSkHz35ZWeRfL9p"
    await rpc_fails(alice.client.disconnect(unknown), "NOT_FOUND", "PEER_NOT_FOUND", "peer_id")
    async with asyncio.timeout(TIMEOUT):
        while not any(
            e.WhichOneof("kind") == "peer_disconnected"
            and e.peer_disconnected.peer_id == b_info.peer_id
            for e in seen
        ):
            seen.append(await anext(events))
    seqs = [e.seq for e in seen]
    assert seqs == sorted(set(seqs)) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    kinds = {e.WhichOneof("kind") for e in seen}
    assert {"ready", "peer_connected", "peer_disconnected"} <= kinds
    assert "lagged" not in kinds

    await bob.client.unsubscribe("room")
    await rpc_fails(bob.client.unsubscribe("room"), "INVALID_ARGUMENT", "INVALID_FIELDS", "topic")

    # Leaving the network and joining again.
    await bob.client.disconnect()
    assert not (await bob.client.get_info()).connected
    again = await bob.client.connect(bootstrap_peers=list(boot_info.addrs))
    assert again.connected and again.peer_id != b_info.peer_id

    # Shutdown ends the process with 0 although its stdin stays open; the stream ends.
    await alice.client.shutdown()
    assert await asyncio.wait_for(alice.proc.wait(), TIMEOUT) == 0
    with pytest.raises((StopAsyncIteration, P2PNodeError)):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await anext(events)


async def test_slow_subscriber_lags_with_the_count_and_streams_are_bounded(spawn: Any) -> None:
    boot = await spawn("--bootstrap")
    alice = await spawn("--event-backlog", "8", "--grpc-max-streams", "6")
    bob = await spawn()
    boot_info = await boot.client.connect(bootstrap_peers=[])
    a_info = await alice.client.connect(bootstrap_peers=list(boot_info.addrs))
    await bob.client.connect(bootstrap_peers=list(boot_info.addrs))

    never_read = await alice.client.events()  # opened, then not read for a while
    others = [await alice.client.events() for _ in range(5)]
    await rpc_fails(alice.client.events(), "RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS")
    # A client that goes away mid-stream frees its place.
    for stream in others[:3]:
        await stream.aclose()

    async def reopened() -> bool:
        try:
            others[:3] = [await alice.client.events() for _ in range(3)]
        except P2PNodeError:
            return False
        return True

    await until(reopened)

    # Big direct messages, more than HTTP/2 buffers and the backlog together.
    blob = "x" * 100_000
    for n in range(60):
        await bob.client.send(a_info.peer_id, {"n": n, "blob": blob})
    got: list[pb.Event] = []
    async with asyncio.timeout(TIMEOUT):
        while not any(
            e.WhichOneof("kind") == "message" and json.loads(e.message.data_json)["n"] == 59
            for e in got
        ):
            got.append(await anext(never_read))
    lagged = [e for e in got if e.WhichOneof("kind") == "lagged"]
    assert lagged, "a subscriber that fell behind must be told"
    seqs = [e.seq for e in got]
    assert seqs == sorted(set(seqs)), "seq strictly increasing, lagged included"
    # Every number is accounted for: each gap between delivered events is exactly the count
    # of the lagged event in it, whose own seq is the last one missed.
    previous: int | None = None
    missed = 0
    for e in got:
        if e.WhichOneof("kind") == "lagged":
            missed = e.lagged.missed
            continue
        if previous is not None:
            assert e.seq - previous - 1 == missed, (previous, missed, e.seq)
        previous, missed = e.seq, 0
    for e in lagged:
        assert e.lagged.missed > 0
    assert (await alice.client.get_info()).connected  # the node never blocked on us


async def test_token_auth_and_non_loopback_refusal(spawn: Any) -> None:
    node = await spawn(env={"GRPC_TOKEN": "s3cret"})
    await rpc_fails(node.client.get_info(), "UNAUTHENTICATED", "UNAUTHENTICATED")
    await rpc_fails(node.client.events(), "UNAUTHENTICATED", "UNAUTHENTICATED")
    wrong = AgentNodeClient(f"127.0.0.1:{node.port}", token="nope", timeout=TIMEOUT)
    right = AgentNodeClient(f"127.0.0.1:{node.port}", token="s3cret", timeout=TIMEOUT)
    try:
        await rpc_fails(wrong.get_info(), "UNAUTHENTICATED", "UNAUTHENTICATED")
        assert not (await right.get_info()).connected
        stream = await right.events()
        await stream.aclose()
    finally:
        await wrong.close()
        await right.close()

    proc = await spawn_raw("-g", "0", "--grpc-host", "0.0.0.0")
    event = await first_line(proc)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert event["type"] == "error" and event["code"] == "INVALID_FIELDS"
    assert "not a loopback address" in event["message"] and b"--grpc-token" in err


async def test_grpc_port_in_use_exits_2_with_an_error_event() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = await spawn_raw("-g", str(busy.getsockname()[1]))
        event = await first_line(proc)
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert event["type"] == "error" and event["code"] == "PORT_IN_USE"
    assert b"cannot serve gRPC" in err


async def test_unix_socket_health_and_dev_null_stdin(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2

    path = tmp_path / "node.sock"
    proc = await asyncio.create_subprocess_exec(
        *P2P_NODE,
        "--grpc-socket",
        str(path),
        stdin=asyncio.subprocess.DEVNULL,  # a service: stdin's end does not stop it
        stdout=asyncio.subprocess.PIPE,
    )
    client = AgentNodeClient(f"unix:{path}", timeout=TIMEOUT)
    try:
        event = await first_line(proc)
        assert event == {"type": "grpc_listening", "grpcSocket": str(path)}
        assert not (await client.get_info()).connected
        check = client.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        answer = await check(health_pb2.HealthCheckRequest(service="p2pnet.v1.AgentNode"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        await client.shutdown()
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        await client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_reflection_lists_the_service(spawn: Any) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    node = await spawn()
    info = node.client.channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = set()
    async for answer in call:
        names = {s.name for s in answer.list_services_response.service}
    assert {"p2pnet.v1.AgentNode", "grpc.health.v1.Health"} <= names


async def test_sdk_raises_when_the_node_is_killed_mid_call() -> None:
    # A "bootstrap peer" that accepts and never speaks: Connect hangs in the handshake.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        peer = "16Uiu2HAmBUswuXdATx1MDhJ8NhisSbp2De8YyDSkHz35ZWeRfL9p"
        addr = f"/ip4/127.0.0.1/tcp/{mute.getsockname()[1]}/p2p/{peer}"
        node = P2PNode("victim", 0, bootstrap_peers=[addr])
        await node.start()
        events = node.events()
        try:
            call = asyncio.create_task(node.connect())
            await asyncio.sleep(0.5)
            assert not call.done()
            assert node.pid is not None
            os.kill(node.pid, signal.SIGKILL)
            with pytest.raises(P2PNodeError) as err:
                await asyncio.wait_for(call, TIMEOUT)
            assert err.value.code == PROCESS_EXITED and "status -9" in err.value.message
            assert [e async for e in events] == []
            with pytest.raises(P2PNodeError) as err:
                await node.subscribe("t")
            assert err.value.code == PROCESS_EXITED
        finally:
            await node.stop()


async def test_grpc_status_of_a_dead_service_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = AgentNodeClient(f"127.0.0.1:{port}", timeout=2.0)
    try:
        with pytest.raises(P2PNodeError) as err:
            await client.get_info()
        assert (
            err.value.code == "UNAVAILABLE" and err.value.status == grpc.StatusCode.UNAVAILABLE.name
        )
    finally:
        await client.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_a_thousand_event_streams_that_never_read_stay_bounded(spawn: Any) -> None:
    boot = await spawn("--bootstrap")
    alice = await spawn("--event-backlog", "64")
    bob = await spawn()
    boot_info = await boot.client.connect(bootstrap_peers=[])
    a_info = await alice.client.connect(bootstrap_peers=list(boot_info.addrs))
    await bob.client.connect(bootstrap_peers=list(boot_info.addrs))
    streams = await asyncio.gather(*(alice.client.events() for _ in range(1000)))
    before = rss_kib(alice.proc.pid)
    blob = "y" * 20_000
    for n in range(200):  # 4 MB of events, delivered to 1000 streams nobody reads
        await bob.client.send(a_info.peer_id, {"n": n, "blob": blob})
    grown = rss_kib(alice.proc.pid) - before
    print(f"RSS growth with 1000 unread streams: {grown} KiB")
    # Each stream keeps at most 64 events, all shared: far less than 1000 copies of 4 MB.
    assert grown < 60_000, f"the node grew by {grown} KiB"
    assert (await alice.client.get_info()).stats.messages_in == 200
    # Every stream still works, and starts with what it kept or a lagged count.
    firsts = await asyncio.wait_for(asyncio.gather(*(anext(s) for s in streams)), TIMEOUT)
    assert {e.WhichOneof("kind") for e in firsts} <= {"message", "lagged", "peer_connected"}
    await asyncio.gather(*(s.aclose() for s in streams))


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2pnet test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    proc = await spawn_raw("-g", "0", "--grpc-tls-cert", str(cert), "--grpc-tls-key", str(key))
    node = GrpcNode(proc, await first_line(proc))
    secure = AgentNodeClient(
        f"127.0.0.1:{node.port}", root_certificates=cert.read_bytes(), timeout=TIMEOUT
    )
    try:
        assert not (await secure.get_info()).connected
        plain = AgentNodeClient(f"127.0.0.1:{node.port}", timeout=2.0)
        try:
            with pytest.raises(P2PNodeError) as err:
                await plain.get_info()
            assert err.value.code in ("UNAVAILABLE", "TIMEOUT")
        finally:
            await plain.close()
    finally:
        await secure.close()
        await node.close()
    only_cert = await spawn_raw("-g", "0", "--grpc-tls-cert", str(cert))
    event = await first_line(only_cert)
    await only_cert.communicate()
    assert only_cert.returncode == 2 and "go together" in event["message"]


async def test_events_say_which_connection_carried_a_direct_message(spawn: Any) -> None:
    """gRPC has what the JSON lines have: a direct message's ``via`` (a relayed connection here,
    as for an agent behind NAT) and the ETH address of a peer that connects or leaves."""
    boot = await spawn("--bootstrap")
    alice = await spawn("--via-relay")
    bob = await spawn()
    boot_info = await boot.client.connect(bootstrap_peers=[])
    a_info = await alice.client.connect(bootstrap_peers=list(boot_info.addrs))
    assert [a for a in a_info.addrs if "/p2p-circuit" in a] == list(a_info.addrs)
    events = await alice.client.events()
    b_info = await bob.client.connect(bootstrap_peers=list(boot_info.addrs), private_key=ANVIL_KEY)
    assert await bob.client.send(a_info.eth_address, {"n": 1}) == a_info.peer_id

    seen: list[pb.Event] = []

    def message() -> pb.Event | None:
        return next((e for e in seen if e.WhichOneof("kind") == "message"), None)

    async with asyncio.timeout(TIMEOUT):
        while message() is None:
            seen.append(await anext(events))
    got = message()
    assert got is not None and got.message.direct and got.message.from_eth == ANVIL_ADDRESS
    # The relayed connection: the relay's address, then the sender behind the circuit.
    relayed = {f"{a}/p2p-circuit/p2p/{b_info.peer_id}" for a in boot_info.addrs}
    assert got.message.via in relayed, got.message
    connected = [e.peer_connected for e in seen if e.WhichOneof("kind") == "peer_connected"]
    from_bob = [c for c in connected if c.peer_id == b_info.peer_id]
    assert from_bob and from_bob[0].eth_address == ANVIL_ADDRESS, connected
    assert "/p2p-circuit" in from_bob[0].addr and from_bob[0].direction == "inbound"

    await bob.client.shutdown()
    async with asyncio.timeout(TIMEOUT):
        while True:
            e = await anext(events)
            if e.WhichOneof("kind") == "peer_disconnected" and (
                e.peer_disconnected.peer_id == b_info.peer_id
            ):
                break
    assert e.peer_disconnected.eth_address == ANVIL_ADDRESS


async def test_connect_with_retry_joins_once_a_bootstrap_node_comes_up(spawn: Any) -> None:
    """Every bootstrap node down at Connect: without ``retry_bootstrap`` the Connect fails; with
    it the node is ready at once, reports the failed attempt and joins by itself later."""
    boot_key = "0x" + os.urandom(32).hex()
    port = free_port()
    boot_id = peer_id_of(KeyPair.from_eth_private_key(boot_key))
    boot_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{boot_id}"
    alice = await spawn()
    await rpc_fails(alice.client.connect(bootstrap_peers=[boot_addr]), "UNAVAILABLE", "DIAL_FAILED")
    assert not (await alice.client.get_info()).connected
    events = await alice.client.events()
    info = await alice.client.connect(bootstrap_peers=[boot_addr], retry_bootstrap=True)
    assert info.connected

    async def next_of(kind: str) -> pb.Event:
        async with asyncio.timeout(30):
            while True:
                e = await anext(events)
                if e.WhichOneof("kind") == kind:
                    return e

    failed = (await next_of("bootstrap_failed")).bootstrap_failed
    assert failed.attempt == 1 and failed.retry_in > 0 and failed.error, failed
    boot = await spawn("--bootstrap", "--port", str(port))
    await boot.client.connect(bootstrap_peers=[], private_key=boot_key)
    joined = (await next_of("bootstrap_succeeded")).bootstrap_succeeded
    assert joined.attempt >= 2 and joined.dht_table_size >= 1, joined
    peers = {p.peer_id for p in await alice.client.list_peers()}
    assert boot_id in peers


async def test_json_lines_and_grpc_at_once(spawn: Any) -> None:
    node = await spawn("--name", "both", "--log-level", "info")
    assert node.proc.stdin is not None and node.proc.stdout is not None

    async def write(obj: dict[str, Any]) -> None:
        assert node.proc.stdin is not None
        node.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        await node.proc.stdin.drain()

    async def read() -> dict[str, Any]:
        while True:  # the next line that is not a log event
            event = await first_line(node.proc)
            if event["type"] != "log":
                return event

    events = await node.client.events()
    # A JSON connect: answered on stdout with its id, seen by the gRPC side.
    await write({"type": "connect", "id": "c1", "bootstrapPeers": []})
    ready = await read()
    assert ready["type"] == "ready" and ready["id"] == "c1" and ready["grpcPort"] == node.port
    info = await node.client.get_info()
    assert info.connected and info.peer_id == ready["peerId"]
    first = await anext(events)
    while first.WhichOneof("kind") == "log":
        first = await anext(events)
    assert first.WhichOneof("kind") == "ready" and first.ready.peer_id == ready["peerId"]
    # Commands from both sides; a gRPC error does not show on stdout.
    await rpc_fails(node.client.connect(), "FAILED_PRECONDITION", "ALREADY_CONNECTED")
    await write({"type": "status", "id": 2})
    status = await read()
    assert status["type"] == "node-status" and status["id"] == 2 and status["connected"] is True
    # The end of stdin does not stop a node that serves gRPC (it says so in a log event) ...
    node.proc.stdin.close()
    async with asyncio.timeout(TIMEOUT):
        while True:
            e = await anext(events)
            if e.WhichOneof("kind") == "log" and "stdin closed" in e.log.message:
                break
    assert node.proc.returncode is None and (await node.client.get_info()).connected
    # ... a gRPC Shutdown does, and the JSON side gets its last line.
    await node.client.shutdown()
    assert await asyncio.wait_for(node.proc.wait(), TIMEOUT) == 0
    assert await read() == {"type": "shutdown"}


async def test_no_json_lines_and_exit_on_eof() -> None:
    proc = await spawn_raw("-g", "0", "--no-json-lines", "--exit-on-eof", "--bootstrap-peers", "")
    first = await first_line(proc)
    client = AgentNodeClient(f"127.0.0.1:{first['grpcPort']}", timeout=TIMEOUT)
    try:
        await client.connect()
        assert proc.stdin is not None
        proc.stdin.close()  # the parent is gone: the node stops
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert proc.returncode == 0
        assert out == b""  # no ready, no shutdown: only the first line was written
    finally:
        await client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    bad = await spawn_raw("--no-json-lines")
    out, err = await bad.communicate()
    assert bad.returncode == 2 and b"needs --grpc-port" in err
    assert json.loads(out)["code"] == "INVALID_FIELDS"


async def test_connect_at_start_without_json_lines() -> None:
    proc = await spawn_raw("-g", "0", "--no-json-lines", "--connect", "--bootstrap-peers", "")
    first = await first_line(proc)
    client = AgentNodeClient(f"127.0.0.1:{first['grpcPort']}", timeout=TIMEOUT)
    try:
        async with asyncio.timeout(TIMEOUT):
            while not (await client.get_info()).connected:
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        await client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_grpc_with_metrics_and_a_taken_metrics_port() -> None:
    proc = await spawn_raw("-g", "0", "--metrics-port", "0", "--bootstrap-peers", "")
    try:
        first, second = await first_line(proc), await first_line(proc)
        assert first["type"] == "grpc_listening" and second["type"] == "metrics"
        client = AgentNodeClient(f"127.0.0.1:{first['grpcPort']}", timeout=TIMEOUT)
        try:
            await client.connect()
            await client.shutdown()
        finally:
            await client.close()
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = await spawn_raw("-g", "0", "--metrics-port", str(busy.getsockname()[1]))
        first, second = await first_line(taken), await first_line(taken)
        await taken.communicate()
    assert first["type"] == "grpc_listening"
    assert second["type"] == "error" and second["code"] == "PORT_IN_USE"
    assert taken.returncode == 2
