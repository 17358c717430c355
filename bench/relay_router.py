"""CPU of the gossipsub router alone for relayed messages, for comparing two versions.

One ``GossipsubRouter`` with 8 peers in its mesh, as the middle node of ``bench/relay.py``: each
peer sends pre-signed 128-byte messages, one per RPC frame; each round hands every peer's next
``--chunk`` frames to the router at once (``handle_rpcs``, or ``handle_rpc`` per frame on
versions without it), then takes the events and the outgoing frames. Printed: CPU µs per
relayed message (``time.process_time``) with the signature check (``--verify real``) or with
``PublicKey.verify`` replaced by a stub (``--verify stub``: the router's own work). Under
``valgrind --tool=callgrind`` the difference between two ``--messages`` counts gives
instructions per message, which do not depend on what else runs on the machine::

    .venv/bin/python bench/relay_router.py --verify stub
    PYTHONPATH=<other checkout> .venv/bin/python bench/relay_router.py --verify stub
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/relay_router.py --verify stub --messages 160   # then 480

``--duplicates``: the path of a node in a big network instead, where a read holds one frame and
most receptions are duplicates: each message comes from one peer, then from the 7 others, one
frame per ``handle_rpcs`` call, and the outgoing frames are taken after each message. Printed per
reception (1 first + 7 duplicates); for instructions divide the difference by 8 x 8 x the
difference of ``--messages``.

Messages are signed once and kept in ``--cache`` (a pickle of the frames) so that a run under
valgrind does not count the signing.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

from p2pnet.crypto import keys
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub.messages import build_message
from p2pnet.pubsub.params import GossipsubConfig, SignaturePolicy
from p2pnet.pubsub.router import DeliverMessage, GossipsubRouter
from p2pnet.wire.pb import rpc_pb2

TOPIC = "relay-bench"
PEERS = 8


def frames_for(count: int, cache: Path) -> list[tuple[bytes, list[bytes]]]:
    """Per peer: its peer ID bytes and ``count`` frames of one signed message each."""
    path = cache / f"relay_router_{PEERS}x{count}.pickle"
    if path.exists():
        with path.open("rb") as f:
            cached: list[tuple[bytes, list[bytes]]] = pickle.load(f)  # our own file
        return cached
    out = []
    for _ in range(PEERS):
        key = KeyPair.generate(KeyType.Ed25519)
        peer = PeerID.from_public_key(key.public_key)
        frames = [
            rpc_pb2.RPC(
                publish=[
                    build_message(
                        TOPIC,
                        seq.to_bytes(16, "big") + bytes(112),
                        policy=SignaturePolicy.STRICT_SIGN,
                        key=key,
                        peer_id=peer,
                        seqno=seq,
                    )
                ]
            ).SerializeToString()
            for seq in range(1, count + 1)
        ]
        out.append((peer.to_bytes(), frames))
    cache.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(out, f)
    return out


def relay_duplicates(
    router: GossipsubRouter,
    peers: list[PeerID],
    data: list[tuple[bytes, list[bytes]]],
    now: float,
) -> tuple[int, int, int]:
    """Every peer's messages, each from its author first, then from the 7 others (one frame
    per read, as a node in a big network gets them); returns (delivered, bytes sent, messages)."""
    delivered = sent = total = 0
    for author, (_, frames) in enumerate(data):
        order = peers[author:] + peers[:author]
        for frame in frames:
            for peer in order:
                router.handle_rpcs(peer, (frame,), now)
            delivered += sum(1 for ev in router.take_events() if isinstance(ev, DeliverMessage))
            sent += sum(len(frame) for _, frame in router.take_outgoing())
            now += 0.0001
            total += 1
    return delivered, sent, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="per peer")
    parser.add_argument("--chunk", type=int, default=16, help="frames per peer and round")
    parser.add_argument("--verify", choices=["real", "stub"], default="stub")
    parser.add_argument(
        "--duplicates", action="store_true", help="each message from every peer, one per read"
    )
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = parser.parse_args()

    data = frames_for(args.messages, args.cache)
    me = KeyPair.generate(KeyType.Ed25519)
    router = GossipsubRouter(PeerID.from_public_key(me.public_key), GossipsubConfig(), key=me)
    router.join(TOPIC, 0.0)
    peers = [PeerID.from_bytes(raw) for raw, _ in data]
    hello = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=TOPIC)])
    hello.control.graft.add(topicID=TOPIC)
    for peer in peers:
        router.add_peer(peer, "/meshsub/1.1.0", now=0.0)
        router.handle_rpc(peer, hello.SerializeToString(), 0.0)
    router.take_outgoing()
    router.take_events()
    if args.verify == "stub":
        keys.Ed25519PublicKey.verify = lambda self, data, signature: True  # type: ignore[method-assign]
    many = getattr(router, "handle_rpcs", None)  # (older versions: one call per frame)

    now, delivered, sent = 1.0, 0, 0
    started = time.process_time()
    if args.duplicates:
        delivered, sent, total = relay_duplicates(router, peers, data, now)
    else:
        for first in range(0, args.messages, args.chunk):
            for peer, (_, frames) in zip(peers, data, strict=True):
                chunk = frames[first : first + args.chunk]
                if many is not None:
                    many(peer, chunk, now)
                else:
                    for frame in chunk:
                        router.handle_rpc(peer, frame, now)
            delivered += sum(1 for ev in router.take_events() if isinstance(ev, DeliverMessage))
            sent += sum(len(frame) for _, frame in router.take_outgoing())
            now += 0.002
        total = args.messages * PEERS
    cpu = time.process_time() - started
    if delivered != total:
        sys.exit(f"delivered {delivered} of {total} messages")
    if args.duplicates:
        receptions = total * PEERS
        print(
            f"{total} messages from every peer, verify {args.verify}: "
            f"{cpu / receptions * 1e6:.2f} CPU µs per reception, "
            f"{sent / total:.0f} bytes sent per message"
        )
        return
    print(
        f"{total} messages, verify {args.verify}: {cpu / total * 1e6:.1f} CPU µs per message, "
        f"{sent / total:.0f} bytes sent per message, mesh of {len(router.mesh_peers(TOPIC))}"
    )


if __name__ == "__main__":
    main()
