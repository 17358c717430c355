"""libp2p Noise: the sans-IO core (vectors, state machine, frame codec) and the asyncio adapter."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.errors import (
    ConnectionClosed,
    HandshakeError,
    IncompleteRead,
    MessageTooLargeError,
    PeerIDMismatch,
    ProtocolError,
)
from p2pnet.io import Bytes, ChunkReader, ReadWriter
from p2pnet.peer.peer_id import PeerID
from p2pnet.security import PROTOCOL_ID, NoiseConnection, noise_handshake
from p2pnet.security.noise import (
    MAX_PLAINTEXT,
    SIGNATURE_PREFIX,
    HandshakeState,
    NoiseHandshake,
    NoiseTransport,
    SymmetricState,
)
from p2pnet.wire.pb import noise_pb2

TIMEOUT = 10.0

# ---------------------------------------------------------------------------------------------
# test transports


class MemoryEnd(ChunkReader):
    """One end of an in-memory duplex pipe. A read returns everything queued so far, joined,
    so several writes of the peer may arrive as one chunk (as they can over TCP)."""

    def __init__(self) -> None:
        super().__init__()
        self.peer: MemoryEnd | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False
        self.writes: list[bytes] = []  # every write call's bytes, for inspection

    async def _read_chunk(self) -> bytes:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
            return b""
        parts = [item]
        while not self._queue.empty():
            nxt = self._queue.get_nowait()
            if nxt is None:
                self._queue.put_nowait(None)
                break
            parts.append(nxt)
        return b"".join(parts)

    async def write(self, data: Bytes) -> None:
        if self.closed:
            raise ConnectionClosed("write on a closed memory pipe")
        assert self.peer is not None
        chunk = bytes(data)
        self.writes.append(chunk)
        if chunk and not self.peer.closed:
            self.peer._queue.put_nowait(chunk)
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        assert self.peer is not None
        self.peer._queue.put_nowait(None)


def memory_pipe() -> tuple[MemoryEnd, MemoryEnd]:
    a, b = MemoryEnd(), MemoryEnd()
    a.peer, b.peer = b, a
    return a, b


class TcpEnd(ChunkReader):
    """A minimal ReadWriter over asyncio streams (the real transport lives in p2pnet.transport)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self._reader = reader
        self._writer = writer
        self.closed = False
        self.writes: list[bytes] = []

    async def _read_chunk(self) -> bytes:
        try:
            return await self._reader.read(1 << 20)
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(str(exc)) from exc

    async def write(self, data: Bytes) -> None:
        if self.closed:
            raise ConnectionClosed("write on a closed TCP connection")
        self.writes.append(bytes(data))
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(str(exc)) from exc

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (TimeoutError, ConnectionError, OSError):
            self._writer.transport.abort()


async def tcp_pipe() -> tuple[TcpEnd, TcpEnd, asyncio.Server]:
    accepted: asyncio.Queue[TcpEnd] = asyncio.Queue()

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put(TcpEnd(r, w))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, limit=1 << 20), TIMEOUT
    )
    client = TcpEnd(r, w)
    srv = await asyncio.wait_for(accepted.get(), TIMEOUT)
    return client, srv, server


@pytest.fixture(params=["memory", "tcp"])
async def raw_pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any]]:
    if request.param == "memory":
        a, b = memory_pipe()
        yield a, b
        await a.close()
        await b.close()
    else:
        c, s, server = await tcp_pipe()
        yield c, s
        await c.close()
        await s.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


ED_A = KeyPair.from_ed25519_seed(bytes(31) + b"\x01")
ED_B = KeyPair.from_ed25519_seed(bytes(31) + b"\x02")


async def secure_pair(
    a: ReadWriter,
    b: ReadWriter,
    key_a: KeyPair = ED_A,
    key_b: KeyPair = ED_B,
    **kwargs: Any,
) -> tuple[NoiseConnection, NoiseConnection]:
    ia = kwargs.pop("initiator_kwargs", {})
    rb = kwargs.pop("responder_kwargs", {})
    return await asyncio.wait_for(
        asyncio.gather(
            noise_handshake(a, key_a, initiator=True, **ia),
            noise_handshake(b, key_b, initiator=False, **rb),
        ),
        TIMEOUT,
    )


async def read_n(conn: ReadWriter, n: int) -> bytes:
    return await asyncio.wait_for(conn.readexactly(n), TIMEOUT)


