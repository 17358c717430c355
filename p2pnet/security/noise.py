"""libp2p Noise (``/noise``), sans-IO: Noise_XX_25519_ChaChaPoly_SHA256 plus the libp2p payload.

Three layers, none of which touches a socket:

* :class:`CipherState`, :class:`SymmetricState`, :class:`HandshakeState`: the Noise Protocol
  Framework objects (noiseprotocol.org, revision 34) for the one pattern libp2p uses, ``XX``::

      -> e
      <- e, ee, s, es
      -> s, se

* :class:`NoiseHandshake`: the libp2p handshake of https://github.com/libp2p/specs noise/README.md.
  Raw bytes go in through :meth:`NoiseHandshake.receive_data`, bytes to send come out of
  :meth:`NoiseHandshake.data_to_send`; messages are framed with a 2-byte big-endian length. The
  responder sends its signed identity in message 2, the initiator in message 3; message 1 carries
  an empty payload. The Noise static key is a fresh X25519 key per handshake.
* :class:`NoiseTransport`: the pair of transport ciphers after the handshake and the frame codec.
  :meth:`NoiseTransport.encrypt` turns any amount of plaintext into frames of at most
  :data:`MAX_PLAINTEXT` bytes; :meth:`NoiseTransport.decrypt` takes raw bytes as they arrive and
  returns the plaintext of every complete frame, keeping a partial frame for the next call.

Every malformed input raises a :mod:`p2pnet.errors` exception: :class:`HandshakeError` (or
:class:`PeerIDMismatch`) during the handshake, :class:`ProtocolError` in the transport phase,
:class:`MessageTooLargeError` when asked to send a handshake message that does not fit in a frame.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from google.protobuf.message import DecodeError

from p2pnet.crypto.keys import KeyPair, PublicKey, unmarshal_public_key
from p2pnet.errors import (
    CryptoError,
    HandshakeError,
    MessageTooLargeError,
    P2PError,
    PeerIDMismatch,
    ProtocolError,
)
from p2pnet.io import Bytes
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.pb import noise_pb2

__all__ = [
    "MAX_FRAME",
    "MAX_PLAINTEXT",
    "NOISE_PROTOCOL_NAME",
    "PROTOCOL_ID",
    "SIGNATURE_PREFIX",
    "CipherState",
    "HandshakeState",
    "NoiseHandshake",
    "NoiseHandshakeResult",
    "NoiseTransport",
    "SymmetricState",
    "decode_payload",
    "encode_payload",
]

log = logging.getLogger("p2pnet.noise")

#: The multistream-select protocol id of libp2p Noise.
PROTOCOL_ID: Final = "/noise"
#: The Noise protocol name; 32 bytes long, so it is used as the initial ``h`` unhashed.
NOISE_PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_SHA256"
#: What the identity key signs, followed by the Noise static public key.
SIGNATURE_PREFIX: Final = b"noise-libp2p-static-key:"

DH_LEN: Final = 32
HASH_LEN: Final = 32
TAG_LEN: Final = 16
#: Largest Noise message (and so largest frame body): the 2-byte length prefix caps it.
MAX_FRAME: Final = 65535
#: Largest plaintext per transport frame: a full frame minus the AEAD tag.
MAX_PLAINTEXT: Final = MAX_FRAME - TAG_LEN
#: Nonce 2^64 - 1 is reserved by the Noise spec; a cipher refuses to go that far.
MAX_NONCE: Final = (1 << 64) - 1

# ChaChaPoly nonce: 32 bits of zeros followed by the 64-bit little-endian counter.
_pack_nonce = struct.Struct("<4xQ").pack
_pack_len = struct.Struct(">H").pack
_pack_len_into = struct.Struct(">H").pack_into

_EMPTY_KEY = b""
#: :meth:`NoiseTransport.encrypt_many` copies pieces shorter than this into shared frames and
#: encrypts longer ones in place.
_GATHER_LIMIT: Final = 8 * 1024


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise ``HKDF(ck, ikm, 2)`` with HMAC-SHA256."""
    temp = hmac.digest(chaining_key, ikm, "sha256")
    out1 = hmac.digest(temp, b"\x01", "sha256")
    out2 = hmac.digest(temp, out1 + b"\x02", "sha256")
    return out1, out2


