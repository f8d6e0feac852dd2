"""The blocks one run uses — credentials, storage, spend cap — resolved once, carried as one value.

Flows take blocks as block-typed parameters (`credentials: EvoLinkCredentials | None`, ...), so
the deployment form offers a picker of saved blocks, and a deployment's defaults are references
to saved blocks (`{"$ref": {"block_document_id": ...}}`, written by `prefect-evolink deploy`),
which Prefect loads before the flow body starts. The flow then calls `RunBlocks.resolve` once,
which applies the fallbacks, and hands the result to the steps below it: they never see a block
name, nor a choice between a block and a name.

Names exist only at the edges that can carry nothing else — the CLI's `--credentials-block NAME`,
the JSON parameters of a background task, a campaign brief's `storage_block` — and become blocks
right there (`RunBlocks.resolve` accepts a name in place of a block; `named_blocks` loads only
what was named, for a caller that passes blocks on to a flow).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeAlias

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from prefect_evolink.blocks import AssetStorage, EvoLinkCredentials, EvoLinkSpendCap, load_storage
from prefect_evolink.blocks.credentials import resolve_credentials

CredentialsChoice: TypeAlias = EvoLinkCredentials | str | None
"""A credentials block, the name of a saved one, or None for `EVOLINK_API_KEY`."""
StorageChoice: TypeAlias = AssetStorage | str | None
"""A storage block, the name of a saved one (`<name>` or `<block-type-slug>/<name>`), or None
for local `assets/` (`EVOLINK_ASSETS_DIR`)."""
SpendCapChoice: TypeAlias = EvoLinkSpendCap | str | None
"""A spend cap block, the name of a saved one, or None for no cap."""


@dataclass(frozen=True, slots=True)
class RunBlocks:
    """The blocks of one run, every fallback already applied: what the steps take.

    Frozen, so a step cannot swap a block under the others; one value, so adding a block later
    changes this class and the flows' signatures, not every helper in between.
    """

    credentials: EvoLinkCredentials
    storage: AssetStorage
    spend_cap: EvoLinkSpendCap | None = None

    @classmethod
    async def resolve(
        cls,
        credentials: CredentialsChoice = None,
        storage: StorageChoice = None,
        spend_cap: SpendCapChoice = None,
    ) -> RunBlocks:
        """The blocks of a run: each one given (or loaded by name), else its fallback.

        - credentials: the block, else `EVOLINK_API_KEY` (with `EVOLINK_BASE_URL`);
        - storage: the block, else local storage in `assets/` (or `EVOLINK_ASSETS_DIR`);
        - spend cap: the block, else none.

        The run's log says which blocks were chosen, by their saved names, so a deployment run
        shows that it used the blocks its defaults reference and not a fallback.

        Args:
            credentials: A credentials block, or the name of a saved one (CLI, background task).
            storage: A storage block, or the name of a saved one.
            spend_cap: A spend cap block, or the name of a saved one.

        Returns:
            The run's blocks.

        Raises:
            MissingCredentialsError: No credentials, no such credentials block, and no
                `EVOLINK_API_KEY`.
            ValueError: A named storage or spend cap block does not exist (or a plain storage
                name is ambiguous).
            TypeError: A named block is not of the expected kind.

        Example:
            ```python
            blocks = await RunBlocks.resolve(
                credentials=EvoLinkCredentials.load("evolink"), storage="evolink-assets"
            )
            ```
        """
        blocks = cls(
            credentials=await _credentials(credentials),
            storage=_storage(storage),
            spend_cap=await _spend_cap(spend_cap),
        )
        _logger().info("Blocks of this run: %s", blocks.describe())
        return blocks

    def describe(self) -> str:
        """Which blocks these are, by saved name where they have one (never a secret)."""
        return (
            f"credentials {_name(self.credentials)}, "
            f"storage {_name(self.storage)} ({type(self.storage).__name__}), "
            f"spend cap {_name(self.spend_cap) if self.spend_cap else 'none'}"
        )


async def named_blocks(
    *,
    credentials: str | None = None,
    storage: str | None = None,
    spend_cap: str | None = None,
) -> dict[str, Any]:
    """Load the blocks given by name, as keyword arguments for a flow: `{"storage": <block>}`.

    For an edge that knows names and calls a flow (the CLI): what was not named is left out, so
    the flow still applies its own fallbacks (a campaign's brief may name its storage).

    Raises:
        MissingCredentialsError: No credentials block of that name.
        ValueError, TypeError: As `RunBlocks.resolve`.
    """
    found: dict[str, Any] = {}
    if credentials:
        found["credentials"] = await _credentials(credentials)
    if storage:
        found["storage"] = _storage(storage)
    if spend_cap:
        found["spend_cap"] = await _spend_cap(spend_cap)
    return found


async def _credentials(choice: CredentialsChoice) -> EvoLinkCredentials:
    if isinstance(choice, EvoLinkCredentials):
        return choice
    return await resolve_credentials(choice or None)


def _storage(choice: StorageChoice) -> AssetStorage:
    if isinstance(choice, AssetStorage):
        return choice
    return load_storage(choice)


async def _spend_cap(choice: SpendCapChoice) -> EvoLinkSpendCap | None:
    if choice is None or isinstance(choice, EvoLinkSpendCap):
        return choice
    if not choice.strip():
        return None
    loaded = await EvoLinkSpendCap.aload(choice.strip())
    if not isinstance(loaded, EvoLinkSpendCap):
        raise TypeError(f"block {choice!r} is not an EvoLink Spend Cap block")
    return loaded


def _name(block: Any) -> str:
    """A block's saved name; a fallback (or an object made in Python) has none."""
    name = getattr(block, "_block_document_name", None)
    return repr(name) if name else "(not a saved block)"


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefect.evolink.blocks")
