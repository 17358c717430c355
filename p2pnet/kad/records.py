"""DHT records: validators and selectors per key namespace, and the record store.

A record key is ``/<namespace>/<rest>`` (bytes). Each namespace has a :class:`Validator` that
says whether a value is acceptable for a key (``validate``, pure, called once before a record is
stored and on every value a GET brings back; a stored record is trusted afterwards) and which of
several valid values is best (``select``).
A key without a registered namespace is refused, as in go and js.

Built in: only ``/pk/`` (the value is a protobuf-encoded public key whose peer ID is the rest of
the key). Applications register their own namespaces (``Node.register_validator``); the agent
network registers ``/agent/`` (:mod:`p2pnet.agent.record`).

The store is a small synchronous interface (:class:`RecordStore`) so that a persistent store can
replace :class:`InMemoryRecordStore` without touching the DHT.
"""

from __future__ import annotations

import datetime
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from p2pnet.crypto.keys import unmarshal_public_key
from p2pnet.errors import CryptoError
from p2pnet.kad.errors import InvalidRecord, KadError, UnknownNamespace
from p2pnet.peer.peer_id import PeerID

PK_NAMESPACE = "pk"

# -- validators ---------------------------------------------------------------------------------


class Validator(ABC):
    """Validation and selection of the values of one key namespace."""

    @abstractmethod
    def validate(self, key: bytes, value: bytes) -> None:
        """Raise :class:`InvalidRecord` unless ``value`` is acceptable for ``key``."""

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """Index of the best of ``values`` (all already valid). Must be deterministic; the
        default keeps the first."""
        if not values:
            raise InvalidRecord("no values to select from")
        return 0


def split_key(key: bytes) -> tuple[str, bytes]:
    """``/<namespace>/<rest>`` -> (namespace, rest); raises InvalidRecord otherwise."""
    if not key.startswith(b"/"):
        raise InvalidRecord("record key does not start with '/'")
    end = key.find(b"/", 1)
    if end <= 1:
        raise InvalidRecord("record key has no namespace (expected /<namespace>/<key>)")
    try:
        namespace = key[1:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise InvalidRecord("record key namespace is not ASCII") from exc
    return namespace, key[end + 1 :]


class PublicKeyValidator(Validator):
    """``/pk/<peer ID multihash bytes>`` -> the protobuf-encoded public key of that peer."""

    def validate(self, key: bytes, value: bytes) -> None:
        namespace, rest = split_key(key)
        if namespace != PK_NAMESPACE:
            raise InvalidRecord(f"not a public key record: namespace {namespace!r}")
        try:
            pub = unmarshal_public_key(value)
        except CryptoError as exc:
            raise InvalidRecord(f"public key record holds no valid key: {exc}") from exc
        if PeerID.from_public_key(pub).to_bytes() != rest:
            raise InvalidRecord("public key does not hash to the peer ID of the key")


class FunctionValidator(Validator):
    """A :class:`Validator` made of two functions: ``validate(key, value)`` raising
    :class:`InvalidRecord` (or ``ValueError``) for a bad value, and an optional
    ``select(key, values) -> index`` (default: the first value)."""

    def __init__(
        self,
        validate: Callable[[bytes, bytes], None],
        select: Callable[[bytes, Sequence[bytes]], int] | None = None,
    ) -> None:
        self._validate = validate
        self._select = select

    def validate(self, key: bytes, value: bytes) -> None:
        try:
            self._validate(key, value)
        except ValueError as exc:
            raise InvalidRecord(str(exc)) from exc

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        if self._select is None:
            return super().select(key, values)
        return self._select(key, values)


class NamespacedValidator:
    """Dispatches to the validator registered for a key's namespace."""

    def __init__(
        self, validators: Mapping[str, Validator] | None = None, *, max_value_size: int = 16 * 1024
    ) -> None:
        self.max_value_size = max_value_size
        self._validators: dict[str, Validator] = {PK_NAMESPACE: PublicKeyValidator()}
        if validators:
            self._validators.update(validators)

    def register(self, namespace: str, validator: Validator) -> None:
        if not namespace or "/" in namespace:
            raise ValueError(f"bad namespace {namespace!r}")
        self._validators[namespace] = validator

    @property
    def namespaces(self) -> list[str]:
        return sorted(self._validators)

    def validator_for(self, key: bytes) -> Validator:
        namespace, _ = split_key(key)
        validator = self._validators.get(namespace)
        if validator is None:
            raise UnknownNamespace(
                f"no validator for record namespace {namespace!r}: register one first "
                f"(node.register_validator({namespace!r}, validator))"
            )
        return validator

    def validate(self, key: bytes, value: bytes) -> None:
        if len(value) > self.max_value_size:
            raise InvalidRecord(
                f"record value of {len(value)} bytes exceeds the limit of {self.max_value_size}"
            )
        self.validator_for(key).validate(key, value)

    def select(self, key: bytes, values: Sequence[bytes], *, validated: bool = False) -> int:
        """Index of the best *valid* value; invalid ones are never chosen. ``validated``: the
        caller validated every value already (the DHT does, once, when a record arrives), so
        they are not validated again."""
        validator = self.validator_for(key)
        if validated:
            valid = list(range(len(values)))
        else:
            valid = []
            for i, value in enumerate(values):
                try:
                    self.validate(key, value)
                except InvalidRecord:
                    continue
                valid.append(i)
        if not valid:
            raise InvalidRecord("none of the values is valid")
        best = validator.select(key, [values[i] for i in valid])
        if not 0 <= best < len(valid):
            raise KadError(f"selector for {key!r} returned index {best} of {len(valid)}")
        return valid[best]


# -- RFC 3339 time of the Record message --------------------------------------------------------


def format_rfc3339(timestamp: float) -> str:
    """Unix seconds -> ``2006-01-02T15:04:05.999999999Z`` (go's RFC3339Nano, as js writes it)."""
    dt = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond * 1000:09d}Z"


# -- store --------------------------------------------------------------------------------------


@dataclass
class StoredRecord:
    key: bytes
    value: bytes
    #: Unix time we received (or wrote) the record.
    time_received: float


class StoreFull(KadError):
    """The record store holds its maximum number of records."""


class RecordStore(ABC):
    """Where a DHT server keeps the records it was asked to store."""

    @abstractmethod
    def get(self, key: bytes) -> StoredRecord | None: ...

    @abstractmethod
    def put(self, record: StoredRecord) -> None:
        """Store or replace; raises :class:`StoreFull` when a new key does not fit."""

    @abstractmethod
    def delete(self, key: bytes) -> None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[StoredRecord]: ...

    def gc(self, now: float, max_age: float) -> int:
        """Drop records received more than ``max_age`` seconds before ``now``; returns how many."""
        old = [r.key for r in self if now - r.time_received > max_age]
        for key in old:
            self.delete(key)
        return len(old)


class InMemoryRecordStore(RecordStore):
    """A dict bounded to ``max_records``: new keys beyond it are refused, never evicting
    records others stored (a flood of junk cannot push out good records)."""

    def __init__(self, max_records: int = 65536) -> None:
        self.max_records = max_records
        self._records: OrderedDict[bytes, StoredRecord] = OrderedDict()

    def get(self, key: bytes) -> StoredRecord | None:
        return self._records.get(key)

    def put(self, record: StoredRecord) -> None:
        if record.key not in self._records and len(self._records) >= self.max_records:
            raise StoreFull(f"record store is full ({self.max_records} records)")
        self._records[record.key] = record

    def delete(self, key: bytes) -> None:
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[StoredRecord]:
        return iter(list(self._records.values()))