class CipherState:
    """A Noise ``CipherState``: a ChaCha20-Poly1305 key and a 64-bit nonce counter.

    The AEAD object is built once per key. Without a key (``k`` empty) encryption is the
    identity, as the spec demands for the first handshake message.
    """

    __slots__ = ("_aead", "k", "n")

    def __init__(self, key: bytes = _EMPTY_KEY) -> None:
        self.k = b""
        self.n = 0
        self._aead: ChaCha20Poly1305 | None = None
        if key:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a ChaChaPoly key is 32 bytes")
        self.k = key
        self.n = 0
        self._aead = ChaCha20Poly1305(key)

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def _next_nonce(self) -> bytes:
        n = self.n
        if n >= MAX_NONCE:
            raise ProtocolError("noise nonce exhausted; the session must be closed")
        self.n = n + 1
        return _pack_nonce(n)

    def encrypt_with_ad(self, ad: Bytes, plaintext: Bytes) -> bytes:
        aead = self._aead
        if aead is None:
            return bytes(plaintext)
        return aead.encrypt(self._next_nonce(), plaintext, ad)

    def decrypt_with_ad(self, ad: Bytes, ciphertext: Bytes) -> bytes:
        """Decrypt, or raise :class:`ProtocolError` on a bad tag; the nonce advances on success."""
        aead = self._aead
        if aead is None:
            return bytes(ciphertext)
        n = self.n
        if n >= MAX_NONCE:
            raise ProtocolError("noise nonce exhausted; the session must be closed")
        if len(ciphertext) < TAG_LEN:
            raise ProtocolError(
                f"noise ciphertext of {len(ciphertext)} bytes is shorter than a tag"
            )
        try:
            plaintext = aead.decrypt(_pack_nonce(n), ciphertext, ad)
        except InvalidTag:
            raise ProtocolError("noise message failed authentication (bad tag)") from None
        self.n = n + 1
        return plaintext


