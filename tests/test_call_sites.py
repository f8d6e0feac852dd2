"""Users' call sites: `generate_image`, `run_campaign` and the three steps (`submit_job`,
`poll_job`, `persist_images`) from a plain script, from a sync `@flow` and from async code.

Each call site must get its result, and the work must show in Prefect as it should: from a sync
flow, real subflow runs and task runs of that flow (not a coroutine dropped on the floor, the
failure of the 0.2 flows, where the parent showed Completed and the subflow never ran). Images
are checked in storage, against what the simulator billed.

The plain-script case runs as a real script in a subprocess (no pytest around it), with the
environment a user sets: `EVOLINK_API_KEY`, `EVOLINK_BASE_URL`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext

from evolink.campaign import CampaignManifest
from evolink.jobs import JobRecord, StoredImage
from evolink.models import ImageRequest
from evolink.simulator import EvoLinkSimulator
from prefect_evolink import generate_image, persist_images, poll_job, run_campaign, submit_job
from prefect_evolink.blocks import EvoLinkCredentials, LocalAssetStorage

REQUEST = ImageRequest(prompt="A ceramic mug of cocoa", size="1:1", quality="low")
BRIEF = {
    "campaign": "call-sites",
    "budget_usd": "1.00",
    "defaults": {"drafts": 2, "final_quality": "low"},
    "assets": [{"id": "mug", "prompt": "A ceramic mug on a desk"}],
}


@pytest.fixture
def blocks(
    simulator: EvoLinkSimulator, tmp_path: Path
) -> tuple[EvoLinkCredentials, LocalAssetStorage]:
    credentials = EvoLinkCredentials(
        api_key=simulator.api_key,
        base_url=simulator.base_url,
        poll_min_interval=0.05,
        poll_max_interval=0.2,
    )
    return credentials, LocalAssetStorage(base_dir=str(tmp_path / "assets"))


@pytest.fixture(autouse=True)
def _private_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLINK_ALLOW_PRIVATE_URLS", "true")  # the simulator's links


def _stored(storage: LocalAssetStorage, images: list[StoredImage]) -> None:
    assert images
    for image in images:
        assert storage.exists(image.key), image.key


async def _children(parent: UUID) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )


async def _task_run_names(flow_run_id: UUID) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(run.name for run in runs)


def _current_flow_run_id() -> UUID:
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    return context.flow_run.id


def _three_steps(
    namespace: str, credentials: EvoLinkCredentials, storage: LocalAssetStorage
) -> list[StoredImage]:
    """The three steps called as a user's sync flow calls them."""
    submitted = submit_job(namespace, REQUEST, credentials, storage)
    snapshot = poll_job(submitted, credentials)
    return persist_images(
        list(snapshot.results),
        task_id=submitted.task_id,
        dest_prefix=f"steps/{namespace}",
        metadata={"prompt": REQUEST.prompt},
        credentials=credentials,
        storage=storage,
    )


