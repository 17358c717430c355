"""ExpiringCache: bounded in entries, and entries expire on the node's clock."""

from __future__ import annotations

import pytest

from p2pnet.clock import VirtualClock
from p2pnet.expiring_cache import ExpiringCache


def test_the_least_recently_written_entry_goes_first_when_full() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(2, 60.0, VirtualClock())
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)  # a is now the most recent
    cache.put("c", 4)
    assert sorted(cache) == ["a", "c"]
    assert cache["a"] == 3 and cache.get("b") is None and len(cache) == 2


def test_entries_expire_a_ttl_after_their_last_write() -> None:
    clock = VirtualClock()
    cache: ExpiringCache[str, int] = ExpiringCache(10, 30.0, clock)
    cache.put("quiet", 1)
    clock.advance(20)
    cache.put("chatty", 2)
    clock.advance(15)  # quiet: 35 s since its write; chatty: 15 s
    assert "quiet" not in cache and cache.get("chatty") == 2
    cache.put("chatty", 5)
    clock.advance(29)
    assert cache.items() == [("chatty", 5)] and cache.values() == [5]
    clock.advance(1)
    assert len(cache) == 0
    with pytest.raises(KeyError):
        cache["chatty"]
    assert cache.pop("chatty") is None


def test_a_flood_of_keys_stays_bounded() -> None:
    cache: ExpiringCache[int, bytes] = ExpiringCache(1024, 900.0, VirtualClock())
    for i in range(20_000):
        cache.put(i, b"status")
    assert len(cache) == 1024 and min(cache) == 20_000 - 1024


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ExpiringCache(0, 1.0, VirtualClock())
    with pytest.raises(ValueError):
        ExpiringCache(1, 0.0, VirtualClock())
