"""The flow end to end on the simulator: disk and S3, reruns, crashes, faults, failures, secrets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from prefect import flow

from evolink.endpoint import endpoint_scope
from evolink.errors import PaidJobNotStoredError, PollDeadlineExceeded, TaskFailedError
from evolink.jobs import (
    JobRecord,
    SubmitRecord,
    job_key,
    submit_record_key,
)
from evolink.models import ImageRequest, parse_request
from evolink.simulator import EvoLinkSimulator, Fault
from prefect_evolink.blocks import LocalAssetStorage, S3AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.flows.generate import generate_image
from prefect_evolink.tasks.submit import submit_job
from tests.conftest import TEST_API_KEY, artifacts_with_prefix

pytestmark = pytest.mark.usefixtures("prefect_harness")

REQUEST = parse_request(
    {
        "prompt": "square social post: a ceramic mug of cocoa, soft daylight",
        "size": "1:1",
        "quality": "low",
    }
)


def generate(request: ImageRequest = REQUEST, **kwargs: Any) -> JobRecord:
    return asyncio.run(generate_image.aio(request, **{"poll_deadline_seconds": 30, **kwargs}))


def test_one_job_is_stored_on_disk_with_metadata_and_its_bill(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    record = generate(job_name="disk")

    [entry] = evolink_env.billed_tasks()
    assert record.task_id == entry.task_id
    assert Decimal(record.billed_usd or "nan") == Decimal(entry.billed_usd)
    assert Decimal(record.billed_credits or "nan") == Decimal(entry.billed_credits)
    assert Decimal(record.estimated_usd) == Decimal(
        record.billed_usd
    )  # simulator bills the estimate

    [image] = record.images
    path = Path(image.uri.removeprefix("file://"))
    assert path.is_file() and path.is_relative_to(assets_dir)
    served = httpx.get(evolink_env.task(entry.task_id)["results"][0]).content  # type: ignore[index]
    assert path.read_bytes() == served
    assert image.sha256 == hashlib.sha256(served).hexdigest()
    assert (image.width, image.height, image.content_type) == (1024, 1024, "image/png")

    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["metadata"]["prompt"] == REQUEST.prompt
    assert sidecar["metadata"]["task_id"] == entry.task_id
    assert sidecar["metadata"]["quality"] == "low"
    assert sidecar["metadata"]["billed_usd"] == record.billed_usd
    assert sidecar["sha256"] == image.sha256
    assert "sig=" not in json.dumps(sidecar)

    # EvoLink's request id of the create call, on the submit record and the job record; records
    # written before it was kept still load.
    key = job_key("adhoc/disk", REQUEST, endpoint=endpoint_scope(evolink_env.base_url))
    stored = LocalAssetStorage(base_dir=str(assets_dir)).get_json(submit_record_key(key))
    submit = SubmitRecord.model_validate(stored)
    assert submit.request_id is not None and submit.request_id.startswith("req_sim_")
    assert record.request_id == submit.request_id
    for model, data in ((SubmitRecord, stored), (JobRecord, record.model_dump(mode="json"))):
        del data["request_id"]
        assert model.model_validate(data).request_id is None


def test_one_job_is_stored_on_s3(
    evolink_env: EvoLinkSimulator, s3_server: str, s3_storage: Callable[..., S3AssetStorage]
) -> None:
    s3_storage("marketing-assets", "flow-test-s3", "evolink")

    record = generate(job_name="s3", storage=S3AssetStorage.load("flow-test-s3"))

    [image] = record.images
    assert image.uri.startswith("s3://marketing-assets/evolink/adhoc/s3/")
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key = image.uri.removeprefix("s3://marketing-assets/")
    obj = s3.get_object(Bucket="marketing-assets", Key=key)
    body = obj["Body"].read()
    [entry] = evolink_env.billed_tasks()
    assert body == httpx.get(evolink_env.task(entry.task_id)["results"][0]).content  # type: ignore[index]
    assert hashlib.sha256(body).hexdigest() == image.sha256
    assert obj["ContentType"] == "image/png"
    assert obj["Metadata"]["task_id"] == entry.task_id
    assert obj["Metadata"]["sha256"] == image.sha256
    sidecar = json.loads(
        s3.get_object(Bucket="marketing-assets", Key=key.replace(".png", ".json"))["Body"].read()
    )
    assert sidecar["metadata"]["prompt"] == REQUEST.prompt


def test_rerun_returns_the_stored_result_without_paying_again(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    first = generate(job_name="rerun")
    creates = evolink_env.request_counts["create"]
    second = generate(job_name="rerun")
    assert second.task_id == first.task_id and second.images == first.images
    assert evolink_env.request_counts["create"] == creates
    assert len(evolink_env.ledger()) == 1


def test_crash_after_submit_reattaches_to_the_same_task(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    """The process died after submit: the rerun polls the recorded task, it does not create."""

    @flow
    async def submit_then_crash() -> SubmitRecord:
        creds = EvoLinkCredentials.from_env()
        assert creds is not None
        return await submit_job(
            "adhoc/crash", REQUEST, creds, LocalAssetStorage(base_dir=str(assets_dir))
        )

    submitted = asyncio.run(submit_then_crash())
    assert LocalAssetStorage(base_dir=str(assets_dir)).exists(
        submit_record_key(
            job_key("adhoc/crash", REQUEST, endpoint=endpoint_scope(evolink_env.base_url))
        )
    )
    record = generate(job_name="crash")
    assert record.task_id == submitted.task_id
    assert record.request_id == submitted.request_id is not None  # the create's, not a GET's
    assert evolink_env.request_counts["create"] == 1 and len(evolink_env.ledger()) == 1


def test_crash_before_the_submit_record_is_written_is_replayed_by_idempotency_key(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    """Create succeeded at EvoLink but nothing was recorded here: the key makes it a replay."""
    evolink_env.add_fault(Fault(kind="lose_create_response"))
    record = generate(job_name="lost")
    assert len(evolink_env.ledger()) == 1 and len(evolink_env.billed_tasks()) == 1
    assert evolink_env.request_counts["create"] == 2
    assert record.task_id == evolink_env.ledger()[0].task_id


def test_faults_on_every_route_still_give_one_paid_task(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    evolink_env.add_faults(
        [
            Fault(kind="rate_limit", route="create", retry_after=0.1),
            Fault(kind="server_error", route="create", status=502),
            Fault(kind="server_error", route="get", status=503, times=2),
            Fault(kind="drop_connection", route="get"),
            Fault(kind="server_error", route="download", status=500),
            Fault(kind="drop_connection", route="download"),
        ]
    )
    record = generate(job_name="stormy")
    assert len(record.images) == 1
    assert len(evolink_env.ledger()) == 1
    assert sum(evolink_env.fault_counts.values()) == 7


def test_policy_failure_is_not_resubmitted(evolink_env: EvoLinkSimulator, assets_dir: Path) -> None:
    evolink_env.add_fault(Fault(kind="fail_task", error_code="content_policy_violation"))
    with pytest.raises(TaskFailedError, match="content_policy_violation"):
        generate(job_name="policy")
    assert evolink_env.request_counts["create"] == 1 and evolink_env.billed_tasks() == []


def test_transient_failure_is_resubmitted_once_as_a_new_job(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    evolink_env.add_fault(Fault(kind="fail_task", error_code="generation_timeout"))
    record = generate(job_name="transient")
    ledger = evolink_env.ledger()
    assert [e.status for e in ledger] == ["failed", "completed"]
    assert record.task_id == ledger[1].task_id and len(evolink_env.billed_tasks()) == 1
    # and a rerun now costs nothing: both attempts are on record
    generate(job_name="transient")
    assert len(evolink_env.ledger()) == 2


def test_poll_deadline_fails_clearly_and_a_rerun_reattaches(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    evolink_env.add_fault(Fault(kind="slow_task", seconds=2.5))
    with pytest.raises(PollDeadlineExceeded, match="poll the same task id"):
        generate(job_name="slow", poll_deadline_seconds=0.5)
    record = generate(job_name="slow")
    assert len(evolink_env.ledger()) == 1 and record.task_id == evolink_env.ledger()[0].task_id


def test_a_paid_job_whose_links_expired_fails_but_reports_its_bill(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    evolink_env.add_fault(Fault(kind="expire_links", ttl_seconds=0))
    with pytest.raises(PaidJobNotStoredError, match="ResultExpiredError") as caught:
        generate(job_name="expired")
    [entry] = evolink_env.billed_tasks()
    paid = caught.value.record
    assert paid.task_id == entry.task_id and paid.images == []
    assert Decimal(paid.billed_usd or "nan") == Decimal(entry.billed_usd)
    assert entry.task_id in str(caught.value)

    artifacts = asyncio.run(artifacts_with_prefix("evolink-expired-%"))
    [row] = json.loads(artifacts["evolink-expired-cost"].data)
    assert row["billed_usd"] == f"${Decimal(entry.billed_usd):.6f}"
    assert row["stored_at"].startswith("NOT STORED (paid, 1 image(s)): ResultExpiredError")
    assert "FAILED after it was paid" in artifacts["evolink-expired-summary"].data
    # a rerun reattaches (the link is still dead) and pays nothing new
    with pytest.raises(PaidJobNotStoredError):
        generate(job_name="expired")
    assert len(evolink_env.ledger()) == 1


def test_api_key_is_in_no_log_record_or_result(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record) + repr(record.__dict__))

    handler = Collect(level=logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("prefect"), logging.getLogger("httpx")]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        evolink_env.add_fault(Fault(kind="server_error", route="any", status=503, times=2))
        record = generate(job_name="secret-check")
    finally:
        for lg, level in zip(loggers, old_levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    assert any("Submitting adhoc/secret-check" in line for line in lines)
    haystack = "\n".join(lines) + record.model_dump_json()
    haystack += "".join(p.read_text() for p in assets_dir.rglob("*.json"))
    assert TEST_API_KEY not in haystack
    assert repr(EvoLinkCredentials.from_env()).count(TEST_API_KEY) == 0


def test_task_retries_only_retryable_errors_with_a_saved_credentials_block(
    simulator: EvoLinkSimulator, assets_dir: Path
) -> None:
    """With the client's own retries off, Prefect's task retries must take over — for 5xx only."""
    EvoLinkCredentials(
        api_key=simulator.api_key,
        base_url=simulator.base_url,
        max_attempts=1,
        poll_min_interval=0.05,
        poll_max_interval=0.2,
    ).save("flow-test-one-attempt", overwrite=True)
    simulator.add_fault(Fault(kind="server_error", route="create", status=503, times=2))
    record = generate(
        job_name="task-retry", credentials=EvoLinkCredentials.load("flow-test-one-attempt")
    )
    assert simulator.request_counts["create"] == 3 and len(simulator.ledger()) == 1
    assert record.task_id == simulator.ledger()[0].task_id

    EvoLinkCredentials(
        api_key="sk-wrong-key-0000000000000000", base_url=simulator.base_url, max_attempts=1
    ).save("flow-test-wrong-key", overwrite=True)
    from evolink.errors import AuthenticationError

    with pytest.raises(AuthenticationError):
        generate(
            job_name="task-no-retry", credentials=EvoLinkCredentials.load("flow-test-wrong-key")
        )
    assert simulator.request_counts["create"] == 4  # one more, not three more
