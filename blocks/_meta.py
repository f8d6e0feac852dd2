"""Where the block types' logos and documentation live (shown on the Prefect UI's block pages).

Prefect's client accepts only http(s) URLs for a block type's logo and documentation (pydantic
`HttpUrl` in `BlockType`; a `data:` URI makes block registration fail), so the logos are PNG files
in this repository (`blocks/logos/`, 128x128) served from where the repository is published.
Keep `REPOSITORY` in step with the repository's public home.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

REPOSITORY: Final = "EvoLinkAI/prefect-evolink"
REPOSITORY_URL: Final = f"https://github.com/{REPOSITORY}"
LOGO_BASE_URL: Final = f"https://raw.githubusercontent.com/{REPOSITORY}/main/blocks/logos/"
LOGO_DIR: Final = Path(__file__).resolve().parent / "logos"

EVOLINK_DOCS_URL: Final = "https://docs.evolink.ai"
STORAGE_DOCS_URL: Final = f"{REPOSITORY_URL}#readme"


def logo_url(block_type_slug: str) -> str:
    """The published URL of `blocks/logos/<block_type_slug>.png`."""
    return f"{LOGO_BASE_URL}{block_type_slug}.png"
