"""Job identity and the records a job leaves behind.

A *job* is one logical request ("campaign X, asset Y, draft stage, variant 2"). Its key is derived
only from what defines it — never from attempt numbers, times or run ids — so a retried task or a
re-run flow computes the same key, sends the same `Idempotency-Key` and finds the same records.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evolink.cost import BilledCost, CostEstimate
from evolink.errors import redact_url
from evolink.models import ImageRequest

IDEMPOTENCY_PREFIX = "evl"
JOBS_PREFIX = "_jobs"


def job_key(
    namespace: str,
    request: ImageRequest,
    *,
    attempt: int = 1,
    identity: dict[str, Any] | None = None,
) -> str:
    """Stable id of a logical job: sha256 of the namespace and what defines the request.

    `identity` replaces the request body where the body holds volatile parts — a presigned
    reference URL changes with every signing, while the image it points to (its sha256) does
    not. `attempt` > 1 is a deliberate resubmission after a failed task (a new paid job).
    """
    canonical = json.dumps(
        {
            "namespace": namespace,
            "request": request.to_payload() if identity is None else identity,
            "attempt": attempt,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def idempotency_key(key: str) -> str:
    """The header value for a job key: 16-96 chars of [A-Za-z0-9._-], as the API requires."""
    return f"{IDEMPOTENCY_PREFIX}-{key}"


def submit_record_key(key: str) -> str:
    return f"{JOBS_PREFIX}/{key}/submit.json"


def intent_record_key(key: str) -> str:
    """The exact request about to be sent, stored before the create call: a rerun after a crash
    resends these very bytes, so the Idempotency-Key replays instead of conflicting."""
    return f"{JOBS_PREFIX}/{key}/intent.json"


def job_record_key(key: str) -> str:
    return f"{JOBS_PREFIX}/{key}/result.json"


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
        )
