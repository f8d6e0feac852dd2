"""Small JPEG thumbnails as data URIs: previews in the Prefect UI that never expire.

A presigned S3 link in an artifact dies after at most 7 days and a file:// path shows nothing in
a browser, while a data URI of a ~10 KB thumbnail lives as long as the artifact (Prefect renders
data URIs in markdown and image artifacts). Pillow earns its place here.
"""

from __future__ import annotations

import base64
import io
from typing import Final

from PIL import Image

THUMBNAIL_EDGE: Final = 256
THUMBNAIL_QUALITY: Final = 70


def thumbnail_data_uri(image_bytes: bytes, edge: int = THUMBNAIL_EDGE) -> str:
    """A JPEG data URI of the image scaled to fit `edge`×`edge`."""
    with Image.open(io.BytesIO(image_bytes)) as image:
        image.thumbnail((edge, edge))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")
