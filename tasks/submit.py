"""Submit: start a paid job at most once per logical job."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import get_run_logger

from blocks.credentials import EvoLinkCredentials
from blocks.storage import AssetStorage
from evolink.cost import estimate
from evolink.jobs import (
    SentRequest,
    SubmitRecord,
    idempotency_key,
    intent_record_key,
    job_key,
    submit_record_key,
)
from evolink.models import ImageRequest
from tasks.retries import evolink_step


@evolink_step("evolink-submit", "submit {namespace}")
async def submit_job(
    namespace: str,
    request: ImageRequest,
    credentials: EvoLinkCredentials,
    storage: AssetStorage,
    attempt: int = 1,
    identity: dict[str, Any] | None = None,
) -> SubmitRecord:
    """Create the EvoLink task for this job, or reattach to the one already created.

    Three layers keep a job from being paid twice: the persisted submit record (a rerun finds the
    task id and never calls create), the Idempotency-Key derived from the job (a create whose
    response was lost is replayed by EvoLink, not repeated), and retries only for errors the
    error family marks retryable.
    """
    logger = get_run_logger()
    key = job_key(namespace, request, attempt=attempt, identity=identity)
    record_key = submit_record_key(key)
    existing = await asyncio.to_thread(storage.get_json, record_key)
    if existing is not None:
        record = SubmitRecord.model_validate(existing)
        logger.info(
            "Reattaching to task %s (submitted %s); nothing new is paid",
            record.task_id,
            record.submitted_at.isoformat(),
        )
        return record

    intent = await asyncio.to_thread(storage.get_json, intent_record_key(key))
    if intent is not None:
        request = ImageRequest.model_validate(
            intent
        )  # resend exactly what may have reached EvoLink
    else:
        await asyncio.to_thread(storage.put_json, intent_record_key(key), request.to_payload())

    cost = estimate(request)
    logger.info(
        "Submitting %s: %dx%d %s, n=%d, estimated $%s (%s credits)",
        namespace,
        cost.width,
        cost.height,
        cost.quality,
        cost.n,
        cost.usd,
        cost.credits,
    )
    async with credentials.get_client() as client:
        created = await client.create_task(request, idempotency_key=idempotency_key(key))
    record = SubmitRecord(
        job_key=key,
        namespace=namespace,
        idempotency_key=idempotency_key(key),
        task_id=created.task.id,
        request=SentRequest.of(request),
        estimate=cost.as_dict(),
        replayed=created.replayed,
        estimated_time=created.task.estimated_time,
    )
    await asyncio.to_thread(storage.put_json, record_key, record.model_dump(mode="json"))
    logger.info(
        "Task %s %s",
        record.task_id,
        "was already created earlier (idempotent replay)" if created.replayed else "created",
    )
    return record
