"""MkDocs hook: publish the block logos with the site (they ship in the package, blocks/logos/)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

LOGOS = Path(__file__).resolve().parent.parent / "blocks" / "logos"


def on_post_build(config: Any, **_: Any) -> None:
    """Copy `blocks/logos/*.png` to `<site>/img/logos/`, where `blocks/_meta.py` points."""
    target = Path(config["site_dir"]) / "img" / "logos"
    target.mkdir(parents=True, exist_ok=True)
    for logo in sorted(LOGOS.glob("*.png")):
        shutil.copy2(logo, target / logo.name)
