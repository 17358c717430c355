"""The ``p2pnet`` command: ``devnet``, ``explorer``, ``demo``, ``bootstrap`` (a bootstrap node
as a service), ``node`` (the same as ``p2p-node``) and ``registry``."""

from __future__ import annotations

import argparse
import logging
import sys

from p2pnet.cli import bootstrap, demo, devnet, explorer, p2p_node
from p2pnet.registry import cli as registry_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pnet", description="p2pnet: libp2p in Python")
    parser.add_argument(
        "--log-level",
        dest="stderr_log_level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level on stderr (default warning; `node` has its own --log-level)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    devnet.add_parser(sub)
    explorer.add_parser(sub)
    bootstrap.add_parser(sub)
    registry_cli.add_parser(sub)
    node = sub.add_parser(
        "node",
        help="run one agent node driven by JSON lines on stdin/stdout (the p2p-node executable)",
        description="Run one p2pnet agent node driven by JSON lines on stdin/stdout "
        "(see docs/cli.md). The same as the p2p-node executable.",
    )
    p2p_node.add_arguments(node)
    node.set_defaults(func=p2p_node.run)
    args = parser.parse_args(argv)
    if args.command not in ("node", "bootstrap"):  # these send logs as JSON events on stdout
        logging.basicConfig(
            level=args.stderr_log_level.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
