"""``p2pnet registry``: deploy the registry contract, register an agent, ask, and watch.

    p2pnet registry deploy   --rpc-url URL --private-key KEY
    p2pnet registry register --env-file agent.env [--name N] [--addr MULTIADDR ...] [--uri URI]
    p2pnet registry status   ADDRESS [--agent-id N]
    p2pnet registry watch    [--from-block N]

``--env-file`` supplies PRIVATE_KEY, REGISTRY_ADDRESS and RPC_URL (the node's env file); the
flags override it. Output is text for people, plus one JSON line per result with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from p2pnet.config import ConfigError, read_env_file
from p2pnet.registry.errors import RegistryError, RegistryUnavailable
from p2pnet.registry.settings import parse_agent_id, parse_registry_ref, parse_rpc_url


def add_registry_arguments(group: argparse._ArgumentGroup) -> None:
    """p2p-node's registry flags."""
    group.add_argument(
        "--registry-policy",
        choices=("off", "annotate", "enforce"),
        help="what to do with the agent registry (overrides REGISTRY_POLICY; docs/registry.md)",
    )


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "registry",
        help="the on-chain agent registry (ERC-8004): deploy, register, status, watch",
        description="Talk to an ERC-8004 identity registry (docs/registry.md).",
    )
    parser.set_defaults(func=run)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-e", "--env-file", help="PRIVATE_KEY, REGISTRY_ADDRESS, RPC_URL")
    common.add_argument("--rpc-url", help="Ethereum JSON-RPC URL (http(s):// or ws(s)://)")
    common.add_argument("--registry", help="the registry contract address")
    common.add_argument("--private-key", help="the Ethereum key that signs (prefer --env-file)")
    common.add_argument("--json", action="store_true", help="print results as JSON lines")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("deploy", parents=[common], help="deploy our IdentityRegistry contract")
    reg = actions.add_parser(
        "register",
        parents=[common],
        help="register the key's address, with a registration file naming its libp2p endpoint",
    )
    reg.add_argument("--name", default="", help="the agent's name in its registration file")
    reg.add_argument(
        "--addr",
        action="append",
        default=[],
        help="a multiaddr where the agent listens (repeatable; /p2p/<PeerID> is added)",
    )
    reg.add_argument("--uri", help="use this agentURI instead of a generated data: URI")
    status = actions.add_parser("status", parents=[common], help="is ADDRESS a registered agent?")
    status.add_argument("address", help="an ETH address")
    status.add_argument("--agent-id", help="the agentId it states (agentWallet check)")
    watch = actions.add_parser("watch", parents=[common], help="print registry events")
    watch.add_argument("--from-block", type=int, default=None, help="start here (default: now)")
    watch.add_argument("--poll", type=float, default=1.0, help="seconds between polls")


def _settings(args: argparse.Namespace) -> dict[str, str]:
    env: Mapping[str, str] = read_env_file(args.env_file) if args.env_file else {}
    values = {
        "rpc_url": args.rpc_url or env.get("RPC_URL", ""),
        "registry": args.registry or env.get("REGISTRY_ADDRESS", ""),
        "private_key": args.private_key or env.get("PRIVATE_KEY", ""),
    }
    return {k: v.strip() for k, v in values.items()}


def _need(values: Mapping[str, str], *names: str) -> None:
    flags = {"rpc_url": "--rpc-url/RPC_URL", "registry": "--registry/REGISTRY_ADDRESS"}
    flags["private_key"] = "--private-key/PRIVATE_KEY"
    missing = [flags[n] for n in names if not values.get(n)]
    if missing:
        raise ConfigError("missing " + ", ".join(missing))
    if "rpc_url" in names:
        parse_rpc_url(values["rpc_url"])
    if "registry" in names:
        parse_registry_ref(values["registry"])


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        values = _settings(args)
        return asyncio.run(_run(args, values, out))
    except (ConfigError, RegistryError, ValueError) as exc:
        code = getattr(exc, "code", "INVALID_FIELDS")
        print(f"p2pnet registry: {code}: {exc}", file=sys.stderr)
        return 2 if code == "INVALID_FIELDS" else 1
    except KeyboardInterrupt:
        return 130


def _emit(args: argparse.Namespace, out: TextIO, text: str, obj: dict[str, Any]) -> None:
    out.write((json.dumps(obj) if args.json else text) + "\n")
    out.flush()


