"""Small JPEG thumbnails as data URIs, and the markdown grids that show them in the Prefect UI.

A presigned S3 link in an artifact dies after at most 7 days and a file:// path shows nothing in
a browser, while a data URI of a few-KB thumbnail lives as long as the artifact: Prefect renders
data-URI images in markdown artifacts and in the description of a paused run's Resume dialog
(both UIs). Pillow earns its place here.

Sizes were chosen in headless Chromium against Prefect 3.9.1:

- `REVIEW_EDGE` (84 px): the drafts in the Resume dialog. The older UI's dialog is 512 px wide,
  its markdown table 454 px, each cell pads 12 px a side and images keep their natural size:
  4 × (84 + 24) = 432 px fits, while 100-px thumbnails made a 496-px table that scrolled
  sideways. The default UI shows them at their size too (its cells have room for about 90 px).
- `SHEET_EDGE` (160 px): the review artifact's drafts and the finals' contact sheet. The default
  UI caps images in a markdown artifact's body at about 160 px, so a thumbnail of that size is
  shown at its own size, neither stretched nor blurred.

Grids are GFM tables of at most `GRID_COLUMNS` columns, one table per row of pictures: a table
never grows wider than four thumbnails, whatever the number of drafts or assets.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from PIL import Image

REVIEW_EDGE: Final = 84
SHEET_EDGE: Final = 160
THUMBNAIL_EDGE: Final = SHEET_EDGE
THUMBNAIL_QUALITY: Final = 70
GRID_COLUMNS: Final = 4
DATA_URI_PREFIX: Final = "data:image/jpeg;base64,"


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A JPEG thumbnail as a data URI, with the size it was scaled to."""

    data_uri: str
    width: int
    height: int

    def markdown(self, alt: str) -> str:
        """`![alt](data:…)` — the only way a data URI may appear in our markdown: as a picture."""
        return f"![{cell_text(alt)}]({self.data_uri})"


def thumbnail(image_bytes: bytes, edge: int = THUMBNAIL_EDGE) -> Thumbnail:
    """The image scaled to fit `edge`×`edge` (never enlarged), as a JPEG data URI.

    Transparency is flattened onto white (a JPEG has none; black would hide dark drawings).
    """
    with Image.open(io.BytesIO(image_bytes)) as image:
        image.thumbnail((edge, edge))
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.getchannel("A"))
        else:
            flat = image.convert("RGB")
        out = io.BytesIO()
        flat.save(out, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
        width, height = flat.size
    encoded = base64.b64encode(out.getvalue()).decode("ascii")
    return Thumbnail(DATA_URI_PREFIX + encoded, width, height)


def thumbnail_data_uri(image_bytes: bytes, edge: int = THUMBNAIL_EDGE) -> str:
    """A JPEG data URI of the image scaled to fit `edge`×`edge`."""
    return thumbnail(image_bytes, edge).data_uri


def cell_text(text: str) -> str:
    """Text safe inside a GFM table cell or an image's alt text: no pipes, brackets or breaks."""
    return " ".join(text.replace("|", "/").replace("[", "(").replace("]", ")").split())


@dataclass(frozen=True, slots=True)
class GridCell:
    """One picture of a grid: its label (the column header), the picture and lines below it.

    `picture` is markdown (a thumbnail, or words such as "_no preview_"); `lines` are short
    markdown snippets shown as further rows (a size, a cost, a link).
    """

    label: str
    picture: str
    lines: tuple[str, ...] = ()


def grid(cells: Sequence[GridCell], columns: int = GRID_COLUMNS) -> list[str]:
    """Markdown lines: the cells side by side, `columns` per table, one table per row.

    Each table's header holds the labels (exactly as given: a reviewer matches them with the
    Resume form's options), its first row the pictures, and further rows the cells' `lines`.
    """
    lines: list[str] = []
    for start in range(0, len(cells), max(1, columns)):
        chunk = cells[start : start + max(1, columns)]
        if lines:
            lines.append("")
        lines.append("| " + " | ".join(cell_text(c.label) for c in chunk) + " |")
        lines.append("|" + "|".join(":-:" for _ in chunk) + "|")
        lines.append("| " + " | ".join(c.picture for c in chunk) + " |")
        depth = max((len(c.lines) for c in chunk), default=0)
        for row in range(depth):
            lines.append(
                "| " + " | ".join(c.lines[row] if row < len(c.lines) else " " for c in chunk) + " |"
            )
    return lines
