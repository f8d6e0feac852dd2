"""One job end to end — submit → poll → persist — as plain orchestration over the three tasks.

Not a task itself: the flows (one image, a campaign) call it so each step stays a visible task
run in the UI, with its own retries.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.utilities.collections import visit_collection

from evolink.cost import estimate
from evolink.endpoint import DEFAULT_ENDPOINT, record_endpoint, reusable_here
from evolink.errors import (
    InvalidImageError,
    PaidJobNotStoredError,
    SubmitRecordNotStoredError,
    TaskFailedError,
    charged,
)
from evolink.jobs import (
    JobRecord,
    SubmitRecord,
    job_key,
    utcnow,
)
from evolink.layout import ELSEWHERE_FILE as ELSEWHERE_FILE
from evolink.models import ImageRequest
from evolink.polling import PollSchedule
from evolink.records import RecordStore
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.limits import provider_capacity
from prefect_evolink.tasks.persist import persist_images, stored_images
from prefect_evolink.tasks.poll import poll_job
from prefect_evolink.tasks.spend import record_bill
from prefect_evolink.tasks.submit import submit_job

"""Under a job's unscoped key: where the job was last done, for `_say_why_not_reused`."""


@dataclass
class JobTrail:
    """How far `run_image_job` got with the attempt in flight, for a caller that must book the
    cost of a job that failed: the job key whose create is being sent (its intent may have
    reached EvoLink) and, once the create answered, its submit record (the task will be billed
    if it completes)."""

    sending: str | None = None
    submitted: SubmitRecord | None = None
    result_links: list[str] | None = None
    """The completed task's result links, signed for 24 h: in memory only (never logged or
    stored), so a caller that needs one right away (a campaign's final is made from the
    chosen draft's link) need not ask EvoLink for it again."""
    completed_at: float | None = None
    """`time.monotonic()` when the result links were read, to tell how fresh they are."""


