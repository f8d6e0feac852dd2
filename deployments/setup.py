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

Before that, the default blocks are looked up and written into the copy
(`deployments/default_blocks.py`), and a deployment that would start runs by itself without what
they need is held back (`deployments/held_back.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess  # nosec B404
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.events.schemas.automations import AutomationCore, EventTrigger
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type
from pydantic import ValidationError

from prefect_evolink.deployments.default_blocks import (
    PREFECT_FILE,
    default_block_names,
    find_block_defaults,
    pin_block_ids,
    with_default_blocks,
)
from prefect_evolink.deployments.held_back import held_back_lines, hold_back, missing_for
from prefect_evolink.tasks.limits import ENV_STRICT, ensure_limits

AUTOMATIONS_FILE: Final = Path(__file__).resolve().parent / "automations.yaml"
DEPLOYED_AUTOMATIONS: Final = "deployed_automations"  # the section of AUTOMATIONS_FILE deployed
ZOMBIE_AUTOMATION: Final = "evolink-crash-zombie-runs"
ENV_PROJECT_DIR: Final = "EVOLINK_PROJECT_DIR"
ENV_HEARTBEAT: Final = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
HEARTBEAT_SLACK_SECONDS: Final = 5


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
