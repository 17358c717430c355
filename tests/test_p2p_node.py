"""p2p-node driven as a real process through stdin/stdout, as an application in any language
would drive it (docs/cli.md). Every process is reaped at teardown, also when a test fails."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from p2pnet.agent.constants import DIRECT_MESSAGE_PROTOCOL
from p2pnet.config import NodeConfig
from p2pnet.crypto.eth import eth_address
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID
from p2pnet.stream import Stream
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed

P2P_NODE = [sys.executable, "-m", "p2pnet.cli.p2p_node"]
# Hardhat/Anvil's well-known development account #0 (public test key, never holds real funds).
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
TIMEOUT = 15.0

Event = dict[str, Any]


def peer_id_of(key: KeyPair) -> str:
    return str(PeerID.from_public_key(key.public_key))


def random_peer_id() -> str:
    return peer_id_of(KeyPair.generate(KeyType.Secp256k1))


def random_eth() -> str:
    return "0x" + os.urandom(20).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProc:
    """One p2p-node process: write command lines, wait for events, check stdout is all JSON."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.events: list[Event] = []
        self.bad_lines: list[bytes] = []
        self.stderr = b""
        self._taken: set[int] = set()
        self._changed = asyncio.Event()
        self._ids = 0
        self.ready: Event = {}
        self._reader = asyncio.create_task(self._read())
        self._err_reader = asyncio.create_task(self._read_err())

    @classmethod
    async def spawn(cls, *args: str, cmd: Sequence[str] = P2P_NODE, name: str = "") -> NodeProc:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 << 20,
        )
        return cls(proc, name)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                event = json.loads(line)
                assert isinstance(event, dict) and isinstance(event.get("type"), str)
            except (ValueError, AssertionError):
                self.bad_lines.append(line)
                continue
            self.events.append(event)
            self._changed.set()
        self._changed.set()

    async def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    @property
    def peer_id(self) -> str:
        return str(self.ready["peerId"])

    @property
    def eth(self) -> str:
        return str(self.ready["ethAddress"])

    @property
    def addrs(self) -> list[str]:
        return list(self.ready["addrs"])

    async def write(self, line: bytes | Event) -> None:
        assert self.proc.stdin is not None
        data = line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n"
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def wait_for(self, pred: Callable[[Event], bool], timeout: float = TIMEOUT) -> Event:
        """The first event not yet taken that matches ``pred``."""
        async with asyncio.timeout(timeout):
            while True:
                for i, event in enumerate(self.events):
                    if i not in self._taken and pred(event):
                        self._taken.add(i)
                        return event
                if self._reader.done():
                    raise AssertionError(f"{self.name}: stdout ended; events: {self.events}")
                self._changed.clear()
                await self._changed.wait()

    async def expect(self, etype: str, timeout: float = TIMEOUT, **fields: Any) -> Event:
        def match(e: Event) -> bool:
            return e["type"] == etype and all(e.get(k) == v for k, v in fields.items())

        return await self.wait_for(match, timeout)

    async def request(self, cmd: Event, answer: str, timeout: float = TIMEOUT) -> Event:
        """Send ``cmd`` with a fresh id; its ``answer`` event, or its error event."""
        self._ids += 1
        cid = f"{self.name}-{self._ids}"
        await self.write({**cmd, "id": cid})
        return await self.wait_for(
            lambda e: e.get("id") == cid and e["type"] in (answer, "error"), timeout
        )

    async def ok(self, cmd: Event, answer: str, timeout: float = TIMEOUT) -> Event:
        event = await self.request(cmd, answer, timeout)
        assert event["type"] == answer, event
        return event

    async def error(self, cmd: Event, code: str, timeout: float = TIMEOUT) -> Event:
        event = await self.request(cmd, "no-answer-but-an-error", timeout)
        assert event["type"] == "error" and event["code"] == code, event
        assert isinstance(event["message"], str) and event["message"]
        return event

    async def connect(self, **fields: Any) -> Event:
        self.ready = await self.ok({"type": "connect", **fields}, "ready")
        return self.ready

    def messages(self) -> list[Event]:
        return [e for e in self.events if e["type"] == "message"]

    async def wait_exit(self, timeout: float = TIMEOUT) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(self._reader, self._err_reader), timeout)
        return code

    async def close(self) -> None:
        """Reap the process whatever state it is in (EOF, then SIGKILL)."""
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in (self._reader, self._err_reader):
            try:
                await asyncio.wait_for(task, 5)
            except (TimeoutError, asyncio.CancelledError):
                pass

    def assert_clean(self) -> None:
        assert self.bad_lines == [], f"{self.name}: non-JSON lines on stdout: {self.bad_lines}"


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Any]]:
    procs: list[NodeProc] = []

    async def start(*args: str, **kw: Any) -> NodeProc:
        proc = await NodeProc.spawn(*args, **kw)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        await asyncio.gather(*(p.close() for p in procs))
        for p in procs:
            p.assert_clean()


