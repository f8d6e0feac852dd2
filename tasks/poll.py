"""Poll: wait for a submitted task, paced, with a deadline, progress in the logs."""

from __future__ import annotations

from prefect import get_run_logger

from blocks.credentials import EvoLinkCredentials
from evolink.jobs import SubmitRecord, utcnow
from evolink.polling import PollSchedule
from evolink.states import TaskSnapshot, TaskStatus
from tasks.retries import evolink_step


@evolink_step("evolink-poll", "poll {submit.task_id}")
async def poll_job(
    submit: SubmitRecord, credentials: EvoLinkCredentials, schedule: PollSchedule | None = None
) -> TaskSnapshot:
    """Return the completed task; raise `TaskFailedError` or `PollDeadlineExceeded`.

    Polling never submits: a retry of this task only polls the same task id again.
    """
    logger = get_run_logger()
    last: tuple[str, int] | None = None

    def report(snapshot: TaskSnapshot, elapsed: float) -> None:
        nonlocal last
        if (snapshot.status.value, snapshot.progress) != last:
            last = (snapshot.status.value, snapshot.progress)
            logger.info(
                "Task %s %s %d%% after %.1fs",
                snapshot.id,
                snapshot.status.value,
                snapshot.progress,
                elapsed,
            )

    age = max(0.0, (utcnow() - submit.submitted_at).total_seconds())
    async with credentials.get_client() as client:
        return await client.wait_for_task(
            submit.task_id,
            schedule=schedule,
            first=create_reading(submit, age, schedule or PollSchedule()),
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
