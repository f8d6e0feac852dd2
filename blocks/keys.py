"""Storage keys for the blocks: the rules live in the Prefect-free `evolink.keys`.

They moved there so the record layout (`evolink.layout`) builds keys with the very rules every
storage block checks; this module keeps the names the blocks (and users) import from here.
"""

from __future__ import annotations

from evolink.keys import (
    MAX_KEY_BYTES,
    MAX_PART_CHARS,
    MAX_SEGMENT_BYTES,
    check_key,
    check_prefix,
    safe_key,
)

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_PART_CHARS",
    "MAX_SEGMENT_BYTES",
    "check_key",
    "check_prefix",
    "safe_key",
]
