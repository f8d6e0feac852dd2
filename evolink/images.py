"""Recognise PNG / JPEG / WEBP from their first bytes, with pixel size where the header has it.

A result link that answers 200 with an HTML error page or a truncated body must not be stored as
an "image": persist checks the leading bytes before anything is written to storage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

HEADER_BYTES: Final = 64 * 1024  # enough for any PNG IHDR, WEBP header and typical JPEG SOF
EXTENSIONS: Final = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    content_type: str
    width: int | None
    height: int | None

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.content_type]


def _png(head: bytes) -> ImageInfo | None:
    if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR" or len(head) < 24:
        return None
    width, height = struct.unpack(">II", head[16:24])
    return ImageInfo("image/png", width, height)


def _jpeg(head: bytes) -> ImageInfo | None:
    if not head.startswith(b"\xff\xd8\xff"):
        return None
    pos = 2
    while pos + 9 < len(head):
        if head[pos] != 0xFF:
            pos += 1
            continue
        marker = head[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            pos += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", head[pos + 2 : pos + 4])[0]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return ImageInfo("image/jpeg", width, height)
        pos += 2 + length
    return ImageInfo("image/jpeg", None, None)  # a JPEG whose size lies past what we read


def _webp(head: bytes) -> ImageInfo | None:
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(head[24:27], "little")
        height = 1 + int.from_bytes(head[27:30], "little")
        return ImageInfo("image/webp", width, height)
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return ImageInfo("image/webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return ImageInfo("image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    return ImageInfo("image/webp", None, None)


def sniff_image(head: bytes) -> ImageInfo | None:
    """The image type (and size) from a file's first bytes; None if it is no image we accept."""
    return _png(head) or _jpeg(head) or _webp(head)
