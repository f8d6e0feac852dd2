"""Deploy everything against the current Prefect API: work pool, provider limits, the zombie-run
automation, deployments.

    prefect-evolink deploy [--active-jobs N] [--submits-per-minute R] [--zombie-after S]
                                                                    (or python3 dev.py deploy)

Idempotent — run it after every change: a work pool or limit that exists is kept (a limit is
changed only in the values you pass), the automations in automations.yaml's
`deployed_automations` are updated in place by name, and `prefect deploy` updates deployments in
place. The last step is

    EVOLINK_PROJECT_DIR=$PWD prefect --no-prompt deploy --all --prefect-file <a copy of
        <site-packages>/prefect_evolink/deployments/prefect.yaml with the default blocks>

run from the current directory: your project, where relative brief paths such as
`briefs/spring-launch.yaml` are found. The entrypoints are module paths
(`prefect_evolink.flows.campaign:run_campaign`), so the flows come from the installed package
wherever the worker runs; EVOLINK_PROJECT_DIR only tells the flow-run processes where the briefs
are (see prefect.yaml's pull step).

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

import argparse
import asyncio
import importlib
import inspect
import os
import subprocess  # nosec B404
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
from prefect.events.schemas.automations import AutomationCore, EventTrigger
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type
from pydantic import ValidationError

from prefect_evolink.blocks import EvoLinkCredentials, EvoLinkSpendCap
from prefect_evolink.blocks.lookup import STORAGE_BLOCK_TYPES
from prefect_evolink.tasks.brief_source import S3_SCHEME, STORAGE_SCHEME
from prefect_evolink.tasks.limits import ENV_STRICT, ensure_limits

PREFECT_FILE: Final = Path(__file__).resolve().parent / "prefect.yaml"
AUTOMATIONS_FILE: Final = Path(__file__).resolve().parent / "automations.yaml"
DEPLOYED_AUTOMATIONS: Final = "deployed_automations"  # the section of AUTOMATIONS_FILE deployed
ZOMBIE_AUTOMATION: Final = "evolink-crash-zombie-runs"
ENV_PROJECT_DIR: Final = "EVOLINK_PROJECT_DIR"
ENV_HEARTBEAT: Final = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
HEARTBEAT_SLACK_SECONDS: Final = 5
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


def work_pool_names(prefect_file: Path = PREFECT_FILE) -> list[str]:
    """The pools the deployments in prefect.yaml use: prefect.yaml stays the one place to edit."""
    config: dict[str, Any] = yaml.safe_load(prefect_file.read_text())
    names = {d["work_pool"]["name"] for d in config.get("deployments", []) if d.get("work_pool")}
    return sorted(names)


async def ensure_work_pool(name: str, pool_type: str = "process") -> str:
    """Create the pool with the type's default job template when it is missing."""
    async with get_client() as client:
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            template = await get_default_base_job_template_for_infrastructure_type(pool_type)
            if template is None:
                raise SystemExit(
                    f"no job template for work pool type {pool_type!r}: install its worker "
                    f"package (e.g. prefect-docker) or create the pool with "
                    f"`prefect work-pool create {name} --type {pool_type}`"
                ) from None
            try:
                await client.create_work_pool(
                    WorkPoolCreate(name=name, type=pool_type, base_job_template=template)
                )
            except ObjectAlreadyExists:  # a worker or a second deploy created it meanwhile
                return f"work pool {name!r}: exists"
            return f"work pool {name!r} ({pool_type}): created"
        note = "" if pool.type == pool_type else f" (kept its type; {pool_type!r} was asked for)"
        return f"work pool {name!r} ({pool.type}): exists{note}"


def heartbeat_seconds(prefect_file: Path = PREFECT_FILE) -> list[int]:
    """The heartbeat periods prefect.yaml gives the deployed runs (its job variables' env)."""
    config: dict[str, Any] = yaml.safe_load(prefect_file.read_text())
    found = set()
    for deployment in config.get("deployments", []):
        env = (deployment.get("work_pool") or {}).get("job_variables", {}).get("env", {})
        if env.get(ENV_HEARTBEAT) is not None:
            found.add(int(env[ENV_HEARTBEAT]))
    return sorted(found)


def deployed_automations(
    zombie_after: float | None = None,
    automations_file: Path = AUTOMATIONS_FILE,
    prefect_file: Path = PREFECT_FILE,
) -> list[AutomationCore]:
    """The automations `deploy` owns, validated as Prefect validates them.

    The zombie automation's window must outlast a heartbeat period with room to spare, or it
    would mark healthy runs Crashed between two heartbeats; a window that does not is refused
    here rather than found in production.

    Args:
        zombie_after: Seconds without a heartbeat after which a run is marked Crashed; None
            keeps the `within` written in automations.yaml.
        automations_file: The file holding the `deployed_automations` section.
        prefect_file: The deployments whose heartbeat period the window is checked against.

    Returns:
        The automations, in file order.
    """
    config: dict[str, Any] = yaml.safe_load(automations_file.read_text())
    items: list[dict[str, Any]] = config[DEPLOYED_AUTOMATIONS]
    if zombie_after is not None:  # before validation: Prefect's own checks apply to it
        [item] = [item for item in items if item["name"] == ZOMBIE_AUTOMATION]
        item["trigger"]["within"] = zombie_after
    try:
        automations = [AutomationCore.model_validate(item) for item in items]
    except ValidationError as error:
        raise SystemExit(f"{automations_file.name}, {DEPLOYED_AUTOMATIONS}: {error}") from None
    [zombie] = [a for a in automations if a.name == ZOMBIE_AUTOMATION]
    if not isinstance(zombie.trigger, EventTrigger):
        raise SystemExit(f"{ZOMBIE_AUTOMATION}: its trigger must be an event trigger")
    periods = heartbeat_seconds(prefect_file)
    within = zombie.trigger.within.total_seconds()
    # One heartbeat period plus slack for a busy machine and the event's way to the server.
    if not periods or within < max(periods) + HEARTBEAT_SLACK_SECONDS:
        raise SystemExit(
            f"{ZOMBIE_AUTOMATION}: a window of {within:g} s needs heartbeats at least "
            f"{HEARTBEAT_SLACK_SECONDS} s more often; prefect.yaml sets {ENV_HEARTBEAT} to "
            f"{periods or 'nothing'} (Prefect's minimum is 30)"
        )
    return automations


