#!/usr/bin/env python3
"""Regenerate the protobuf modules in p2pnet/wire/pb and p2pnet/rpc from their .proto sources.

Usage::

    python scripts/gen_protos.py            # rewrite p2pnet/{wire/pb,rpc}/*_pb2.py and *_pb2.pyi
    python scripts/gen_protos.py OUT_DIR    # write them into OUT_DIR instead (wire/pb's modules
                                            # at its top, p2pnet/rpc's in OUT_DIR/rpc)

Needs grpcio-tools (pinned in pyproject's ``test`` extra, so every run emits the same bytes).
The .proto files are compiled with the repository root as include path, so each file is
registered in the protobuf descriptor pool under a unique name (``p2pnet/wire/pb/keys.proto``)
and cross-file imports come out as ``from p2pnet.wire.pb import keys_pb2``. Should protoc ever
emit a bare top-level ``import x_pb2`` (a proto imported by plain file name), it is rewritten to
the package import as well. The .pyi stubs get a one-line mypy header (see ``_STUB_HEADER``).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PB_DIR = ROOT / "p2pnet" / "wire" / "pb"
PB_PACKAGE = "p2pnet.wire.pb"
#: The gRPC interface of p2p-node (package p2pnet.v1); only messages are generated: the server
#: and the client register the service's methods themselves, typed (p2pnet/rpc/service.py).
RPC_DIR = ROOT / "p2pnet" / "rpc"

_BARE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)

# protoc's stubs annotate message-typed constructor arguments with a bare ``Mapping``, which
# ``mypy --strict`` rejects; the stubs are otherwise fine, so only that check is switched off.
_STUB_HEADER = '# mypy: disable-error-code="type-arg"\n'


def proto_sources(pb_dir: Path = PB_DIR) -> list[Path]:
    """The .proto files to compile, in a stable order."""
    return sorted(pb_dir.glob("*.proto"))


def fix_imports(text: str) -> str:
    """Rewrite bare ``import keys_pb2 as x`` lines into package imports."""
    return _BARE_IMPORT.sub(rf"from {PB_PACKAGE} import \1 as \2", text)


def generate(out_dir: Path = PB_DIR, pb_dir: Path = PB_DIR) -> list[Path]:
    """Compile every proto of ``pb_dir`` into ``out_dir``; return the files written."""
    from grpc_tools import protoc

    protos = proto_sources(pb_dir)
    if not protos:
        raise SystemExit(f"no .proto files in {pb_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *(str(p) for p in protos),
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        gen_dir = Path(tmp) / pb_dir.relative_to(ROOT)
        for src in sorted(gen_dir.iterdir()):
            if not src.name.endswith(("_pb2.py", "_pb2.pyi")):
                continue
            dst = out_dir / src.name
            text = fix_imports(src.read_text(encoding="utf-8"))
            if src.suffix == ".pyi":
                text = _STUB_HEADER + text
            with dst.open("w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
            written.append(dst)
        leftovers = [p for p in Path(tmp).rglob("*") if p.is_file() and p.parent != gen_dir]
        if leftovers:
            raise SystemExit(f"protoc wrote unexpected files: {leftovers}")
    return written


def main(argv: list[str]) -> int:
    if len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[1]).resolve() if len(argv) == 2 else PB_DIR
    rpc_out = out_dir / "rpc" if len(argv) == 2 else RPC_DIR
    for path in [*generate(out_dir), *generate(rpc_out, RPC_DIR)]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