# ---------------------------------------------------------------------------------------------
# Noise spec test vector (cacophony, Noise_XX_25519_ChaChaPoly_SHA256; as shipped in the
# cacophony and snow repositories: tests/vectors/cacophony.txt)

VECTOR: dict[str, Any] = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
            "4c756477696720766f6e204d69736573",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f14480884381cbad1f276e038c"
            "48378ffce2b65285e08d6b68aaa3629a5a8639392490e5b9bd5269c2f1e4f488ed8831161f19b781"
            "5528f8982ffe09be9b5c412f8a0db50f8814c7194e83f23dbd8d162c9326ad",
        ),
        (
            "462e20412e20486179656b",
            "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a80ae475b9df0f169a"
            "e80a89be0865b57f58c9fea0d4ec82a286427402f113e4b6ae769a1d95941d49b25030",
        ),
        ("4361726c204d656e676572", "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df"),
        (
            "4a65616e2d426170746973746520536179",
            "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5",
        ),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f",
        ),
    ],
}


def _x(hexkey: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hexkey))


def test_cacophony_vector_xx() -> None:
    prologue = bytes.fromhex(VECTOR["prologue"])
    init = HandshakeState(
        True,
        prologue=prologue,
        static=_x(VECTOR["init_static"]),
        ephemeral=_x(VECTOR["init_ephemeral"]),
    )
    resp = HandshakeState(
        False,
        prologue=prologue,
        static=_x(VECTOR["resp_static"]),
        ephemeral=_x(VECTOR["resp_ephemeral"]),
    )
    messages = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in VECTOR["messages"]]
    for i, (payload, ciphertext) in enumerate(messages[:3]):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        assert sender.write_message(payload) == ciphertext
        assert receiver.read_message(ciphertext) == payload
    assert init.complete and resp.complete
    assert init.handshake_hash.hex() == VECTOR["handshake_hash"]
    assert resp.handshake_hash == init.handshake_hash
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    # transport messages keep alternating: responder, initiator, responder
    for i, (payload, ciphertext) in enumerate(messages[3:]):
        send, recv = (r_send, i_recv) if i % 2 == 0 else (i_send, r_recv)
        assert send.encrypt_with_ad(b"", payload) == ciphertext
        assert recv.decrypt_with_ad(b"", ciphertext) == payload


def test_protocol_name_is_the_initial_hash() -> None:
    ss = SymmetricState()
    assert ss.h == b"Noise_XX_25519_ChaChaPoly_SHA256" == ss.ck
    assert PROTOCOL_ID == "/noise"


def test_handshake_state_out_of_turn() -> None:
    init = HandshakeState(True)
    with pytest.raises(ProtocolError):
        init.read_message(b"\x00" * 32)
    resp = HandshakeState(False)
    with pytest.raises(ProtocolError):
        resp.write_message(b"")
    with pytest.raises(ProtocolError):
        resp.split()


# ---------------------------------------------------------------------------------------------
# sans-IO libp2p handshake


def run_sans_io(
    init: NoiseHandshake, resp: NoiseHandshake, *, chunk: int = 0
) -> tuple[NoiseTransport, NoiseTransport]:
    """Shuttle bytes between two sans-IO handshakes until both complete."""
    for _ in range(4):
        for src, dst in ((init, resp), (resp, init)):
            data = src.data_to_send()
            if not data or dst.complete:
                continue
            if chunk:
                for i in range(0, len(data), chunk):
                    dst.receive_data(data[i : i + chunk])
            else:
                dst.receive_data(data)
    assert init.complete and resp.complete
    assert init.data_to_send() == b""  # msg 3 was taken in the loop
    return init.result().transport, resp.result().transport


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_sans_io_handshake_any_chunking(chunk: int) -> None:
    init = NoiseHandshake(ED_A, initiator=True, stream_muxers=["/yamux/1.0.0"])
    resp = NoiseHandshake(ED_B, initiator=False, stream_muxers=["/yamux/1.0.0", "/mplex/6.7.0"])
    t_init, t_resp = run_sans_io(init, resp, chunk=chunk)
    assert init.result().remote_peer == PeerID.from_public_key(ED_B.public_key)
    assert resp.result().remote_peer == PeerID.from_public_key(ED_A.public_key)
    assert init.result().remote_stream_muxers == ["/yamux/1.0.0", "/mplex/6.7.0"]
    assert resp.result().remote_stream_muxers == ["/yamux/1.0.0"]
    assert init.result().handshake_hash == resp.result().handshake_hash
    wire = t_init.encrypt(b"hello")
    out: list[bytes] = []
    for i in range(len(wire)):  # byte by byte through the frame decoder
        out += t_resp.decrypt(wire[i : i + 1])
    assert out == [b"hello"]
    assert t_init.decrypt(t_resp.encrypt(b"back")) == [b"back"]


