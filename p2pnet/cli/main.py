"""The ``p2pnet`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from p2pnet.cli import demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pnet", description="p2pnet: libp2p in Python")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level on stderr (default warning)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
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
