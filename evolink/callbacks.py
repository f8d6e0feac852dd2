"""EvoLink callbacks as hints: what a callback body may tell us, the event a task's truth makes.

On completed, failed or cancelled, after billing, EvoLink POSTs the task object to the request's
`callback_url`. Nothing signs it, so the body is never believed: the receiver
(`prefect_evolink.tasks.callbacks`) takes only a task id from it (`callback_task_id`), looks the
id up in our storage (`evolink.jobs.task_index_key`), asks the API for the task, and emits the
event `task_event` builds from the API's answer. This module holds the parts that need neither
Prefect nor a socket: body parsing, the event's shape, the request rate limit.

Event shape (one per finished task):
- name: `evolink.task.completed`, or `evolink.task.failed` for failed *and* cancelled tasks (the
  client raises one `TaskFailedError` for both, and "no image came" is what an automation
  reacts to; `payload.status` and the `evolink.status` label tell them apart);
- resource: `evolink.task.<task id>`;
- related: `evolink.job.<job key>` (role `job`), for campaign jobs `evolink.campaign.<name>`
  (role `campaign`) and `evolink.asset.<campaign>/<asset>` (role `asset`), and the flow run that
  submitted it, `prefect.flow-run.<id>` (role `flow-run`), when known;
- payload: task id, status, job key, namespace, campaign/asset/stage, result count, error code
  and message, and the bill as `evolink.cost.billed_cost` reads it (`billed`: usd, credits,
  source — strings, None when unknown).

No Prefect imports: this is part of the API layer.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from evolink.campaign import parse_campaign_namespace
from evolink.jobs import TaskIndex, is_task_id
from evolink.states import TaskSnapshot, TaskStatus

EVENT_COMPLETED: Final = "evolink.task.completed"
EVENT_FAILED: Final = "evolink.task.failed"
TASK_RESOURCE: Final = "evolink.task."
JOB_RESOURCE: Final = "evolink.job."
CAMPAIGN_RESOURCE: Final = "evolink.campaign."
ASSET_RESOURCE: Final = "evolink.asset."
FLOW_RUN_RESOURCE: Final = "prefect.flow-run."
MAX_CALLBACK_BYTES: Final = 64 * 1024
"""A task object is a few KiB; 64 KiB leaves room for ten result links and long errors."""
MAX_ERROR_MESSAGE_CHARS: Final = 500
# Event ids are derived from (task id, status): a callback delivered twice (EvoLink retries, two
# receiver replicas) gives the same id, which the Prefect event store keeps once.
_EVENT_NAMESPACE: Final = uuid.UUID("6c7c0f49-3a51-4b8e-9d0e-6f1c2b7a5e11")


def callback_task_id(body: bytes) -> str | None:
    """The task id a callback body names (`id`, or `task_id`), None when it names none that
    could be an EvoLink task id. Nothing else in the body is read."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    task_id = data.get("id") or data.get("task_id")
    return task_id if is_task_id(task_id) else None


def event_name(status: TaskStatus) -> str | None:
    """The event a final status makes; None for a task that is not finished."""
    if status is TaskStatus.COMPLETED:
        return EVENT_COMPLETED
    if status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        return EVENT_FAILED
    return None


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One Prefect event, as plain data (`prefect.events.emit_event` takes these fields)."""

    event: str
    resource: dict[str, str]
    related: list[dict[str, str]]
    payload: dict[str, Any]
    id: uuid.UUID


def task_event(task: TaskSnapshot, index: TaskIndex) -> TaskEvent | None:
    """The event for `task` — a reading from the API, never a callback body — of the job
    `index` names; None while the task is not finished."""
    name = event_name(task.status)
    if name is None:
        return None
    parsed = parse_campaign_namespace(index.namespace)
    campaign, asset, stage = parsed if parsed else (None, None, None)
    job = {
        "prefect.resource.id": f"{JOB_RESOURCE}{index.job_key}",
        "prefect.resource.role": "job",
        "prefect.resource.name": index.namespace,
        "evolink.namespace": index.namespace,
    }
    if stage is not None:
        job["evolink.stage"] = stage
    related = [job]
    if campaign is not None and asset is not None:
        related.append(
            {
                "prefect.resource.id": f"{CAMPAIGN_RESOURCE}{campaign}",
                "prefect.resource.role": "campaign",
                "prefect.resource.name": campaign,
            }
        )
        related.append(
            {
                "prefect.resource.id": f"{ASSET_RESOURCE}{campaign}/{asset}",
                "prefect.resource.role": "asset",
                "prefect.resource.name": asset,
            }
        )
    if index.flow_run_id:
        related.append(
            {
                "prefect.resource.id": f"{FLOW_RUN_RESOURCE}{index.flow_run_id}",
                "prefect.resource.role": "flow-run",
            }
        )
    error = task.error
    payload: dict[str, Any] = {
        "task_id": task.id,
        "status": task.status.value,
        "job_key": index.job_key,
        "namespace": index.namespace,
        "campaign": campaign,
        "asset": asset,
        "stage": stage,
        "deployment": index.deployment,
        "result_count": len(task.results),
        "error": None
        if error is None
        else {"code": error.code, "message": (error.message or "")[:MAX_ERROR_MESSAGE_CHARS]},
        "billed": task.billed.as_dict(),
    }
    return TaskEvent(
        event=name,
        resource={
            "prefect.resource.id": f"{TASK_RESOURCE}{task.id}",
            "prefect.resource.name": task.id,
            "evolink.status": task.status.value,
        },
        related=related,
        payload=payload,
        id=uuid.uuid5(_EVENT_NAMESPACE, f"{task.id}:{task.status.value}"),
    )


@dataclass(slots=True)
class TokenBucket:
    """At most `rate` requests a second on average, `burst` at once. `take()` answers None
    (go ahead) or the seconds until a token is free (refuse with 429 and that Retry-After).

    One bucket for the whole receiver, not one per client address: EvoLink calls from its own
    addresses, and what the limit protects is our API key — every accepted callback costs one
    query of the task at EvoLink."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._tokens = float(self.burst)
        self._at = self.clock()

    def take(self) -> float | None:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / self.rate
