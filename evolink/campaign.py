"""What a campaign run produced: per-asset outcomes, the cost rows, the manifest, the summary.

Prefect-free so the figures in the artifacts, the manifest and the tests come from one place.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evolink.brief import AssetBrief, AssetPlan
from evolink.jobs import JobRecord, StoredImage


class AssetStatus(StrEnum):
    FINAL = "final"  # final image stored
    REJECTED = "rejected"  # the reviewer rejected every draft: no final spent
    NOT_REVIEWED = "not_reviewed"  # approval timed out: no final spent
    BUDGET_STOPPED = "budget_stopped"  # the final did not fit what was left of the budget
    FAILED = "failed"  # a draft or final job failed (e.g. content policy)


#: Outcomes that make the run's final state Failed (see README "Campaign run states").
FAILING_STATUSES = frozenset({AssetStatus.FAILED, AssetStatus.BUDGET_STOPPED})


class JobRow(BaseModel):
    """One paid job, as the cost table and the manifest show it."""

    model_config = ConfigDict(frozen=True)

    asset: str
    stage: str
    quality: str
    pixel_size: str
    images: int
    output_tokens: int
    image_input_tokens: int
    text_input_tokens: int
    estimated_usd: str
    billed_usd: str | None
    billed_credits: str | None
    task_id: str
    duration_s: float
    stored_at: list[str]
    failed: str | None = Field(
        default=None, description="why this paid job's images were not all stored (else None)"
    )


class AssetOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    asset: str
    status: AssetStatus
    detail: str = ""
    chosen_draft: int | None = None
    drafts: JobRecord | None = None
    final: JobRecord | None = None


class CampaignTotals(BaseModel):
    model_config = ConfigDict(frozen=True)

    estimated_usd: str
    billed_usd: str
    billed_credits: str
    unknown_bills: int = Field(
        description="jobs whose bill could not be read (counted at estimate)"
    )
    by_stage: dict[str, str]


class CampaignManifest(BaseModel):
    """The run manifest (manifest.json), for downstream pipelines."""

    model_config = ConfigDict(frozen=True)

    campaign: str
    flow_run_id: str | None
    started_at: datetime
    finished_at: datetime
    selection: str
    budget_usd: str
    budget_left_usd: str
    pre_flight_estimate_usd: str
    high_quality_variants_usd: str = Field(description="the same finals as k high-quality variants")
    totals: CampaignTotals
    assets: list[AssetOutcome]
    jobs: list[JobRow]

    @property
    def failed_assets(self) -> list[AssetOutcome]:
        return [outcome for outcome in self.assets if outcome.status in FAILING_STATUSES]


def job_row(
    asset: str, stage: str, record: JobRecord, plan_estimate: Any, failed: str | None = None
) -> JobRow:
    width, height = plan_estimate.width, plan_estimate.height
    if record.images and record.images[0].width:
        width, height = record.images[0].width, record.images[0].height
    return JobRow(
        asset=asset,
        stage=stage,
        quality=record.request.quality,
        pixel_size=f"{width}x{height}",
        images=len(record.images),
        output_tokens=plan_estimate.output_tokens,
        image_input_tokens=plan_estimate.image_input_tokens,
        text_input_tokens=plan_estimate.text_input_tokens,
        estimated_usd=record.estimated_usd,
        billed_usd=record.billed_usd,
        billed_credits=record.billed_credits,
        task_id=record.task_id,
        duration_s=round((record.completed_at - record.submitted_at).total_seconds(), 2),
        stored_at=[image.uri for image in record.images],
        failed=failed,
    )


def totals(rows: Sequence[JobRow]) -> CampaignTotals:
    billed = Decimal(0)
    credits = Decimal(0)
    unknown = 0
    by_stage: dict[str, Decimal] = {}
    for row in rows:
        if row.billed_usd is None:
            unknown += 1
            amount = Decimal(row.estimated_usd)
        else:
            amount = Decimal(row.billed_usd)
            credits += Decimal(row.billed_credits or 0)
        billed += amount
        by_stage[row.stage] = by_stage.get(row.stage, Decimal(0)) + amount
    return CampaignTotals(
        estimated_usd=str(sum((Decimal(r.estimated_usd) for r in rows), Decimal(0))),
        billed_usd=str(billed),
        billed_credits=str(credits),
        unknown_bills=unknown,
        by_stage={stage: str(amount) for stage, amount in by_stage.items()},
    )


# --- selection -------------------------------------------------------------------------------

Selector = Callable[[AssetBrief, list[StoredImage]], int | None]


def largest_file(asset: AssetBrief, drafts: list[StoredImage]) -> int | None:
    """Default auto rule: the draft with the most bytes (ties → lowest index).

    A losslessly compressed image's size grows with its detail and texture, so among variants
    of one prompt the largest file is rarely the flat or empty one. Cheap, deterministic, and
    replaceable: pass `selector="package.module:function"` to the flow.
    """
    if not drafts:
        return None
    return max(drafts, key=lambda image: (image.size_bytes, -image.index)).index


def first_draft(asset: AssetBrief, drafts: list[StoredImage]) -> int | None:
    """Always the first variant: for tests and for briefs whose drafts are interchangeable."""
    return drafts[0].index if drafts else None


def load_selector(path: str) -> Selector:
    """`"evolink.campaign:largest_file"` → the function."""
    module_name, _, name = path.partition(":")
    if not name:
        raise ValueError(f"selector must look like 'package.module:function', got {path!r}")
    selector = getattr(importlib.import_module(module_name), name)
    if not callable(selector):
        raise ValueError(f"selector {path!r} is not callable")
    return selector  # type: ignore[no-any-return]


def draft_first_saving(plans: Sequence[AssetPlan]) -> tuple[Decimal, Decimal]:
    """(draft-first estimate, k-high-variants estimate) over the whole campaign."""
    ours = sum((p.draft_estimate.usd + p.final_estimate.usd for p in plans), Decimal(0))
    variants = sum((p.high_variants_estimate.usd for p in plans), Decimal(0))
    return ours, variants
