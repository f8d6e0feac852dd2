"""The production path on loopback: a real Prefect server and process worker, deployed with the
documented command, driven by events; images land in S3; provider limits hold across runs.

The fast tests check deployments/prefect.yaml itself (trigger templates against the flow's
defaults, rendered by Prefect's own template code). The slow ones start, all on 127.0.0.1:
`prefect server start` (temporary PREFECT_HOME, SQLite), the EvoLink simulator and a moto S3
server in this process, `python3 dev.py deploy`, and
`prefect worker start`. Every process is stopped at the end, also when a test fails. Set
EVOLINK_E2E_LOGS=DIR to keep the server, setup and worker logs (flow-run output is in worker.log).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import importlib
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx
import pytest
import yaml
from prefect import Flow

from evolink.simulator import EvoLinkSimulator
from prefect_evolink.flows.asset_requested import (
    EVENT_NAME,
    RESOURCE_PREFIX,
    generate_product_asset,
)

ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
POOL = "evolink-process"
EVENT_DEPLOYMENT = "evolink-product-asset/product-asset-on-request"
CAMPAIGN_DEPLOYMENT = "evolink-campaign/weekly-spring-launch"
BUCKET = "marketing-assets"
GENERATION_SECONDS = 1.5  # long enough that unlimited jobs would surely overlap
ACTIVE_JOBS = 2
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# prefect.yaml on its own (fast)
# --------------------------------------------------------------------------------------------


def _deployment(name: str) -> dict[str, Any]:
    config = yaml.safe_load(PREFECT_FILE.read_text())
    [found] = [d for d in config["deployments"] if d["name"] == name]
    return found


def _render_trigger(payload: dict[str, Any]) -> dict[str, Any]:
    """The flow-run parameters the server would make from an event, with Prefect's own code."""
    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    [trigger] = _deployment("product-asset-on-request")["triggers"]
    parameters = copy.deepcopy(trigger["parameters"])
    RunDeployment._upgrade_v1_templates(parameters)
    context = {"event": {"payload": payload, "resource": {"id": f"{RESOURCE_PREFIX}p1"}}}
    return hydrate(
        parameters,
        HydrationContext(raise_on_error=True, render_jinja=True, jinja_context=context),
    )


def test_trigger_defaults_are_the_flows_defaults() -> None:
    rendered = _render_trigger({"product_id": "p1", "prompt": "a mug"})
    signature = inspect.signature(generate_product_asset.fn)
    for name, value in rendered.items():
        if name not in ("product_id", "prompt"):
            assert value == signature.parameters[name].default, name
    assert rendered["product_id"] == "p1" and rendered["prompt"] == "a mug"
    assert set(rendered) <= set(signature.parameters)


def test_trigger_passes_payload_values_with_their_types() -> None:
    payload = {
        "product_id": "p1",
        "prompt": "a mug",
        "size": "16:9",
        "resolution": "2K",
        "quality": "low",
        "n": 2,
        "reference_image_url": "https://cdn.example.com/r.png",
        "reference_image_key": "sha256:abc",
        "unrelated": "ignored",
    }
    rendered = _render_trigger(payload)
    assert rendered == {k: v for k, v in payload.items() if k != "unrelated"}


def test_trigger_turns_a_missing_required_field_into_null_so_the_run_names_it() -> None:
    rendered = _render_trigger({"product_id": "p1"})
    assert rendered["prompt"] is None


def test_deployments_share_the_pool_the_pull_step_and_strict_limits() -> None:
    config = yaml.safe_load(PREFECT_FILE.read_text())
    [pull] = config["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "{{ $EVOLINK_PROJECT_DIR }}"
    )
    for deployment in config["deployments"]:
        assert deployment["work_pool"]["name"] == POOL
        assert deployment["work_pool"]["job_variables"]["env"]["EVOLINK_LIMITS_STRICT"] == "true"
        # Module entrypoints: the installed package, wherever the worker runs.
        module, name = deployment["entrypoint"].split(":")
        assert module.startswith("prefect_evolink.flows."), module
        assert isinstance(getattr(importlib.import_module(module), name), Flow), name


