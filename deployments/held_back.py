"""Deployments held back: a deployment that would start runs by itself, but whose runs would
fail, is created paused, and the deploy says what completes the setup.

**Nothing starts that would fail.** A deployment that starts by itself — a schedule or an event
trigger — is made active only when what its runs need exists: every default block its flow
takes (`definitions.blocks`, unless the deployment sets the parameter itself), and its brief
when it is `storage:<key>` (the object in that storage block) or a local path (under the
project folder; not checked when EVOLINK_PROJECT_DIR points elsewhere). Otherwise its
schedules are created paused (`active: false`) and its triggers disabled (`enabled: false`),
and the command ends with the commands that complete the setup — save the block, `prefect-evolink
brief put …`, then `prefect-evolink deploy` again, which activates them. A trigger is held back
like a schedule: its runs would otherwise fall back to the worker's `EVOLINK_API_KEY` and local
`assets/`, and fail (or store images where nobody looks). Deployments started by hand (the run
form) are always created; their runs use the fallbacks until the blocks are saved.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from prefect_evolink.deployments.default_blocks import BLOCK_TYPE_SLUGS, BlockDefault
from prefect_evolink.tasks.brief_source import S3_SCHEME, STORAGE_SCHEME

SAVE_BLOCK: Final[Mapping[str, str]] = {
    "evolink-credentials": 'EvoLinkCredentials(api_key="sk-...")',
    "evolink-local-asset-storage": 'LocalAssetStorage(base_dir="/srv/evolink-assets")',
    "evolink-s3-asset-storage": 'S3AssetStorage(bucket="YOUR-BUCKET", prefix="evolink")',
    "evolink-spend-cap": 'EvoLinkSpendCap(limit_usd=100, period="month")',
}
"""How to save a block of each type, for the commands the deploy prints (storage: S3 first)."""


@dataclass(frozen=True, slots=True)
class Missing:
    """Something a self-starting deployment's runs need that does not exist yet."""

    what: str
    fix: str
    """One shell command that makes it exist."""


def save_block_command(parameter: str, name: str) -> str:
    """The Python one-liner that saves the block `definitions.blocks` names for `parameter`."""
    slug, _, plain = name.rpartition("/")
    slug = slug or BLOCK_TYPE_SLUGS[parameter][-1]
    constructor = SAVE_BLOCK[slug]
    return (
        f"python -c 'from prefect_evolink import {constructor.partition('(')[0]}; "
        f'{constructor}.save("{plain}")\''
    )


def brief_put_command(key: str, storage_name: str) -> str:
    """`prefect-evolink brief put` for the brief at `key`, from the same path in the project."""
    command = f"prefect-evolink brief put {key} --storage-block {storage_name}"
    if key != f"briefs/{Path(key).name}":  # not the command's default key
        command += f" --key {key}"
    return command


def self_starting(deployment: Mapping[str, Any]) -> bool:
    """Whether runs start without anybody asking: a schedule or an event trigger."""
    return bool(deployment.get("schedules") or deployment.get("triggers"))


async def missing_for(
    config: Mapping[str, Any],
    names: Mapping[str, str],
    defaults: Sequence[BlockDefault],
    project_dir: Path | None,
) -> dict[str, list[Missing]]:
    """What each self-starting deployment of `config` (a loaded prefect.yaml, before the default
    blocks are added) lacks, by deployment name; those lacking nothing are not listed.

    Args:
        config: The loaded prefect.yaml.
        names: `definitions.blocks`: parameter → block name.
        defaults: The saved blocks among them (`find_block_defaults`).
        project_dir: Where local brief paths are looked for; None: not checked (the runs work
            in another folder, e.g. inside a container).
    """
    from prefect_evolink.blocks import load_storage

    saved = {default.parameter: default for default in defaults}
    found: dict[str, list[Missing]] = {}
    for deployment in config.get("deployments", []):
        if not self_starting(deployment):
            continue
        module, _, attribute = deployment["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module), attribute)
        takes = inspect.signature(flow.fn).parameters
        own = deployment.get("parameters") or {}
        missing = [
            Missing(f"block {name!r} ({parameter})", save_block_command(parameter, name))
            for parameter, name in names.items()
            if parameter in takes and parameter not in own and parameter not in saved
        ]
        brief = own.get("brief")
        if isinstance(brief, str) and brief.startswith(STORAGE_SCHEME) and "storage" not in own:
            key = brief.removeprefix(STORAGE_SCHEME).lstrip("/")
            storage_name = names.get("storage")
            there = False
            if "storage" in saved:
                try:
                    storage = await asyncio.to_thread(load_storage, saved["storage"].slug)
                    there = await storage.aexists(key)
                except Exception:  # noqa: BLE001 — unreadable storage: its runs would fail too
                    there = False
            if not there:
                fix = (
                    brief_put_command(key, storage_name)
                    if storage_name
                    else "set definitions.blocks.storage in prefect.yaml"
                )
                missing.append(Missing(f"brief {brief}", fix))
        elif (
            isinstance(brief, str)
            and project_dir is not None
            and not brief.startswith(S3_SCHEME)
            and not (project_dir / brief).is_file()
        ):
            missing.append(
                Missing(
                    f"brief {brief} (in {project_dir})",
                    f"put the brief at {project_dir / brief}, or in storage with "
                    f"`prefect-evolink brief put` and give the deployment `brief: storage:<key>`",
                )
            )
        if missing:
            found[deployment["name"]] = missing
    return found


def hold_back(config: dict[str, Any], missing: Mapping[str, Sequence[Missing]]) -> None:
    """Create the schedules of the deployments in `missing` paused and their triggers disabled;
    everything else as prefect.yaml says."""
    for deployment in config.get("deployments", []):
        if deployment["name"] not in missing:
            continue
        for schedule in deployment.get("schedules") or []:
            schedule["active"] = False
        for trigger in deployment.get("triggers") or []:
            trigger["enabled"] = False


def held_back_lines(
    config: Mapping[str, Any], missing: Mapping[str, Sequence[Missing]]
) -> list[str]:
    """What the deploy says at its end: each deployment held back and why, then the commands
    that complete the setup, in order (blocks, briefs, the deploy again)."""
    if not missing:
        return []
    lines = ["", "Not started automatically yet (their runs would fail):"]
    for deployment in config.get("deployments", []):
        lacks = missing.get(deployment["name"])
        if not lacks:
            continue
        held = ["schedule paused"] if deployment.get("schedules") else []
        held += ["trigger disabled"] if deployment.get("triggers") else []
        lines.append(
            f"  {deployment['name']}: {', '.join(held)}; missing "
            + ", ".join(item.what for item in lacks)
        )
    fixes = list(dict.fromkeys(item.fix for lacks in missing.values() for item in lacks))
    lines += ["To finish the setup, run:", *(f"  {fix}" for fix in fixes)]
    lines.append("  prefect-evolink deploy          (again: activates them)")
    return lines
