"""Task states as types: what the API says about a job at one moment.

Parsing is tolerant by design (unknown fields ignored, optional fields optional), because the real
service wins where it and our reading of the docs disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from evolink.cost import BilledCost, billed_cost


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)

    @classmethod
    def parse(cls, value: Any) -> TaskStatus:
        try:
            return cls(str(value).lower())
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True, slots=True)
class TaskError:
    code: str | None
    message: str | None


def _result_urls(raw: dict[str, Any]) -> tuple[str, ...]:
    results = raw.get("results")
    if isinstance(results, list):
        return tuple(str(url) for url in results if isinstance(url, str) and url)
    result_data = raw.get("result_data")  # the alternative shape EvoLink's own client reads
    if isinstance(result_data, list):
        return tuple(
            str(item["image_url"])
            for item in result_data
            if isinstance(item, dict) and isinstance(item.get("image_url"), str)
        )
    return ()


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """One reading of a task (create response, query response or callback body)."""

    id: str
    status: TaskStatus
    progress: int = 0
    results: tuple[str, ...] = ()
    error: TaskError | None = None
    estimated_time: float | None = None
    created: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> TaskSnapshot:
        task_id = raw.get("id") or raw.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise ValueError("task object has no id")
        error = raw.get("error")
        task_info = raw.get("task_info")
        if not isinstance(task_info, dict):
            task_info = {}
        estimated = task_info.get("estimated_time")
        progress = raw.get("progress")
        created = raw.get("created")
        return cls(
            id=task_id,
            status=TaskStatus.parse(raw.get("status")),
            progress=int(progress) if isinstance(progress, (int, float)) else 0,
            results=_result_urls(raw),
            error=TaskError(
                code=None if error.get("code") is None else str(error.get("code")),
                message=error.get("message"),
            )
            if isinstance(error, dict)
            else None,
            estimated_time=float(estimated) if isinstance(estimated, (int, float)) else None,
            created=created if isinstance(created, int) else None,
            raw=raw,
        )

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def billed(self) -> BilledCost:
        return billed_cost(self.raw)
