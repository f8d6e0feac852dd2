"""Prefect blocks of this project: EvoLink credentials and asset storage (local disk or S3).

Importing this package registers the block classes with Prefect, so `Block.load("<slug>/<name>")`
and `prefect block register -m prefect_evolink.blocks` find them. It is the package's
`prefect.collections` entry point, which Prefect imports in every worker, server and flow run, so
it imports nothing else: no flows or tasks, no boto3 or prefect-aws (imported where used; the S3
block's `credentials` type on first use, see `s3`), no campaign or spend model
(tests/test_light_plugin.py; the cost: bench/import_cost.py).

Modules: `credentials` (EvoLinkCredentials), `keys` (safe_key, check_key), `storage` (the
AssetStorage interface and StoredObject), `local` (LocalAssetStorage), `s3` (S3AssetStorage),
`s3_metadata` (S3's rules for object metadata), `_aws` (the prefect-aws blocks its `credentials`
field accepts), `_first_use` (that field's type, resolved on first use), `lookup`
(default_storage, load_storage), `spend_cap` (EvoLinkSpendCap).
"""

from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.blocks.keys import check_key, safe_key
from prefect_evolink.blocks.local import LocalAssetStorage
from prefect_evolink.blocks.lookup import ENV_ASSETS_DIR, default_storage, load_storage
from prefect_evolink.blocks.s3 import S3AssetStorage
from prefect_evolink.blocks.spend_cap import EvoLinkSpendCap
from prefect_evolink.blocks.storage import AssetStorage, StoredObject

__all__ = [
    "ENV_ASSETS_DIR",
    "AssetStorage",
    "EvoLinkCredentials",
    "EvoLinkSpendCap",
    "LocalAssetStorage",
    "S3AssetStorage",
    "StoredObject",
    "check_key",
    "default_storage",
    "load_storage",
    "safe_key",
]