# -- errors that need no network -----------------------------------------------------------


async def test_malformed_lines_unknown_commands_and_invalid_fields(spawn: Any) -> None:
    node = await spawn(name="lone")
    await node.write(b"not json\n")
    await node.write(b"[1, 2]\n")
    await node.write(b'{"type": "status", "x": NaN}\n')
    await node.write(b"\xff\xfe{}\n")
    await node.write(b"\n   \n")  # blank lines are ignored
    for _ in range(4):
        await node.expect("error", code="INVALID_JSON")
    assert "id" not in node.events[0]

    await node.error({"kind": "send"}, "UNKNOWN_COMMAND")
    await node.error({"type": "teleport"}, "UNKNOWN_COMMAND")
    await node.error({"type": 7}, "UNKNOWN_COMMAND")
    invalid: list[Event] = [
        {"type": "send", "peerId": random_peer_id()},  # no data
        {"type": "send", "data": 1},  # no recipient
        {"type": "send", "peerId": "0x1234", "data": 1},
        {"type": "send", "peerId": "not a peer id!", "data": 1},
        {"type": "send", "peerId": 42, "data": 1},
        {"type": "send", "peerId": random_peer_id(), "topic": "t", "data": 1},
        {"type": "send", "topic": "", "data": 1},
        {"type": "connect", "port": -1},
        {"type": "connect", "port": 70000},
        {"type": "connect", "port": "4001"},
        {"type": "connect", "port": True},
        {"type": "connect", "bootstrapPeers": "/ip4/127.0.0.1/tcp/1"},
        {"type": "connect", "bootstrapPeers": [1]},
        {"type": "discover"},
        {"type": "subscribe", "topic": 5},
        {"type": "subscribe", "topic": ""},
    ]
    for cmd in invalid:
        event = await node.error(cmd, "INVALID_FIELDS")
        assert event["command"] == cmd["type"]

    # Any JSON value is a valid id, echoed as is.
    await node.write({"type": "discover", "topic": "t", "id": {"n": [1, "x"]}})
    event = await node.expect("error", code="NOT_CONNECTED")
    assert event["id"] == {"n": [1, "x"]}

    # Issue 11: 1000 nested arrays ended the node (RecursionError); now an error, the node runs.
    await node.write(b"[" * 1000 + b"]" * 1000 + b"\n")
    await node.expect("error", code="INVALID_JSON")
    await node.write(b'{"type": "status", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}\n")
    await node.expect("error", code="INVALID_JSON")

    # A line beyond 1 MiB is refused and skipped; the next line is read normally.
    await node.write(b'{"type": "status", "pad": "' + b"x" * (1 << 20) + b'"}\n')
    await node.expect("error", code="INVALID_JSON")
    status = await node.ok({"type": "status"}, "node-status")
    assert status["connected"] is False

    await node.ok({"type": "shutdown"}, "shutdown")
    assert await node.wait_exit() == 0
    assert node.stderr == b""


async def test_commands_before_connect_are_not_connected(spawn: Any) -> None:
    node = await spawn()
    await node.error({"type": "send", "peerId": random_peer_id(), "data": 1}, "NOT_CONNECTED")
    await node.error({"type": "send", "topic": "t", "data": 1}, "NOT_CONNECTED")
    await node.error({"type": "discover", "topic": "t"}, "NOT_CONNECTED")
    await node.error({"type": "subscribe", "topic": "t"}, "NOT_CONNECTED")


async def test_port_in_use_then_retry_then_already_connected(spawn: Any) -> None:
    node = await spawn("--bootstrap-peers", "")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        await node.error({"type": "connect", "port": port}, "PORT_IN_USE")
        # The failed connect leaves the node unconnected; a new connect may succeed.
        await node.error({"type": "subscribe", "topic": "t"}, "NOT_CONNECTED")
        ready = await node.connect(port=0)
    assert ready["mode"] == "client" and ready["peerId"] in ready["addrs"][0]
    assert ready["ethAddress"].startswith("0x") and len(ready["ethAddress"]) == 42
    await node.error({"type": "connect"}, "ALREADY_CONNECTED")


async def test_port_flag_in_use(spawn: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        node = await spawn("--port", str(busy.getsockname()[1]), "--bootstrap-peers", "")
        await node.error({"type": "connect"}, "PORT_IN_USE")


async def test_dial_failed_when_no_bootstrap_peer_answers(spawn: Any) -> None:
    node = await spawn()
    dead = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{random_peer_id()}"
    await node.error({"type": "connect", "bootstrapPeers": [dead]}, "DIAL_FAILED")
    status = await node.ok({"type": "status"}, "node-status")  # still running
    assert status["connected"] is False
    await node.connect(bootstrapPeers=[])


async def test_bad_env_file_is_reported_and_exits_2(spawn: Any, tmp_path: Path) -> None:
    env = tmp_path / "bad.env"
    env.write_text("PRIVATE_KEY=0x1234\n")
    node = await spawn("--env-file", str(env))
    assert await node.wait_exit() == 2
    assert node.events[0]["type"] == "error" and node.events[0]["code"] == "INVALID_FIELDS"
    missing = await spawn("--env-file", str(tmp_path / "missing.env"))
    assert await missing.wait_exit() == 2
    assert missing.events[0]["code"] == "INVALID_FIELDS"


# -- shutdown ------------------------------------------------------------------------------


async def test_shutdown_sigterm_and_eof_exit_0(spawn: Any) -> None:
    by_command, by_signal, by_eof = await asyncio.gather(spawn(), spawn(), spawn())
    await asyncio.gather(*(n.connect(bootstrapPeers=[]) for n in (by_command, by_signal)))

    await by_command.ok({"type": "shutdown"}, "shutdown")
    by_signal.proc.send_signal(signal.SIGTERM)
    # EOF: the commands already sent still get their answers, then the node stops.
    await by_eof.write({"type": "connect", "bootstrapPeers": [], "id": "c"})
    await by_eof.write({"type": "status", "id": "s"})
    assert by_eof.proc.stdin is not None
    by_eof.proc.stdin.close()

    codes = await asyncio.gather(*(n.wait_exit() for n in (by_command, by_signal, by_eof)))
    assert codes == [0, 0, 0]
    assert by_signal.events[-1]["type"] == "shutdown"
    kinds = [e["type"] for e in by_eof.events if e["type"] != "log"]
    assert kinds == ["node-status", "ready", "shutdown"] or kinds == [
        "ready",
        "node-status",
        "shutdown",
    ], by_eof.events
    for n in (by_command, by_signal, by_eof):
        assert n.stderr == b""


async def test_node_stops_when_nobody_reads_its_stdout() -> None:
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        *P2P_NODE, stdin=asyncio.subprocess.PIPE, stdout=write_end, stderr=asyncio.subprocess.PIPE
    )
    os.close(write_end)
    os.close(read_end)  # the reader is gone: the next event cannot be written
    try:
        assert proc.stdin is not None
        proc.stdin.write(b'{"type": "status"}\n')
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.communicate()


async def test_ignore_eof_runs_as_a_service_until_sigterm(spawn: Any) -> None:
    service = await spawn("--ignore-eof", "--connect", "--bootstrap", "--bootstrap-peers", "")
    assert service.proc.stdin is not None
    service.proc.stdin.close()  # like a service started with stdin at /dev/null
    await service.expect("ready")
    with pytest.raises(TimeoutError):
        await service.wait_exit(1.0)
    service.proc.send_signal(signal.SIGTERM)
    assert await service.wait_exit() == 0
    assert service.events[-1]["type"] == "shutdown"


async def test_stdout_is_json_only_with_logs_and_prints_go_to_stderr(spawn: Any) -> None:
    # A library that prints (here: a patched function) must not corrupt stdout.
    noisy = (
        "import sys; from p2pnet.cli import p2p_node as m; orig = m.check_startup_config\n"
        "def noisy(*a):\n"
        "    print('NOISE FROM A LIBRARY'); sys.stdout.flush(); return orig(*a)\n"
        "m.check_startup_config = noisy; sys.exit(m.main(sys.argv[1:]))\n"
    )
    boot = await spawn("--bootstrap", "--log-level", "debug", "--bootstrap-peers", "", name="b")
    quiet = await spawn(cmd=[sys.executable, "-c", noisy], name="q")
    await boot.connect()
    await quiet.connect(bootstrapPeers=boot.addrs)
    await boot.ok({"type": "subscribe", "topic": "logs"}, "subscribed")
    await quiet.ok({"type": "send", "peerId": boot.peer_id, "data": "x"}, "sent")
    await asyncio.gather(boot.ok({"type": "shutdown"}, "shutdown"), quiet.close())
    assert await boot.wait_exit() == 0

    logs = [e for e in boot.events if e["type"] == "log"]
    assert logs and {e["level"] for e in logs} >= {"debug", "info"}
    for e in logs:
        assert e["namespace"].startswith(("p2pnet", "asyncio"))
        assert isinstance(e["message"], str) and isinstance(e["meta"], dict)
    # The default level (warning) sends no debug/info logs.
    assert not [e for e in quiet.events if e["type"] == "log" and e["level"] in ("debug", "info")]
    assert b"NOISE FROM A LIBRARY" in quiet.stderr
    assert boot.stderr == b""
    boot.assert_clean()
    quiet.assert_clean()


async def test_unexpected_failure_is_internal_and_the_node_keeps_running(spawn: Any) -> None:
    broken = (
        "import sys; from p2pnet.cli import p2p_node as m; from p2pnet.agent.agent import Agent\n"
        "async def boom(self, topic):\n"
        "    raise RuntimeError('boom: ' + topic)\n"
        "Agent.subscribe = boom; sys.exit(m.main(sys.argv[1:]))\n"
    )
    node = await spawn("--bootstrap-peers", "", cmd=[sys.executable, "-c", broken])
    await node.connect()
    event = await node.error({"type": "subscribe", "topic": "t"}, "INTERNAL")
    assert "boom: t" in event["message"]
    log = await node.expect("log", level="error")
    assert "RuntimeError" in log["meta"]["exception"]
    await node.ok({"type": "send", "topic": "t", "data": 1}, "sent")  # still running
    await node.ok({"type": "shutdown"}, "shutdown")
    assert await node.wait_exit() == 0


# -- errors of a running network -------------------------------------------------------------


async def test_lonely_node_refusals_and_dht_lookup_failure(spawn: Any) -> None:
    node = await spawn()
    await node.connect(bootstrapPeers=[])
    # Requests the agent refuses: to itself, a key type without ETH address, reserved topics.
    await node.error({"type": "send", "peerId": node.peer_id, "data": 1}, "INVALID_FIELDS")
    ed25519 = peer_id_of(KeyPair.generate(KeyType.Ed25519))
    await node.error({"type": "send", "peerId": ed25519, "data": 1}, "INVALID_FIELDS")
    await node.error({"type": "send", "topic": "agent-announcements", "data": 1}, "INVALID_FIELDS")
    status = await node.ok({"type": "status"}, "node-status")
    assert status["connected"] is True and status["peerId"] == node.peer_id
    # No DHT peer to ask: the lookup itself fails (not "not found").
    await node.error({"type": "send", "peerId": random_eth(), "data": 1}, "DHT_LOOKUP_FAILED")
    await node.error({"type": "send", "peerId": random_peer_id(), "data": 1}, "DHT_LOOKUP_FAILED")
    # discover with no DHT server to ask fails the same way.
    await node.error({"type": "discover", "topic": "nobody"}, "DHT_LOOKUP_FAILED")


async def test_send_failed_refused_and_slow_send_does_not_block_shutdown(spawn: Any) -> None:
    """A peer that refuses the message: SEND_FAILED; one that never answers keeps the send
    pending, and a shutdown still ends the process at once."""
    node = await spawn()
    await node.connect(bootstrapPeers=[])
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def refuse(stream: Stream) -> None:
        async with stream:
            await read_length_prefixed(stream, 1 << 20)
            await write_length_prefixed(stream, b'{"ok": false, "error": "not today"}')

    async def hang(stream: Stream) -> None:
        async with stream:
            await read_length_prefixed(stream, 1 << 20)
            arrived.set()
            await asyncio.wait_for(release.wait(), 30)

    config = NodeConfig(key_type=KeyType.Secp256k1, enable_dht=False)
    async with Node(config) as refuser, Node(config) as hanger:
        refuser.set_stream_handler(DIRECT_MESSAGE_PROTOCOL, refuse)
        hanger.set_stream_handler(DIRECT_MESSAGE_PROTOCOL, hang)
        await refuser.connect(node.addrs[0])
        await hanger.connect(node.addrs[0])
        event = await node.error(
            {"type": "send", "peerId": str(refuser.peer_id), "data": 1}, "SEND_FAILED"
        )
        assert "not today" in event["message"]
        await node.write({"type": "send", "peerId": str(hanger.peer_id), "data": 1, "id": "s"})
        await asyncio.wait_for(arrived.wait(), 10)  # the send is pending: the hanger has it
        start = asyncio.get_running_loop().time()
        await node.write({"type": "shutdown"})
        assert await node.wait_exit(5) == 0
        assert asyncio.get_running_loop().time() - start < 4
        release.set()
    assert not [e for e in node.events if e.get("id") == "s"]


# -- networks of nodes -----------------------------------------------------------------------


async def test_two_nodes_subscribe_discover_send(spawn: Any) -> None:
    boot, alice = await asyncio.gather(
        spawn("--bootstrap", "--bootstrap-peers", "", "--name", "boot", name="boot"),
        spawn("--name", "alice", name="alice"),
    )
    await boot.connect()
    assert boot.ready["mode"] == "server" and boot.ready["name"] == "boot"
    await alice.connect(bootstrapPeers=boot.addrs)
    assert alice.ready["mode"] == "client"

    await alice.ok({"type": "subscribe", "topic": "news"}, "subscribed")
    found = await _discover_until(boot, "news", {alice.peer_id})
    assert found[alice.peer_id]["ethAddress"] == alice.eth
    assert found[alice.peer_id]["topics"] == ["news"]

    sent = await boot.ok({"type": "send", "peerId": alice.peer_id, "data": {"n": 1}}, "sent")
    assert sent["to"] == alice.peer_id
    sent = await boot.ok({"type": "send", "peerId": alice.eth, "data": [2]}, "sent")
    assert sent["to"] == alice.peer_id
    first = await alice.expect("message", data={"n": 1})
    assert first["from"] == boot.peer_id and first["fromEth"] == boot.eth
    assert first["direct"] is True and "topic" not in first
    await alice.expect("message", data=[2], direct=True)
    # The other way round, by ETH address with lower-case hex.
    await alice.ok({"type": "send", "peerId": boot.eth.lower(), "data": "hi"}, "sent")
    await boot.expect("message", data="hi", **{"from": alice.peer_id})

    # A broadcast on a topic reaches the subscriber.
    await boot.ok({"type": "subscribe", "topic": "news"}, "subscribed")
    await _broadcast_until(boot, alice, "news", "extra")

    # The ids of the answers never leak into unsolicited events.
    assert all("id" not in e for e in alice.messages())


async def _discover_until(node: NodeProc, topic: str, want: set[str]) -> dict[str, Event]:
    """discover until every PeerID in ``want`` is found (records spread asynchronously)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            done = await node.ok({"type": "discover", "topic": topic}, "discover_done")
            found = {
                e["peerId"]: e
                for e in node.events
                if e["type"] == "peer_discovered" and e.get("id") == done["id"]
            }
            assert done["count"] == len(found) and done["topic"] == topic
            if want <= set(found):
                return found
            await asyncio.sleep(0.2)


async def _broadcast_until(sender: NodeProc, receiver: NodeProc, topic: str, tag: str) -> None:
    """Publish until one arrives (the mesh forms over a heartbeat or two)."""
    async with asyncio.timeout(TIMEOUT):
        for n in range(100):
            data = {"tag": tag, "n": n}
            await sender.ok({"type": "send", "topic": topic, "data": data}, "sent")
            try:
                event = await receiver.expect("message", timeout=0.5, topic=topic, data=data)
            except TimeoutError:
                continue
            assert event["from"] == sender.peer_id and event["direct"] is False
            return


async def test_five_nodes_two_bootstrap(spawn: Any, tmp_path: Path) -> None:
    env = tmp_path / "carol.env"
    env.write_text(f"# carol's identity\nPRIVATE_KEY={ANVIL_KEY}\n")
    b1 = await spawn("--bootstrap", "--bootstrap-peers", "", "--connect", name="b1")
    b1.ready = await b1.expect("ready")
    b2 = await spawn("--bootstrap", "--bootstrap-peers", b1.addrs[0], name="b2")
    await b2.connect()
    peers = ",".join([b1.addrs[0], b2.addrs[0]])
    alice, bob, carol = await asyncio.gather(
        spawn("--bootstrap-peers", peers, "--name", "alice", name="alice"),
        spawn("--bootstrap-peers", peers, name="bob"),
        spawn("-e", str(env), "--bootstrap-peers", peers, "--connect", name="carol"),
    )
    await asyncio.gather(alice.connect(), bob.connect())
    carol.ready = await carol.expect("ready")
    assert carol.eth == ANVIL_ADDRESS
    assert carol.peer_id == peer_id_of(KeyPair.from_eth_private_key(ANVIL_KEY))
    assert eth_address(PeerID.from_string(carol.peer_id)) == ANVIL_ADDRESS

    clients = (alice, bob, carol)
    await asyncio.gather(
        *(c.ok({"type": "subscribe", "topic": "t"}, "subscribed") for c in clients)
    )
    found = await _discover_until(alice, "t", {bob.peer_id, carol.peer_id})
    assert alice.peer_id not in found and found[carol.peer_id]["ethAddress"] == ANVIL_ADDRESS

    # By ETH address to carol, by PeerID to bob: each message reaches its recipient only.
    await alice.ok({"type": "send", "peerId": ANVIL_ADDRESS, "data": "for carol"}, "sent")
    await alice.ok({"type": "send", "peerId": bob.peer_id, "data": "for bob"}, "sent")
    got = await carol.expect("message", data="for carol")
    assert got["from"] == alice.peer_id and got["fromEth"] == alice.eth and got["direct"]
    await bob.expect("message", data="for bob", direct=True)
    # A bootstrap node resolves a client through the DHT as well.
    await b2.ok({"type": "send", "peerId": carol.eth, "data": "from b2"}, "sent")
    await carol.expect("message", data="from b2", **{"from": b2.peer_id})
    # Every node answers a status request after the events it emitted before it (stdout is one
    # ordered stream): then no node can still have a direct message on its way out.
    await asyncio.gather(
        *(n.ok({"type": "status"}, "node-status") for n in (b1, b2, alice, bob, carol))
    )
    for node in (b1, b2, alice, bob, carol):
        datas = [m["data"] for m in node.messages() if m["direct"]]
        want = {"carol": ["for carol", "from b2"], "bob": ["for bob"]}.get(node.name, [])
        assert sorted(datas) == sorted(want), (node.name, datas)

    # Unknown recipients in a live DHT: not found.
    await alice.error({"type": "send", "peerId": random_eth(), "data": 1}, "PEER_NOT_FOUND")
    await alice.error({"type": "send", "peerId": random_peer_id(), "data": 1}, "PEER_NOT_FOUND")

    # A broadcast on the topic reaches the other subscribers.
    await _broadcast_until(bob, carol, "t", "topic")

    # A recipient that left: its addresses are known but nobody answers there.
    await bob.ok({"type": "shutdown"}, "shutdown")
    assert await bob.wait_exit() == 0
    failed = await alice.request(
        {"type": "send", "peerId": bob.peer_id, "data": "too late"}, "sent", timeout=30
    )
    assert failed["type"] == "error" and failed["code"] in ("DIAL_FAILED", "SEND_FAILED"), failed


# -- the other ways to start it ---------------------------------------------------------------


CONSOLE_SCRIPT = Path(sys.executable).parent / "p2p-node"


@pytest.mark.parametrize(
    "cmd",
    [
        pytest.param(
            [str(CONSOLE_SCRIPT)],
            marks=pytest.mark.skipif(
                not CONSOLE_SCRIPT.exists(), reason="p2p-node not installed (pip install -e .)"
            ),
            id="console-script",
        ),
        pytest.param([sys.executable, "-m", "p2pnet", "node"], id="python-m-p2pnet-node"),
    ],
)
async def test_entry_points(spawn: Any, cmd: list[str]) -> None:
    node = await spawn("--name", "entry", cmd=cmd)
    status = await node.ok({"type": "status"}, "node-status")
    assert status["name"] == "entry"
    await node.ok({"type": "shutdown"}, "shutdown")
    assert await node.wait_exit() == 0