def test_message1_is_bare_ephemeral_and_payload_signs_static_key() -> None:
    init = NoiseHandshake(ED_A, initiator=True)
    msg1 = init.data_to_send()
    assert msg1[:2] == b"\x00\x20" and len(msg1) == 34  # 32-byte e, empty payload
    static = X25519PrivateKey.generate()
    resp = NoiseHandshake(ED_B, initiator=False, static_key=static)
    resp.receive_data(msg1)
    init.receive_data(resp.data_to_send())
    assert init.result().remote_public_key == ED_B.public_key
    # the initiator authenticated the responder's identity over this exact static key
    assert init._hs.rs == static.public_key().public_bytes_raw()


def test_leftover_bytes_after_message3_are_transport_frames() -> None:
    init = NoiseHandshake(ED_A, initiator=True)
    resp = NoiseHandshake(ED_B, initiator=False)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    msg3 = init.data_to_send()
    early = init.result().transport.encrypt(b"/multistream/1.0.0\n")
    resp.receive_data(msg3 + early)
    result = resp.result()
    assert result.leftover == bytes(early)
    assert result.transport.decrypt(result.leftover) == [b"/multistream/1.0.0\n"]


def test_sans_io_peer_id_mismatch() -> None:
    other = PeerID.from_public_key(KeyPair.generate().public_key)
    init = NoiseHandshake(ED_A, initiator=True, expected_peer=other)
    resp = NoiseHandshake(ED_B, initiator=False)
    resp.receive_data(init.data_to_send())
    with pytest.raises(PeerIDMismatch) as info:
        init.receive_data(resp.data_to_send())
    assert str(other) in str(info.value)
    assert str(PeerID.from_public_key(ED_B.public_key)) in str(info.value)
    assert init.data_to_send() == b""  # our identity is never revealed to the wrong peer
    with pytest.raises(PeerIDMismatch):  # stays failed
        init.receive_data(b"\x00")


class WrongSignatureHandshake(NoiseHandshake):
    """Test-only peer that signs something other than its Noise static key."""

    def _payload(self) -> bytes:
        payload = noise_pb2.NoiseHandshakePayload()
        payload.identity_key = self.local_key.public_key.to_protobuf()
        payload.identity_sig = self.local_key.sign(SIGNATURE_PREFIX + bytes(32))
        return payload.SerializeToString()


class GarbagePayloadHandshake(NoiseHandshake):
    def __init__(self, *args: Any, payload: bytes, **kwargs: Any) -> None:
        self._garbage = payload
        super().__init__(*args, **kwargs)

    def _payload(self) -> bytes:
        return self._garbage


def test_sans_io_bad_signature_from_initiator() -> None:
    init = WrongSignatureHandshake(ED_A, initiator=True)
    resp = NoiseHandshake(ED_B, initiator=False)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    with pytest.raises(HandshakeError, match="signature"):
        resp.receive_data(init.data_to_send())
    assert not resp.complete


def _identity_payload(key: KeyPair, sig: bytes | None) -> bytes:
    p = noise_pb2.NoiseHandshakePayload()
    p.identity_key = key.public_key.to_protobuf()
    if sig is not None:
        p.identity_sig = sig
    return p.SerializeToString()


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "identity key"),
        (b"\xff\xff\xff", "malformed"),
        (_identity_payload(ED_B, None), "signature"),
        (_identity_payload(ED_B, b"\x01" * 64), "signature"),
        (b"\x0a\x04\x08\x01\x12\x00" + b"\x12\x01\x00", "invalid identity key"),
    ],
)
def test_sans_io_bad_payloads(payload: bytes, match: str) -> None:
    init = NoiseHandshake(ED_A, initiator=True)
    resp = GarbagePayloadHandshake(ED_B, initiator=False, payload=payload)
    resp.receive_data(init.data_to_send())
    with pytest.raises(HandshakeError, match=match):
        init.receive_data(resp.data_to_send())


