"""Prefect blocks of this project: EvoLink credentials and asset storage (local disk or S3).

Importing this package registers the block classes with Prefect, so `Block.load("<slug>/<name>")`
and `prefect block register -m blocks` find them.
"""

from blocks.credentials import EvoLinkCredentials
from blocks.storage import (
    AssetStorage,
    LocalAssetStorage,
    S3AssetStorage,
    StoredObject,
    check_key,
    default_storage,
    load_storage,
    safe_key,
)

__all__ = [
    "AssetStorage",
    "EvoLinkCredentials",
    "LocalAssetStorage",
    "S3AssetStorage",
    "StoredObject",
    "check_key",
    "default_storage",
    "load_storage",
    "safe_key",
]