def test_deployed_runs_heartbeat_and_the_zombie_automation_watches_only_them() -> None:
    """A run whose worker dies is marked Crashed by `evolink-crash-zombie-runs` once its
    heartbeats stop: every deployment sends them, the window outlasts one, and only runs tagged
    `evolink` are watched (a workspace's other flows keep Prefect's default 180 s heartbeat,
    which a 90 s window would otherwise crash)."""
    from prefect.server.events.schemas.automations import EventTrigger as ServerEventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent

    from prefect_evolink.deployments.setup import (
        ZOMBIE_AUTOMATION,
        deployed_automations,
        heartbeat_seconds,
    )

    config = yaml.safe_load(PREFECT_FILE.read_text())
    for deployment in config["deployments"]:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30", deployment["name"]
        assert "evolink" in deployment["tags"], deployment["name"]
    assert heartbeat_seconds() == [30]

    [zombie] = deployed_automations()
    assert zombie.name == ZOMBIE_AUTOMATION and zombie.enabled
    [action] = zombie.actions
    assert action.type == "change-flow-run-state" and action.state.value == "CRASHED"
    trigger = ServerEventTrigger.model_validate(zombie.trigger.model_dump())
    assert trigger.posture == "Proactive" and trigger.within.total_seconds() == 90
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert trigger.for_each == {"prefect.resource.id"}
    # A suspended run (approval) has no process on purpose: that must not count as a zombie.
    finals = {"Completed", "Failed", "Cancelled", "Crashed", "Suspended"}
    assert trigger.expect == {"prefect.flow-run.heartbeat"} | {
        f"prefect.flow-run.{s}" for s in finals
    }

    def heartbeat(*tags: str) -> ReceivedEvent:
        return ReceivedEvent(
            occurred=datetime.now(UTC),
            event="prefect.flow-run.heartbeat",
            resource={"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}"},
            related=[
                {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
                for tag in tags
            ],
            id=uuid.uuid4(),
        )

    assert trigger.covers(heartbeat("evolink", "event"))
    assert not trigger.covers(heartbeat("someone-else"))

    [shorter] = deployed_automations(zombie_after=40)
    assert ServerEventTrigger.model_validate(shorter.trigger.model_dump()).within.seconds == 40
    with pytest.raises(SystemExit, match="10 seconds"):  # Prefect's minimum for the window
        deployed_automations(zombie_after=5)
    with pytest.raises(SystemExit, match="heartbeats at least 5 s more often"):
        deployed_automations(zombie_after=33)


@pytest.mark.usefixtures("prefect_harness")
def test_deploy_creates_the_zombie_automation_once_and_updates_it_in_place() -> None:
    from prefect.client.orchestration import get_client

    from prefect_evolink.deployments.setup import (
        ZOMBIE_AUTOMATION,
        deployed_automations,
        ensure_automation,
    )

    async def deploy_twice() -> tuple[list[str], list[Any]]:
        changes = [await ensure_automation(deployed_automations()[0])]
        changes.append(await ensure_automation(deployed_automations(zombie_after=45)[0]))
        async with get_client() as client:
            found = await client.read_automations_by_name(ZOMBIE_AUTOMATION)
            for automation in found:  # no zombie watch for later tests on this server
                await client.delete_automation(automation.id)
        return changes, found

    changes, found = asyncio.run(deploy_twice())
    assert changes == [
        f"automation {ZOMBIE_AUTOMATION!r}: created",
        f"automation {ZOMBIE_AUTOMATION!r}: updated",
    ]
    [automation] = found
    assert automation.trigger.within.total_seconds() == 45


# --------------------------------------------------------------------------------------------
# Default blocks: prefect.yaml names them, the deploy step references them
# --------------------------------------------------------------------------------------------


def _fake_defaults() -> list[Any]:
    from prefect_evolink.deployments.default_blocks import BlockDefault

    return [
        BlockDefault("credentials", "evolink-credentials/evolink", uuid.uuid4()),
        BlockDefault("storage", "evolink-s3-asset-storage/evolink-assets", uuid.uuid4()),
        BlockDefault("spend_cap", "evolink-spend-cap/evolink-cap", uuid.uuid4()),
    ]


def test_every_deployment_gets_the_default_blocks_its_flow_takes() -> None:
    from prefect_evolink.deployments.default_blocks import default_block_names, with_default_blocks

    assert default_block_names() == {"credentials": "evolink", "storage": "evolink-assets"}
    config = yaml.safe_load(PREFECT_FILE.read_text())
    for deployment in config["deployments"]:  # no block names among the parameters any more
        assert not [p for p in deployment.get("parameters") or {} if p.endswith("_block")]
    credentials, storage, cap = _fake_defaults()
    own = {"$ref": {"block_document_slug": "evolink-local-asset-storage/mine"}}
    [campaign] = [d for d in config["deployments"] if d["name"] == "weekly-spring-launch"]
    campaign["parameters"]["storage"] = own  # a deployment's own choice wins

    given = with_default_blocks(config, [credentials, storage, cap])

    assert {name: sorted(blocks) for name, blocks in given.items()} == {
        CAMPAIGN_DEPLOYMENT: ["credentials", "spend_cap"],
        EVENT_DEPLOYMENT: ["credentials", "spend_cap", "storage"],
        "evolink-campaign/campaign-from-form": ["credentials", "spend_cap", "storage"],
        "evolink-generate-image/generate-image": ["credentials", "spend_cap", "storage"],
        "evolink-spend-report/monthly-spend-report": ["credentials", "storage"],  # takes no cap
    }
    parameters = {d["name"]: d["parameters"] for d in config["deployments"]}
    assert parameters["weekly-spring-launch"]["storage"] == own
    assert parameters["product-asset-on-request"]["storage"] == storage.by_slug()
    assert parameters["monthly-spend-report"]["timezone"] == "Europe/Berlin"


@pytest.mark.usefixtures("prefect_harness")
def test_the_slug_reference_survives_prefect_deploy_and_both_forms_load_the_block() -> None:
    """Why the copy for `prefect deploy` holds slug references and the deployment ids: the
    deploy command's templating replaces an id reference by the block's data, secret included,
    and leaves a slug reference alone; a flow run loads either form into the block."""
    from prefect.utilities.templating import resolve_block_document_references

    from prefect_evolink.blocks import EvoLinkCredentials
    from prefect_evolink.deployments.default_blocks import find_block_defaults
    from prefect_evolink.flows.generate import generate_image

    saved = EvoLinkCredentials(api_key="sk-deploy-ref-0000").save("deploy-ref", overwrite=True)

    async def look_up() -> tuple[list[Any], list[str], Any, Any]:
        found, notes = await find_block_defaults(
            {"credentials": "deploy-ref", "storage": "deploy-ref-not-saved"}
        )
        [default] = found
        by_slug = await resolve_block_document_references({"credentials": default.by_slug()})
        by_id = await resolve_block_document_references({"credentials": default.by_id()})
        return found, notes, by_slug, by_id

    [default], [note], by_slug, by_id = asyncio.run(look_up())
    assert default.block_document_id == saved and default.slug == "evolink-credentials/deploy-ref"
    assert "no block 'deploy-ref-not-saved' saved" in note and "local assets/" in note
    assert by_slug == {"credentials": default.by_slug()}  # passed through untouched
    assert "sk-deploy-ref-0000" in json.dumps(by_id)  # the reason ids are not written there
    for reference in (default.by_slug(), default.by_id()):
        request = {"prompt": "a mug", "size": "1:1", "quality": "low"}
        loaded = generate_image.validate_parameters({"request": request, "credentials": reference})
        assert loaded["credentials"].api_key.get_secret_value() == "sk-deploy-ref-0000"


# --------------------------------------------------------------------------------------------
# The docs' table of what `prefect-evolink deploy` creates
# --------------------------------------------------------------------------------------------

DEPLOYING_DOC = ROOT / "docs" / "deploying.md"


def _docs_table() -> dict[str, dict[str, str]]:
    """The table under "## The deploy command" in docs/deploying.md: deployment → its row."""
    lines = DEPLOYING_DOC.read_text().splitlines()
    start = lines.index("## The deploy command")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rows = [line for line in lines[start:end] if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header[:3] == ["deployment", "flow", "starts when"], header
    table = {}
    for row in rows[2:]:  # after the header and its separator
        cells = [cell.strip().strip("`") for cell in row.strip("|").split("|")]
        table[cells[0]] = dict(zip(header, cells, strict=True))
    return table


def _yaml_deployments() -> dict[str, str]:
    """prefect.yaml's deployments, `<flow name>/<deployment name>` → entrypoint."""
    found = {}
    for deployment in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]:
        module, name = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module), name)
        found[f"{flow.name}/{deployment['name']}"] = deployment["entrypoint"]
    return found


