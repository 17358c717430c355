"""Service lifecycles, and the pubsub cores reading no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2pnet
from p2pnet.agent.agent import Agent, AgentConfig
from p2pnet.agent.errors import NotConnected
from p2pnet.service import Lifecycle, Service, ServiceState

ROOT = Path(p2pnet.__file__).parent


def test_lifecycle_transitions() -> None:
    life = Lifecycle("x")
    assert life.state is ServiceState.NEW and not life.running
    assert life.begin_start() is True
    assert life.begin_start() is False  # already running: nothing to do
    assert life.running
    assert life.begin_close() is ServiceState.RUNNING
    assert life.begin_close() is None  # idempotent
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        life.begin_start()
    never = Lifecycle("y")
    assert never.begin_close() is ServiceState.NEW  # closing what never started is fine


async def test_agent_and_its_services_have_start_and_close() -> None:
    agent = Agent(AgentConfig(bootstrap_peers=[]))
    assert isinstance(agent.messaging, Service) and isinstance(agent.pubsub, Service)
    await agent.close()  # never started: a no-op
    with pytest.raises(NotConnected):
        await agent.start()


@pytest.mark.parametrize(
    "module",
    ["pubsub/router.py", "pubsub/score.py", "pubsub/mcache.py", "pubsub/messages.py", "backoff.py"],
)
def test_pubsub_cores_read_no_clock_and_do_no_io(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "time", "selectors", "threading"}, imported


def test_one_error_hierarchy() -> None:
    import p2pnet.errors as errors
    import p2pnet.kad.errors as kad_errors
    import p2pnet.node as node
    import p2pnet.pubsub as pubsub

    assert pubsub.NoPeersError is kad_errors.NoPeersError is errors.NoPeersError
    assert pubsub.MessageTooLargeError is errors.MessageTooLargeError
    assert issubclass(errors.MessageTooLargeError, errors.ProtocolError)
    assert node.NodeError is errors.NodeError is p2pnet.NodeError
    assert not hasattr(errors, "MessageTooLarge")  # one name
