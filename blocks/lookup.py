"""Choosing a storage: the default (local `./assets`) or a saved block, by name."""

from __future__ import annotations

import os
from typing import Final

from prefect.blocks.core import Block

from prefect_evolink.blocks.local import LocalAssetStorage
from prefect_evolink.blocks.s3 import S3AssetStorage
from prefect_evolink.blocks.storage import AssetStorage

__all__ = ["ENV_ASSETS_DIR", "STORAGE_BLOCK_TYPES", "default_storage", "load_storage"]

ENV_ASSETS_DIR: Final = "EVOLINK_ASSETS_DIR"
"""Overrides the base directory of `default_storage()` (tests and local runs use a temp dir)."""

STORAGE_BLOCK_TYPES: Final[tuple[type[AssetStorage], ...]] = (LocalAssetStorage, S3AssetStorage)


def default_storage() -> AssetStorage:
    """Storage used when no block is named: `./assets`, or `$EVOLINK_ASSETS_DIR` when set."""
    base_dir = os.environ.get(ENV_ASSETS_DIR, "").strip()
    return LocalAssetStorage(base_dir=base_dir) if base_dir else LocalAssetStorage()


def load_storage(name: str | None) -> AssetStorage:
    """Load a saved storage block by name, or `default_storage()` when `name` is None or ''.

    - ``"evolink-s3-asset-storage/prod-assets"`` (``<block-type-slug>/<name>``, as Prefect
      prints it) loads exactly that block; it must be an `AssetStorage`.
    - A plain name (``"prod-assets"``) is looked up among both storage block types; if both
      types have a block of that name, a ValueError asks for the slug form.

    Needs a reachable Prefect API (like any `Block.load`). Always synchronous, also when called
    from async code. Raises ValueError when nothing matches.
    """
    if name is None or not name.strip():
        return default_storage()
    name = name.strip()
    if "/" in name:
        block = Block.load(name, _sync=True)  # type: ignore[call-arg]
        if not isinstance(block, AssetStorage):
            raise TypeError(
                f"block {name!r} is a {type(block).__name__}, not an asset storage block"
            )
        return block
    found: list[AssetStorage] = []
    for block_type in STORAGE_BLOCK_TYPES:
        try:
            found.append(block_type.load(name, _sync=True))  # type: ignore[call-arg,arg-type]
        except ValueError:
            continue
    slugs = [t.get_block_type_slug() for t in STORAGE_BLOCK_TYPES]
    if not found:
        raise ValueError(f"no storage block named {name!r} (looked in block types {slugs})")
    if len(found) > 1:
        raise ValueError(
            f"storage block name {name!r} exists for several block types; "
            f"use '<block-type-slug>/{name}' with one of {slugs}"
        )
    return found[0]
