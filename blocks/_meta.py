"""Where the block types' logos and documentation live (shown on the Prefect UI's block pages).

Both point at this collection's documentation site (`docs/`, built by `python3 dev.py docs` and
published at `DOCS_URL`): each block type's page in the API reference, and its logo, which the
site publishes from the very files the package ships (`blocks/logos/*.png`, 128x128; the site's
build hook copies them to `img/logos/`). Prefect's client accepts only http(s) URLs for a block
type's logo and documentation (pydantic `HttpUrl` in `BlockType`; a `data:` URI makes block
registration fail), so the package cannot point at its own files directly. Keep `DOCS_URL` in
step with where the site is published (`site_url` in `mkdocs.yml`, checked by a test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

DOCS_URL: Final = "https://evolinkai.github.io/prefect-evolink/"
LOGO_BASE_URL: Final = f"{DOCS_URL}img/logos/"
LOGO_DIR: Final = Path(__file__).resolve().parent / "logos"


def logo_url(block_type_slug: str) -> str:
    """The published URL of `blocks/logos/<block_type_slug>.png`."""
    return f"{LOGO_BASE_URL}{block_type_slug}.png"


def reference_url(qualified_name: str) -> str:
    """The block's page in the API reference (mkdocstrings anchors each object by its path)."""
    return f"{DOCS_URL}reference/blocks/#{qualified_name}"


def docs_page(page: str) -> str:
    """A page of the documentation site, e.g. `spend/`."""
    return f"{DOCS_URL}{page}"
