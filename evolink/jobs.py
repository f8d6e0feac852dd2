"""Job identity and the records a job leaves behind.

A *job* is one logical request ("campaign X, asset Y, draft stage, variant 2"). Its key is derived
only from what defines it — never from attempt numbers, times or run ids — so a retried task or a
re-run flow computes the same key, sends the same `Idempotency-Key` and finds the same records.
Nor from `callback_url`: where EvoLink reports a finished task is delivery, not the job — moving
the callback receiver must not make every job a new, paid one.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from evolink.cost import BilledCost, CostEstimate
from evolink.errors import redact_url

# The record keys live in the layout (evolink.layout); these names stay importable from here.
from evolink.layout import (
    JOBS_PREFIX as JOBS_PREFIX,
)
from evolink.layout import (
    TASK_ID_RE as TASK_ID_RE,
)
from evolink.layout import (
    TASKS_PREFIX as TASKS_PREFIX,
)
from evolink.layout import (
    intent_record_key as intent_record_key,
)
from evolink.layout import (
    is_task_id as is_task_id,
)
from evolink.layout import (
    job_record_key as job_record_key,
)
from evolink.layout import (
    submit_record_key as submit_record_key,
)
from evolink.layout import (
    task_index_key as task_index_key,
)
from evolink.models import ImageRequest

IDEMPOTENCY_PREFIX = "evl"
# Request fields that say how a result is delivered, not what the job is (see the docstring).
DELIVERY_FIELDS: Final = ("callback_url",)


def job_key(
    namespace: str,
    request: ImageRequest,
    *,
    attempt: int = 1,
    identity: dict[str, Any] | None = None,
    endpoint: str = "",
) -> str:
    """Stable id of a logical job: sha256 of the namespace, what defines the request and the
    API it is sent to.

    `identity` replaces the request body where the body holds volatile parts — a presigned
    reference URL changes with every signing, while the image it points to (its sha256) does
    not. `attempt` > 1 is a deliberate resubmission after a failed task (a new paid job).
    `callback_url` never counts (`DELIVERY_FIELDS`), in the request or in `identity["request"]`;
    keys of jobs sent without one are what they always were.

    `endpoint` is `evolink.endpoint.endpoint_scope(base_url)`: empty for EvoLink's own API, so
    those keys are what they always were; any other base URL (the simulator, a proxy, a
    stand-in) makes other keys, so a job done there is never taken for one done here.
    """
    body: dict[str, Any] = {
        "namespace": namespace,
        "request": _without_delivery(request.to_payload() if identity is None else identity),
        "attempt": attempt,
    }
    if endpoint:
        body["endpoint"] = endpoint
    canonical = json.dumps(
        body,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _without_delivery(body: dict[str, Any]) -> dict[str, Any]:
    """The request body (or identity) as the job key sees it: delivery fields dropped from a
    body, and set to None in an identity's `request` dump (which held None for them before
    callbacks existed, so existing keys stay the same)."""
    body = {name: value for name, value in body.items() if name not in DELIVERY_FIELDS}
    inner = body.get("request")
    if isinstance(inner, dict) and any(name in inner for name in DELIVERY_FIELDS):
        body["request"] = {
            **inner,
            **{name: None for name in DELIVERY_FIELDS if name in inner},
        }
    return body


def idempotency_key(key: str) -> str:
    """The header value for a job key: 16-96 chars of [A-Za-z0-9._-], as the API requires."""
    return f"{IDEMPOTENCY_PREFIX}-{key}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SentRequest(_Record):
    """What was sent, as a record: no validation on load (the URL policy applies when sending,
    and a record must stay readable wherever it is read) and no query strings in URLs
    (presigned signatures are credentials, and records outlive them)."""

    model: str
    prompt: str
    size: str
    resolution: str | None = None
    quality: str
    n: int
    image_urls: list[str] | None = None
    mask_url: str | None = None
    callback_url: str | None = None

    @classmethod
    def of(cls, request: ImageRequest) -> SentRequest:
        data = request.model_dump()
        data["image_urls"] = [redact_url(url) for url in request.image_urls or ()] or None
        data["mask_url"] = request.mask_url and redact_url(request.mask_url)
        data["callback_url"] = request.callback_url and redact_url(request.callback_url)
        return cls.model_validate(data)


class SubmitRecord(_Record):
    """Written right after the create call returns and before polling: a crash after this
    point loses nothing, because a rerun finds the task id here and polls it."""

    job_key: str
    namespace: str
    idempotency_key: str
    task_id: str
    request: SentRequest
    estimate: dict[str, Any]
    submitted_at: datetime = Field(default_factory=utcnow)
    replayed: bool = False
    estimated_time: float | None = None
    endpoint: str | None = None
    """The normalized base URL the task was created at (`evolink.endpoint`); None in records
    written before endpoints were recorded."""
    simulator: bool = False
    """Created at the bundled simulator (it said so in a response header): not real money."""
    request_id: str | None = None
    """EvoLink's `x-request-id` of the create response (what its support asks for); None when
    it sent none, and in records written before request ids were kept."""


class TaskIndex(_Record):
    """Written at submit, for a task sent with a `callback_url` (`task_index_key`): task id →
    job. Whoever learns of a task only by its id (the callback receiver) finds its job here in
    one read; a task id without one is not ours."""

    task_id: str
    job_key: str
    namespace: str
    submitted_at: datetime
    flow_run_id: str | None = None
    deployment: str | None = None

    @classmethod
    def of(cls, submit: SubmitRecord, origin: dict[str, Any] | None = None) -> TaskIndex:
        origin = origin or {}
        flow_run_id, deployment = origin.get("flow_run_id"), origin.get("deployment")
        return cls(
            task_id=submit.task_id,
            job_key=submit.job_key,
            namespace=submit.namespace,
            submitted_at=submit.submitted_at,
            flow_run_id=flow_run_id if isinstance(flow_run_id, str) else None,
            deployment=deployment if isinstance(deployment, str) else None,
        )


class StoredImage(_Record):
    """One image safely in storage."""

    index: int
    key: str
    uri: str
    sha256: str
    size_bytes: int
    content_type: str
    width: int | None
    height: int | None
    source_url: str = Field(description="result link without its query string")


class JobRecord(_Record):
    """Everything a finished job produced and cost; also returned by the flows."""

    job_key: str
    namespace: str
    task_id: str
    request: SentRequest
    estimated_usd: str
    estimated_credits: str
    billed_usd: str | None = Field(description="None when the bill could not be read (not 0)")
    billed_credits: str | None
    billed_source: str
    images: list[StoredImage]
    submitted_at: datetime
    completed_at: datetime
    stored_at: datetime = Field(default_factory=utcnow)
    endpoint: str | None = None
    """Where the job was made (its submit record's `endpoint`); reused only there."""
    simulator: bool = False
    """Made at the bundled simulator: its images are test patterns and its bill is not real."""
    request_id: str | None = None
    """EvoLink's `x-request-id` of the create call (its submit record's `request_id`)."""

    @classmethod
    def build(
        cls,
        submit: SubmitRecord,
        estimate: CostEstimate,
        billed: BilledCost,
        images: list[StoredImage],
        completed_at: datetime,
    ) -> JobRecord:
        return cls(
            job_key=submit.job_key,
            namespace=submit.namespace,
            task_id=submit.task_id,
            request=submit.request,
            estimated_usd=str(estimate.usd),
            estimated_credits=str(estimate.credits),
            billed_usd=None if billed.usd is None else str(billed.usd),
            billed_credits=None if billed.credits is None else str(billed.credits),
            billed_source=billed.source,
            images=images,
            submitted_at=submit.submitted_at,
            completed_at=completed_at,
            endpoint=submit.endpoint,
            simulator=submit.simulator,
            request_id=submit.request_id,
        )
