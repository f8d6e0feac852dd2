"""S3 user metadata as S3 accepts it: ASCII keys and values, short, 2 KB in all.

Why apart from the block (`s3.S3AssetStorage`): these are S3's rules for object metadata, not
how the block talks to a bucket; they are pure string functions, tested without a client. The
reduction is lossy on purpose: the full metadata belongs in the JSON sidecar.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote

__all__ = ["s3_metadata"]

logger = logging.getLogger(__name__)

# S3 user metadata: ASCII only, and at most 2 KB for all keys and values together.
_S3_METADATA_VALUE_CHARS: Final = 256
_S3_METADATA_KEY_CHARS: Final = 64
_S3_METADATA_TOTAL_BYTES: Final = 2000
_S3_METADATA_KEY_UNSAFE = re.compile(r"[^a-z0-9_-]")
# Printable ASCII stays readable; '%' is escaped so that `unquote` restores the value exactly.
_S3_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _s3_metadata_value(raw: str) -> str:
    """Percent-encode one value character by character, stopping before the length cap.

    Encoding per character means a cut never splits an escape or a multi-byte character.
    """
    pieces: list[str] = []
    length = 0
    last = len(raw) - 1
    for index, char in enumerate(raw):
        if char == " " and index in (0, last):
            encoded = "%20"
        else:
            encoded = quote(char, safe=_S3_METADATA_SAFE, errors="replace")
        if length + len(encoded) > _S3_METADATA_VALUE_CHARS:
            # Cut here; a space now at the end would be stripped by HTTP, so drop it.
            return "".join(pieces).rstrip(" ")
        pieces.append(encoded)
        length += len(encoded)
    return "".join(pieces)


def s3_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Make metadata acceptable to S3: ASCII keys and values, short, 2 KB in total.

    Keys are lower-cased (S3 does so anyway) and reduced to [a-z0-9_-]. Values are
    percent-encoded outside printable ASCII ('%' too, so `urllib.parse.unquote` restores them),
    leading/trailing spaces are encoded because HTTP would strip them, and each value is cut to
    256 characters. Entries that no longer fit in S3's 2 KB budget are dropped. This is lossy
    on purpose: the full metadata belongs in the JSON sidecar.
    """
    result: dict[str, str] = {}
    total = 0
    for raw_key, raw_value in sorted((metadata or {}).items()):
        key = _S3_METADATA_KEY_UNSAFE.sub("-", str(raw_key).lower())[:_S3_METADATA_KEY_CHARS]
        if not key or key in result:
            continue
        value = _s3_metadata_value(str(raw_value))
        size = len(key) + len(value)
        if total + size > _S3_METADATA_TOTAL_BYTES:
            logger.debug("S3 metadata %r dropped: over the 2 KB limit", key)
            continue
        result[key] = value
        total += size
    return result