class SymmetricState:
    """The Noise ``SymmetricState``: chaining key ``ck``, handshake hash ``h`` and a cipher."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes = NOISE_PROTOCOL_NAME) -> None:
        if len(protocol_name) <= HASH_LEN:
            h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            h = hashlib.sha256(protocol_name).digest()
        self.h = h
        self.ck = h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher.initialize_key(temp_k)

    def mix_hash(self, data: Bytes) -> None:
        self.h = hashlib.sha256(self.h + bytes(data)).digest()

    def encrypt_and_hash(self, plaintext: Bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: Bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """The transport ciphers: (initiator -> responder, responder -> initiator)."""
        k1, k2 = _hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


def _x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # low-order point: all-zero shared secret
        raise HandshakeError("noise peer sent an invalid X25519 public key") from None


class HandshakeState:
    """The Noise ``HandshakeState`` for ``XX`` (no PSK), one message at a time.

    ``static`` and ``ephemeral`` may be given (test vectors); otherwise fresh keys are generated.
    Raises :class:`HandshakeError` for any malformed or unauthenticated message and
    :class:`ProtocolError` when called out of turn.
    """

    __slots__ = ("_e", "_s", "_ss", "_step", "initiator", "re", "rs")

    # step 0: msg1 (I->R), 1: msg2 (R->I), 2: msg3 (I->R), 3: done
    def __init__(
        self,
        initiator: bool,
        *,
        prologue: bytes = b"",
        static: X25519PrivateKey | None = None,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self._ss = SymmetricState()
        self._ss.mix_hash(prologue)
        self._s = static if static is not None else X25519PrivateKey.generate()
        self._e = ephemeral
        self.re: bytes | None = None
        self.rs: bytes | None = None
        self._step = 0

    @property
    def static_public(self) -> bytes:
        return _x25519_public(self._s)

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    @property
    def complete(self) -> bool:
        return self._step == 3

    @property
    def writing(self) -> bool:
        """True when the next message is ours to write."""
        return self._step < 3 and (self._step % 2 == 0) == self.initiator

    def _new_ephemeral(self) -> bytes:
        if self._e is None:
            self._e = X25519PrivateKey.generate()
        pub = _x25519_public(self._e)
        self._ss.mix_hash(pub)
        return pub

    def write_message(self, payload: Bytes = b"") -> bytes:
        if not self.writing:
            raise ProtocolError("noise handshake: not our turn to write")
        ss = self._ss
        step = self._step
        if step == 0:  # -> e
            out = self._new_ephemeral() + ss.encrypt_and_hash(payload)
        elif step == 1:  # <- e, ee, s, es
            assert self.re is not None
            e_pub = self._new_ephemeral()
            assert self._e is not None
            ss.mix_key(_dh(self._e, self.re))
            s_ct = ss.encrypt_and_hash(self.static_public)
            ss.mix_key(_dh(self._s, self.re))
            out = e_pub + s_ct + ss.encrypt_and_hash(payload)
        else:  # -> s, se
            assert self.re is not None
            s_ct = ss.encrypt_and_hash(self.static_public)
            ss.mix_key(_dh(self._s, self.re))
            out = s_ct + ss.encrypt_and_hash(payload)
        self._step = step + 1
        return out

    def read_message(self, message: Bytes) -> bytes:
        if self.writing or self._step >= 3:
            raise ProtocolError("noise handshake: not our turn to read")
        msg = bytes(message)
        ss = self._ss
        step = self._step
        try:
            if step == 0:  # -> e
                if len(msg) < DH_LEN:
                    raise HandshakeError(f"noise message 1 too short ({len(msg)} bytes)")
                self.re = msg[:DH_LEN]
                ss.mix_hash(self.re)
                payload = ss.decrypt_and_hash(msg[DH_LEN:])
            elif step == 1:  # <- e, ee, s, es
                if len(msg) < DH_LEN + DH_LEN + TAG_LEN + TAG_LEN:
                    raise HandshakeError(f"noise message 2 too short ({len(msg)} bytes)")
                assert self._e is not None
                self.re = msg[:DH_LEN]
                ss.mix_hash(self.re)
                ss.mix_key(_dh(self._e, self.re))
                rs = ss.decrypt_and_hash(msg[DH_LEN : 2 * DH_LEN + TAG_LEN])
                ss.mix_key(_dh(self._e, rs))
                self.rs = rs
                payload = ss.decrypt_and_hash(msg[2 * DH_LEN + TAG_LEN :])
            else:  # -> s, se
                if len(msg) < DH_LEN + TAG_LEN + TAG_LEN:
                    raise HandshakeError(f"noise message 3 too short ({len(msg)} bytes)")
                assert self._e is not None
                rs = ss.decrypt_and_hash(msg[: DH_LEN + TAG_LEN])
                ss.mix_key(_dh(self._e, rs))
                self.rs = rs
                payload = ss.decrypt_and_hash(msg[DH_LEN + TAG_LEN :])
        except HandshakeError:
            raise
        except ProtocolError as exc:
            raise HandshakeError(f"noise message {step + 1}: {exc}") from None
        self._step = step + 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) transport ciphers for this side; only after the last message."""
        if not self.complete:
            raise ProtocolError("noise handshake not complete")
        c1, c2 = self._ss.split()
        return (c1, c2) if self.initiator else (c2, c1)


