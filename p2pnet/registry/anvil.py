"""Running anvil (Foundry's local Ethereum node) from the npm package in ``contracts/``.

``@foundry-rs/anvil`` ships the binary inside a per-platform package; we run that binary
directly (no Node.js needed once installed) on 127.0.0.1 with a free port and read the port it
reports. Used by ``p2pnet devnet``, ``p2pnet registry`` and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import shutil
import signal
from pathlib import Path

from p2pnet.registry.errors import RegistryError

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"
#: anvil's first default account (from its well-known test mnemonic): a local chain only.
ANVIL_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
)
_LISTENING = re.compile(rb"Listening on ([0-9.]+):(\d+)")


class AnvilUnavailable(RegistryError):
    """anvil is not installed (``cd contracts && npm ci``) or did not start."""


def anvil_binary() -> Path | None:
    """The anvil binary: ``$P2PNET_ANVIL`` (None if that is no file), the npm package in
    contracts/, else ``anvil`` on PATH."""
    env = os.environ.get("P2PNET_ANVIL")
    if env:
        return Path(env) if Path(env).is_file() else None
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = {"linux": "linux", "darwin": "darwin"}.get(platform.system().lower(), "")
    candidate = CONTRACTS_DIR / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin"
    if (candidate / "anvil").is_file():
        return candidate / "anvil"
    found = shutil.which("anvil")
    return Path(found) if found else None


def _die_with_us() -> list[str]:
    """A prefix that makes the kernel send anvil SIGTERM (it saves its state then) when the
    process that started it dies, however it dies: anvil runs in a session of its own (a
    Ctrl-C in the terminal must not stop it before us), so a SIGKILLed parent would otherwise
    leave it running forever. (Strictly, the signal comes when the thread that started it
    ends: the event loop's thread, which lives at least as long as its loop.) util-linux's
    ``setpriv --pdeathsig`` sets that and execs anvil (no ``preexec_fn``, which may deadlock
    in a process with threads); where it is missing (not Linux) anvil is started as is."""
    setpriv = shutil.which("setpriv") if platform.system() == "Linux" else None
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class Anvil:
    """A running anvil process: ``url`` (http), ``ws_url``, ``stop()``."""

    def __init__(self, proc: asyncio.subprocess.Process, host: str, port: int) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @classmethod
    async def start(
        cls,
        *,
        port: int = 0,
        state: Path | None = None,
        block_time: float | None = None,
        timeout: float = 20.0,
    ) -> Anvil:
        """Start anvil on 127.0.0.1 (``port`` 0: a free one). ``state``: a file the chain is
        loaded from (if it exists) and saved to on stop, so a restart keeps the contracts."""
        binary = anvil_binary()
        if binary is None:
            raise AnvilUnavailable(
                f"anvil not found: run `npm ci` in {CONTRACTS_DIR} (or set P2PNET_ANVIL)"
            )
        args = [
            *_die_with_us(),
            str(binary),
            *("--host", "127.0.0.1", "--port", str(port), "--accounts", "10"),
        ]
        if state is not None:
            args += ["--state", str(state)]
        if block_time is not None:
            args += ["--block-time", str(block_time)]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        seen = b""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise AnvilUnavailable(
                            f"anvil exited: {seen[-500:].decode(errors='replace')}"
                        )
                    seen += line
                    m = _LISTENING.search(line)
                    if m:
                        anvil = cls(proc, m.group(1).decode(), int(m.group(2)))
                        anvil._drain = asyncio.get_running_loop().create_task(anvil._drain_output())
                        return anvil
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise

    async def _drain_output(self) -> None:
        assert self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (anvil saves ``state`` then), SIGKILL after ``timeout``."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
