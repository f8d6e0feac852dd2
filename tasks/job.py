"""One job end to end — submit → poll → persist — as plain orchestration over the three tasks.

Not a task itself: the flows (one image, a campaign) call it so each step stays a visible task
run in the UI, with its own retries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger

from evolink.cost import estimate
from evolink.errors import (
    InvalidImageError,
    PaidJobNotStoredError,
    SubmitRecordNotStoredError,
    TaskFailedError,
    charged,
)
from evolink.jobs import (
    JobRecord,
    StoredImage,
    SubmitRecord,
    job_key,
    job_record_key,
    utcnow,
)
from evolink.models import ImageRequest
from evolink.polling import PollSchedule
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.limits import provider_capacity
from prefect_evolink.tasks.persist import persist_image
from prefect_evolink.tasks.poll import poll_job
from prefect_evolink.tasks.spend import record_bill
from prefect_evolink.tasks.submit import submit_job


@dataclass
class JobTrail:
    """How far `run_image_job` got with the attempt in flight, for a caller that must book the
    cost of a job that failed: the job key whose create is being sent (its intent may have
    reached EvoLink) and, once the create answered, its submit record (the task will be billed
    if it completes)."""

    sending: str | None = None
    submitted: SubmitRecord | None = None


async def run_image_job(
    request: ImageRequest,
    *,
    namespace: str,
    dest_prefix: str,
    credentials: EvoLinkCredentials,
    storage: AssetStorage,
    schedule: PollSchedule | None = None,
    resubmits: int = 1,
    identity: dict[str, Any] | None = None,
    trail: JobTrail | None = None,
) -> JobRecord:
    """Return the job's record, doing only what has not been done yet.

    A finished job (its record is in storage) costs nothing to run again. A task that failed with
    a code a new submission may fix is resubmitted up to `resubmits` times — each a deliberate,
    separately keyed job; a policy failure, a task EvoLink reports `cancelled` and a task that
    was charged are never resubmitted (`evolink.errors.resubmit_may_help`). A failed or
    cancelled task whose body carries a charge raises `PaidJobNotStoredError` with that bill (so
    it is booked); one without raises its `TaskFailedError`. A task that completed (so was
    billed) but whose images could not all be stored raises `PaidJobNotStoredError` carrying the
    bill, so the cost is reported even though the job failed; a rerun stores what is still
    behind the links without paying again. A task created whose submit record could not be
    stored raises `SubmitRecordNotStoredError` (after the step's retries), with the submit
    record in `trail.submitted` too: a paid job whose bill is still unknown.
    """
    logger = get_run_logger()
    cost = estimate(request)
    for attempt in range(1, resubmits + 2):
        key = job_key(namespace, request, attempt=attempt, identity=identity)
        finished = await storage.aget_json(job_record_key(key))
        if finished is not None:
            logger.info(
                "Job %s already finished (task %s); reusing its record",
                namespace,
                finished["task_id"],
            )
            return JobRecord.model_validate(finished)

        if trail is not None:
            trail.sending, trail.submitted = key, None
        # One provider slot from just before submit until the poll ends (tasks/limits.py).
        async with provider_capacity():
            try:
                submit = await submit_job(
                    namespace, request, credentials, storage, attempt=attempt, identity=identity
                )
            except SubmitRecordNotStoredError as error:
                if trail is not None:  # created, so billed if it completes: book it by its id
                    trail.submitted = error.record
                raise
            if trail is not None:
                trail.submitted = submit
            try:
                final = await poll_job(submit, credentials, schedule)
            except TaskFailedError as error:
                status = "cancelled" if error.cancelled else "failed"  # for the spend report
                await record_bill(
                    storage, submit, status=status, billed=error.billed, note=str(error)
                )
                if error.resubmit_may_help and attempt <= resubmits:
                    logger.warning("%s — resubmitting as attempt %d", error, attempt + 1)
                    continue
                if error.billed is not None and charged(error.billed):
                    # Cancelled (or failed) after EvoLink charged for it: the bill is booked
                    # like any paid job that delivered no image, never dropped.
                    record = JobRecord.build(submit, cost, error.billed, [], completed_at=utcnow())
                    raise PaidJobNotStoredError(record, error) from error
                raise

        if not final.results:
            empty = InvalidImageError(
                f"task {final.id} completed without any result link", task_id=final.id
            )
            record = JobRecord.build(submit, cost, final.billed, [], completed_at=utcnow())
            await record_bill(
                storage, submit, status="completed", billed=final.billed, note=str(empty)
            )
            raise PaidJobNotStoredError(record, empty) from empty
        prefix = f"{dest_prefix}/{key[:12]}"
        metadata = {
            "namespace": namespace,
            "job_key": key,
            "prompt": request.prompt,
            "size": request.size,
            "resolution": request.resolution or "",
            "quality": request.quality,
            "estimated_usd": str(cost.usd),
            "billed_usd": str(final.billed.usd) if final.billed.known else "unknown",
        }
        outcomes = await asyncio.gather(
            *(
                persist_image(
                    url,
                    task_id=final.id,
                    index=index,
                    dest_prefix=prefix,
                    metadata=metadata,
                    credentials=credentials,
                    storage=storage,
                )
                for index, url in enumerate(final.results)
            ),
            return_exceptions=True,  # every image gets its chance before the job is judged
        )
        images = [image for image in outcomes if isinstance(image, StoredImage)]
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            if not isinstance(failure, Exception):
                raise failure  # cancellation and the like pass through untouched
            partial = JobRecord.build(submit, cost, final.billed, images, completed_at=utcnow())
            await record_bill(
                storage, submit, status="completed", billed=final.billed, note=str(failure)
            )
            raise PaidJobNotStoredError(partial, failure) from failure
        record = JobRecord.build(submit, cost, final.billed, images, completed_at=utcnow())
        await storage.aput_json(job_record_key(key), record.model_dump(mode="json"))
        return record
    raise AssertionError("unreachable: the last attempt returns or raises")
