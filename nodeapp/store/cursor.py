"""The opaque cursor of ``GET /results``: for each node, by its store's epoch, the number of the
last completion the client has seen (``nodeapp.store.completions``).

On the wire it is base64url (unpadded) of compact JSON ``{"v": 1, "p": {epoch: number}}``. A
cursor without a node's current epoch (new client, or the node restarted without its journal)
starts at that node's oldest kept result.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

VERSION = 1
MAX_LENGTH = 2048
MAX_NODES = 16
_EPOCH = re.compile(r"[0-9A-Za-z_-]{1,64}")


def encode(positions: dict[str, int]) -> str:
    raw = json.dumps({"v": VERSION, "p": dict(sorted(positions.items()))}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(text: str) -> dict[str, int]:
    """The positions of a cursor; the empty string is the start. ValueError if it is not a cursor."""
    if not text:
        return {}
    if len(text) > MAX_LENGTH:
        raise ValueError(f"the cursor is longer than {MAX_LENGTH} characters")
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("the cursor is not one this API gave out (pass the 'next' of an earlier answer)") from None
    positions = data.get("p") if isinstance(data, dict) and data.get("v") == VERSION else None
    if not isinstance(positions, dict) or len(positions) > MAX_NODES or not all(
            isinstance(k, str) and _EPOCH.fullmatch(k) and type(v) is int and v >= 0 for k, v in positions.items()):
        raise ValueError("the cursor is not one this API gave out (pass the 'next' of an earlier answer)")
    return positions
