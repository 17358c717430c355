"""``p2pnet bootstrap``: run a bootstrap node as a service (docs/deploy.md).

The same process as ``p2p-node --bootstrap --connect --ignore-eof`` (JSON lines on stdout, for
journald; ``docs/cli.md``), with service defaults: listen on every interface (``0.0.0.0``, the
advertised addresses are the interfaces' own), port 4001, ``info`` logs, and keep retrying the
other bootstrap nodes until they answer. It refuses to start without a stable identity
(``PRIVATE_KEY`` in the env file, or ``--key-file``): a bootstrap node whose PeerID changed on
every restart could not be listed in anyone's bootstrap list.
"""

from __future__ import annotations

import argparse
import sys

from p2pnet.cli import p2p_node
from p2pnet.config import ConfigError, read_env_file

DEFAULT_PORT = 4001


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="run a bootstrap node as a service (p2p-node --bootstrap --connect --ignore-eof)",
        description="Run a p2pnet bootstrap node (DHT server) as a long-running service: JSON "
        "events on stdout, SIGTERM to stop. Needs a stable identity: PRIVATE_KEY in the env "
        "file (-e) or --key-file. See docs/deploy.md.",
    )
    p2p_node.add_arguments(p)
    p.set_defaults(
        func=run,
        host="0.0.0.0",
        port=DEFAULT_PORT,
        log_level="info",
        bootstrap=True,
        connect=True,
        ignore_eof=True,
    )


def run(args: argparse.Namespace) -> int:
    if not args.key_file:
        env = {}
        if args.env_file:
            try:
                env = read_env_file(args.env_file)
            except ConfigError as exc:
                print(f"p2pnet bootstrap: {exc}", file=sys.stderr)
                return 2
        if not env.get("PRIVATE_KEY"):
            print(
                "p2pnet bootstrap: a bootstrap node needs a stable identity: PRIVATE_KEY in the "
                "env file (-e FILE) or --key-file PATH",
                file=sys.stderr,
            )
            return 2
    return p2p_node.run(args)
