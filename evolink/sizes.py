"""Output pixel sizes: the ratio + resolution tiers and the rules for explicit `WxH` sizes.

The API accepts three kinds of `size`: `auto`, a ratio (priced through a resolution tier) and an
explicit `WxH`. Everything here is pure arithmetic so both the request model and the simulator
use one definition and the cost estimate prices exactly the pixels that will be generated.
"""

from __future__ import annotations

import math
import re
from typing import Final, Literal

Resolution = Literal["1K", "2K", "4K"]

RATIOS: Final[tuple[str, ...]] = (
    "1:1",
    "1:2",
    "2:1",
    "1:3",
    "3:1",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "16:9",
    "21:9",
    "9:21",
)
RESOLUTIONS: Final[tuple[Resolution, ...]] = ("1K", "2K", "4K")
DEFAULT_RESOLUTION: Final[Resolution] = "1K"

EDGE_STEP: Final = 16
MAX_EDGE: Final = 3840
MIN_PIXELS: Final = 655_360
MAX_PIXELS: Final = 8_294_400  # 3840 x 2160
MAX_ASPECT: Final = 3.0
PIXEL_BUDGET: Final[dict[Resolution, int]] = {
    "1K": 1024 * 1024,
    "2K": 2048 * 2048,
    "4K": MAX_PIXELS,
}
AUTO_ESTIMATE_SIZE: Final = (2048, 2048)  # what `auto` is priced as before the task says otherwise

_EXPLICIT = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def is_ratio(size: str) -> bool:
    return size in RATIOS


def parse_explicit(size: str) -> tuple[int, int] | None:
    """`"1536x1024"` → `(1536, 1024)`; anything else → None."""
    match = _EXPLICIT.match(size)
    return (int(match.group(1)), int(match.group(2))) if match else None


def explicit_size_problem(width: int, height: int) -> str | None:
    """The first rule an explicit `WxH` breaks, in words, or None when it is valid."""
    if width % EDGE_STEP or height % EDGE_STEP:
        return f"both edges must be multiples of {EDGE_STEP} (got {width}x{height})"
    if width > MAX_EDGE or height > MAX_EDGE:
        return f"each edge must be at most {MAX_EDGE} px (got {width}x{height})"
    pixels = width * height
    if not MIN_PIXELS <= pixels <= MAX_PIXELS:
        return (
            f"total pixels must be between {MIN_PIXELS:,} and {MAX_PIXELS:,} "
            f"(got {width}x{height} = {pixels:,})"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"aspect ratio must be at most 3:1 (got {width}x{height})"
    return None


def _nearest(value: float) -> int:
    return max(EDGE_STEP, math.floor(value / EDGE_STEP + 0.5) * EDGE_STEP)


def _down(value: float) -> int:
    return max(EDGE_STEP, math.floor(value / EDGE_STEP) * EDGE_STEP)


def ratio_size(ratio: str, resolution: Resolution = DEFAULT_RESOLUTION) -> tuple[int, int]:
    """Pixels for a ratio at a tier, by the rule that reproduces every documented example.

    Exact size for the pixel budget, each edge to the nearest multiple of 16; an edge past 3840
    is pinned to 3840 and the other derived from the ratio; where rounding up would pass the
    8,294,400 px cap, round down instead. Portrait ratios are the landscape sizes swapped.
    """
    if ratio not in RATIOS:
        raise ValueError(f"unknown ratio {ratio!r}; expected one of {', '.join(RATIOS)}")
    a, b = (int(part) for part in ratio.split(":"))
    if a < b:
        height, width = ratio_size(f"{b}:{a}", resolution)
        return width, height
    budget = PIXEL_BUDGET[resolution]
    long_edge = math.sqrt(budget * a / b)
    short_edge = long_edge * b / a
    if long_edge > MAX_EDGE:
        long_edge, short_edge = MAX_EDGE, MAX_EDGE * b / a
    width, height = _nearest(long_edge), _nearest(short_edge)
    if width * height > MAX_PIXELS:
        width, height = _down(long_edge), _down(short_edge)
    return width, height


def resolve_size(size: str, resolution: Resolution | None = None) -> tuple[int, int]:
    """Output pixels for any valid `size` (+ optional tier); `auto` gives the pricing guess."""
    if size == "auto":
        return AUTO_ESTIMATE_SIZE
    if is_ratio(size):
        return ratio_size(size, resolution or DEFAULT_RESOLUTION)
    explicit = parse_explicit(size)
    if explicit is None:
        raise ValueError(f"size {size!r} is neither 'auto', a ratio nor 'WxH'")
    return explicit
