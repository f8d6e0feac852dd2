"""Look-ups: one status query of a task EvoLink already has, as a pipeline step with retries.

The flows never call the EvoLink client themselves: each call is a step (`evolink_step`), so a
passing outage is retried at task level like any submit, poll or persist. These two read a task
that was already submitted — the chosen draft whose result link a final needs, or a task whose
bill is not yet known — and never create one.
"""

from __future__ import annotations

from evolink.errors import EvoLinkError
from evolink.states import TaskSnapshot, TaskStatus
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.steps import evolink_step


@evolink_step("evolink-fetch-task", "fetch {task_id}")
async def fetch_task(task_id: str, credentials: EvoLinkCredentials) -> TaskSnapshot:
    """Read a task's current state and bill from EvoLink: one status query, no waiting.

    Args:
        task_id: The EvoLink task to read.
        credentials: The EvoLink credentials block the client is made from.

    Returns:
        The task as EvoLink reports it now: status, progress, result links and bill.

    Raises:
        NotFoundError: EvoLink does not know the task (or no longer keeps it); not retried.
        ServerError: EvoLink kept failing past the client's attempts; the task retries.
        APIConnectionError: No usable response; the task retries.

    Example:
        A Prefect task: call it inside a flow:
        ```python
        task = await fetch_task("task-unified-...", credentials)
        print(task.status, task.billed.usd)
        ```
    """
    async with credentials.get_client() as client:
        return await client.get_task(task_id)


@evolink_step("evolink-lookup-result-url", "lookup {task_id} image {index}")
async def lookup_result_url(task_id: str, index: int, credentials: EvoLinkCredentials) -> str:
    """The current result link of one image of a completed task (links are signed for 24 h).

    Args:
        task_id: The completed EvoLink task (e.g. the draft job whose image a final builds on).
        index: The image's position among the task's results (0 for the first).
        credentials: The EvoLink credentials block the client is made from.

    Returns:
        The image's result link, with its signature: pass it on, never store it.

    Raises:
        EvoLinkError: The task is not completed or has no image at `index`; not retried.
        ServerError: EvoLink kept failing past the client's attempts; the task retries.
        APIConnectionError: No usable response; the task retries.

    Example:
        A Prefect task: call it inside a flow:
        ```python
        url = await lookup_result_url(drafts.task_id, 1, credentials)
        ```
    """
    async with credentials.get_client() as client:
        task = await client.get_task(task_id)
    if task.status is not TaskStatus.COMPLETED or not 0 <= index < len(task.results):
        raise EvoLinkError(
            f"task {task_id} has no result link for image {index} "
            f"(status {task.status.value}, {len(task.results)} link(s))",
            task_id=task_id,
        )
    return task.results[index]