class NoiseTransport:
    """Transport phase: encrypts outgoing plaintext into frames, decrypts incoming frames.

    Sans-IO: :meth:`encrypt` returns the bytes to write (all frames joined, ready for one write);
    :meth:`decrypt` takes raw bytes in any chunking and returns the plaintext of each complete
    frame, in order. At most one partial frame (< 64 KiB) is buffered between calls. After a
    failed :meth:`decrypt` the receive side is unusable and every further call raises again.
    """

    __slots__ = ("_failed", "_partial", "_partial_n", "_recv", "_recv_n", "_send", "_send_n")

    def __init__(self, send: CipherState, recv: CipherState) -> None:
        if send._aead is None or recv._aead is None:
            raise ValueError("transport ciphers need keys")
        self._send = send._aead
        self._send_n = send.n
        self._recv = recv._aead
        self._recv_n = recv.n
        # An incomplete frame: once its length is known, a buffer of its full size, filled
        # up to ``_partial_n`` (so each byte of a frame split across chunks is copied once).
        self._partial = bytearray()
        self._partial_n = 0
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held for the next :meth:`decrypt`."""
        return self._partial_n

    @property
    def partial(self) -> bytes:
        """The raw bytes of the incomplete frame held for the next :meth:`decrypt`."""
        return bytes(self._partial[: self._partial_n])

    @property
    def partial_frame_length(self) -> int:
        """Total size (prefix included) of the frame being buffered, or 0 if not yet known."""
        if self._partial_n < 2:
            return 0
        return 2 + ((self._partial[0] << 8) | self._partial[1])

    def encrypt(self, data: Bytes) -> bytearray:
        """Frame and encrypt ``data`` (any length; empty data gives no frames)."""
        src = memoryview(data)
        if src.format != "B":
            src = src.cast("B")
        total = src.nbytes
        if total == 0:
            return bytearray()
        nframes = (total + MAX_PLAINTEXT - 1) // MAX_PLAINTEXT
        n = self._send_n
        if n + nframes > MAX_NONCE:
            raise ProtocolError("noise nonce exhausted; the session must be closed")
        out = bytearray(total + nframes * (2 + TAG_LEN))
        dst = memoryview(out)
        aead_encrypt_into = self._send.encrypt_into
        pos = 0
        opos = 0
        while pos < total:
            end = pos + MAX_PLAINTEXT
            if end > total:
                end = total
            clen = end - pos + TAG_LEN
            _pack_len_into(out, opos, clen)
            opos += 2
            aead_encrypt_into(_pack_nonce(n), src[pos:end], None, dst[opos : opos + clen])
            n += 1
            opos += clen
            pos = end
        self._send_n = n
        dst.release()
        src.release()
        return out

    def encrypt_many(
        self, pieces: Sequence[Bytes], scratch: bytearray | None = None
    ) -> bytearray | memoryview:
        """Frame and encrypt several buffers, in order, into one buffer ready for one write.

        With ``scratch`` (a buffer nobody else uses) the frames are written into it when they
        fit, and a view of its first bytes is returned: a fresh buffer of a megabyte costs more
        than its encryption in zeroing and page faults once the allocator gave it back to the
        kernel. Otherwise (or if they do not fit) a new buffer is returned.

        Unlike ``encrypt(b"".join(pieces))`` no big piece is copied: a piece of at least
        :data:`_GATHER_LIMIT` bytes is encrypted in place, cut into frames of
        :data:`MAX_PLAINTEXT` bytes, and frames never span two big pieces. Small pieces (and the
        short tail of a big piece) are gathered with their neighbours into shared frames, so a
        yamux header becomes part of a small frame and the payload after it starts a new frame
        (which also lets the receiver hand out the decrypted payload without slicing it).
        """
        plan: list[Bytes] = []  # the plaintext of each frame, in order
        run: bytearray | None = None  # gathered small bytes, at most MAX_PLAINTEXT
        total = 0
        for piece in pieces:
            mv = memoryview(piece)
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            size = mv.nbytes
            if size == 0:
                continue
            total += size
            if size < _GATHER_LIMIT:
                if run is None:
                    run = bytearray(mv)
                elif len(run) + size <= MAX_PLAINTEXT:
                    run += mv
                else:
                    take = MAX_PLAINTEXT - len(run)
                    run += mv[:take]
                    plan.append(run)
                    run = bytearray(mv[take:])
                continue
            if run is not None:
                plan.append(run)
                run = None
            pos = 0
            while size - pos >= MAX_PLAINTEXT:
                plan.append(mv[pos : pos + MAX_PLAINTEXT])
                pos += MAX_PLAINTEXT
            if pos < size:
                if size - pos < _GATHER_LIMIT:
                    run = bytearray(mv[pos:])
                else:
                    plan.append(mv[pos:])
        if run is not None:
            plan.append(run)
        nframes = len(plan)
        if nframes == 0:
            return bytearray()
        n = self._send_n
        if n + nframes > MAX_NONCE:
            raise ProtocolError("noise nonce exhausted; the session must be closed")
        size = total + nframes * (2 + TAG_LEN)
        out = scratch if scratch is not None and len(scratch) >= size else bytearray(size)
        dst = memoryview(out)
        aead_encrypt_into = self._send.encrypt_into
        opos = 0
        for plain in plan:
            clen = len(plain) + TAG_LEN
            _pack_len_into(out, opos, clen)
            opos += 2
            aead_encrypt_into(_pack_nonce(n), plain, None, dst[opos : opos + clen])
            n += 1
            opos += clen
        self._send_n = n
        if out is scratch:
            return dst[:size]
        dst.release()
        return out

    def _open(self, ciphertext: Bytes) -> bytes:
        n = self._recv_n
        if n >= MAX_NONCE:
            raise ProtocolError("noise nonce exhausted; the session must be closed")
        try:
            plaintext = self._recv.decrypt(_pack_nonce(n), ciphertext, None)
        except InvalidTag:
            raise ProtocolError(
                f"noise frame {n} failed authentication (tampered or corrupt ciphertext)"
            ) from None
        self._recv_n = n + 1
        return plaintext

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self._failed = exc
        self._partial = bytearray()
        self._partial_n = 0
        return exc

    def joined_size(self, n: int) -> int:
        """At most how many bytes :meth:`decrypt_joined` returns for ``n`` bytes of input: the
        frame being completed (up to its buffered size), then no more than the input itself."""
        return n + (self._partial_n and len(self._partial))

    def decrypt_joined(self, data: Bytes, scratch: bytearray | None = None) -> Bytes:
        """The plaintext of every frame completed by ``data``, joined in one buffer.

        What :meth:`decrypt` returns as a list, written one frame after the other into
        ``scratch`` (a buffer nobody else uses) when it fits, and a view of it is returned; else
        into a new buffer. No buffer per frame: the layer above (yamux) copies out what it keeps
        in pieces cut by its own framing, not by Noise's."""
        if self._failed is not None:
            raise self._failed
        total = len(data)
        limit = self.joined_size(total)
        out = scratch if scratch is not None and len(scratch) >= limit else bytearray(limit)
        dst = memoryview(out)
        opos = 0
        aead_decrypt_into = self._recv.decrypt_into
        with memoryview(data) as mv:
            for ciphertext in self._complete_frames(mv, total):
                plen = len(ciphertext) - TAG_LEN
                self._open_into(ciphertext, dst[opos : opos + plen], aead_decrypt_into)
                opos += plen
        if out is scratch:
            return dst[:opos]
        dst.release()
        del out[opos:]
        return out

    def _complete_frames(self, mv: memoryview, total: int) -> list[memoryview]:
        """The ciphertexts (tag included) of the frames ``mv`` completes, in order: first the
        frame an earlier chunk started (completed in ``_partial`` with as few bytes as needed),
        then each whole frame in ``mv``; an incomplete frame at its end is kept in ``_partial``
        for the next chunk. Shared by :meth:`decrypt` and :meth:`decrypt_joined`."""
        frames: list[memoryview] = []
        pos = 0
        if self._partial_n:
            partial = self._partial
            have = self._partial_n
            if have < 2:
                if total == 0:
                    return frames
                partial += mv[:1]
                pos = 1
                have = 2
            flen = (partial[0] << 8) | partial[1]
            if flen < TAG_LEN:
                raise self._fail(ProtocolError(f"noise frame of {flen} bytes is too short"))
            if len(partial) < 2 + flen:
                full = bytearray(2 + flen)
                full[:have] = partial[:have]
                self._partial = partial = full
            need = 2 + flen - have
            if total - pos < need:
                partial[have : have + total - pos] = mv[pos:]
                self._partial_n = have + total - pos
                return frames
            partial[have:] = mv[pos : pos + need]
            pos += need
            self._partial = bytearray()  # (the completed frame's buffer is the caller's now)
            self._partial_n = 0
            frames.append(memoryview(partial)[2:])
        while total - pos >= 2:
            flen = (mv[pos] << 8) | mv[pos + 1]
            if flen < TAG_LEN:
                raise self._fail(ProtocolError(f"noise frame of {flen} bytes is too short"))
            end = pos + 2 + flen
            if end > total:
                partial = bytearray(2 + flen)
                partial[: total - pos] = mv[pos:]
                self._partial = partial
                self._partial_n = total - pos
                return frames
            frames.append(mv[pos + 2 : end])
            pos = end
        if pos < total:  # one byte of a length prefix
            self._partial = bytearray(mv[pos:])
            self._partial_n = 1
        return frames

    def _open_into(
        self,
        ciphertext: memoryview,
        plaintext: memoryview,
        aead_decrypt_into: Callable[[bytes, memoryview, None, memoryview], int],
    ) -> None:
        n = self._recv_n
        if n >= MAX_NONCE:
            raise self._fail(ProtocolError("noise nonce exhausted; the session must be closed"))
        try:
            aead_decrypt_into(_pack_nonce(n), ciphertext, None, plaintext)
        except InvalidTag:
            raise self._fail(
                ProtocolError(
                    f"noise frame {n} failed authentication (tampered or corrupt ciphertext)"
                )
            ) from None
        self._recv_n = n + 1

    def decrypt(self, data: Bytes) -> list[bytes]:
        """Plaintext of every frame completed by ``data`` (empty frames give ``b""`` entries)."""
        if self._failed is not None:
            raise self._failed
        with memoryview(data) as mv:
            frames = self._complete_frames(mv, len(data))
            try:
                return [self._open(ciphertext) for ciphertext in frames]
            except ProtocolError as exc:
                raise self._fail(exc) from None


