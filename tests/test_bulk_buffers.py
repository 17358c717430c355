"""The reused buffers of the bulk path: Noise's output buffer, TCP's receive buffer.

Both save a fresh megabyte per write or read; both must never hand out bytes that a later write
or read overwrites.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import ProtocolError
from p2pnet.io import Bytes
from p2pnet.mux.yamux import DataReceived, YamuxSession
from p2pnet.peer.peer_id import PeerID
from p2pnet.security import noise_connection
from p2pnet.security.noise import MAX_PLAINTEXT, CipherState, NoiseTransport
from p2pnet.security.noise_connection import NoiseChannel, NoiseConnection


class _Receiver:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost: list[object] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(bytes(data))

    def connection_lost(self, exc: object) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class ViewTaker(_Receiver):
    accepts_views = True

    def __init__(self) -> None:
        super().__init__()
        self.types: set[type] = set()

    def data_received(self, data: bytes) -> None:
        self.types.add(type(data))
        super().data_received(data)


class _Lower:
    """The channel below a NoiseChannel: keeps what it is given as it is, or a copy of it."""

    def __init__(self, *, copy: bool) -> None:
        self.copy = copy
        self.written: list[Bytes] = []

    def write(self, data: Bytes) -> None:
        self.written.append(bytes(data) if self.copy else data)

    def writelines(self, chunks: Sequence[Bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def _channel(
    *, copy: bool, receiver: _Receiver | None = None
) -> tuple[NoiseChannel, _Lower, NoiseTransport]:
    k1, k2 = os.urandom(32), os.urandom(32)
    key = KeyPair.generate()
    peer = PeerID.from_public_key(key.public_key)
    conn = NoiseConnection(
        _Lower(copy=True),  # type: ignore[arg-type]  # never read: the channel is attached
        NoiseTransport(CipherState(k1), CipherState(k2)),
        local_peer=peer,
        remote_peer=peer,
        remote_public_key=key.public_key,
    )
    channel = NoiseChannel(conn, receiver or _Receiver())
    lower = _Lower(copy=copy)
    channel.lower = lower
    return channel, lower, NoiseTransport(CipherState(k2), CipherState(k1))


def test_output_buffer_kept_by_the_connection_below_is_not_overwritten() -> None:
    """A transport that keeps a view of what it could not send yet (asyncio on Python 3.12)
    keeps the old buffer: the next write takes a new one."""
    channel, lower, remote = _channel(copy=False)
    writes = [os.urandom(300_000) for _ in range(3)]
    channel.writelines([b"h" * 12, writes[0]])
    channel.write(writes[1])
    channel.writelines([writes[2], b"t"])
    assert len(lower.written) == 3
    assert len({id(getattr(w, "obj", w)) for w in lower.written}) == 3  # three buffers
    plain = remote.decrypt(b"".join(bytes(w) for w in lower.written))
    assert b"".join(plain) == b"h" * 12 + writes[0] + writes[1] + writes[2] + b"t"


def test_output_buffer_is_reused_once_the_connection_below_copied_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[int] = []

    def new_buffer(size: int) -> bytearray:
        made.append(size)
        return bytearray(size)

    monkeypatch.setattr(noise_connection, "bytearray", new_buffer, raising=False)
    monkeypatch.setattr(noise_connection._scratch, "out", None)
    channel, lower, remote = _channel(copy=True)
    writes = [os.urandom(n) for n in (500_000, 400_000, 500_000, 100)]
    channel.write(writes[0])
    channel.writelines([b"x" * 12, writes[1]])
    channel.write(writes[2])
    channel.write(writes[3])  # small: a buffer of its own, from the Noise core
    assert len(made) == 1 and made[0] >= 500_000
    plain = remote.decrypt(b"".join(bytes(w) for w in lower.written))
    assert b"".join(plain) == writes[0] + b"x" * 12 + writes[1] + writes[2] + writes[3]


# -- receiving: every frame of a read decrypted into one buffer, yamux copies its payloads out --


def _pair() -> tuple[NoiseTransport, NoiseTransport]:
    k1, k2 = os.urandom(32), os.urandom(32)
    return NoiseTransport(CipherState(k1), CipherState(k2)), NoiseTransport(
        CipherState(k2), CipherState(k1)
    )


def _wire(a: NoiseTransport, rnd: random.Random) -> tuple[bytes, bytes]:
    pieces = [
        os.urandom(rnd.choice([0, 1, 15, 16, 17, 500, MAX_PLAINTEXT, 100_000])) for _ in range(8)
    ]
    return bytes(a.encrypt_many(pieces)), b"".join(pieces)


@pytest.mark.parametrize("use_scratch", [False, True])
def test_decrypt_joined_gives_the_plaintext_of_decrypt_under_any_chunking(
    use_scratch: bool,
) -> None:
    rnd = random.Random(13)
    for _ in range(60):
        a, b = _pair()
        wire, plain = _wire(a, rnd)
        scratch = bytearray(len(wire) + 70_000) if use_scratch else None
        got = bytearray()
        pos = 0
        while pos < len(wire):
            step = rnd.choice([1, 2, 3, 17, 1000, 65_537, 200_000])
            out = b.decrypt_joined(memoryview(wire)[pos : pos + step], scratch)
            if use_scratch and len(out) >= 1:
                assert isinstance(out, memoryview) and out.obj is scratch
            got += out
            pos += step
            assert b.buffered <= 65537
        assert got == plain
        assert b.buffered == 0
        assert bytes(b.decrypt_joined(a.encrypt(b"next"))) == b"next"  # nonces in step


def test_decrypt_joined_refuses_bad_frames_for_good() -> None:
    a, b = _pair()
    with pytest.raises(ProtocolError, match="too short"):
        b.decrypt_joined(b"\x00\x05hello")
    with pytest.raises(ProtocolError):  # stays failed
        b.decrypt_joined(b"")
    a, b = _pair()
    good, bad = bytes(a.encrypt(b"first")), bytearray(a.encrypt(b"second"))
    bad[4] ^= 1
    with pytest.raises(ProtocolError, match="authentication"):
        b.decrypt_joined(good + bad)
    with pytest.raises(ProtocolError):
        b.decrypt_joined(bytes(a.encrypt(b"third")))


def test_noise_channel_hands_view_receivers_one_view_per_read_and_others_bytes() -> None:
    rnd = random.Random(5)
    for receiver in (ViewTaker(), _Receiver()):
        channel, _, remote = _channel(copy=True, receiver=receiver)
        wire, plain = _wire(remote, rnd)
        pos = 0
        calls = 0
        while pos < len(wire):
            step = rnd.choice([5, 70_000, 300_000])
            # a view of a buffer that is overwritten after each call, as TCP's receive buffer
            buf = bytearray(wire[pos : pos + step])
            channel.data_received(memoryview(buf))
            buf[:] = bytes(len(buf))
            pos += step
            calls += 1
        assert b"".join(receiver.data) == plain
        if isinstance(receiver, ViewTaker):
            assert memoryview in receiver.types
            assert len(receiver.data) <= calls  # at most one call up per read
        else:
            assert all(type(d) is bytes for d in receiver.data)


def test_yamux_core_copies_payloads_out_of_a_reused_buffer() -> None:
    """The core keeps nothing of a view it is given: payloads (in pieces of at most 64 KiB) and
    a split header survive the buffer being overwritten by the next read."""
    sender = YamuxSession(initiator=True)
    receiver = YamuxSession(initiator=False)
    sid = sender.open_stream(0.0)
    payloads = [os.urandom(n) for n in (1, 5000, 150_000, 3)]
    for p in payloads:
        sender.write(sid, p)
    wire = b"".join(bytes(f) for f in sender.take_outbound())
    buf = bytearray(len(wire))
    got: list[bytes] = []
    sizes = [7, 12, 30, 5000, 40_000]  # the first two split headers across reads
    pos = 0
    while pos < len(wire):
        n = min(sizes.pop(0) if sizes else len(wire), len(wire) - pos)
        buf[:n] = wire[pos : pos + n]
        for ev in receiver.receive_data(memoryview(buf)[:n], 0.0):
            if isinstance(ev, DataReceived):
                assert type(ev.data) is bytes
                got.append(ev.data)
        buf[:] = b"\xee" * len(buf)  # the next read overwrites the buffer
        pos += n
    assert b"".join(got) == b"".join(payloads)
    # copied in pieces the allocator serves from its heap, never one big bytes per frame
    assert max(map(len, got)) == 64 * 1024
