"""What the commands that read earlier runs share: where those runs stored (`--assets-dir` or
`--storage-block`) and the credentials to ask EvoLink for bills the records do not know."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from prefect_evolink.commands.outcome import (
    ENV_API_KEY,
    ENV_ASSETS_DIR,
)


async def stored_runs(args: argparse.Namespace, quiet: bool = False) -> tuple[Any, Any]:
    """The storage earlier runs wrote to (--assets-dir or --storage-block) and, when a key is
    configured, the credentials to ask EvoLink for bills the records do not know (never to
    submit): what `report` and `spend` read."""
    from prefect_evolink.blocks import AssetStorage, LocalAssetStorage, load_storage
    from prefect_evolink.blocks.credentials import EvoLinkCredentials, resolve_credentials

    storage: AssetStorage
    if args.assets_dir is not None:
        storage = LocalAssetStorage(base_dir=str(Path(args.assets_dir).resolve()))
    else:
        storage = load_storage(args.storage_block)
    credentials: EvoLinkCredentials | None = None
    if args.credentials_block or os.environ.get(ENV_API_KEY):
        credentials = await resolve_credentials(args.credentials_block)
        if not quiet:
            print(f"Asking EvoLink at {credentials.base_url} for the bills not yet recorded")
    return storage, credentials


def storage_arguments(parser: Any, runs: str = "used") -> None:
    """--storage-block | --assets-dir, --credentials-block and --debug: the options of every
    command that reads what earlier runs stored."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--storage-block",
        default=None,
        help=f"the storage block the runs {runs} (default: local storage, --assets-dir)",
    )
    where.add_argument(
        "--assets-dir",
        default=None,
        help=f"local storage directory (default: ${ENV_ASSETS_DIR} or ./assets)",
    )
    parser.add_argument(
        "--credentials-block",
        default=None,
        help=f"EvoLink credentials block (default: the key in ${ENV_API_KEY})",
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
