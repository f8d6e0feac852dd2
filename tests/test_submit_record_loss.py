"""A task EvoLink created whose submit record could not be stored is still booked (soak seed 30).

The create answered, so the task exists and is billed if it completes; the storage write of its
submit record then failed on every attempt. The submit step raises `SubmitRecordNotStoredError`
carrying the task id; its retries resend the stored intent with the same Idempotency-Key, so
EvoLink replays the one task (nothing new is paid). The campaign books the task with an unknown
bill and asks EvoLink for it at the end of the run (billed = reported); the single-job flow shows
the job in its cost artifacts.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr

from bench.harness.fault_matrix import CAMPAIGN, QUICK_ASSETS, SOCIAL, STORY, write_brief
from evolink.campaign import AssetStatus, CampaignManifest
from evolink.errors import SubmitRecordNotStoredError
from evolink.models import ImageRequest
from evolink.simulator import EvoLinkSimulator
from prefect_evolink.blocks import EvoLinkCredentials, LocalAssetStorage, StoredObject
from prefect_evolink.flows.campaign import manifest_key, run_campaign
from prefect_evolink.flows.generate import generate_image
from prefect_evolink.tasks.steps import is_retryable
from tests.conftest import artifacts_with_prefix

pytestmark = pytest.mark.usefixtures("prefect_harness")

STEP_RUNS = 3  # the submit step's first run and its 2 retries (EVOLINK_TASK_RETRY_DELAYS)
_FAILED_WRITES: list[str] = []


class SubmitRecordLossStorage(LocalAssetStorage):
    """Local storage that never stores the submit record of a job whose prompt contains
    `lost_prompt` (a retryable TimeoutError on every attempt): the create before it succeeded."""

    _block_type_name: ClassVar[str | None] = "Test Submit Record Loss Storage"
    _block_type_slug: ClassVar[str | None] = "test-submit-record-loss-storage"

    lost_prompt: str = STORY

    def _put_bytes(
        self, key: str, data: bytes, *, content_type: str, metadata: Any
    ) -> StoredObject:
        if key.endswith("/submit.json") and self.lost_prompt.encode() in data:
            _FAILED_WRITES.append(key)
            raise TimeoutError(f"injected: storage timed out writing {key}")
        return super()._put_bytes(key, data, content_type=content_type, metadata=metadata)


@pytest.fixture(autouse=True)
def _clean() -> None:
    _FAILED_WRITES.clear()


def credentials(sim: EvoLinkSimulator) -> EvoLinkCredentials:
    return EvoLinkCredentials(
        api_key=SecretStr(sim.api_key),
        base_url=sim.base_url,
        max_attempts=2,
        poll_min_interval=0.05,
        poll_max_interval=0.2,
    )


def test_the_error_carries_the_task_and_is_retryable_like_its_storage_failure() -> None:
    from evolink.jobs import SentRequest, SubmitRecord

    request = ImageRequest(prompt="a mug", size="1:1", quality="low")
    record = SubmitRecord(
        job_key="k" * 32,
        namespace="adhoc/mug",
        idempotency_key="idem",
        task_id="task-unified-1-abc",
        request=SentRequest.of(request),
        estimate={},
        replayed=False,
    )
    cause = TimeoutError("storage timed out")
    error = SubmitRecordNotStoredError(record, cause, retryable=is_retryable(cause))
    assert error.task_id == "task-unified-1-abc" and error.job_key == "k" * 32
    assert error.retryable and is_retryable(error)
    assert str(error).startswith("TimeoutError: storage timed out (task task-unified-1-abc")
    denied = SubmitRecordNotStoredError(record, PermissionError(13, "denied"), retryable=False)
    assert not is_retryable(denied)


def test_a_created_task_whose_submit_record_is_lost_is_booked_with_its_bill(
    simulator: EvoLinkSimulator, tmp_path: Path
) -> None:
    sim = simulator
    brief = write_brief(tmp_path, assets=QUICK_ASSETS)
    storage = SubmitRecordLossStorage(base_dir=str(tmp_path / "assets"))

    with pytest.raises(Exception) as info:
        asyncio.run(
            run_campaign.aio(
                str(brief), credentials=credentials(sim), storage=storage, poll_deadline_seconds=30
            )
        )
    assert type(info.value).__name__ == "CampaignIncompleteError", info.value

    data = storage.get_json(manifest_key(CAMPAIGN))
    assert data is not None, "no manifest was written"
    manifest = CampaignManifest.model_validate(data)
    story = next(o for o in manifest.assets if o.asset == "story-vertical")
    social = next(o for o in manifest.assets if o.asset == "social-square")
    assert social.status is AssetStatus.FINAL, social
    assert story.status is AssetStatus.FAILED, story
    assert story.error_type == "SubmitRecordNotStoredError", story
    assert story.detail.startswith("draft: SubmitRecordNotStoredError: TimeoutError"), story

    # every step run re-sent the create with the same Idempotency-Key: one task, replayed
    assert len(_FAILED_WRITES) == STEP_RUNS and len(set(_FAILED_WRITES)) == 1, _FAILED_WRITES
    ledger = sim.ledger()
    [task] = [e for e in ledger if STORY in e.request["prompt"]]
    assert task.request["quality"] == "low" and task.status == "completed" and task.billed
    socials = [e for e in ledger if SOCIAL in e.request["prompt"]]
    assert sim.request_counts["create"] == len(socials) + STEP_RUNS

    # booked by its task id, its bill read from EvoLink at the end of the run
    [row] = [r for r in manifest.jobs if r.asset == "story-vertical"]
    assert row.task_id == task.task_id and row.stage == "draft"
    assert row.billed_usd is not None and Decimal(row.billed_usd) == Decimal(task.billed_usd)
    assert row.failed and "SubmitRecordNotStoredError" in row.failed
    assert "completed at EvoLink, billed" in row.failed
    assert manifest.submissions_unknown == []
    assert manifest.totals.unknown_bills == 0
    billed = sum((Decimal(str(e.billed_usd)) for e in ledger if e.billed), Decimal(0))
    assert Decimal(manifest.totals.billed_usd) == billed
    assert {r.task_id for r in manifest.jobs} == {e.task_id for e in ledger if e.billed}


def test_the_single_job_flow_reports_the_created_task_when_its_record_is_lost(
    simulator: EvoLinkSimulator, tmp_path: Path
) -> None:
    sim = simulator
    storage = SubmitRecordLossStorage(base_dir=str(tmp_path / "assets"), lost_prompt="lost mug")
    request = ImageRequest(prompt="a lost mug of cocoa", size="1:1", quality="low")
    with pytest.raises(SubmitRecordNotStoredError, match="TimeoutError") as caught:
        asyncio.run(
            generate_image.aio(
                request, job_name="lost-record", credentials=credentials(sim), storage=storage
            )
        )
    [task] = sim.ledger()
    assert caught.value.task_id == task.task_id
    assert sim.request_counts["create"] == STEP_RUNS  # replays of the one task

    artifacts = asyncio.run(artifacts_with_prefix("evolink-lost-record-%"))
    [row] = json.loads(artifacts["evolink-lost-record-cost"].data)
    assert "TimeoutError" in row["stored_at"], row
    summary = artifacts["evolink-lost-record-summary"].data
    assert task.task_id in summary and "FAILED" in summary