@dataclass(frozen=True, slots=True)
class NoiseHandshakeResult:
    """What a completed handshake established."""

    remote_peer: PeerID
    remote_public_key: PublicKey
    remote_stream_muxers: list[str]
    transport: NoiseTransport
    handshake_hash: bytes
    #: Raw bytes received after the last handshake message (early transport frames).
    leftover: bytes = field(default=b"", repr=False)


def encode_payload(
    local_key: KeyPair, static_public: bytes, stream_muxers: Sequence[str] = ()
) -> bytes:
    """The signed ``NoiseHandshakePayload`` binding ``local_key`` to the Noise static key."""
    payload = noise_pb2.NoiseHandshakePayload()
    payload.identity_key = local_key.public_key.to_protobuf()
    payload.identity_sig = local_key.sign(SIGNATURE_PREFIX + static_public)
    if stream_muxers:
        payload.extensions.stream_muxers.extend(stream_muxers)
    return payload.SerializeToString()


def decode_payload(data: bytes, remote_static: bytes) -> tuple[PublicKey, list[str]]:
    """Parse and verify a remote payload; :class:`HandshakeError` if anything is wrong."""
    payload = noise_pb2.NoiseHandshakePayload()
    try:
        payload.ParseFromString(data)
        identity_key = payload.identity_key
        identity_sig = payload.identity_sig
        muxers = list(payload.extensions.stream_muxers)
    except (DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise HandshakeError(f"malformed noise handshake payload: {exc}") from None
    if not all(isinstance(m, str) for m in muxers):  # proto2 hands back bad UTF-8 as bytes
        raise HandshakeError("noise handshake payload has a stream muxer name that is not UTF-8")
    if not payload.HasField("identity_key") or not identity_key:
        raise HandshakeError("noise handshake payload lacks the identity key")
    if not identity_sig:
        raise HandshakeError("noise handshake payload lacks the identity signature")
    try:
        public_key = unmarshal_public_key(identity_key)
    except CryptoError as exc:
        raise HandshakeError(
            f"noise handshake payload has an invalid identity key: {exc}"
        ) from None
    try:
        valid = public_key.verify(SIGNATURE_PREFIX + remote_static, identity_sig)
    except (CryptoError, ValueError):
        valid = False
    if not valid:
        raise HandshakeError("noise handshake: invalid signature over the remote static key")
    return public_key, muxers


class NoiseHandshake:
    """The libp2p Noise handshake as a sans-IO state machine.

    Feed raw bytes with :meth:`receive_data`; send whatever :meth:`data_to_send` returns (the
    initiator's first message is ready right after construction). When :attr:`complete` is true
    (after :meth:`receive_data`), :meth:`result` has the authenticated remote and the transport
    ciphers; the initiator must still send its last message from :meth:`data_to_send`.

    ``static_key``, ``ephemeral_key`` and ``prologue`` exist for tests and test vectors; libp2p
    uses fresh X25519 keys and an empty prologue.

    Any failure raises :class:`HandshakeError` (:class:`PeerIDMismatch` when ``expected_peer`` is
    given and the remote is someone else); the object then refuses further input.
    """

    def __init__(
        self,
        local_key: KeyPair,
        *,
        initiator: bool,
        expected_peer: PeerID | None = None,
        stream_muxers: Sequence[str] = (),
        static_key: X25519PrivateKey | None = None,
        ephemeral_key: X25519PrivateKey | None = None,
        prologue: bytes = b"",
    ) -> None:
        self.initiator = initiator
        self.local_key = local_key
        self.expected_peer = expected_peer
        self.stream_muxers = list(stream_muxers)
        self._hs = HandshakeState(
            initiator, prologue=prologue, static=static_key, ephemeral=ephemeral_key
        )
        self._buf = bytearray()
        self._out = bytearray()
        self._result: NoiseHandshakeResult | None = None
        self._remote: tuple[PeerID, PublicKey, list[str]] | None = None
        self._failed: HandshakeError | None = None
        if initiator:
            self._send(self._hs.write_message(b""))

    @property
    def complete(self) -> bool:
        return self._result is not None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete handshake message held for the next :meth:`receive_data`."""
        return len(self._buf)

    def result(self) -> NoiseHandshakeResult:
        if self._result is None:
            raise HandshakeError("noise handshake not complete")
        return self._result

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _send(self, message: bytes) -> None:
        if len(message) > MAX_FRAME:
            raise MessageTooLargeError(
                f"noise handshake message of {len(message)} bytes exceeds {MAX_FRAME}"
            )
        self._out += _pack_len(len(message))
        self._out += message

    def _payload(self) -> bytes:
        return encode_payload(self.local_key, self._hs.static_public, self.stream_muxers)

    def _authenticate(self, payload: bytes) -> None:
        rs = self._hs.rs
        assert rs is not None
        public_key, muxers = decode_payload(payload, rs)
        peer = PeerID.from_public_key(public_key)
        if self.expected_peer is not None and peer != self.expected_peer:
            raise PeerIDMismatch(
                f"noise handshake: expected peer {self.expected_peer}, "
                f"but the remote authenticated as {peer}"
            )
        self._remote = (peer, public_key, muxers)

    def _finish(self, leftover: bytes) -> None:
        assert self._remote is not None
        send, recv = self._hs.split()
        peer, public_key, muxers = self._remote
        self._result = NoiseHandshakeResult(
            remote_peer=peer,
            remote_public_key=public_key,
            remote_stream_muxers=muxers,
            transport=NoiseTransport(send, recv),
            handshake_hash=self._hs.handshake_hash,
            leftover=leftover,
        )

    def _on_message(self, message: bytes) -> None:
        hs = self._hs
        payload = hs.read_message(message)
        if self.initiator:
            # message 2: the responder's identity; authenticate it before revealing ours.
            self._authenticate(payload)
            self._send(hs.write_message(self._payload()))
        elif hs.complete:
            # message 3: the initiator's identity.
            self._authenticate(payload)
        else:
            # message 1: its payload must be empty per the libp2p spec; ignore it if not.
            if payload:
                log.debug("ignoring %d bytes of payload in noise message 1", len(payload))
            self._send(hs.write_message(self._payload()))

    def receive_data(self, data: Bytes) -> None:
        """Consume raw bytes; processes every complete handshake message they finish."""
        if self._failed is not None:
            raise self._failed
        if self._result is not None:
            raise HandshakeError("noise handshake already complete")
        buf = self._buf
        buf += data
        try:
            while len(buf) >= 2:
                mlen = (buf[0] << 8) | buf[1]
                if len(buf) < 2 + mlen:
                    break
                message = bytes(buf[2 : 2 + mlen])
                del buf[: 2 + mlen]
                self._on_message(message)
                if self._hs.complete:
                    self._finish(bytes(buf))
                    buf.clear()
                    break
        except HandshakeError as exc:
            self._failed = exc
            buf.clear()
            raise
        except P2PError as exc:  # MessageTooLargeError on our side, ProtocolError out of turn
            err = HandshakeError(f"noise handshake failed: {exc}")
            err.__cause__ = exc
            self._failed = err
            buf.clear()
            raise err from exc
