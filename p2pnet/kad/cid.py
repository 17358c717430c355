"""Provider keys from CIDs: the DHT key of content is the multihash inside its CID.

js-libp2p and go-libp2p key provider records by the CID's multihash (js refuses ADD_PROVIDER and
GET_PROVIDERS keys that do not decode as one). CID text (``Qm...`` CIDv0, ``bafy...`` CIDv1 in
any multibase) is parsed with py-cid, the multiformats implementation maintained for
py-libp2p.
"""

from __future__ import annotations

import cid as _cid


def provider_key(content: bytes | str) -> bytes:
    """The provider key of ``content``: CID text -> its multihash; bytes are taken to be the
    key already (a multihash, or any key up to ``max_key_size`` between p2pnet nodes).

    Raises ``ValueError`` for text that is not a CID."""
    if isinstance(content, bytes):
        return content
    text = content.strip()
    try:
        parsed = _cid.make_cid(text)
    except Exception as exc:  # py-cid raises ValueError, KeyError, TypeError for bad input
        raise ValueError(f"not a CID: {content!r} ({exc})") from None
    return bytes(parsed.multihash)


__all__ = ["provider_key"]
