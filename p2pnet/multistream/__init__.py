"""multistream-select 1.0: agree on the protocol spoken over a connection or stream.

Spec: https://github.com/multiformats/multistream-select (and libp2p specs connections/).

Every message is ``uvarint(len(text) + 1) || UTF-8 text || "\\n"``. Both sides start with the
header ``/multistream/1.0.0``; the dialer then proposes protocol ids one at a time and the listener
answers each with the same id (accepted) or ``na`` (refused). The dialer may also send ``ls``; the
listener then answers with the protocols it supports.

Layout:

* the sans-IO core, :mod:`p2pnet.multistream.core`: :class:`MultistreamDialer`,
  :class:`MultistreamListener` and :class:`ProtocolLister` are state machines fed with
  :meth:`~Negotiator.receive_data` that return events (:class:`ProtocolAgreed`,
  :class:`ProtocolRefused`, :class:`ProtocolsListed`) and queue bytes for
  :meth:`~Negotiator.data_to_send`. Every decision (the dialer's fallback through ``na``, the
  pipelined header + first proposal, the listener's limits and ``ls``) is made there. Messages are
  framed by :class:`~p2pnet.wire.framing.FrameDecoder`, the one varint framing of p2pnet.
* the asyncio adapters, :mod:`p2pnet.multistream.negotiate`: :func:`negotiate_outbound`,
  :func:`negotiate_inbound` and :func:`list_protocols` only move bytes. They write what the core
  queued and read exactly :attr:`~Negotiator.bytes_wanted` bytes, so they never consume a byte
  past the negotiation (application data the remote sends in the same segment as its last
  negotiation message stays in ``conn`` for the protocol handler), and bound the whole
  negotiation with a timeout.

Limits (checked against go-multistream ``lpReadBuf`` and js ``@libp2p/multistream-select``):

* :data:`MAX_MESSAGE_LENGTH` = 1024: the largest accepted length prefix, newline included. go
  refuses ``length > 1024`` and js uses ``maxDataLength: 1024``, so a protocol id may have at most
  1023 UTF-8 bytes. We neither send nor accept anything the reference stacks would refuse.
* :data:`MAX_LS_REPLY_LENGTH` = 16383 and :data:`MAX_LS_PROTOCOLS` = 1000: the bounds of an ``ls``
  answer (rust-libp2p caps frames at a 2-byte length prefix, i.e. 16383, and answers at 1000
  protocols); an ``ls`` answer is a list and so may exceed the per-message limit.
* :data:`MAX_NEGOTIATION_ATTEMPTS` = 32: how many proposals (and ``ls`` requests) a listener answers
  before it gives up. Real dialers propose one to four ids (gossipsub: meshsub 1.2/1.1/1.0 and
  floodsub), so 32 leaves room while stopping a peer that streams ``na``-bait at us.

``ls`` answers use the layout of js-libp2p and rust-libp2p: one outer message whose body is, per
protocol, ``uvarint(len(id) + 1) || id || "\\n"``, followed by the outer ``"\\n"``. (go-multistream
dropped ``ls`` and answers it with ``na``; :func:`list_protocols` reports that as
:class:`~p2pnet.errors.ProtocolNotSupported`.)
"""

from p2pnet.multistream.core import (
    HEADER_MESSAGE,
    LS,
    MAX_LS_PROTOCOLS,
    MAX_LS_REPLY_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_NEGOTIATION_ATTEMPTS,
    MAX_PROTOCOL_ID_LENGTH,
    MULTISTREAM_PROTOCOL_ID,
    NA,
    MultistreamDialer,
    MultistreamListener,
    NegotiationEvent,
    NegotiationState,
    Negotiator,
    ProtocolAgreed,
    ProtocolLister,
    ProtocolRefused,
    ProtocolsListed,
    Supported,
    decode_ls_reply,
    decode_message,
    decode_text,
    encode_ls_reply,
    encode_message,
    encode_messages,
)
from p2pnet.multistream.negotiate import (
    DEFAULT_TIMEOUT,
    list_protocols,
    negotiate_inbound,
    negotiate_outbound,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "HEADER_MESSAGE",
    "LS",
    "MAX_LS_PROTOCOLS",
    "MAX_LS_REPLY_LENGTH",
    "MAX_MESSAGE_LENGTH",
    "MAX_NEGOTIATION_ATTEMPTS",
    "MAX_PROTOCOL_ID_LENGTH",
    "MULTISTREAM_PROTOCOL_ID",
    "NA",
    "MultistreamDialer",
    "MultistreamListener",
    "NegotiationEvent",
    "NegotiationState",
    "Negotiator",
    "ProtocolAgreed",
    "ProtocolLister",
    "ProtocolRefused",
    "ProtocolsListed",
    "Supported",
    "decode_ls_reply",
    "decode_message",
    "decode_text",
    "encode_ls_reply",
    "encode_message",
    "encode_messages",
    "list_protocols",
    "negotiate_inbound",
    "negotiate_outbound",
]