def test_sans_io_payload_too_large() -> None:
    init = NoiseHandshake(ED_A, initiator=True)
    resp = NoiseHandshake(ED_B, initiator=False, stream_muxers=["x" * 1000] * 70)
    with pytest.raises(HandshakeError) as info:
        resp.receive_data(init.data_to_send())
    assert isinstance(info.value.__cause__, MessageTooLargeError)


# ---------------------------------------------------------------------------------------------
# transport frame codec


def transport_pair() -> tuple[NoiseTransport, NoiseTransport]:
    return run_sans_io(NoiseHandshake(ED_A, initiator=True), NoiseHandshake(ED_B, initiator=False))


@pytest.mark.parametrize(
    ("size", "frames"), [(1, 1), (MAX_PLAINTEXT, 1), (MAX_PLAINTEXT + 1, 2), (1 << 20, 17)]
)
def test_frame_sizes(size: int, frames: int) -> None:
    a, b = transport_pair()
    data = os.urandom(size)
    wire = a.encrypt(memoryview(data))
    assert len(wire) == size + frames * 18
    # every frame is at most 65535 bytes after its 2-byte prefix
    pos, seen = 0, 0
    while pos < len(wire):
        flen = int.from_bytes(wire[pos : pos + 2], "big")
        assert 16 < flen <= 65535
        pos += 2 + flen
        seen += 1
    assert seen == frames
    assert b"".join(b.decrypt(wire)) == data


def test_encrypt_empty_gives_nothing() -> None:
    a, _ = transport_pair()
    assert a.encrypt(b"") == b""


def test_frame_too_short_for_tag() -> None:
    _, b = transport_pair()
    with pytest.raises(ProtocolError, match="too short"):
        b.decrypt(b"\x00\x05hello")
    with pytest.raises(ProtocolError):  # stays failed
        b.decrypt(b"")


def test_tampered_frame() -> None:
    a, b = transport_pair()
    wire = bytearray(a.encrypt(b"secret message"))
    wire[5] ^= 0x01
    with pytest.raises(ProtocolError, match="authentication"):
        b.decrypt(wire)


def test_replayed_and_reordered_frames_fail() -> None:
    a, b = transport_pair()
    f1, f2 = bytes(a.encrypt(b"one")), bytes(a.encrypt(b"two"))
    assert b.decrypt(f1) == [b"one"]
    with pytest.raises(ProtocolError):
        b.decrypt(f1)  # replay
    a, b = transport_pair()
    f1, f2 = bytes(a.encrypt(b"one")), bytes(a.encrypt(b"two"))
    with pytest.raises(ProtocolError):
        b.decrypt(f2)  # reorder


def test_partial_frame_is_buffered_and_bounded() -> None:
    a, b = transport_pair()
    wire = bytes(a.encrypt(os.urandom(3 * MAX_PLAINTEXT)))
    out: list[bytes] = []
    step = 50_000
    for i in range(0, len(wire), step):
        out += b.decrypt(wire[i : i + step])
        assert b.buffered <= 65537
    assert len(b"".join(out)) == 3 * MAX_PLAINTEXT
    assert b.buffered == 0


# ---------------------------------------------------------------------------------------------
# asyncio adapter


@pytest.mark.parametrize("key_type", [KeyType.Ed25519, KeyType.Secp256k1])
async def test_handshake_both_key_types(raw_pair: tuple[Any, Any], key_type: KeyType) -> None:
    a, b = raw_pair
    key_a, key_b = KeyPair.generate(key_type), KeyPair.generate(key_type)
    ca, cb = await secure_pair(
        a,
        b,
        key_a,
        key_b,
        initiator_kwargs={"stream_muxers": ["/yamux/1.0.0"]},
        responder_kwargs={"stream_muxers": ["/yamux/1.0.0"]},
    )
    assert ca.remote_peer == PeerID.from_public_key(key_b.public_key) == cb.local_peer
    assert cb.remote_peer == PeerID.from_public_key(key_a.public_key) == ca.local_peer
    assert ca.remote_public_key == key_b.public_key
    assert cb.remote_public_key == key_a.public_key
    assert ca.remote_stream_muxers == cb.remote_stream_muxers == ["/yamux/1.0.0"]
    assert ca.raw is a and cb.raw is b
    await ca.write(b"ping")
    assert await read_n(cb, 4) == b"ping"
    await cb.write(b"pong")
    assert await read_n(ca, 4) == b"pong"


