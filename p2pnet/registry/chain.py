"""The chain backend of :class:`~p2pnet.registry.backend.Registry`: an ERC-8004 identity
registry contract reached over Ethereum JSON-RPC (HTTP(S) or WebSocket) with web3.py.

Every call is bounded by ``timeout``; whatever goes wrong below (refused connection, a hanging
or garbage-answering RPC, a dropped WebSocket) comes out as :class:`RegistryUnavailable`, and a
revert as :class:`RegistryRevert`. A WebSocket that dropped is reopened on the next call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from p2pnet.crypto.eth import to_checksum_address
from p2pnet.registry.abi import (
    ERC721_INTERFACE_ID,
    FOLLOWED_TOPICS,
    IDENTITY_REGISTRY_ABI,
    METADATA_SET_TOPIC,
    REGISTERED_TOPIC,
    TRANSFER_TOPIC,
    URI_UPDATED_TOPIC,
)
from p2pnet.registry.backend import AgentToken, Registry, RegistryEvent
from p2pnet.registry.errors import RegistryBadAnswer, RegistryRevert, RegistryUnavailable
from p2pnet.registry.settings import parse_registry_ref, parse_rpc_url

log = logging.getLogger("p2pnet.registry")

T = TypeVar("T")

ZERO_ADDRESS = "0x" + "00" * 20
#: An agentId no registry will reach: probing getMetadata with it touches no real agent.
PROBE_AGENT_ID = 2**256 - 1


def http_provider(url: str, timeout: float) -> Any:
    """web3's AsyncHTTPProvider with an aiohttp session of its own.

    web3's HTTP session manager guards its session cache with one process-wide
    ``threading.Lock`` taken in a thread pool; a request cancelled while its thread waits
    leaves the lock taken for good, and every later request (and the interpreter's exit) hangs.
    Cancellation is routine here (timeouts, closing nodes), so each provider posts through its
    own session instead.
    """
    import aiohttp
    from web3 import AsyncHTTPProvider

    class OwnSessionHTTPProvider(AsyncHTTPProvider):
        _own_session: aiohttp.ClientSession | None = None
        _disconnected = False

        async def _make_request(self, method: Any, request_data: bytes) -> bytes:
            if self._disconnected:  # a late request: a session of its own, closed after it
                async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=timeout)
                ) as session:
                    return await self._post(session, request_data)
            if self._own_session is None or self._own_session.closed:
                self._own_session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=timeout)
                )
            return await self._post(self._own_session, request_data)

        async def _post(self, session: aiohttp.ClientSession, request_data: bytes) -> bytes:
            headers = self.get_request_kwargs().get("headers")
            async with session.post(
                str(self.endpoint_uri), data=request_data, headers=headers
            ) as response:
                response.raise_for_status()
                return await response.read()

        async def disconnect(self) -> None:
            self._disconnected = True
            session, self._own_session = self._own_session, None
            if session is not None:
                await session.close()

    return OwnSessionHTTPProvider(url, exception_retry_configuration=None)


class ChainRegistry(Registry):
    def __init__(
        self,
        rpc_url: str,
        address: str,
        *,
        timeout: float = 5.0,
        log_range: int = 10_000,
        scan_blocks: int = 100_000,
        expected_chain_id: int | None = None,
    ) -> None:
        self.rpc_url = parse_rpc_url(rpc_url)
        named_chain, self.address = parse_registry_ref(address)
        #: The chain the registry must be on (from a CAIP-10 REGISTRY_ADDRESS); None: any.
        self.expected_chain_id = expected_chain_id if expected_chain_id is not None else named_chain
        self.timeout = timeout
        #: Most blocks asked in one eth_getLogs (public RPCs cap the range).
        self.log_range = log_range
        #: How far back find_agent_id looks for a Transfer to an address.
        self.scan_blocks = scan_blocks
        self.chain_id: int | None = None
        self._websocket = self.rpc_url.startswith(("ws://", "wss://"))
        self._w3: Any = None
        self._contract: Any = None
        self._closed = False

    # -- connection --------------------------------------------------------------------------

    async def _open(self) -> None:
        from web3 import AsyncWeb3, WebSocketProvider

        if self._w3 is not None:
            return
        if self._closed:
            raise RegistryUnavailable("the registry connection is closed")
        provider: Any
        if self._websocket:
            provider = WebSocketProvider(
                self.rpc_url, request_timeout=self.timeout, max_connection_retries=1
            )
            try:
                async with asyncio.timeout(self.timeout):
                    await provider.connect()  # not AsyncWeb3.__await__: it takes over signals
            except TimeoutError:
                raise RegistryUnavailable(
                    f"RPC {self.rpc_url} did not accept a WebSocket within {self.timeout}s"
                ) from None
            except Exception as exc:  # web3 and websockets raise many unrelated types
                raise RegistryUnavailable(f"RPC {self.rpc_url} is unreachable: {exc}") from exc
        else:
            provider = http_provider(self.rpc_url, self.timeout)
        self._w3 = AsyncWeb3(provider)
        self._contract = self._w3.eth.contract(address=self.address, abi=IDENTITY_REGISTRY_ABI)

    async def _drop(self) -> None:
        w3, self._w3, self._contract = self._w3, None, None
        if w3 is None:
            return
        provider = w3.provider
        try:
            await provider.disconnect()
        except Exception as exc:  # closing a broken connection may fail in any way
            log.debug("closing the RPC connection: %r", exc)

    async def close(self) -> None:
        self._closed = True
        await self._drop()

    async def _rpc(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one RPC call under the timeout, mapping every failure to a registry error."""
        from eth_abi.exceptions import DecodingError
        from web3.exceptions import BadFunctionCallOutput, ContractLogicError

        try:
            await self._open()
            async with asyncio.timeout(self.timeout):
                return await call()
        except ContractLogicError as exc:
            raise RegistryRevert(f"{what} reverted: {exc}") from exc
        except (BadFunctionCallOutput, DecodingError) as exc:
            raise RegistryBadAnswer(f"{what} answered something undecodable: {exc}") from exc
        except RegistryUnavailable:
            await self._drop()
            raise
        except TimeoutError:
            await self._drop()
            raise RegistryUnavailable(
                f"RPC {self.rpc_url} did not answer {what} within {self.timeout}s"
            ) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aiohttp, websockets, JSON and web3 errors: all "unusable"
            await self._drop()
            raise RegistryUnavailable(f"RPC {self.rpc_url} failed on {what}: {exc!r}") from exc

    async def connect(self) -> None:
        """Check the chain id, that the address holds code, and that it answers the ERC-8004
        identity registry interface (ERC-721 via ERC-165, getMetadata, balanceOf)."""
        chain_id = await self._rpc("eth_chainId", lambda: self._w3.eth.chain_id)
        if not isinstance(chain_id, int) or chain_id <= 0:
            raise RegistryUnavailable(f"RPC {self.rpc_url} answered a bad chain id {chain_id!r}")
        if self.expected_chain_id is not None and chain_id != self.expected_chain_id:
            raise RegistryUnavailable(
                f"RPC {self.rpc_url} serves chain {chain_id}, but REGISTRY_ADDRESS names chain "
                f"{self.expected_chain_id}"
            )
        code = await self._rpc("eth_getCode", lambda: self._w3.eth.get_code(self.address))
        if not code:
            raise RegistryUnavailable(
                f"no contract at REGISTRY_ADDRESS {self.address} on chain {chain_id}"
            )
        fns = self._contract.functions
        why = "it does not answer the ERC-8004 identity registry interface"
        try:
            erc721 = await self._rpc(
                "supportsInterface", lambda: fns.supportsInterface(ERC721_INTERFACE_ID).call()
            )
            await self._rpc(
                "getMetadata", lambda: fns.getMetadata(PROBE_AGENT_ID, "agentWallet").call()
            )
            balance = await self._rpc("balanceOf", lambda: fns.balanceOf(self.address).call())
        except (RegistryRevert, RegistryBadAnswer) as exc:
            raise RegistryUnavailable(f"{self.address} on chain {chain_id}: {why} ({exc})") from exc
        if erc721 is not True or not isinstance(balance, int):
            raise RegistryUnavailable(f"{self.address} on chain {chain_id}: {why} (not ERC-721)")
        self.chain_id = chain_id
        self.ref = f"eip155:{chain_id}:{self.address}"

    # -- reads -------------------------------------------------------------------------------

    async def balance_of(self, address: str) -> int:
        addr = to_checksum_address(address)
        value = await self._rpc(
            "balanceOf", lambda: self._contract.functions.balanceOf(addr).call()
        )
        return int(value)

    async def token(self, agent_id: int) -> AgentToken | None:
        results: tuple[Any, ...] = await asyncio.gather(
            self._rpc("ownerOf", lambda: self._fns().ownerOf(agent_id).call()),
            self._rpc("getAgentWallet", lambda: self._fns().getAgentWallet(agent_id).call()),
            self._rpc("tokenURI", lambda: self._fns().tokenURI(agent_id).call()),
            return_exceptions=True,
        )
        owner, wallet, uri = results
        if isinstance(owner, RegistryRevert):
            return None  # ownerOf reverts for an id that does not exist (ERC-721)
        for result in (owner, wallet, uri):
            if isinstance(result, BaseException):
                raise result
        return AgentToken(
            agent_id=agent_id,
            owner=to_checksum_address(str(owner)),
            wallet=None if wallet == ZERO_ADDRESS else to_checksum_address(str(wallet)),
            uri=str(uri),
        )

    def _fns(self) -> Any:
        return self._contract.functions

    async def latest_block(self) -> int:
        return int(await self._rpc("eth_blockNumber", lambda: self._w3.eth.block_number))

    async def events(self, from_block: int, to_block: int) -> list[RegistryEvent]:
        out: list[RegistryEvent] = []
        start = from_block
        while start <= to_block:
            end = min(to_block, start + self.log_range - 1)
            query = {
                "address": self.address,
                "fromBlock": start,
                "toBlock": end,
                "topics": [FOLLOWED_TOPICS],
            }
            logs = await self._rpc("eth_getLogs", lambda q=query: self._w3.eth.get_logs(q))  # type: ignore[misc]
            for entry in logs:
                event = parse_log(entry)
                if event is not None:
                    out.append(event)
            start = end + 1
        return out

    async def find_agent_id(self, address: str) -> int | None:
        """The newest agentId transferred to ``address`` that it still owns (a scan of Transfer
        events over the last ``scan_blocks`` blocks, newest first)."""
        addr = to_checksum_address(address)
        topic = "0x" + "00" * 12 + addr[2:].lower()
        latest = await self.latest_block()
        end = latest
        floor = max(0, latest - self.scan_blocks)
        while end >= floor:
            start = max(floor, end - self.log_range + 1)
            query = {
                "address": self.address,
                "fromBlock": start,
                "toBlock": end,
                "topics": [TRANSFER_TOPIC, None, topic],
            }
            logs = await self._rpc("eth_getLogs", lambda q=query: self._w3.eth.get_logs(q))  # type: ignore[misc]
            for entry in reversed(list(logs)):
                event = parse_log(entry)
                if event is None:
                    continue
                token = await self.token(event.agent_id)
                if token is not None and token.owner == addr:
                    return event.agent_id
            end = start - 1
        return None

    @property
    def web3(self) -> Any:
        """The AsyncWeb3 instance (after :meth:`connect`), for sending transactions."""
        return self._w3

    @property
    def contract(self) -> Any:
        return self._contract


def _topic_int(topic: Any) -> int:
    return int.from_bytes(bytes(topic), "big")


def _topic_address(topic: Any) -> str:
    return to_checksum_address(bytes(topic)[-20:])


def parse_log(entry: Any) -> RegistryEvent | None:
    """The RegistryEvent of one eth_getLogs entry (None for a log we do not follow)."""
    try:
        topics = list(entry["topics"])
        block = int(entry["blockNumber"])
        first = "0x" + bytes(topics[0]).hex()
        if first == TRANSFER_TOPIC and len(topics) == 4:
            names = (_topic_address(topics[1]), _topic_address(topics[2]))
            return RegistryEvent("Transfer", block, _topic_int(topics[3]), names)
        if first == REGISTERED_TOPIC and len(topics) == 3:
            return RegistryEvent(
                "Registered", block, _topic_int(topics[1]), (_topic_address(topics[2]),)
            )
        if first == URI_UPDATED_TOPIC and len(topics) >= 2:
            return RegistryEvent("URIUpdated", block, _topic_int(topics[1]))
        if first == METADATA_SET_TOPIC and len(topics) >= 2:
            return RegistryEvent("MetadataSet", block, _topic_int(topics[1]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.info("ignoring a malformed log entry: %r", exc)
    return None
