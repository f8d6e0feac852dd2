"""Real, valid PNG files of an exact pixel size, made fast enough to serve 4K images in tests.

Clients check what they download (signature, IHDR size, integrity), so the simulator must serve
true PNGs of the size the request asked for, not placeholder bytes. The picture is a gradient
with a checkerboard tint, seeded by (task id, image index): the same URL always yields the same
bytes, and two images never look alike. Rows are built with slice assignment on a bytearray
(C speed) and compressed with zlib level 1, so a 3840×2160 image takes tens of milliseconds.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import zlib
from collections import OrderedDict
from typing import Final

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_CHECKER: Final = 64  # checkerboard square, in pixels


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC over type+data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _ramp(length: int, offset: int) -> bytes:
    """0..255 across `length` samples, shifted by `offset` (mod 256)."""
    span = max(length - 1, 1)
    return bytes(((i * 255) // span + offset) & 0xFF for i in range(length))


def render_png(width: int, height: int, key: str) -> bytes:
    """An RGB PNG of exactly width×height whose pattern is derived from `key`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    seed = hashlib.sha256(key.encode()).digest()
    red_offset, green_offset, blue_base, blue_step = seed[0], seed[1], seed[2], 32 + seed[3] % 96

    row = bytearray(3 * width)
    row[0::3] = _ramp(width, red_offset)  # red: horizontal gradient
    # blue: checkerboard; two row variants, swapped every _CHECKER rows
    cells = bytes(((x // _CHECKER) % 2) * blue_step for x in range(width))
    blue_even = bytes((blue_base + c) & 0xFF for c in cells)
    blue_odd = bytes((blue_base + blue_step - c) & 0xFF for c in cells)
    greens = _ramp(height, green_offset)  # green: vertical gradient, one value per row
    green_rows: dict[int, bytes] = {}

    compressor = zlib.compressobj(1)
    parts: list[bytes] = []
    for y in range(height):
        g = greens[y]
        green_row = green_rows.get(g)
        if green_row is None:
            green_row = green_rows[g] = bytes((g,)) * width
        row[1::3] = green_row
        row[2::3] = blue_odd if (y // _CHECKER) % 2 else blue_even
        parts.append(compressor.compress(b"\x00"))  # filter type 0 (None) for every row
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    text = b"Software\x00evolink-simulator"
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", ihdr),
            _chunk(b"tEXt", text),
            _chunk(b"IDAT", b"".join(parts)),
            _chunk(b"IEND", b""),
        )
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; raises ValueError when `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


class PngCache:
    """A bounded LRU of rendered files, so repeated downloads (retries, resumes) cost nothing.

    Bounded by total bytes, not count: one 4K image can be megabytes, a 1K one kilobytes.
    """

    def __init__(self, max_bytes: int = 128 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str, width: int, height: int) -> bytes:
        """The PNG for (key, width, height), rendered on first use."""
        cache_key = (key, width, height)
        with self._lock:
            data = self._items.get(cache_key)
            if data is not None:
                self._items.move_to_end(cache_key)
                return data
        data = render_png(width, height, key)  # outside the lock: renders may run in parallel
        with self._lock:
            if cache_key not in self._items and len(data) <= self.max_bytes:
                self._items[cache_key] = data
                self._size += len(data)
                while self._size > self.max_bytes:
                    _, evicted = self._items.popitem(last=False)
                    self._size -= len(evicted)
        return data

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0
