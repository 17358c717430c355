"""The reused buffers of the bulk path: Noise's output buffer, TCP's receive buffer.

Both save a fresh megabyte per write or read; both must never hand out bytes that a later write
or read overwrites.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.io import Bytes
from p2pnet.peer.peer_id import PeerID
from p2pnet.security import noise_connection
from p2pnet.security.noise import CipherState, NoiseTransport
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


def _channel(*, copy: bool) -> tuple[NoiseChannel, _Lower, NoiseTransport]:
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
    channel = NoiseChannel(conn, _Receiver())
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
