"""The explorer's read-only web server (aiohttp): the page, JSON endpoints, server-sent events.

- ``GET /``: the page (plain HTML/CSS/JS from ``static/``, no external resources);
- ``GET /api/graph``: ``{"nodes": [{id, role, name, ethAddress}], "edges": [{source, target}],
  "mesh": {topic: [{source, target}]}}``;
- ``GET /api/nodes/<peer id>``: one node's details (404 when unknown);
- ``GET /api/state``: explorer status (bootstrap connectivity), message rates, recent
  announcements, crawled DHT buckets;
- ``GET /api/events``: server-sent events ``graph``, ``rates``, ``announcements``, ``explorer``,
  ``dht`` whenever they change (each carries the same JSON as the endpoints), and ``statuses``
  (``{"version": n}``) when new status reports arrived (the page then refreshes the details).

Only GET routes exist. Each event-stream client has a bounded queue; one that falls behind is
disconnected (the browser's EventSource reconnects and reloads the state) rather than letting
memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib import resources

from aiohttp import web

from p2pnet.explorer.service import Explorer
from p2pnet.explorer.view import is_peer_id_text
from p2pnet.web_site import start_site

log = logging.getLogger("p2pnet.explorer")

MAX_EVENT_CLIENTS = 64
CLIENT_QUEUE = 64
#: A comment line every so often keeps proxies and the browser from timing the stream out.
KEEPALIVE_SECONDS = 15.0
#: A client that does not take an event within this time is disconnected.
WRITE_TIMEOUT = 30.0
_STATIC = {
    "index.html": "text/html",
    "app.js": "application/javascript",
    "style.css": "text/css",
}


class _Client:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(CLIENT_QUEUE)

    def send(self, name: str, text: str) -> None:
        try:
            self.queue.put_nowait(f"event: {name}\ndata: {text}\n\n")
        except asyncio.QueueFull:
            # Too slow: end its stream (it reconnects and reloads) instead of buffering more.
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class ExplorerWeb:
    """``await ExplorerWeb(explorer).start()``; ``url`` once started."""

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.explorer = explorer
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._clients: set[_Client] = set()
        self._files = {
            name: (resources.files("p2pnet.explorer") / "static" / name).read_bytes()
            for name in _STATIC
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/graph", self._graph)
        app.router.add_get("/api/nodes/{peer}", self._node)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        return app

    async def start(self) -> int:
        self._runner, self.port = await start_site(
            self.app(), self.host, self.port, shutdown_timeout=1.0
        )
        self.explorer.on_event(self._broadcast)
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def close(self) -> None:
        self.explorer.remove_listener(self._broadcast)
        for client in list(self._clients):
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(None)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _broadcast(self, name: str, text: str) -> None:
        for client in list(self._clients):
            client.send(name, text)

    # -- handlers -------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        return web.Response(
            body=self._files[name],
            content_type=_STATIC[name],
            headers={"Cache-Control": "no-cache"},
        )

    async def _graph(self, request: web.Request) -> web.Response:
        return web.json_response(self.explorer.view.graph())

    async def _node(self, request: web.Request) -> web.Response:
        peer = request.match_info["peer"]
        details = None
        if is_peer_id_text(peer):
            details = self.explorer.view.details(peer, self.explorer.now())
        if details is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "unknown node"}), content_type="application/json"
            )
        return web.json_response(details)

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.explorer.state())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= MAX_EVENT_CLIENTS:
            raise web.HTTPServiceUnavailable(text="too many event streams\n")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        client = _Client()
        self._clients.add(client)
        explorer = self.explorer
        # Start every stream with the full picture, so a reconnect loses nothing.
        client.send("graph", json.dumps(explorer.view.graph()))
        state = explorer.state()
        for name in ("explorer", "rates", "announcements", "dht"):
            client.send(name, json.dumps(state[name]))
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(client.queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    chunk = ": keepalive\n\n"
                if chunk is None:
                    break
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(chunk.encode())
        except (ConnectionResetError, TimeoutError):
            pass  # the browser went away, or stopped reading
        finally:
            self._clients.discard(client)
        return response