def test_a_plain_script(simulator: EvoLinkSimulator, tmp_path: Path, prefect_harness: None) -> None:
    from prefect.settings import PREFECT_API_URL

    script = tmp_path / "make_images.py"
    script.write_text(
        textwrap.dedent(
            """
            from prefect_evolink import (
                EvoLinkCredentials, ImageRequest, LocalAssetStorage, generate_image,
                persist_images, poll_job, run_campaign, submit_job,
            )

            credentials = EvoLinkCredentials(api_key=__import__("os").environ["EVOLINK_API_KEY"],
                                             base_url=__import__("os").environ["EVOLINK_BASE_URL"])
            storage = LocalAssetStorage(base_dir="assets")
            request = ImageRequest(prompt="A ceramic mug of cocoa", size="1:1", quality="low")

            record = generate_image(request, job_name="script", credentials=credentials,
                                    storage=storage)
            print("generate_image", record.task_id, len(record.images))

            manifest = run_campaign(BRIEF, credentials=credentials, storage=storage)
            print("run_campaign", [asset.status.value for asset in manifest.assets])

            submitted = submit_job("script/steps", request, credentials, storage)
            snapshot = poll_job(submitted, credentials)
            images = persist_images(list(snapshot.results), task_id=submitted.task_id,
                                    dest_prefix="script/steps", metadata={},
                                    credentials=credentials, storage=storage)
            print("steps", submitted.task_id, len(images))
            """
        ).replace("BRIEF", repr(BRIEF)),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVOLINK_", "PREFECT_"))}
    env.update(
        EVOLINK_API_KEY=simulator.api_key,
        EVOLINK_BASE_URL=simulator.base_url,
        EVOLINK_ALLOW_PRIVATE_URLS="true",
        EVOLINK_POLL_MIN_INTERVAL="0.05",
        EVOLINK_POLL_MAX_INTERVAL="0.2",
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_HOME=str(tmp_path / ".prefect"),
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "was never awaited" not in result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["generate_image"].endswith(" 1")
    assert lines["run_campaign"] == "['final']"
    assert lines["steps"].endswith(" 1")
    assert list((tmp_path / "assets" / "call-sites" / "mug" / "final").rglob("image-0.png"))
    # every create the script made reached the simulator: 1 + (1 draft + 1 final) + 1
    assert simulator.request_counts["create"] == 4


def test_a_sync_flow_runs_them_as_subflows_and_task_runs(
    simulator: EvoLinkSimulator,
    blocks: tuple[EvoLinkCredentials, LocalAssetStorage],
    prefect_harness: None,
) -> None:
    credentials, storage = blocks

    @flow(name="call-sites-sync-parent")
    def parent() -> tuple[UUID, JobRecord, CampaignManifest, list[StoredImage]]:
        record = generate_image(
            REQUEST, job_name="sync-parent", credentials=credentials, storage=storage
        )
        manifest = run_campaign(BRIEF, credentials=credentials, storage=storage)
        images = _three_steps("sync-parent/steps", credentials, storage)
        return _current_flow_run_id(), record, manifest, images

    parent_id, record, manifest, images = parent()
    assert isinstance(record, JobRecord) and isinstance(manifest, CampaignManifest)
    _stored(storage, record.images)
    _stored(storage, images)
    assert [asset.status.value for asset in manifest.assets] == ["final"]
    subflows = asyncio.run(_children(parent_id))
    assert sorted(run.state_name or "" for run in subflows) == ["Completed", "Completed"]
    steps = asyncio.run(_task_run_names(parent_id))
    assert any(name.startswith("submit sync-parent/steps") for name in steps), steps
    assert any(name.startswith("poll ") for name in steps), steps
    assert any(name.startswith("persist ") for name in steps), steps


def test_async_code_awaits_them(
    simulator: EvoLinkSimulator,
    blocks: tuple[EvoLinkCredentials, LocalAssetStorage],
    prefect_harness: None,
) -> None:
    credentials, storage = blocks

    async def steps(namespace: str) -> list[StoredImage]:
        submitted = await submit_job(namespace, REQUEST, credentials, storage)
        snapshot = await poll_job(submitted, credentials)
        images: list[StoredImage] = await persist_images(
            list(snapshot.results),
            task_id=submitted.task_id,
            dest_prefix=f"steps/{namespace}",
            metadata={},
            credentials=credentials,
            storage=storage,
        )
        return images

    async def main() -> tuple[JobRecord, CampaignManifest]:
        record = await generate_image(
            REQUEST, job_name="async-main", credentials=credentials, storage=storage
        )
        manifest = await run_campaign(BRIEF, credentials=credentials, storage=storage)
        return record, manifest

    record, manifest = asyncio.run(main())
    _stored(storage, record.images)
    assert [asset.status.value for asset in manifest.assets] == ["final"]

    @flow(name="call-sites-async-parent")
    async def parent() -> tuple[UUID, list[StoredImage]]:
        images = await steps("async-parent/steps")
        again = await generate_image(
            REQUEST, job_name="async-main", credentials=credentials, storage=storage
        )
        assert again.task_id == record.task_id  # the same job, reused: not paid again
        return _current_flow_run_id(), images

    parent_id, images = asyncio.run(parent())
    _stored(storage, images)
    assert len(asyncio.run(_children(parent_id))) == 1
    creates = simulator.request_counts["create"]
    assert creates == 1 + 2 + 1  # generate_image once, the campaign's draft and final, the steps
