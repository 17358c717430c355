"""The error of the SDK's clients (JSON lines and gRPC alike)."""

from __future__ import annotations

from typing import Any

from p2pnet.errors import P2PError

#: Code of a P2PNodeError when the p2p-node process is gone (not a p2p-node error code).
PROCESS_EXITED = "PROCESS_EXITED"
#: Code of a P2PNodeError when an answer did not come in time (not a p2p-node error code).
TIMEOUT = "TIMEOUT"
#: Code of a P2PNodeError when the gRPC service cannot be reached (not a p2p-node error code).
UNAVAILABLE = "UNAVAILABLE"


class P2PNodeError(P2PError):
    """A command failed (``code`` from docs/cli.md), the process died (``PROCESS_EXITED``) or an
    answer did not come in time (``TIMEOUT``). ``event`` is the error event, if there was one;
    over gRPC, ``status`` is the gRPC status code's name and ``field`` the argument at fault."""

    def __init__(
        self,
        code: str,
        message: str,
        event: dict[str, Any] | None = None,
        *,
        status: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.event = event
        self.status = status
        self.field = field