def test_the_docs_table_lists_the_deployments_of_prefect_yaml() -> None:
    table = _docs_table()
    assert {name: row["flow"] for name, row in table.items()} == _yaml_deployments()


# --------------------------------------------------------------------------------------------
# The stack (slow): server, simulator, S3, setup, worker
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(
    check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.25
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Stack:
    api_url: str
    env: dict[str, str]
    simulator: EvoLinkSimulator
    s3_url: str
    logs: Path
    project: Path = Path()
    """The user's project folder both deploys run in: empty at the first (no briefs)."""
    block_ids: dict[str, str] = field(default_factory=dict)
    """The ids of the saved blocks prefect.yaml names (`_save_blocks`), by parameter."""
    first_deploy: str = ""
    """What `prefect-evolink deploy` printed in the empty project, before any block was saved."""
    first_state: dict[str, dict[str, list[bool]]] = field(default_factory=dict)
    """After that first deploy, by deployment: its schedules' `active`, its triggers' `enabled`."""

    def call(self, make: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Run `make(client)` against this server (not the session's test harness)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def run() -> T:
            async with get_client() as client:
                return await make(client)

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return asyncio.run(run())

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def run_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done


class Processes:
    """Every process the stack starts, each in its own session so a group kill reaches its
    children; all carry a marker in their environment so leftovers can be found and killed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.started: list[tuple[subprocess.Popen[bytes], int]] = []

    def start(
        self,
        args: list[str],
        *,
        env: dict[str, str],
        log: Path,
        stop_signal: int = signal.SIGTERM,
        cwd: Path = ROOT,
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as sink:
            process = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((process, stop_signal))
        return process

    def stop_all(self) -> None:
        for process, stop_signal in reversed(self.started):  # worker before server
            if process.poll() is None:
                process.send_signal(stop_signal)  # the worker ignores SIGTERM: SIGINT
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=20)
            self._kill_group(process.pid)
            if process.poll() is None:
                process.wait(timeout=10)
        self._kill_marked()

    @staticmethod
    def _kill_group(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def _kill_marked(self) -> None:
        """Flow-run processes may start sessions of their own; find them by the marker."""
        proc = Path("/proc")
        if not proc.is_dir():
            return
        needle = f"EVOLINK_E2E_MARKER={self.marker}".encode()
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue


def _base_env(marker: str, home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "EVOLINK_API_KEY", "EVOLINK_BASE_URL"))
    }
    env.update(
        EVOLINK_E2E_MARKER=marker,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        # the simulator's result links are http://127.0.0.1, which production refuses
        EVOLINK_ALLOW_PRIVATE_URLS="true",
        # flow-run output reaches worker.log; shipping it to the API too only adds load
        PREFECT_LOGGING_TO_API_ENABLED="false",
    )
    return env


def _start_server(processes: Processes, env: dict[str, str], logs: Path) -> str:
    port = _free_port()
    server_env = {
        **env,
        # a waiter for a busy slot retries after at most this long (production default 30 s)
        "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "0.5",
    }
    server = processes.start(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=server_env,
        log=logs / "server.log",
    )
    api_url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"prefect server exited:\n{_tail(logs / 'server.log')}")
        try:
            return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    _wait_for(healthy, timeout=90, what="the Prefect server")
    return api_url


def _save_blocks(stack: Stack) -> None:
    """The blocks prefect.yaml names as the deployments' defaults, pointing at the loopback
    services; saved before deploying, which references them by id (`stack.block_ids`)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_evolink.blocks import S3AssetStorage
    from prefect_evolink.blocks.credentials import EvoLinkCredentials

    storage = S3AssetStorage(
        bucket=BUCKET,
        prefix="evolink",
        endpoint_url=stack.s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        addressing_style="path",
    )
    storage.get_client().create_bucket(Bucket=BUCKET)
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        credentials_id = EvoLinkCredentials(
            api_key=stack.simulator.api_key,
            base_url=stack.simulator.base_url,
            poll_min_interval=0.1,
            poll_max_interval=0.3,
        ).save("evolink", overwrite=True)
        storage_id = storage.save("evolink-assets", overwrite=True)
    stack.block_ids.update(credentials=str(credentials_id), storage=str(storage_id))


def _start_worker(
    stack: Stack, processes: Processes, name: str, *, log: Path, limit: int | None = None
) -> subprocess.Popen[bytes]:
    """`prefect worker start --pool evolink-process`, as the README tells a user to run it; it
    asks for work every second (production default 10 s) so the tests do not wait for it."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", name]
    if limit is not None:
        command += ["--limit", str(limit)]
    env = {**stack.env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    return processes.start(command, env=env, log=log, stop_signal=signal.SIGINT)


DEPLOY = [sys.executable, "-m", "prefect_evolink", "deploy", "--active-jobs", str(ACTIVE_JOBS)]
"""`prefect-evolink deploy`, run in the user's project; the limit is the one the concurrency test
proves."""


def _deployment_state(stack: Stack) -> dict[str, dict[str, list[bool]]]:
    """Every deployment's schedules (`active`) and triggers (`enabled`), by `<flow>/<name>`."""

    async def read(client: Any) -> dict[str, dict[str, list[bool]]]:
        state = {}
        for deployment in await client.read_deployments():
            flow = await client.read_flow(deployment.flow_id)
            automations = await client.read_resource_related_automations(
                f"prefect.deployment.{deployment.id}"
            )
            state[f"{flow.name}/{deployment.name}"] = {
                "schedules": [schedule.active for schedule in deployment.schedules],
                "triggers": [automation.enabled for automation in automations],
            }
        return state

    return stack.call(read)


def _first_deploy_in_an_empty_project(stack: Stack, processes: Processes) -> None:
    """`prefect-evolink deploy` where a new user runs it first: no briefs, no blocks saved."""
    setup = processes.start(
        DEPLOY, env=stack.env, log=stack.logs / "first-deploy.log", cwd=stack.project
    )
    code = setup.wait(timeout=180)
    stack.first_deploy = (stack.logs / "first-deploy.log").read_text(errors="replace")
    assert code == 0, f"prefect-evolink deploy failed:\n{stack.first_deploy}"
    stack.first_state = _deployment_state(stack)


BRIEF_PUT = [sys.executable, "-m", "prefect_evolink", "brief", "put"]


def _put_the_brief(stack: Stack) -> None:
    """What the first deploy said to do for the weekly campaign: the brief into the storage."""
    briefs = stack.project / "briefs"
    briefs.mkdir()
    shutil.copy(ROOT / "briefs" / "spring-launch.yaml", briefs / "spring-launch.yaml")
    done = subprocess.run(
        [*BRIEF_PUT, "briefs/spring-launch.yaml", "--storage-block", "evolink-assets"],
        cwd=stack.project,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"brief put failed:\n{done.stdout}\n{done.stderr}"
    assert "brief: storage:briefs/spring-launch.yaml" in done.stdout, done.stdout


def _deploy_and_start_worker(stack: Stack, processes: Processes) -> None:
    """The documented deploy command, after the blocks are saved and the brief put (as the
    first deploy said); the worker starts as soon as the pool exists, so its start-up overlaps
    `prefect deploy` (both cost seconds of CPU)."""
    _save_blocks(stack)
    _put_the_brief(stack)
    setup = processes.start(DEPLOY, env=stack.env, log=stack.logs / "setup.log", cwd=stack.project)

    def pool_exists() -> bool:
        if setup.poll() not in (None, 0):
            log = _tail(stack.logs / "setup.log")
            raise AssertionError(f"prefect-evolink deploy failed:\n{log}")
        return httpx.get(f"{stack.api_url}/work_pools/{POOL}", timeout=5).status_code == 200

    _wait_for(pool_exists, timeout=60, what="the work pool")
    _start_worker(stack, processes, f"e2e-{processes.marker[:8]}", log=stack.logs / "worker.log")
    code = setup.wait(timeout=120)
    assert code == 0, f"prefect-evolink deploy failed:\n{_tail(stack.logs / 'setup.log')}"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    from moto.server import ThreadedMotoServer

    marker = uuid.uuid4().hex
    processes = Processes(marker)
    with tempfile.TemporaryDirectory(prefix="evolink-e2e-") as tmp, ExitStack() as cleanup:
        home, logs = Path(tmp) / "prefect-home", Path(tmp) / "logs"
        home.mkdir()
        logs.mkdir()
        if keep := os.environ.get("EVOLINK_E2E_LOGS"):  # for debugging: keep the logs
            cleanup.callback(shutil.copytree, logs, keep, dirs_exist_ok=True)
        s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        s3_server.start()
        cleanup.callback(s3_server.stop)
        simulator = cleanup.enter_context(
            EvoLinkSimulator(generation_seconds=GENERATION_SECONDS, seed=11)
        )
        cleanup.callback(processes.stop_all)  # runs first: worker, then server, then leftovers
        env = _base_env(marker, home)
        try:
            env["PREFECT_API_URL"] = api_url = _start_server(processes, env, logs)
            host, port = s3_server.get_host_and_port()
            project = Path(tmp) / "project"
            project.mkdir()
            stack = Stack(api_url, env, simulator, f"http://{host}:{port}", logs, project)
            _first_deploy_in_an_empty_project(stack, processes)
            _deploy_and_start_worker(stack, processes)
        except BaseException:
            for name in ("server.log", "first-deploy.log", "setup.log", "worker.log"):
                print(f"--- {name} ---\n{_tail(logs / name, 80)}", file=sys.stderr)
            raise
        yield stack


def _flow_runs(stack: Stack, deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read(client: Any) -> list[Any]:
        found = await client.read_deployment_by_name(deployment)
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
        )

    return stack.call(read)


def _wait_for_final_runs(stack: Stack, count: int, timeout: float) -> list[Any]:
    def final() -> list[Any] | None:
        runs = _flow_runs(stack, EVENT_DEPLOYMENT)
        if len(runs) >= count and all(run.state and run.state.is_final() for run in runs):
            return runs
        return None

    try:
        return _wait_for(final, timeout=timeout, what=f"{count} finished flow runs", interval=0.5)
    except AssertionError:
        print(f"--- worker.log ---\n{_tail(stack.logs / 'worker.log', 120)}", file=sys.stderr)
        raise


def _artifacts(stack: Stack, flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read(client: Any) -> list[Any]:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )

    return {artifact.key: artifact for artifact in stack.call(read)}


FIRST = {
    "product_id": "aurora-earbuds",
    "prompt": "Aurora earbuds case on wet slate, studio light",
    "quality": "low",
}


def _emit_rest(stack: Stack, payloads: list[dict[str, Any]]) -> None:
    """The webhook-style option: POST a batch of events to the API's /events endpoint."""
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "id": str(uuid.uuid4()),
            "occurred": now,
            "event": EVENT_NAME,
            "payload": payload,
            "resource": {"prefect.resource.id": f"{RESOURCE_PREFIX}{payload['product_id']}"},
        }
        for payload in payloads
    ]
    response = httpx.post(f"{stack.api_url}/events", json=events, timeout=10)
    assert response.status_code == 204, response.text


@pytest.mark.slow
def test_event_runs_the_deployment_and_stores_the_image_in_s3(stack: Stack) -> None:
    # The CLI way another system (or a person) asks for an asset.
    stack.run_cli(
        sys.executable,
        "-m",
        "prefect",
        "event",
        "emit",
        EVENT_NAME,
        "--resource-id",
        f"{RESOURCE_PREFIX}{FIRST['product_id']}",
        "--payload",
        json.dumps(FIRST),
    )
    [run] = _wait_for_final_runs(stack, 1, timeout=90)
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}"
    assert run.parameters["product_id"] == FIRST["product_id"]
    assert run.parameters["size"] == "1:1"
    # The event carried the product only; the blocks are the deployment's defaults, references
    # to the saved blocks by id (what the form's picker stores) — and used: there is no
    # EVOLINK_API_KEY in the worker's environment, and the image is in S3, not local assets/.
    for parameter in ("credentials", "storage"):
        reference = {"$ref": {"block_document_id": stack.block_ids[parameter]}}
        assert run.parameters[parameter] == reference, parameter
    assert "Blocks of this run: credentials 'evolink', storage 'evolink-assets'" in (
        stack.logs / "worker.log"
    ).read_text(errors="replace")

    [entry] = stack.simulator.billed_tasks()
    assert entry.request["prompt"] == FIRST["prompt"] and entry.request["quality"] == "low"

    artifacts = _artifacts(stack, run.id)
    cost = artifacts["evolink-product-aurora-earbuds-cost"]
    [row] = json.loads(cost.data) if isinstance(cost.data, str) else cost.data
    assert row["task_id"] == entry.task_id and row["job"] == "product/aurora-earbuds"
    assert row["billed_usd"] == f"${entry.billed_usd:.6f}"
    assert "evolink-product-aurora-earbuds-summary" in artifacts

    uri = row["stored_at"]
    assert uri.startswith(f"s3://{BUCKET}/evolink/products/aurora-earbuds/")
    body = (
        stack.s3().get_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
    )
    served = httpx.get(stack.simulator.task(entry.task_id)["results"][0]).content  # type: ignore[index]
    assert body == served and hashlib.sha256(body).hexdigest().startswith(row["sha256"])


@pytest.mark.slow
def test_the_campaign_deployment_runs_mondays_at_seven_in_berlin(stack: Stack) -> None:
    async def read(client: Any) -> Any:
        return await client.read_deployment_by_name(CAMPAIGN_DEPLOYMENT)

    deployment = stack.call(read)
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 7 * * 1"
    assert schedule.schedule.timezone == "Europe/Berlin"
    assert schedule.active and not deployment.paused
    assert deployment.parameters["brief"] == "storage:briefs/spring-launch.yaml"
    assert deployment.work_pool_name == POOL


class Gate:
    """Holds every `evolink-active-jobs` slot from this process (as another worker would), so the
    runs pile up at the limit and are let go at the same instant: the burst that would overlap
    at EvoLink without the limit is then certain, not a matter of process start-up timing."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.lease_id: Any = None

    def close(self) -> None:
        from prefect_evolink.tasks.limits import ACTIVE_JOBS_LIMIT

        async def hold(client: Any) -> Any:
            response = await client.increment_concurrency_slots_with_lease(
                names=[ACTIVE_JOBS_LIMIT],
                slots=ACTIVE_JOBS,
                mode="concurrency",
                lease_duration=120,
            )
            return response.json()["lease_id"]

        self.lease_id = self.stack.call(hold)

    def open(self) -> None:
        if self.lease_id is not None:
            lease_id, self.lease_id = self.lease_id, None
            self.stack.call(lambda client: client.release_concurrency_slots_with_lease(lease_id))


@pytest.mark.slow
def test_provider_limit_bounds_concurrent_jobs_across_runs(stack: Stack) -> None:
    """Four new jobs at once (plus a repeat of the first event) under a limit of two."""
    before = len(stack.simulator.ledger())
    stack.simulator.generation_seconds = 3.0  # two jobs let through together surely overlap
    started = time.time()
    payloads = [
        {
            "product_id": f"mug-{i}",
            "prompt": f"ceramic mug number {i}, soft daylight",
            "quality": "low",
            "size": "1:1",
        }
        for i in range(4)
    ]
    gate = Gate(stack)
    gate.close()
    try:
        _emit_rest(stack, [*payloads, FIRST])

        new_products = {payload["product_id"] for payload in payloads}

        def all_running() -> bool:  # the repeat needs no slot: it is not waited for
            runs = [
                run
                for run in _flow_runs(stack, EVENT_DEPLOYMENT)
                if run.parameters.get("product_id") in new_products
            ]
            return len(runs) == len(payloads) and all(
                run.state.is_running() or run.state.is_final() for run in runs
            )

        _wait_for(all_running, timeout=120, what="the runs to start", interval=0.5)
        time.sleep(1.5)  # from Running to waiting at the limit: blocks and storage loaded
        assert len(stack.simulator.ledger()) == before  # nobody got past the limit meanwhile
    finally:
        gate.open()
    runs = _wait_for_final_runs(stack, 1 + len(payloads) + 1, timeout=120)
    assert all(run.state.is_completed() for run in runs), [
        (run.name, run.state.type, run.state.message) for run in runs
    ]
    new_entries = [e for e in stack.simulator.ledger() if e.created_at >= started]
    assert len(stack.simulator.ledger()) == before + len(payloads)  # the repeat paid nothing
    assert len(new_entries) == len(payloads)

    from evolink.simulator import max_concurrent

    now = stack.simulator.now()
    peak_processing = max_concurrent(new_entries, now=now)
    peak_submitted = max_concurrent(new_entries, include_pending=True, now=now)
    assert peak_submitted <= ACTIVE_JOBS and peak_processing <= ACTIVE_JOBS
    assert peak_processing == ACTIVE_JOBS  # more than one ran: the limit, not chance, bounded it

    # ...while more flow runs than that were running at the same time.
    recent = [run for run in runs if run.created.timestamp() >= started]
    spans = [(run.start_time.timestamp(), run.end_time.timestamp()) for run in recent]
    overlapping = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlapping > ACTIVE_JOBS


# --------------------------------------------------------------------------------------------
# A deploy that fits the user's project: nothing starts that would fail
# --------------------------------------------------------------------------------------------

WEEKLY, MONTHLY = "weekly-spring-launch", "monthly-spend-report"
EVENT = "product-asset-on-request"
FORM_DEPLOYMENT = "evolink-campaign/campaign-from-form"


@pytest.mark.slow
def test_deploy_in_an_empty_project_starts_nothing_and_says_how_to_finish(stack: Stack) -> None:
    """No blocks saved, no brief: every deployment exists, but no schedule is active and no
    trigger enabled — their runs would fail — and the output lists the commands that fix it."""
    state = stack.first_state
    assert set(state) == set(_yaml_deployments()), state
    self_starting = {name: s for name, s in state.items() if s["schedules"] or s["triggers"]}
    assert {name.split("/")[1] for name in self_starting} == {WEEKLY, MONTHLY, EVENT}
    assert state[EVENT_DEPLOYMENT]["triggers"] == [False]
    assert state[CAMPAIGN_DEPLOYMENT]["schedules"] == [False]
    for name, held in self_starting.items():
        assert not any(held["schedules"]) and not any(held["triggers"]), (name, held)

    out = stack.first_deploy
    for line in [
        "Not started automatically yet (their runs would fail):",
        f"  {WEEKLY}: schedule paused; missing block 'evolink' (credentials), block "
        "'evolink-assets' (storage), brief storage:briefs/spring-launch.yaml",
        f"  {EVENT}: trigger disabled; missing block 'evolink' (credentials), block "
        "'evolink-assets' (storage)",
        f"  {MONTHLY}: schedule paused; missing block 'evolink' (credentials), block "
        "'evolink-assets' (storage)",
        "To finish the setup, run:",
        "  python -c 'from prefect_evolink import EvoLinkCredentials; "
        'EvoLinkCredentials(api_key="sk-...").save("evolink")\'',
        "  python -c 'from prefect_evolink import S3AssetStorage; "
        'S3AssetStorage(bucket="YOUR-BUCKET", prefix="evolink").save("evolink-assets")\'',
        "  prefect-evolink brief put briefs/spring-launch.yaml --storage-block evolink-assets",
        "  prefect-evolink deploy          (again: activates them)",
    ]:
        assert line in out.splitlines(), f"{line!r} not in:\n{out}"


@pytest.mark.slow
def test_the_second_deploy_activates_what_the_first_held_back(stack: Stack) -> None:
    """After the blocks were saved and `brief put` (what the first deploy printed), the same
    command activates every schedule and trigger, and the scheduler books the weekly runs."""
    held_back = [
        name for name, s in stack.first_state.items() if not all(s["schedules"] + s["triggers"])
    ]
    assert held_back  # the first deploy did hold something back
    state = _deployment_state(stack)
    for name in held_back:
        assert all(state[name]["schedules"] + state[name]["triggers"]), (name, state[name])
        assert state[name]["schedules"] or state[name]["triggers"], name
    assert "Not started automatically" not in (stack.logs / "setup.log").read_text()

    def weekly_runs_scheduled() -> list[Any]:
        return [run for run in _flow_runs(stack, CAMPAIGN_DEPLOYMENT) if run.state.is_scheduled()]

    runs = _wait_for(weekly_runs_scheduled, timeout=90, what="scheduled weekly campaign runs")
    assert all(run.parameters["brief"] == "storage:briefs/spring-launch.yaml" for run in runs)


@pytest.mark.slow
def test_the_docs_table_lists_what_deploy_created(stack: Stack) -> None:
    async def read(client: Any) -> dict[str, str]:
        created = {}
        for deployment in await client.read_deployments():
            flow = await client.read_flow(deployment.flow_id)
            created[f"{flow.name}/{deployment.name}"] = deployment.entrypoint
        return created

    table = _docs_table()
    assert {name: row["flow"] for name, row in table.items()} == stack.call(read)


@pytest.mark.slow
def test_the_form_deployment_takes_a_brief_filled_in_and_runs_it(stack: Stack) -> None:
    """`campaign-from-form`: no schedule, no default brief, so "Custom run" shows the brief's
    form, built from the deployment's parameter schema; a brief sent as that form sends it
    (a JSON object) is accepted by the server and runs on the worker."""

    async def read(client: Any) -> Any:
        return await client.read_deployment_by_name(FORM_DEPLOYMENT)

    deployment = stack.call(read)
    assert not deployment.schedules and "brief" not in deployment.parameters
    assert deployment.work_pool_name == POOL
    schema = deployment.parameter_openapi_schema
    assert "brief" in schema["required"]
    options = schema["properties"]["brief"]["anyOf"]
    assert {"$ref": "#/definitions/CampaignBrief"} in options
    assert any(option.get("type") == "string" for option in options)  # or where to read one
    definitions = schema["definitions"]
    brief = definitions["CampaignBrief"]
    assert set(brief["properties"]) == {"campaign", "budget_usd", "defaults", "assets"}
    assert brief["properties"]["budget_usd"]["type"] == "number"
    for model in ("CampaignBrief", "CampaignDefaults", "AssetBrief"):
        for name, spec in definitions[model]["properties"].items():
            if "$ref" not in spec:  # a nested model: its own fields are checked
                assert spec.get("description"), f"{model}.{name} has no help in the form"
    for parameter in ("credentials", "storage"):  # the form's block pickers show the defaults
        reference = {"$ref": {"block_document_id": stack.block_ids[parameter]}}
        assert deployment.parameters[parameter] == reference, parameter

    filled_in = {
        "campaign": "form-campaign",
        "budget_usd": 1,
        "defaults": {"drafts": 1},
        "assets": [{"id": "mug", "prompt": "a ceramic mug of cocoa, soft daylight"}],
    }

    async def start(client: Any) -> Any:
        return await client.create_flow_run_from_deployment(
            deployment.id, parameters={"brief": filled_in}
        )

    run_id = stack.call(start).id

    def finished() -> Any:
        async def read_run(client: Any) -> Any:
            return await client.read_flow_run(run_id)

        run = stack.call(read_run)
        return run if run.state.is_final() else None

    try:
        run = _wait_for(finished, timeout=180, what="the campaign run from the form", interval=0.5)
    except AssertionError:
        print(f"--- worker.log ---\n{_tail(stack.logs / 'worker.log', 120)}", file=sys.stderr)
        raise
    assert run.state.is_completed(), f"{run.state.type}: {run.state.message}"
    manifest = stack.s3().get_object(Bucket=BUCKET, Key="evolink/form-campaign/manifest.json")
    assert json.loads(manifest["Body"].read())["campaign"] == "form-campaign"
