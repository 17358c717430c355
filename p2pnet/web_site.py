"""Starting an aiohttp application on a host and port, and learning the port it got.

Shared by the metrics server and the explorer; port 0 picks a free port.
"""

from __future__ import annotations

from aiohttp import web


async def start_site(
    app: web.Application, host: str, port: int, *, shutdown_timeout: float = 60.0
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port``; returns the runner (to clean up) and the bound port.

    Raises :class:`OSError` (the port taken, the address unusable) after cleaning up.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return runner, int(address[1])
    return runner, port