def forget_results(*results: Any) -> None:
    """Drop Prefect's in-memory record of these task results, once the job no longer needs it.

    Prefect keeps, for the whole flow run, an entry per task result *and per field of it*
    (`FlowRunContext.run_results`, about 50 entries and 10 KB per campaign asset), only to draw
    the arrow "this task's input came from that task" when a result is passed to a later task.
    Within a job that arrow matters (submit → poll → persist) and is drawn before this is
    called; after the job nothing passes these objects to a task, so keeping them would only
    make the flow process grow with every job — 10 MB per 1,000 assets, 100 MB at 10,000.
    Removing an entry can only lose such an arrow, never a result or a state on the server.
    """
    context = FlowRunContext.get()
    if context is None:
        return
    tracked = context.run_results

    def drop(item: Any) -> None:
        tracked.pop(id(item), None)

    for result in results:
        visit_collection(result, visit_fn=drop, max_depth=1)


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
    prepare: Callable[[], Awaitable[ImageRequest]] | None = None,
) -> JobRecord:
    """Return the job's record, doing only what has not been done yet.

    A finished job (its record is in storage, made at this endpoint) costs nothing to run
    again: not one EvoLink call, whatever EvoLink has forgotten since. A record made at another
    endpoint (the simulator, another base URL) is never reused: the job is sent here, and the
    log says why (`evolink.endpoint`). A task that failed with
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

    `prepare`, when given, returns the request to send and is called only right before a new
    create (no intent or submit record of the attempt exists): what is costly or perishable to
    make — a chosen draft's result link, which EvoLink forgets after 24 h — is made only when
    it will really be sent. The job key must then come from `identity`, not from the request.
    """
    logger = get_run_logger()
    cost = estimate(request)
    scope, finished = await find_finished_job(
        request,
        namespace=namespace,
        credentials=credentials,
        storage=storage,
        resubmits=resubmits,
        identity=identity,
    )
    if finished is not None:
        logger.info(
            "Job %s already finished (task %s); reusing its record", namespace, finished.task_id
        )
        return finished
    await _say_why_not_reused(request, namespace, credentials, storage, identity)
    prepared = prepare is None
    for attempt in range(1, resubmits + 2):
        key = job_key(namespace, request, attempt=attempt, identity=identity, endpoint=scope)
        if trail is not None:
            trail.sending, trail.submitted = key, None
        sent = await _sent_before(storage, key)
        if (
            prepare is not None
            and not prepared
            and not sent
            and not await _intent_before(storage, key)
        ):
            request, prepared = await prepare(), True
        # One provider slot from just before submit until the poll ends (tasks/limits.py); a
        # job sent before (a rerun) polls on without waiting for one.
        async with provider_capacity(reattach=sent):
            try:
                submit = await submit_job(
                    namespace,
                    request,
                    credentials,
                    storage,
                    attempt=attempt,
                    identity=identity,
                    scope=scope,
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
        try:
            images = await persist_images(
                final.results,  # the poll's own list: the UI draws poll → persist
                task_id=final.id,
                dest_prefix=prefix,
                metadata=metadata,
                credentials=credentials,
                storage=storage,
            )
        except Exception as failure:
            # Paid for: book it with whatever images did make it (their sidecars say so).
            stored = await stored_images(storage, prefix, len(final.results))
            partial = JobRecord.build(submit, cost, final.billed, stored, completed_at=utcnow())
            await record_bill(
                storage, submit, status="completed", billed=final.billed, note=str(failure)
            )
            forget_results(submit, final)
            raise PaidJobNotStoredError(partial, failure) from failure
        if trail is not None:
            trail.result_links, trail.completed_at = list(final.results), time.monotonic()
        forget_results(submit, final, images)
        record = JobRecord.build(submit, cost, final.billed, images, completed_at=utcnow())
        await RecordStore(storage).put_result(record)  # booked for the running total
        await _note_elsewhere(storage, namespace, request, identity, record)
        return record
    raise AssertionError("unreachable: the last attempt returns or raises")


async def find_finished_job(
    request: ImageRequest,
    *,
    namespace: str,
    credentials: EvoLinkCredentials,
    storage: AssetStorage,
    resubmits: int = 1,
    identity: dict[str, Any] | None = None,
) -> tuple[str, JobRecord | None]:
    """(the job key scope to use here, the finished record of any attempt made here or None).

    Storage reads only, no EvoLink call: a rerun of a finished job never needs EvoLink, which
    may have forgotten the task and its links long ago. Every attempt is looked at, since a
    later attempt's record means the earlier ones failed.

    Keys of EvoLink's own API are unscoped (`evolink.endpoint`). An old record found there that
    was made on a local server (the simulator, before records said where they were made) is
    set aside: the job then uses the explicitly scoped key of EvoLink's API, so the real job
    gets records of its own.
    """
    scope = credentials.endpoint_scope
    for _ in range(2):
        foreign: dict[str, Any] | None = None
        for attempt in range(1, resubmits + 2):
            key = job_key(namespace, request, attempt=attempt, identity=identity, endpoint=scope)
            data = await RecordStore(storage).get_result_data(key)
            if data is None:
                continue
            if reusable_here(data, credentials.base_url):
                return scope, JobRecord.model_validate(data)
            foreign = data
        if foreign is None or scope:
            return scope, None
        get_run_logger().warning(
            "Job %s has a record made at %s (task %s), not at %s: not reused; the job is sent "
            "to %s as a job of its own",
            namespace,
            record_endpoint(foreign),
            foreign.get("task_id"),
            credentials.endpoint,
            credentials.endpoint,
        )
        scope = DEFAULT_ENDPOINT
    return scope, None


def _family_key(namespace: str, request: ImageRequest, identity: dict[str, Any] | None) -> str:
    """The job's key as EvoLink's own API has it (no endpoint scope): where every endpoint's
    run of the same job leaves a note (`elsewhere.json`), so another endpoint's run can say why
    it does not reuse that job."""
    return job_key(namespace, request, identity=identity)


async def _note_elsewhere(
    storage: AssetStorage,
    namespace: str,
    request: ImageRequest,
    identity: dict[str, Any] | None,
    record: JobRecord,
) -> None:
    """Best effort: note where this job was done, under its unscoped key (see `_family_key`)."""
    try:
        await RecordStore(storage).put_elsewhere(
            _family_key(namespace, request, identity),
            {
                "endpoint": record.endpoint,
                "simulator": record.simulator,
                "job_key": record.job_key,
                "task_id": record.task_id,
            },
        )
    except Exception as error:  # noqa: BLE001 — only a log line depends on it
        get_run_logger().debug("Note of where job %s was done not written: %s", namespace, error)


async def _say_why_not_reused(
    request: ImageRequest,
    namespace: str,
    credentials: EvoLinkCredentials,
    storage: AssetStorage,
    identity: dict[str, Any] | None,
) -> None:
    """A job about to be sent that was already done at another endpoint: say so, and why it is
    not reused (records belong to the endpoint they were made at). Best effort."""
    try:
        note = await RecordStore(storage).get_elsewhere(_family_key(namespace, request, identity))
    except Exception:  # noqa: BLE001 — only a log line depends on it
        return
    if not note or reusable_here(note, credentials.base_url):
        return
    where = note.get("endpoint") or "another endpoint"
    kind = "the EvoLink simulator" if note.get("simulator") else where
    get_run_logger().warning(
        "Job %s was done before at %s (%s, task %s): records are never reused across "
        "endpoints, so it is sent to %s",
        namespace,
        kind,
        where,
        note.get("task_id"),
        credentials.endpoint,
    )


async def _sent_before(storage: AssetStorage, key: str) -> bool:
    """Whether the job's submit record exists (a rerun reattaches without waiting for a slot).

    Storage that does not answer counts as "not sent": the job then waits for a slot like a
    new one (the safe side), and `submit_job`, a step with retries, reads the record again.
    """
    try:
        return await RecordStore(storage).has_submit(key)
    except Exception:  # noqa: BLE001 — see above
        return False


async def _intent_before(storage: AssetStorage, key: str) -> bool:
    """Whether the job's intent record exists: its create may have reached EvoLink, and a retry
    resends the stored bytes (so a `prepare`d request is not needed). Unknown counts as no: the
    request is then prepared, which costs a look-up at most, and `submit_job` still resends the
    stored intent if there is one."""
    try:
        return await RecordStore(storage).has_intent(key)
    except Exception:  # noqa: BLE001 — see above
        return False
