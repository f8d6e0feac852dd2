"""Which blocks a flow run uses: a block object (the form's picker) wins over a block name.

Every flow takes its credentials and storage twice. The block-typed parameters (`credentials`,
`storage`) give the deployment form a picker of saved blocks and let Python callers pass a block
object; the name parameters (`credentials_block`, `storage_block`) are what events, the CLI and
the deployments in `deployments/prefect.yaml` can carry, since an event payload holds strings,
not blocks. One rule, here and nowhere else, decides between them.
"""

from __future__ import annotations

from prefect import get_run_logger

from prefect_evolink.blocks import AssetStorage, EvoLinkCredentials, load_storage
from prefect_evolink.blocks.credentials import resolve_credentials


async def resolve_blocks(
    *,
    credentials: EvoLinkCredentials | None,
    credentials_block: str | None,
    storage: AssetStorage | None,
    storage_block: str | None,
) -> tuple[EvoLinkCredentials, AssetStorage]:
    """The credentials and storage of a run, by one precedence rule shared by every flow.

    A block object always wins over a block name, and a name over the fallback:

    - credentials: `credentials`, else the `EvoLinkCredentials` block named `credentials_block`,
      else `EVOLINK_API_KEY` (with `EVOLINK_BASE_URL`) from the environment;
    - storage: `storage`, else the storage block named `storage_block` (a plain name or
      `<block-type-slug>/<name>`), else local storage in `assets/` (or `EVOLINK_ASSETS_DIR`).

    The object wins because it is the more explicit choice: a deployment keeps its default
    block names from `prefect.yaml` in the form, and a block picked there must override them.
    When both are given the name is not loaded, and the run's log says which block was used.

    Args:
        credentials: A credentials block object, e.g. picked in the deployment form.
        credentials_block: Name of a saved `EvoLinkCredentials` block; used without `credentials`.
        storage: A storage block object (`LocalAssetStorage` or `S3AssetStorage`).
        storage_block: Name of a saved storage block; used without `storage`.

    Returns:
        The credentials and the storage the run uses.

    Raises:
        MissingCredentialsError: No credentials object, no name, and no `EVOLINK_API_KEY`.
        ValueError: A named block does not exist (or a plain storage name is ambiguous).
        TypeError: A named block is not of the expected kind.

    Example:
        ```python
        credentials, storage = await resolve_blocks(
            credentials=None, credentials_block="evolink", storage=None, storage_block=None
        )
        ```
    """
    logger = get_run_logger()
    if credentials is not None:
        if credentials_block:
            logger.info(
                "Using the credentials block passed as `credentials`; "
                "credentials_block %r is ignored",
                credentials_block,
            )
        chosen_credentials = credentials
    else:
        chosen_credentials = await resolve_credentials(credentials_block)
    if storage is not None:
        if storage_block:
            logger.info(
                "Using the storage block passed as `storage`; storage_block %r is ignored",
                storage_block,
            )
        chosen_storage = storage
    else:
        chosen_storage = load_storage(storage_block)
    return chosen_credentials, chosen_storage