async def _run(args: argparse.Namespace, values: dict[str, str], out: TextIO) -> int:
    from p2pnet.registry.transactions import RegistryWriter, deploy_registry

    if args.action == "deploy":
        _need(values, "rpc_url", "private_key")
        receipt = await deploy_registry(values["rpc_url"], values["private_key"])
        _emit(
            args,
            out,
            f"IdentityRegistry deployed at {receipt.contract_address} (block {receipt.block})",
            {"address": receipt.contract_address, "block": receipt.block, "tx": receipt.tx_hash},
        )
        return 0
    if args.action == "register":
        _need(values, "rpc_url", "registry", "private_key")
        uri = args.uri or _registration_uri(args, values)
        async with RegistryWriter(
            values["rpc_url"], values["registry"], values["private_key"]
        ) as w:
            agent_id, receipt = await w.register(uri)
            ref = w.chain.ref
        _emit(
            args,
            out,
            f"registered agentId {agent_id} in {ref} (block {receipt.block})",
            {"agentId": agent_id, "agentRegistry": ref, "agentURI": uri, "tx": receipt.tx_hash},
        )
        return 0
    if args.action == "status":
        _need(values, "rpc_url", "registry")
        return await _status(args, values, out)
    _need(values, "rpc_url", "registry")
    return await _watch(args, values, out)


def _registration_uri(args: argparse.Namespace, values: Mapping[str, str]) -> str:
    from p2pnet.crypto.keys import KeyPair
    from p2pnet.peer.peer_id import PeerID
    from p2pnet.registry.registration import build_registration, data_uri

    key = KeyPair.from_eth_private_key(values["private_key"])
    peer = str(PeerID.from_public_key(key.public_key))
    name = args.name or f"agent-{peer[-8:]}"
    return data_uri(build_registration(name, peer, args.addr))


async def _status(args: argparse.Namespace, values: Mapping[str, str], out: TextIO) -> int:
    from p2pnet.crypto.eth import is_eth_address, to_checksum_address
    from p2pnet.registry.guard import RegistryGuard
    from p2pnet.registry.settings import RegistrySettings

    if not is_eth_address(args.address):
        raise ConfigError(f"not an Ethereum address: {args.address!r}")
    agent_id = parse_agent_id(args.agent_id) if args.agent_id is not None else None
    settings = RegistrySettings.parse(values["registry"], values["rpc_url"], "annotate")
    guard = RegistryGuard(settings, rpc_timeout=10.0, file_timeout=5.0)
    try:
        await guard.backend.connect()
        guard.available = True
        if agent_id is None:
            agent_id = await guard.backend.find_agent_id(args.address)
        note = await guard.annotation(args.address, agent_id)
    finally:
        await guard.backend.close()
    address = to_checksum_address(args.address)
    note = {"address": address, **note}
    if note["registered"]:
        text = f"{address} is registered in {guard.ref}"
        if note.get("agentId") is not None:
            text += f" as agentId {note['agentId']}"
        if note.get("agentName"):
            text += f" ({note['agentName']})"
        for service in note.get("services", []):
            text += f"\n  service {service.get('name')}: {service.get('endpoint')}"
    else:
        text = f"{address} is not a registered agent in {guard.ref}"
    _emit(args, out, text, note)
    return 0 if note["registered"] else 3


async def _watch(args: argparse.Namespace, values: Mapping[str, str], out: TextIO) -> int:
    from p2pnet.registry.chain import ChainRegistry

    chain = ChainRegistry(values["rpc_url"], values["registry"], timeout=10.0)
    try:
        await chain.connect()
        latest = await chain.latest_block()
        last = (args.from_block - 1) if args.from_block is not None else latest
        _emit(args, out, f"watching {chain.ref} from block {last + 1}", {"watching": chain.ref})
        down = False
        while True:
            try:
                latest = await chain.latest_block()
                events = await chain.events(last + 1, latest) if latest > last else []
            except RegistryUnavailable as exc:  # keep watching: the chain may come back
                if not down:
                    _emit(args, out, f"registry unreachable: {exc}", {"unreachable": str(exc)})
                    down = True
                await asyncio.sleep(max(args.poll, 2.0))
                continue
            if down:
                _emit(args, out, "registry reachable again", {"reachable": chain.ref})
                down = False
            if latest > last:
                for event in events:
                    names = " ".join(event.addresses)
                    _emit(
                        args,
                        out,
                        f"block {event.block}: {event.kind} agentId {event.agent_id} {names}",
                        {
                            "event": event.kind,
                            "block": event.block,
                            "agentId": event.agent_id,
                            "addresses": list(event.addresses),
                        },
                    )
                last = latest
            await asyncio.sleep(args.poll)
    finally:
        await chain.close()
