"""What an agent does with the registry, by policy (``off`` / ``annotate`` / ``enforce``).

* ``annotate``: incoming messages and discovered agents carry whether the sender is registered,
  its agentId and, when the agentURI resolves, its registration file's name and services.
* ``enforce``: on top of that, topic messages from unregistered agents are rejected by the
  gossipsub validator (REJECT: the sender's score pays, P4), direct messages from them are
  refused in the acknowledgement, and presence records of unregistered addresses are refused
  by the DHT record validator (so DHT servers do not store them).

Unknown status (registry unreachable, nothing cached) fails closed under ``enforce``: the
message is dropped without delivery but IGNOREd rather than REJECTed, because the sender may
well be registered and should not lose score for our outage; a presence record is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from p2pnet.agent.record import AgentRecordValidator, verify_agent_record
from p2pnet.kad.errors import InvalidRecord
from p2pnet.kad.records import Validator
from p2pnet.pubsub.messages import ValidationResult
from p2pnet.registry.errors import RegistryError
from p2pnet.registry.guard import RegistryGuard
from p2pnet.tasks import TaskOwner

log = logging.getLogger("p2pnet.registry")


class AgentRegistryPolicy:
    """The registry side of one agent: built by the agent when a policy other than off is set."""

    def __init__(self, guard: RegistryGuard, own_address: str, name: str = "") -> None:
        self.guard = guard
        self.own_address = own_address.lower()
        self.name = name
        self.refused = 0
        #: Called when a registry event names our own address (republish our presence).
        self.on_own_change: Callable[[], None] | None = None
        self._tasks = TaskOwner("registry policy")
        self._warned: dict[str, float] = {}
        guard.on_change = self._changed

    @property
    def enforcing(self) -> bool:
        return self.guard.enforcing

    async def start(self) -> None:
        await self.guard.start(self.own_address)

    async def close(self) -> None:
        await self._tasks.close()
        await self.guard.close()

    def _changed(self, addresses: set[str]) -> None:
        if self.own_address in addresses and self.on_own_change is not None:
            self.on_own_change()
        if self.enforcing:
            # Ask again at once about the agents whose status changed, so a presence record
            # they publish next finds the answer in the cache (the DHT check cannot wait).
            for address in sorted(addresses - {self.own_address})[:64]:
                self._tasks.spawn(self._warm(address), name="registry warm")

    def _log_refusal(self, text: str, sender: str, *args: object) -> None:
        """The first refusal of a sender within a minute at warning, the others at debug."""
        now = self.guard.clock.monotonic()
        last = self._warned.get(sender)
        level = logging.WARNING if last is None or now - last >= 60.0 else logging.DEBUG
        if level == logging.WARNING:
            self._warned[sender] = now
            if len(self._warned) > 4096:
                self._warned.pop(next(iter(self._warned)))
        log.log(level, text, *args)

    async def refresh_own(self) -> None:
        """After an event named our address: find our agentId again (unless configured) and
        log what we are now."""
        guard = self.guard
        if guard.settings.agent_id is None:
            try:
                guard.agent_id = await guard.backend.find_agent_id(self.own_address)
            except RegistryError as exc:
                log.info("%s: cannot look up our agentId: %s", self.name, exc)
        status = await guard.status(self.own_address, guard.agent_id)
        now = "registered" if status is not None and status.registered else "not registered"
        log.warning("%s: our registration changed: %s", self.name, now)

    def status_report(self) -> dict[str, Any]:
        """The ``registry`` field of our node-status report."""
        guard = self.guard
        own = guard.cached(self.own_address, guard.agent_id)
        return {
            "policy": guard.policy.value,
            "agentRegistry": guard.ref,
            "agentId": guard.agent_id,
            "registered": None if own is None else own.registered,
            "available": guard.available,
            "refused": self.refused,
        }

    # -- what we state ---------------------------------------------------------------------

    def record_fields(self) -> dict[str, Any]:
        """``agentRegistry``/``agentId`` for our presence record and announcements."""
        fields: dict[str, Any] = {"agentRegistry": self.guard.ref}
        if self.guard.agent_id is not None:
            fields["agentId"] = self.guard.agent_id
        return fields

    def note_stated(self, address: str, data: Any) -> None:
        """Remember the agentId an agent states in a (verified) announcement."""
        if isinstance(data, dict) and data.get("agentRegistry") == self.guard.ref:
            self.guard.note_stated(address, data.get("agentId"))

    # -- incoming --------------------------------------------------------------------------

    async def topic_verdict(self, sender: str, topic: str, data: Any) -> ValidationResult:
        """The registry's verdict on a verified topic message from ``sender``."""
        if self.guard.closed:  # the node is shutting down: decide nothing, say nothing
            return ValidationResult.IGNORE
        if isinstance(data, dict) and data.get("event") is not None:
            self.note_stated(sender, data)
        if not self.enforcing:
            await self.guard.annotation(sender)  # warm the cache: delivery annotates from it
            return ValidationResult.ACCEPT
        status = await self.guard.status(sender)
        if status is not None and status.registered:
            await self.guard.annotation(sender)
            return ValidationResult.ACCEPT
        self.refused += 1
        if status is None:
            self._log_refusal(
                "%s: dropped a message on %s from %s: registry unreachable, agent unknown "
                "(fail closed)",
                sender,
                self.name,
                topic,
                sender,
            )
            return ValidationResult.IGNORE
        self._log_refusal(
            "%s: refused a message on %s from unregistered agent %s",
            sender,
            self.name,
            topic,
            sender,
        )
        return ValidationResult.REJECT

    async def direct_refusal(self, sender: str) -> str | None:
        """None if a direct message from ``sender`` may be delivered, else why not."""
        if self.guard.closed:
            return "the node is shutting down"
        if not self.enforcing:
            await self.guard.annotation(sender)
            return None
        reason = await self.guard.admit(sender)
        if reason is not None:
            self.refused += 1
            self._log_refusal("%s: refused a direct message: %s", sender, self.name, reason)
        else:
            await self.guard.annotation(sender)
        return reason

    async def prepare(self, address: str) -> None:
        """Warm the cache for ``address`` before a DHT lookup of its presence record."""
        if self.enforcing:
            await self.guard.status(address)

    def annotation(self, sender: str) -> dict[str, Any]:
        """The annotation of ``sender`` from the cache (warmed by the checks above)."""
        return self.guard.cached_annotation(sender)

    async def annotate(self, address: str) -> dict[str, Any]:
        return await self.guard.annotation(address)

    # -- the DHT ---------------------------------------------------------------------------

    def record_validator(self) -> Validator:
        return RegisteredAgentRecords(self)

    def check_record_owner(self, address: str, agent_id: int | None, registry: str | None) -> None:
        """Under enforce: raise InvalidRecord unless ``address`` is known to be registered."""
        if not self.enforcing:
            return
        if registry == self.guard.ref and agent_id is not None:
            self.guard.note_stated(address, agent_id)
        status = self.guard.cached(address)
        if status is None or status.stale:
            # A sync validator cannot wait: ask now, refuse this time (the agent retries).
            self._tasks.spawn(self._warm(address), name="registry warm")
            if status is None:
                raise InvalidRecord(f"registration of {address} not verified yet (retry)")
        if status is not None and not status.registered:
            raise InvalidRecord(f"{address} is not a registered agent in {self.guard.ref}")

    async def _warm(self, address: str) -> None:
        try:
            async with asyncio.timeout(10):
                await self.guard.status(address)
        except Exception as exc:  # logged by the guard; a warm-up must never raise
            log.debug("warming the registry cache for %s: %r", address, exc)


class RegisteredAgentRecords(Validator):
    """The ``/agent/`` record validator with the registry check of enforce on top."""

    def __init__(self, policy: AgentRegistryPolicy) -> None:
        self.policy = policy
        self.inner = AgentRecordValidator()

    def validate(self, key: bytes, value: bytes) -> None:
        presence = verify_agent_record(key, value)
        self.policy.check_record_owner(presence.address, presence.agent_id, presence.agent_registry)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        return self.inner.select(key, values)