async def ensure_automation(automation: AutomationCore) -> str:
    """Create the automation, or update every one of its name: a re-deploy never duplicates it,
    and a copy made by hand with `prefect automation create` is brought up to date too."""
    async with get_client() as client:
        existing = [
            found
            for found in await client.read_automations_by_name(automation.name)
            if found.name == automation.name
        ]
        for found in existing:
            await client.update_automation(found.id, automation)
        if existing:
            return f"automation {automation.name!r}: updated" + (
                f" ({len(existing)} of that name)" if len(existing) > 1 else ""
            )
        await client.create_automation(automation)
        return f"automation {automation.name!r}: created"


def deploy_command(prefect_file: Path = PREFECT_FILE) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prefect",
        "--no-prompt",
        "deploy",
        "--all",
        "--prefect-file",
        str(prefect_file),
    ]


def run_deploy(prefect_file: Path = PREFECT_FILE) -> int:
    """`prefect deploy --all` from the current directory, which the runs will work in."""
    env = dict(os.environ)
    project = Path.cwd()
    env.setdefault(ENV_PROJECT_DIR, str(project))  # a Docker/Kubernetes pool sets its own path
    print(
        f"$ {ENV_PROJECT_DIR}={env[ENV_PROJECT_DIR]} {' '.join(deploy_command(prefect_file))}",
        flush=True,
    )
    # The prefect CLI with fixed arguments and no shell (bandit B603).
    return subprocess.call(deploy_command(prefect_file), cwd=project, env=env)  # nosec


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prefect-evolink deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--active-jobs",
        type=int,
        default=None,
        help="EvoLink jobs running at once, across all workers (default 4 when "
        "created; an existing limit is kept unless given)",
    )
    parser.add_argument(
        "--submits-per-minute",
        type=float,
        default=None,
        help="sustained create calls per minute (default 30)",
    )
    parser.add_argument(
        "--submit-burst", type=int, default=None, help="create calls allowed in a burst (default 5)"
    )
    parser.add_argument(
        "--pool-type",
        default="process",
        help="type for a work pool that does not exist yet (default process)",
    )
    parser.add_argument(
        "--zombie-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="mark a deployed run Crashed when its heartbeats (every 30 s) stop for this long: "
        "its worker, machine or container died (default: the `within` in automations.yaml, 90)",
    )
    parser.add_argument(
        "--skip-deploy",
        action="store_true",
        help="only the work pool, the limits and the automations",
    )
    return parser.parse_args(argv)


async def prepare(args: argparse.Namespace) -> None:
    automations = deployed_automations(args.zombie_after)  # a bad window stops before any change
    for name in work_pool_names():
        print(await ensure_work_pool(name, args.pool_type), flush=True)
    changes = await ensure_limits(
        active_jobs=args.active_jobs,
        submits_per_minute=args.submits_per_minute,
        submit_burst=args.submit_burst,
    )
    for name, change in changes.items():
        print(f"global concurrency limit {name!r}: {change}", flush=True)
    for automation in automations:
        print(await ensure_automation(automation), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    api_url = get_current_settings().api.url
    if not api_url:
        print(
            "PREFECT_API_URL is not set: start a server (`prefect server start`) and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api, or log in to Prefect Cloud — "
            "deployments on a temporary API would vanish.",
            file=sys.stderr,
        )
        return 2
    print(f"Deploying to {api_url}", flush=True)
    asyncio.run(prepare(args))
    if args.skip_deploy:
        return 0
    names = default_block_names()
    defaults, notes = asyncio.run(find_block_defaults(names))
    for default in defaults:
        print(f"default `{default.parameter}`: block {default.slug}", flush=True)
    for note in notes:
        print(note, flush=True)
    config: dict[str, Any] = yaml.safe_load(PREFECT_FILE.read_text())
    project_dir = None if os.environ.get(ENV_PROJECT_DIR) else Path.cwd()
    missing = asyncio.run(missing_for(config, names, defaults, project_dir))
    hold_back(config, missing)
    given = with_default_blocks(config, defaults)
    with tempfile.TemporaryDirectory(prefix="evolink-deploy-") as folder:
        rendered = Path(folder) / PREFECT_FILE.name
        rendered.write_text(yaml.safe_dump(config, sort_keys=False))
        code = run_deploy(rendered)
    if code == 0:
        asyncio.run(pin_block_ids(given))
    if code == 0:
        print(
            f"Done. Deployed runs use the provider limits strictly ({ENV_STRICT}=true). Start a "
            f"worker: prefect worker start --pool {' / '.join(work_pool_names())}",
            flush=True,
        )
        for line in held_back_lines(config, missing):
            print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
