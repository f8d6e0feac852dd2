"""Poll: wait for a submitted task, paced, with a deadline, progress in the logs."""

from __future__ import annotations

from prefect import get_run_logger

from blocks.credentials import EvoLinkCredentials
from evolink.jobs import SubmitRecord
from evolink.polling import PollSchedule
from evolink.states import TaskSnapshot
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

    async with credentials.get_client() as client:
        return await client.wait_for_task(submit.task_id, schedule=schedule, on_update=report)
