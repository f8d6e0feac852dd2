"""Poll: wait for a submitted task, paced, with a deadline, progress in the logs."""

from __future__ import annotations

import time
from typing import Final

from prefect import get_run_logger

from evolink.jobs import SubmitRecord, utcnow
from evolink.polling import PollSchedule
from evolink.states import TaskSnapshot, TaskStatus
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.steps import evolink_step

PROGRESS_LOG_SECONDS: Final = 30.0
"""A poll logs every status change, but a mere progress change only this long after its last
line: run logs are API writes, and a campaign polls thousands of jobs."""


@evolink_step("evolink-poll", "poll {submit.task_id}")
async def poll_job(
    submit: SubmitRecord, credentials: EvoLinkCredentials, schedule: PollSchedule | None = None
) -> TaskSnapshot:
    """Wait for a submitted EvoLink task to finish and return it, completed.

    Polling never submits: a retry of this task only polls the same task id again. Queries are
    paced by the schedule (from the credentials block's poll intervals) and predicted from the
    task's age since submission, while the deadline counts from the start of this poll, so a
    rerun resuming an old task still gets its full wait; right after a create, its response
    serves as the first reading instead of a query. Status changes go to the log, progress at
    most every `PROGRESS_LOG_SECONDS`; that first reading is not logged (the submit step logs
    the task's creation).

    Args:
        submit: The submit record of the job, with the EvoLink task id to poll.
        credentials: The EvoLink credentials block the client is made from.
        schedule: Poll pacing and deadline; None uses the defaults (a 900 s deadline).

    Returns:
        The task's final snapshot, status completed, with its result links and its bill.

    Raises:
        TaskFailedError: The task ended failed or cancelled (not billed); it says whether a
            resubmission may help. Not retried.
        PollDeadlineExceeded: The task did not finish in time; it may still finish, so a rerun
            polls the same id again and never resubmits.
        APIConnectionError: The status could not be read; the task retries.

    Example:
        A Prefect task: call it inside a flow, after `submit_job`:
        ```python
        done = await poll_job(record, credentials, credentials.poll_schedule(600))
        print(done.results)
        ```
    """
    logger = get_run_logger()
    last: tuple[str, int] | None = None
    logged_at = 0.0
    age = max(0.0, (utcnow() - submit.submitted_at).total_seconds())
    first = create_reading(submit, age, schedule or PollSchedule())

    def report(snapshot: TaskSnapshot, elapsed: float) -> None:
        nonlocal last, logged_at
        now = time.monotonic()
        if snapshot is first:
            # The create response, which the submit step has just logged ("Task … created"):
            # not said again. Every run log line is a row the Prefect API stores (about 4 ms
            # of its CPU each); a campaign's wave of jobs sends them all at once.
            last, logged_at = (snapshot.status.value, snapshot.progress), now
            return
        status_changed = last is None or snapshot.status.value != last[0]
        progressed = last is not None and snapshot.progress != last[1]
        if status_changed or (progressed and now - logged_at >= PROGRESS_LOG_SECONDS):
            last, logged_at = (snapshot.status.value, snapshot.progress), now
            logger.info(
                "Task %s %s %d%% after %.1fs",
                snapshot.id,
                snapshot.status.value,
                snapshot.progress,
                elapsed,
            )

    async with credentials.get_client() as client:
        return await client.wait_for_task(
            submit.task_id,
            schedule=schedule,
            first=first,
            on_update=report,
            elapsed_before=age,
        )


def create_reading(submit: SubmitRecord, age: float, schedule: PollSchedule) -> TaskSnapshot | None:
    """What the create response said, as the poll loop's first reading — while it is fresh.

    Right after submit the task is pending with EvoLink's `estimated_time`; asking again at
    once would spend a query to learn just that. A replayed create (the task may be older than
    our record) or a record older than one poll interval (a retry, a rerun) gets a real query.
    """
    if submit.replayed or age >= schedule.min_interval:
        return None
    return TaskSnapshot(
        id=submit.task_id, status=TaskStatus.PENDING, estimated_time=submit.estimated_time
    )
