"""Per-peer quotas of the DHT stores: one peer cannot fill them or push out others' entries."""

from __future__ import annotations

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.host.host import Host
from p2pnet.kad import messages as m
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.kad.dht import KadDHT
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.quota import QuotaExceeded, StoreQuota
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.identify import IdentifyService


def peer() -> PeerID:
    return PeerID.from_public_key(KeyPair.generate().public_key)


def test_a_peer_at_its_quota_replaces_its_own_oldest_entry() -> None:
    q = StoreQuota(max_per_peer=3)
    a = peer()
    for i in range(3):
        assert q.admit(a, i, i, 100) == []
        q.stored(a, i)
    assert q.admit(a, 99, 3, 100) == [0]
    q.removed(0)
    q.stored(a, 99)
    assert q.count(a) == 3


def test_a_full_store_evicts_the_biggest_holder_never_a_small_one() -> None:
    q = StoreQuota(max_per_peer=100)
    big, small, newcomer = peer(), peer(), peer()
    for i in range(8):
        q.stored(big, ("big", i))
    q.stored(small, ("small", 0))
    q.stored(small, ("small", 1))
    # store of 10 is full: the newcomer pushes out the biggest holder's oldest entry
    assert q.admit(newcomer, "new", 10, 10) == [("big", 0)]
    # the biggest holder itself is refused rather than evicting anyone
    with pytest.raises(QuotaExceeded):
        q.admit(big, ("big", 99), 10, 10)


async def test_a_put_value_flood_from_one_peer_leaves_room_for_others() -> None:
    async with Host(KeyPair.generate()) as host:
        identify = IdentifyService(host)
        dht = KadDHT(
            host,
            identify,
            KadConfig(
                mode=Mode.SERVER, auto_refresh=False, max_records=50, max_records_per_peer=20
            ),
        )
        attacker, honest = KeyPair.generate(), KeyPair.generate()
        flooder = PeerID.from_public_key(attacker.public_key)

        def pk_put(key_pair: KeyPair) -> m.kad_pb2.Message:
            pid = PeerID.from_public_key(key_pair.public_key)
            return m.put_value(b"/pk/" + pid.to_bytes(), key_pair.public_key.to_protobuf())

        for _ in range(200):  # /pk/ records of fresh keys: all valid, all distinct
            dht.handle_request(flooder, pk_put(KeyPair.generate()))
        assert len(dht.records) == 20  # its own oldest made room for its newest
        writer = PeerID.from_public_key(honest.public_key)
        dht.handle_request(writer, pk_put(honest))
        assert dht.records.get(b"/pk/" + writer.to_bytes()) is not None
        # providers: the same per peer
        for i in range(2000):
            dht.handle_request(flooder, m.add_provider(b"key%d" % i, PeerInfo(flooder)))
        assert (
            dht.behaviour.provider_quota.count(flooder) == dht.config.max_provider_entries_per_peer
        )
        await dht.close()
        await identify.close()
