"""Submit: start a paid job at most once per logical job."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

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
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.steps import evolink_step


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
    error family marks retryable. The request is written down (as an intent record) before it
    is sent, so a retry resends exactly what may already have reached EvoLink.

    Args:
        namespace: The logical job's name (e.g. `adhoc/<job_name>`); with the request it makes
            the job key, so the same namespace and request are the same job.
        request: The GPT Image 2 request to send.
        credentials: The EvoLink credentials block the client is made from.
        storage: Where the intent and submit records of the job are kept.
        attempt: 1 for the first submission; a deliberate resubmission after a failed task
            counts up, which makes it a new, separately keyed (and billed) job.
        identity: What identifies the job instead of the request itself, when the request
            holds values that change between runs (such as presigned reference URLs).

    Returns:
        The submit record: job key, Idempotency-Key, EvoLink task id, the request as sent, the
        cost estimate, and whether EvoLink replayed an earlier create.

    Raises:
        AuthenticationError: The API key is wrong or revoked (not retried).
        InsufficientCreditsError: The account has run out of credits (not retried).
        BadRequestError: EvoLink refused the request itself (not retried).
        RateLimitError: Too many requests; the task retries after a delay.
        APIConnectionError: No usable response; the task retries, and the Idempotency-Key
            makes the repeated create reattach instead of paying again.

    Example:
        A Prefect task: call it inside a flow (`run_image_job` runs submit → poll → persist):
        ```python
        record = await submit_job("adhoc/mug", request, credentials, storage)
        print(record.task_id, record.estimate["usd"])
        ```
    """
    logger = get_run_logger()
    key = job_key(namespace, request, attempt=attempt, identity=identity)
    record_key = submit_record_key(key)
    existing = await storage.aget_json(record_key)
    if existing is not None:
        record = SubmitRecord.model_validate(existing)
        logger.info(
            "Reattaching to task %s (submitted %s); nothing new is paid",
            record.task_id,
            record.submitted_at.isoformat(),
        )
        return record

    intent = await storage.aget_json(intent_record_key(key))
    if intent is not None:
        request = ImageRequest.model_validate(
            intent
        )  # resend exactly what may have reached EvoLink
    else:
        await storage.aput_json(intent_record_key(key), request.to_payload())

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
    await storage.aput_json(record_key, record.model_dump(mode="json"))
    logger.info(
        "Task %s %s",
        record.task_id,
        "was already created earlier (idempotent replay)" if created.replayed else "created",
    )
    return record
