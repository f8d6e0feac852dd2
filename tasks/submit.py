"""Submit: start a paid job at most once per logical job."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from evolink.cost import estimate
from evolink.errors import SubmitRecordNotStoredError
from evolink.jobs import (
    SentRequest,
    SubmitRecord,
    TaskIndex,
    idempotency_key,
    is_task_id,
    job_key,
)
from evolink.models import ImageRequest
from evolink.records import RecordStore
from evolink.spend import ORIGIN_FIELD
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.spend import run_origin
from prefect_evolink.tasks.steps import evolink_step, is_retryable


@evolink_step("evolink-submit", "submit {namespace}")
async def submit_job(
    namespace: str,
    request: ImageRequest,
    credentials: EvoLinkCredentials,
    storage: AssetStorage,
    attempt: int = 1,
    identity: dict[str, Any] | None = None,
    scope: str | None = None,
) -> SubmitRecord:
    """Create the EvoLink task for this job, or reattach to the one already created.

    Three layers keep a job from being paid twice: the persisted submit record (a rerun finds the
    task id and never calls create), the Idempotency-Key derived from the job (a create whose
    response was lost is replayed by EvoLink, not repeated), and retries only for errors the
    error family marks retryable. The request is written down (as an intent record) before it
    is sent, so a retry resends exactly what may already have reached EvoLink.

    A request without a `callback_url` is sent with the credentials block's (if it has one):
    where EvoLink reports is delivery, not the job, so it is not part of the job key. A task
    sent with one is indexed (`_tasks/<task id>.json`), so the callback receiver tells our
    tasks from any others in one read.

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
        scope: What the job key adds for the endpoint (`evolink.endpoint`); None: the
            credentials' own (`credentials.endpoint_scope`), which is what every caller wants
            but `run_image_job` setting an old record of another endpoint aside.

    Returns:
        The submit record: job key, Idempotency-Key, EvoLink task id, the request as sent, the
        cost estimate, whether EvoLink replayed an earlier create, and EvoLink's request id of
        the create (`request_id`, for its support).

    Raises:
        AuthenticationError: The API key is wrong or revoked (not retried).
        InsufficientCreditsError: The account has run out of credits (not retried).
        BadRequestError: EvoLink refused the request itself (not retried).
        RateLimitError: Too many requests; the task retries after a delay.
        APIConnectionError: No usable response; the task retries, and the Idempotency-Key
            makes the repeated create reattach instead of paying again.
        SubmitRecordNotStoredError: The task was created but its submit record could not be
            stored; carries the record (task id, job key) so the job can still be booked.
            Retried like the storage error it wraps (the create replays the same task).

    Example:
        A Prefect task: call it inside a flow (`run_image_job` runs submit → poll → persist):
        ```python
        record = await submit_job("adhoc/mug", request, credentials, storage)
        print(record.task_id, record.estimate["usd"])
        ```
    """
    logger = get_run_logger()
    scope = credentials.endpoint_scope if scope is None else scope
    key = job_key(namespace, request, attempt=attempt, identity=identity, endpoint=scope)
    store = RecordStore(storage)
    existing = await store.get_submit_data(key)
    if existing is not None:
        record = SubmitRecord.model_validate(existing)
        logger.info(
            "Reattaching to task %s (submitted %s); nothing new is paid",
            record.task_id,
            record.submitted_at.isoformat(),
        )
        needs_index = bool(record.request.callback_url) and is_task_id(record.task_id)
        if needs_index and not await store.has_task_index(record.task_id):
            await index_task(storage, record, existing.get(ORIGIN_FIELD))  # an older record
        # Booked again (idempotent): a run that died between the record and its booking
        # leaves the spend cap's running total short until a rerun comes by here.
        await store.book_submit(record, existing)
        return record

    intent = await store.get_intent(key)
    if intent is not None:
        request = ImageRequest.model_validate(
            intent
        )  # resend exactly what may have reached EvoLink
    else:
        if request.callback_url is None and credentials.callback_url:
            request = request.model_copy(update={"callback_url": credentials.callback_url})
        await store.put_intent(key, request.to_payload())

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
        endpoint=credentials.endpoint,
        simulator=created.simulator,
        request_id=created.request_id,
    )
    # The run it came from (flow run, deployment) rides along for the spend report.
    origin = await run_origin()
    if request.callback_url:
        await index_task(storage, record, origin)  # first: the callback may come soon
    try:
        await store.put_submit(record, origin)  # with the origin; booked for the running total
    except Exception as error:
        # The task exists (it is billed if it completes): the error carries its id. A retry
        # resends the stored intent with the same Idempotency-Key — EvoLink replays this task.
        raise SubmitRecordNotStoredError(record, error, retryable=is_retryable(error)) from error
    logger.info(
        "Task %s %s%s",
        record.task_id,
        "was already created earlier (idempotent replay)" if created.replayed else "created",
        f" (request id {created.request_id})" if created.request_id else "",
    )
    return record


async def index_task(storage: AssetStorage, record: SubmitRecord, origin: object) -> None:
    """Store `_tasks/<task id>.json` (task id → job key, namespace, flow run): how the callback
    receiver knows a task is ours in one read. Best effort: a task that is not indexed only
    has its callbacks ignored — polling, the source of truth, still finishes the job."""
    if not is_task_id(record.task_id):
        get_run_logger().warning("Task id %r is not indexed for callbacks", record.task_id[:40])
        return
    index = TaskIndex.of(record, origin if isinstance(origin, dict) else None)
    try:
        await RecordStore(storage).put_task_index(index)
    except Exception as error:  # noqa: BLE001 — bookkeeping must not fail a paid job
        get_run_logger().warning(
            "Task %s not indexed for callbacks (%s): its callbacks will be ignored",
            record.task_id,
            error,
        )
