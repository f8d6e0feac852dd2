"""EvoLink callbacks as hints: what a callback body may tell us, the event a task's truth makes.

On completed, failed or cancelled, after billing, EvoLink POSTs the task object to the request's
`callback_url`. Nothing signs it, so the body is never believed: the receiver
(`prefect_evolink.tasks.callbacks`) takes only a task id from it (`callback_task_id`), looks the
id up in our storage (`evolink.jobs.task_index_key`), asks the API for the task, and emits the
event `task_event` builds from the API's answer. This module holds the parts that need neither
Prefect nor a socket: strict body parsing (`read_callback_task_id`), the event's shape, the
durable "reported" marker (`reported_marker_key`), and the rate limits (`TokenBucket` for what
reads the API, `SourceBuckets` per sender for what reads storage).

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
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NoReturn

from evolink.campaign import parse_campaign_namespace
from evolink.errors import BadCallbackError
from evolink.jobs import TaskIndex
from evolink.layout import is_task_id
from evolink.layout import reported_marker_key as reported_marker_key  # its home is the layout
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
MAX_NUMBER_CHARS: Final = 64
"""A task object's numbers (credits, timestamps, sizes) are short; a longer one is an attack."""
# The receiver's default limits (prefect_evolink.tasks.callbacks; here so that the CLI's --help
# needs no Prefect import).
DEFAULT_RATE: Final = 20.0
"""EvoLink task reads a second, for all senders together (`TokenBucket`)."""
DEFAULT_BURST: Final = 40
DEFAULT_SOURCE_RATE: Final = 50.0
"""Storage lookups a second per sender address (`SourceBuckets`)."""
DEFAULT_SOURCE_BURST: Final = 100
READ_TIMEOUT_SECONDS: Final = 10.0
"""Headers and body of one request, in all (EvoLink sends a few KiB at once)."""
MAX_CONNECTIONS: Final = 256
MAX_CONNECTIONS_PER_SOURCE: Final = 16
# Event ids are derived from (task id, status): a callback delivered twice (EvoLink retries, two
# receiver replicas) gives the same id, which the Prefect event store keeps once.
_EVENT_NAMESPACE: Final = uuid.UUID("6c7c0f49-3a51-4b8e-9d0e-6f1c2b7a5e11")


def _refuse(reason: str) -> NoReturn:
    raise BadCallbackError(reason)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:  # two "id"s: which one would a reader believe?
            _refuse("duplicate_key")
        data[key] = value
    return data


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        _refuse("bad_number")
    return int(text)


def _float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):  # 1e999 is inf: no task object carries one
        _refuse("bad_number")
    return value


def _constant(_: str) -> NoReturn:
    _refuse("bad_number")  # NaN, Infinity, -Infinity: not JSON


def read_callback_task_id(body: bytes) -> str:
    """The task id a callback body names (`id`, or `task_id`); `BadCallbackError` for anything else.

    The body must be one UTF-8 JSON object, without duplicate keys, NaN/Infinity or numbers
    over `MAX_NUMBER_CHARS` characters; nesting deep enough to exhaust the parser's recursion
    is refused (`too_deep`), not raised. Nothing but the id is read."""
    try:
        data = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_object,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except BadCallbackError:
        raise
    except RecursionError:
        raise BadCallbackError("too_deep") from None
    except (ValueError, UnicodeDecodeError):
        raise BadCallbackError("not_json") from None
    if not isinstance(data, dict):
        raise BadCallbackError("not_an_object")
    task_id = data.get("id") or data.get("task_id")
    if not is_task_id(task_id):
        raise BadCallbackError("no_task_id")
    return str(task_id)


def callback_task_id(body: bytes) -> str | None:
    """`read_callback_task_id`, None instead of `BadCallbackError`."""
    try:
        return read_callback_task_id(body)
    except BadCallbackError:
        return None


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


def reported_marker(event: TaskEvent, at: datetime) -> dict[str, str]:
    """The marker's content: which event, with which id, for which status, since when.
    `state` is "reported"; the receiver rewrites it to "emit_failed" when the event could not
    be handed over, so that EvoLink's retry emits it (the same id) after all."""
    return {
        "task_id": event.payload["task_id"],
        "status": event.payload["status"],
        "event": event.event,
        "event_id": str(event.id),
        "reported_at": at.isoformat(),
        "state": "reported",
    }


@dataclass(slots=True)
class TokenBucket:
    """At most `rate` requests a second on average, `burst` at once. `take()` answers None
    (go ahead) or the seconds until a token is free (refuse with 429 and that Retry-After).

    The receiver's global bucket guards only what reads the API with our key (one task query
    per callback that got that far); cheap refusals never take from it, so a junk flood cannot
    spend the tokens genuine callbacks need."""

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


@dataclass(slots=True)
class SourceBuckets:
    """One `TokenBucket` per sender address (at most `max_sources`, least recently used
    forgotten first): what a request costs in storage reads is charged to whoever sent it."""

    rate: float
    burst: int
    max_sources: int = 4096
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, TokenBucket] = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        TokenBucket(self.rate, self.burst, self.clock)  # the same validation

    def take(self, source: str) -> float | None:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(self.rate, self.burst, self.clock)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        return bucket.take()

    def __len__(self) -> int:
        return len(self._buckets)
