"""JSON from untrusted sources with a nesting limit, so no input can exhaust the parser's stack.

``json.loads`` recurses once per nesting level: a line of a thousand ``[`` raises RecursionError,
which is not a ValueError and escaped the command reader of p2p-node. :func:`loads_bounded`
measures the nesting first (one linear pass, strings skipped) and refuses deeper documents with
a ValueError like any other malformed JSON.
"""

from __future__ import annotations

import json
from typing import Any

#: Deepest nesting accepted (objects and arrays); every message of ours needs fewer than 8.
MAX_JSON_DEPTH = 64


def json_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in ``text`` (strings are skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif ch in "]}":
            depth -= 1
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_bounded(data: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that raises only ValueError (incl. UnicodeDecodeError) on bad input.

    NaN and Infinity are refused; so is nesting deeper than ``max_depth``.
    """
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    if json_depth(text) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise ValueError("JSON nested too deeply") from None