@pytest.mark.parametrize("size", [0, 1, 65519, 65520, 1 << 20])
async def test_round_trip_sizes(raw_pair: tuple[Any, Any], size: int) -> None:
    a, b = raw_pair
    ca, cb = await secure_pair(a, b)
    data = os.urandom(size)
    writes_before = len(a.writes)
    await asyncio.wait_for(ca.write(data), TIMEOUT)
    assert len(a.writes) - writes_before == (1 if size else 0)  # one raw write
    assert await read_n(cb, size) == data
    reply = data[::-1]
    await asyncio.wait_for(cb.write(reply), TIMEOUT)
    assert await read_n(ca, size) == reply
    await ca.close()
    assert await asyncio.wait_for(cb.read(), TIMEOUT) == b""  # clean EOF


async def test_write_accepts_bytearray_and_memoryview() -> None:
    a, b = memory_pipe()
    ca, cb = await secure_pair(a, b)
    await ca.write(bytearray(b"abc"))
    await ca.write(memoryview(b"xxdefxx")[2:5])
    assert await read_n(cb, 6) == b"abcdef"


async def test_concurrent_writes_do_not_interleave(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    ca, cb = await secure_pair(a, b)
    block = 100_000
    blocks = [bytes([i]) * block for i in range(20)]
    reader = asyncio.create_task(read_n(cb, block * len(blocks)))
    try:
        await asyncio.wait_for(asyncio.gather(*(ca.write(x) for x in blocks)), TIMEOUT)
        received = await reader
    finally:
        reader.cancel()
    got = sorted(received[i : i + block] for i in range(0, len(received), block))
    assert got == sorted(blocks)


async def test_early_data_right_after_handshake() -> None:
    """The initiator writes straight after message 3; the responder finds it in one chunk."""
    a, b = memory_pipe()
    init_task = asyncio.create_task(noise_handshake(a, ED_A, initiator=True))
    resp_task = asyncio.create_task(noise_handshake(b, ED_B, initiator=False))
    try:
        ca = await asyncio.wait_for(init_task, TIMEOUT)
        await ca.write(b"early")
        cb = await asyncio.wait_for(resp_task, TIMEOUT)
    finally:
        init_task.cancel()
        resp_task.cancel()
    assert await read_n(cb, 5) == b"early"


async def test_expected_peer_match(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    ca, _ = await secure_pair(
        a, b, initiator_kwargs={"expected_peer": PeerID.from_public_key(ED_B.public_key)}
    )
    assert ca.remote_peer == PeerID.from_public_key(ED_B.public_key)


async def test_expected_peer_mismatch(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    wrong = PeerID.from_public_key(KeyPair.generate().public_key)
    results = await asyncio.wait_for(
        asyncio.gather(
            noise_handshake(a, ED_A, initiator=True, expected_peer=wrong),
            noise_handshake(b, ED_B, initiator=False),
            return_exceptions=True,
        ),
        TIMEOUT,
    )
    assert isinstance(results[0], PeerIDMismatch)
    assert str(wrong) in str(results[0])
    assert str(PeerID.from_public_key(ED_B.public_key)) in str(results[0])
    assert isinstance(results[1], HandshakeError)  # the responder sees the connection close
    assert a.closed and b.closed


async def drive_fake_peer(conn: ReadWriter, hs: NoiseHandshake) -> None:
    """Run a (possibly misbehaving) sans-IO handshake over ``conn`` until it completes or fails."""
    while True:
        out = hs.data_to_send()
        if out:
            await conn.write(out)
        if hs.complete:
            return
        data = await conn.read(-1)
        if not data:
            return
        try:
            hs.receive_data(data)
        except HandshakeError:
            return


async def test_bad_signature_from_responder(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    fake = asyncio.create_task(drive_fake_peer(b, WrongSignatureHandshake(ED_B, initiator=False)))
    try:
        with pytest.raises(HandshakeError, match="signature"):
            await noise_handshake(a, ED_A, initiator=True, timeout=TIMEOUT)
        await asyncio.wait_for(fake, TIMEOUT)
    finally:
        fake.cancel()
    assert a.closed


async def test_bad_signature_from_initiator(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    fake = asyncio.create_task(drive_fake_peer(a, WrongSignatureHandshake(ED_A, initiator=True)))
    try:
        with pytest.raises(HandshakeError, match="signature"):
            await noise_handshake(b, ED_B, initiator=False, timeout=TIMEOUT)
        await asyncio.wait_for(fake, TIMEOUT)
    finally:
        fake.cancel()
    assert b.closed


async def test_handshake_timeout_when_peer_is_silent(raw_pair: tuple[Any, Any]) -> None:
    a, _ = raw_pair
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(HandshakeError, match="noise handshake timed out"):
        await noise_handshake(a, ED_A, initiator=True, timeout=0.2)
    assert loop.time() - start < 5
    assert a.closed


async def test_handshake_eof_mid_message(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    await b.write(b"\x00\x60" + bytes(20))  # announces 96 bytes, sends 20
    await b.close()
    with pytest.raises(HandshakeError, match="closed"):
        await noise_handshake(a, ED_A, initiator=True, timeout=TIMEOUT)
    assert a.closed


async def test_handshake_garbage(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    await b.write(b"\x00\x70" + os.urandom(0x70))
    with pytest.raises(HandshakeError):
        await noise_handshake(a, ED_A, initiator=True, timeout=TIMEOUT)
    assert a.closed


async def test_truncated_frame_is_an_error(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    ca, cb = await secure_pair(a, b)
    wire = bytes(ca._transport.encrypt(b"x" * 1000))
    await a.write(wire[:500])  # half a frame, then EOF
    await a.close()
    with pytest.raises(IncompleteRead):
        await read_n(cb, 1000)
    assert b.closed
    with pytest.raises(IncompleteRead):  # the error sticks
        await read_n(cb, 1)


async def test_eof_between_frames_is_clean(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    ca, cb = await secure_pair(a, b)
    await ca.write(b"last words")
    await ca.close()
    assert await read_n(cb, 10) == b"last words"
    assert await asyncio.wait_for(cb.read(), TIMEOUT) == b""


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff" + bytes(65535),  # largest possible frame, not authentic
        b"\x00\x05hello",  # shorter than the tag
        b"\x00\x20" + bytes(32),
    ],
)
async def test_garbage_frames_close_the_connection(
    raw_pair: tuple[Any, Any], garbage: bytes
) -> None:
    a, b = raw_pair
    _, cb = await secure_pair(a, b)
    await a.write(garbage)
    with pytest.raises(ProtocolError):
        await read_n(cb, 1)
    assert b.closed
    with pytest.raises(ConnectionClosed):
        await cb.write(b"more")


async def test_tampered_ciphertext_in_transport(raw_pair: tuple[Any, Any]) -> None:
    a, b = raw_pair
    ca, cb = await secure_pair(a, b)
    wire = bytearray(ca._transport.encrypt(b"A" * 70_000))
    wire[-3] ^= 0x80  # corrupt the tag of the second frame
    await a.write(wire)
    with pytest.raises(ProtocolError):
        await read_n(cb, 70_000)
    assert b.closed


async def test_write_after_close_and_read_after_close() -> None:
    a, b = memory_pipe()
    ca, cb = await secure_pair(a, b)
    await ca.close()
    await ca.close()  # idempotent
    assert ca.is_closed and a.closed
    with pytest.raises(ConnectionClosed):
        await ca.write(b"x")
    assert await asyncio.wait_for(ca.read(), TIMEOUT) == b""
    assert await asyncio.wait_for(cb.read(), TIMEOUT) == b""


async def test_noise_connection_is_a_readwriter() -> None:
    a, b = memory_pipe()
    ca, _ = await secure_pair(a, b)
    assert isinstance(ca, ReadWriter)


async def test_cancelled_handshake_closes_the_connection() -> None:
    a, _ = memory_pipe()
    task = asyncio.create_task(noise_handshake(a, ED_A, initiator=True, timeout=TIMEOUT))
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)
    assert a.closed


async def test_many_small_frames_are_joined_into_chunks() -> None:
    a, b = memory_pipe()
    ca, cb = await secure_pair(a, b)
    for i in range(100):
        await ca.write(bytes([i]) * 10)
    data = await read_n(cb, 1000)
    assert data == b"".join(bytes([i]) * 10 for i in range(100))
