"""Storage keys: build them from untrusted parts (`safe_key`) and validate them (`check_key`).

Prefect-free, so the record layout (`evolink.layout`) builds its keys with the same rules the
storage blocks check (`prefect_evolink.blocks.keys` re-exports these names).

Keys are '/'-separated relative keys such as ``"campaign/asset/draft/0.png"``. Parts of a key
often come from untrusted input (campaign names, asset ids echoed by an API), so:

- build keys with `safe_key(*parts)`, which turns any string into one harmless segment, and
- every storage method re-validates the key it receives (`check_key`), and local storage also
  checks that the resolved path stays inside its base directory.

A rejected key raises `ValueError` naming the key; nothing is written. The rules are the same
for every back-end, so keys are portable between them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Final

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_PART_CHARS",
    "MAX_SEGMENT_BYTES",
    "check_key",
    "check_prefix",
    "safe_key",
]

MAX_PART_CHARS: Final = 80
"""Longest segment `safe_key` produces; long names are cut and given a hash suffix."""
MAX_SEGMENT_BYTES: Final = 255
"""Most file systems refuse longer file names (NAME_MAX)."""
MAX_KEY_BYTES: Final = 1024
"""S3's limit on a full object key (UTF-8)."""

_HASH_CHARS: Final = 10
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def _safe_part(part: str) -> str:
    """One untrusted string -> one segment of [A-Za-z0-9._-] that cannot climb or hide.

    A part that is already safe passes through unchanged (so ids stay readable and stable).
    Any part that had to change - characters replaced, leading dots neutralised, emptiness
    filled, length cut - gets a short hash of its (NFKC-normalised) original appended, because
    otherwise two different campaign names ("春季", "夏季", or "a b" and "a/b") would map to
    the same key and overwrite each other's images.
    """
    if not isinstance(part, str):
        raise TypeError(f"key parts must be str, got {type(part).__name__}: {part!r}")
    original = unicodedata.normalize("NFKC", part)
    cleaned = _UNSAFE_CHARS.sub("-", original)
    # Leading dots make '.', '..' and hidden files; our temp files also start with a dot.
    stripped = cleaned.lstrip(".")
    cleaned = "_" * (len(cleaned) - len(stripped)) + stripped
    if not cleaned:
        cleaned = "_"
    if cleaned == original and len(cleaned) <= MAX_PART_CHARS:
        return cleaned
    suffix = "-" + _short_hash(original)
    return cleaned[: MAX_PART_CHARS - len(suffix)] + suffix


def safe_key(*parts: str) -> str:
    """Build a storage key from untrusted parts; each part becomes exactly one segment.

    Unicode is NFKC-normalised, anything outside ``[A-Za-z0-9._-]`` (including '/', '\\\\' and
    NUL) becomes '-', leading dots become '_', an empty part becomes '_', and parts are capped
    at 80 characters. Changed parts carry a hash suffix so that distinct inputs stay distinct.
    The result always passes `check_key`, so it can never point outside a storage root.

    Example:
        >>> safe_key("summer", "asset_42", "draft", "0.png")
        'summer/asset_42/draft/0.png'
    """
    if not parts:
        raise ValueError("safe_key() needs at least one part")
    return check_key("/".join(_safe_part(p) for p in parts))


def check_key(key: str) -> str:
    """Validate a relative storage key and return it unchanged; raise ValueError otherwise.

    Rules (the same for every back-end, so keys are portable between them): a non-empty str,
    relative (no leading '/'), no backslash, no NUL or control characters, no empty segments
    (no '//' and no trailing '/'), no segment starting with '.' (covers '.', '..', hidden and
    in-progress temp files), segments of at most 255 UTF-8 bytes, the whole at most 1024 bytes.
    """
    if not isinstance(key, str):
        raise ValueError(f"storage key must be a str, got {type(key).__name__}: {key!r}")
    problem: str | None = None
    if not key:
        problem = "is empty"
    elif key.startswith("/"):
        problem = "is absolute"
    elif "\\" in key:
        problem = "contains a backslash"
    elif _CONTROL_CHARS.search(key):
        problem = "contains NUL or control characters"
    else:
        try:
            encoded_len = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            encoded_len = -1
        if encoded_len < 0:
            problem = "is not valid Unicode"
        elif encoded_len > MAX_KEY_BYTES:
            problem = f"is longer than {MAX_KEY_BYTES} bytes"
        else:
            for segment in key.split("/"):
                if not segment:
                    problem = "has an empty segment"
                elif segment in (".", ".."):
                    problem = f"has a {segment!r} segment"
                elif segment.startswith("."):
                    problem = "has a segment starting with '.'"
                elif len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
                    problem = f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
                if problem:
                    break
    if problem:
        raise ValueError(f"invalid storage key {key!r}: it {problem}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: '' or a key, maybe ending in '/', whose last segment may be partial."""
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix
