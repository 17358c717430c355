"""RegistryGuard: one node's view of the agent registry (the asyncio side of the cache).

It connects the backend at start (chain id, code, interface: a failure is
:class:`RegistryUnavailable`), answers "is this address a registered agent?" from the cache or
the registry, follows the registry's events from the last block seen to forget what changed,
and resolves registration files for annotations. While the registry cannot be asked the node
keeps running: answers come from the cache (expired entries included); an agent the cache does
not know gets ``None`` and, under ``enforce``, is refused (fail closed). Going down and coming
back are logged at warning level (``log`` events in p2p-node).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from p2pnet.clock import Clock, SystemClock
from p2pnet.registry.backend import Registry
from p2pnet.registry.cache import AgentStatus, RegistryCache
from p2pnet.registry.errors import RegistryRevert, RegistryUnavailable
from p2pnet.registry.registration import (
    RegistrationFile,
    RegistrationFileError,
    fetch_registration,
)
from p2pnet.registry.settings import RegistryPolicy, RegistrySettings
from p2pnet.tasks import TaskOwner

log = logging.getLogger("p2pnet.registry")

MAX_FILES = 1024


class RegistryGuard:
    def __init__(
        self,
        settings: RegistrySettings,
        backend: Registry | None = None,
        *,
        clock: Clock | None = None,
        ttl: float = 300.0,
        poll_interval: float = 1.0,
        rpc_timeout: float = 3.0,
        file_timeout: float = 2.0,
        max_concurrent_checks: int = 32,
        on_change: Callable[[set[str]], None] | None = None,
    ) -> None:
        if backend is None:
            from p2pnet.registry.chain import ChainRegistry

            assert settings.rpc_url is not None and settings.address is not None
            backend = ChainRegistry(
                settings.rpc_url,
                settings.address,
                timeout=rpc_timeout,
                expected_chain_id=settings.chain_id,
            )
        self.settings = settings
        self.backend = backend
        self.clock = clock or SystemClock()
        self.cache = RegistryCache(ttl=ttl)
        self.poll_interval = poll_interval
        self.file_timeout = file_timeout
        #: Called with the addresses a followed event named (their status may have changed).
        self.on_change = on_change
        #: agentIds other agents stated (announcements, presence records), by lowercase address.
        self.stated: dict[str, int] = {}
        #: Our own agentId (configured, or found on chain at start).
        self.agent_id: int | None = settings.agent_id
        self.last_block = -1
        self.available = False
        self.checks = 0
        self.rpc_calls = 0
        self._inflight: dict[tuple[str, int | None], asyncio.Future[AgentStatus | None]] = {}
        self._files: dict[str, tuple[RegistrationFile | None, float]] = {}
        self._tasks = TaskOwner("registry")
        self._started = False
        self._closed = False
        # At most this many registry questions in flight: a flood of messages from fresh
        # addresses queues here (and their validators time out) instead of flooding the RPC.
        self._rpc_slots = asyncio.Semaphore(max_concurrent_checks)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def policy(self) -> RegistryPolicy:
        return self.settings.policy

    @property
    def enforcing(self) -> bool:
        return self.settings.policy is RegistryPolicy.ENFORCE

    @property
    def ref(self) -> str:
        """``eip155:<chainId>:<address>`` of the registry."""
        return self.backend.ref

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, own_address: str | None = None) -> AgentStatus | None:
        """Connect and check the registry; returns our own status (None without an address)."""
        await self.backend.connect()
        self.last_block = await self.backend.latest_block()
        self.available = True
        self._started = True
        own: AgentStatus | None = None
        if own_address is not None:
            own = await self.status(own_address, self.agent_id)
            if self.agent_id is None and own is not None and own.registered:
                # We own a token; which one is only in the events (ERC-721 has no index).
                self.agent_id = await self.backend.find_agent_id(own_address)
                own = await self.status(own_address, self.agent_id)
            if own is not None and own.registered:
                log.info("registered as agentId %s in %s", own.agent_id, self.ref)
            else:
                log.warning(
                    "%s is not a registered agent in %s: peers enforcing the registry will "
                    "refuse its messages and presence",
                    own_address,
                    self.ref,
                )
        self._tasks.spawn(self._follow(), name="registry events")
        return own

    async def close(self) -> None:
        self._started = False  # late checks fail quietly from here on
        self._closed = True
        await self._tasks.close()
        for fut in self._inflight.values():
            fut.cancel()
        await self.backend.close()

    # -- questions ---------------------------------------------------------------------------

    def note_stated(self, address: str, agent_id: Any) -> None:
        """Remember the agentId an agent stated (in a signed announcement or record)."""
        if type(agent_id) is int and 0 <= agent_id < 2**256:
            self.stated[address.lower()] = agent_id
            if len(self.stated) > 100_000:
                self.stated.pop(next(iter(self.stated)))

    def cached(self, address: str, agent_id: int | None = None) -> AgentStatus | None:
        """What the cache says now (expired entries included), without asking the registry."""
        aid = agent_id if agent_id is not None else self.stated.get(address.lower())
        return self.cache.status(address, aid, self.clock.monotonic(), allow_stale=True)

    async def status(self, address: str, agent_id: int | None = None) -> AgentStatus | None:
        """Whether ``address`` is a registered agent (``agent_id``: the id it states; default:
        the one it stated last). None: unknown (the registry could not be asked and the cache
        has no answer)."""
        self.checks += 1
        addr = address.lower()
        aid = agent_id if agent_id is not None else self.stated.get(addr)
        now = self.clock.monotonic()
        fresh = self.cache.status(addr, aid, now)
        if fresh is not None:
            return fresh
        key = (addr, aid)
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[key] = pending
            try:
                async with self._rpc_slots:
                    pending.set_result(await self._ask(addr, aid))
            except Exception as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved here; waiters get it too
                raise
            except BaseException:
                pending.cancel()
                raise
            finally:
                self._inflight.pop(key, None)
        return await asyncio.shield(pending)

    async def _ask(self, addr: str, aid: int | None) -> AgentStatus | None:
        need_balance, need_token = self.cache.needs(addr, aid, self.clock.monotonic())

        async def balance() -> None:
            self.rpc_calls += 1
            try:
                value = await self.backend.balance_of(addr)
            except RegistryRevert:
                value = 0  # balanceOf reverts only for the zero address
            self.cache.put_balance(addr, value, self.clock.monotonic())

        async def token(agent_id: int) -> None:
            self.rpc_calls += 1
            self.cache.put_token(
                agent_id, await self.backend.token(agent_id), self.clock.monotonic()
            )

        asks = [balance()] if need_balance else []
        if need_token and aid is not None:
            asks.append(token(aid))
        for result in await asyncio.gather(*asks, return_exceptions=True):
            if isinstance(result, RegistryUnavailable):
                self._went_down(result)
                return self.cache.status(addr, aid, self.clock.monotonic(), allow_stale=True)
            if isinstance(result, BaseException):
                raise result
        self._came_back()
        return self.cache.status(addr, aid, self.clock.monotonic(), allow_stale=True)

    async def admit(self, address: str, agent_id: int | None = None) -> str | None:
        """Under ``enforce``: None if ``address`` may speak, else why it is refused."""
        status = await self.status(address, agent_id)
        if status is None:
            return f"registry {self.ref} unreachable and {address} not in the cache (fail closed)"
        if not status.registered:
            return f"{address} is not a registered agent in {self.ref}"
        return None

    async def annotation(self, address: str, agent_id: int | None = None) -> dict[str, Any]:
        """What events carry about an agent: ``registered`` (bool, None if unknown),
        ``agentId``, ``agentRegistry`` and, when its file resolves, ``agentName``/``services``."""
        status = await self.status(address, agent_id)
        return await self._annotate(status)

    def cached_annotation(self, address: str, agent_id: int | None = None) -> dict[str, Any]:
        status = self.cached(address, agent_id)
        out = _base_annotation(self.ref, status)
        if status is not None and status.uri:
            hit = self._files.get(status.uri)
            if hit is not None and hit[0] is not None:
                out.update(_file_fields(hit[0]))
        return out

    async def _annotate(self, status: AgentStatus | None) -> dict[str, Any]:
        out = _base_annotation(self.ref, status)
        if status is not None and status.registered and status.uri:
            file = await self.registration_file(status.uri)
            if file is not None:
                out.update(_file_fields(file))
        return out

    async def registration_file(self, uri: str) -> RegistrationFile | None:
        """The parsed registration file at ``uri`` (cached; failures are cached for a TTL)."""
        now = self.clock.monotonic()
        hit = self._files.get(uri)
        if hit is not None and now - hit[1] < self.cache.ttl:
            return hit[0]
        try:
            file: RegistrationFile | None = await fetch_registration(uri, self.file_timeout)
        except RegistrationFileError as exc:
            log.info("registration file of %s... not resolved: %s", uri[:48], exc)
            file = None
        self._files[uri] = (file, now)
        if len(self._files) > MAX_FILES:
            self._files.pop(next(iter(self._files)))
        return file

    # -- health ------------------------------------------------------------------------------

    def _went_down(self, exc: Exception) -> None:
        if self.available and self._started:
            self.available = False
            what = "unknown agents are refused" if self.enforcing else "unknown agents unverified"
            log.warning("registry unreachable: %s; decisions use the cache, %s", exc, what)

    def _came_back(self) -> None:
        if not self.available and self._started:
            self.available = True
            log.warning("registry %s reachable again", self.ref)

    # -- following events --------------------------------------------------------------------

    async def _follow(self) -> None:
        delay = self.poll_interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.poll_events()
                delay = self.poll_interval
            except RegistryUnavailable as exc:
                self._went_down(exc)
                delay = min(delay * 2, max(self.poll_interval, 5.0))

    async def poll_events(self) -> set[str]:
        """Read events since the last block seen; forget what they change. Returns the
        addresses named."""
        latest = await self.backend.latest_block()
        touched: set[str] = set()
        if latest < self.last_block:
            # The chain went back (a restarted dev chain, a reorg deeper than we saw): start over.
            log.warning("registry chain went back from block %d to %d", self.last_block, latest)
            self.cache.clear()
            self.last_block = latest
        elif latest > self.last_block:
            events = await self.backend.events(self.last_block + 1, latest)
            self.last_block = latest
            touched = self.cache.apply(events)
            for event in events:
                log.debug(
                    "registry event %s agentId %d at block %d",
                    event.kind,
                    event.agent_id,
                    event.block,
                )
        self._came_back()
        if touched and self.on_change is not None:
            self.on_change(touched)
        return touched


def _base_annotation(ref: str, status: AgentStatus | None) -> dict[str, Any]:
    return {
        "registered": None if status is None else status.registered,
        "agentId": None if status is None else status.agent_id,
        "agentRegistry": ref,
    }


def _file_fields(file: RegistrationFile) -> dict[str, Any]:
    return {"agentName": file.name, "services": file.services}
