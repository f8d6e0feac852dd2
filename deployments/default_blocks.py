"""The default blocks of the deployments: the saved blocks prefect.yaml names in
`definitions.blocks`, given to every deployment whose flow takes them.

**Default blocks.** The flows take blocks, not block names (`prefect_evolink.flows.run_blocks`),
so a deployment's default for `credentials`, `storage` or `spend_cap` must reference a saved
block. prefect.yaml names them once (`definitions.blocks`); this command looks each one up and
gives it to every deployment whose flow takes that parameter (unless the deployment sets it):
in the copy handed to `prefect deploy` as `{"$ref": {"block_document_slug": "<type>/<name>"}}`,
then on the deployment itself as `{"$ref": {"block_document_id": "<id>"}}` — what the form's
block picker stores, so the form shows the block. Prefect loads either form into the block when
a run starts (`Flow.validate_parameters` → `Block.load_from_ref`). Not the id in the copy:
`prefect deploy` replaces an id reference by the block's *data*, secrets included. A block not
saved yet is left out, and said so: those runs use the flow's fallback (`EVOLINK_API_KEY`,
local `assets/`, no cap) until the block is saved and this command run again.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.exceptions import ObjectNotFound

from prefect_evolink.blocks import EvoLinkCredentials, EvoLinkSpendCap
from prefect_evolink.blocks.lookup import STORAGE_BLOCK_TYPES

PREFECT_FILE: Final = Path(__file__).resolve().parent / "prefect.yaml"
BLOCK_TYPE_SLUGS: Final[Mapping[str, tuple[str, ...]]] = {
    "credentials": (EvoLinkCredentials.get_block_type_slug(),),
    "storage": tuple(t.get_block_type_slug() for t in STORAGE_BLOCK_TYPES),
    "spend_cap": (EvoLinkSpendCap.get_block_type_slug(),),
}
"""The flows' block-typed parameters a default block may be named for, and their block types."""
FALLBACKS: Final[Mapping[str, str]] = {
    "credentials": "EVOLINK_API_KEY of the worker",
    "storage": "local assets/ of the worker",
    "spend_cap": "no cap",
}


@dataclass(frozen=True, slots=True)
class BlockDefault:
    """A saved block that is a default parameter of the deployments whose flow takes it."""

    parameter: str
    slug: str
    """`<block-type-slug>/<name>`."""
    block_document_id: UUID

    def by_slug(self) -> dict[str, Any]:
        """The reference `prefect deploy` passes through untouched (it inlines id references)."""
        return {"$ref": {"block_document_slug": self.slug}}

    def by_id(self) -> dict[str, Any]:
        """The reference the form's block picker stores."""
        return {"$ref": {"block_document_id": str(self.block_document_id)}}


def default_block_names(prefect_file: Path = PREFECT_FILE) -> dict[str, str]:
    """`definitions.blocks` of prefect.yaml: parameter → block name (`<name>` or
    `<block-type-slug>/<name>`)."""
    config: dict[str, Any] = yaml.safe_load(prefect_file.read_text())
    names: dict[str, str] = (config.get("definitions") or {}).get("blocks") or {}
    unknown = sorted(set(names) - set(BLOCK_TYPE_SLUGS))
    if unknown:
        raise SystemExit(
            f"{prefect_file.name}, definitions.blocks: {', '.join(unknown)} is not a block "
            f"parameter of the flows (those are {', '.join(BLOCK_TYPE_SLUGS)})"
        )
    return {parameter: str(name) for parameter, name in names.items() if name}


async def find_block_defaults(names: Mapping[str, str]) -> tuple[list[BlockDefault], list[str]]:
    """The saved blocks of these names, and a line for each one not saved yet (left unset)."""
    found: list[BlockDefault] = []
    notes: list[str] = []
    async with get_client() as client:
        for parameter, name in names.items():
            slugs = BLOCK_TYPE_SLUGS[parameter]
            if "/" in name:
                slug, name = name.split("/", 1)
                if slug not in slugs:
                    raise SystemExit(f"block {slug}/{name} cannot be `{parameter}` ({slugs})")
                slugs = (slug,)
            matches = []
            for slug in slugs:
                try:
                    document = await client.read_block_document_by_name(
                        name=name, block_type_slug=slug, include_secrets=False
                    )
                except ObjectNotFound:
                    continue
                matches.append(BlockDefault(parameter, f"{slug}/{name}", document.id))
            if len(matches) > 1:
                raise SystemExit(
                    f"block name {name!r} exists as {[m.slug for m in matches]}: name one of "
                    f"them as `<block-type-slug>/{name}` in definitions.blocks"
                )
            if matches:
                found.extend(matches)
                continue
            notes.append(
                f"default `{parameter}`: no block {name!r} saved; left unset (runs started by "
                f"hand use {FALLBACKS[parameter]})"
            )
    return found, notes


def with_default_blocks(
    config: dict[str, Any], defaults: Sequence[BlockDefault]
) -> dict[str, dict[str, BlockDefault]]:
    """Add the default blocks to the parameters of each deployment (in `config`, a loaded
    prefect.yaml) whose flow takes them and that does not set them itself; returns which
    blocks each deployment (`<flow name>/<deployment name>`) got."""
    given: dict[str, dict[str, BlockDefault]] = {}
    for deployment in config.get("deployments", []):
        module, _, attribute = deployment["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module), attribute)
        takes = inspect.signature(flow.fn).parameters
        parameters = deployment.setdefault("parameters", {}) or {}
        deployment["parameters"] = parameters
        for default in defaults:
            if default.parameter in takes and default.parameter not in parameters:
                parameters[default.parameter] = default.by_slug()
                given.setdefault(f"{flow.name}/{deployment['name']}", {})[default.parameter] = (
                    default
                )
    return given


async def pin_block_ids(given: Mapping[str, Mapping[str, BlockDefault]]) -> None:
    """Turn each deployment's default block references into id references: what the form's
    picker stores and shows. Both forms load the same block."""
    async with get_client() as client:
        for name, blocks in given.items():
            deployment = await client.read_deployment_by_name(name)
            parameters = dict(deployment.parameters)
            for parameter, default in blocks.items():
                if parameters.get(parameter) == default.by_slug():
                    parameters[parameter] = default.by_id()
            await client.update_deployment(deployment.id, DeploymentUpdate(parameters=parameters))
