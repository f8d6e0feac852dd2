"""What paid jobs and campaigns cost: the estimate sums, the cost rows, the manifest, outcomes.

Prefect-free so the figures in the artifacts, the manifest, the logs and the tests come from one
place. Money is formatted by `evolink.cost.usd` only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evolink.brief import AssetBrief, AssetPlan, CampaignBrief
from evolink.cost import CostEstimate, usd
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
    asset: str,
    stage: str,
    record: JobRecord,
    plan_estimate: CostEstimate,
    failed: str | None = None,
) -> JobRow:
    """A campaign's cost row: one paid job, its figures as billed, the tokens as planned."""
    first = record.images[0] if record.images else None
    if first is not None and first.width:
        pixel_size = f"{first.width}x{first.height}"
    else:
        pixel_size = f"{plan_estimate.width}x{plan_estimate.height}"
    return JobRow(
        asset=asset,
        stage=stage,
        quality=record.request.quality,
        pixel_size=pixel_size,
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


def image_cost_rows(record: JobRecord, failed: str | None = None) -> list[dict[str, Any]]:
    """A single job's cost table: one row per stored image, the job's cost split evenly over
    its `n` images.

    With `failed` (a paid job whose images were not all stored) the images that are missing get
    one more row carrying their share, so the rows always add up to what the job cost.
    """
    count = max(1, record.request.n, len(record.images))

    def share(value: str | None, images: int) -> Decimal | None:
        return None if value is None else Decimal(value) * images / count

    def row(images: int, pixels: str, stored_at: str, sha256: str) -> dict[str, Any]:
        credits = share(record.billed_credits, images)
        return {
            "job": record.namespace,
            "task_id": record.task_id,
            "quality": record.request.quality,
            "pixels": pixels,
            "estimated_usd": usd(share(record.estimated_usd, images)),
            "billed_usd": usd(share(record.billed_usd, images)),
            "billed_credits": "unknown" if credits is None else f"{credits:.5f}",
            "stored_at": stored_at,
            "sha256": sha256,
        }

    rows = [
        row(1, f"{image.width}x{image.height}", image.uri, image.sha256[:16])
        for image in record.images
    ]
    if failed is not None:
        missing = count - len(record.images)
        rows.append(row(missing, "-", f"NOT STORED (paid, {missing} image(s)): {failed}", "-"))
    return rows


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


# --- estimate sums ---------------------------------------------------------------------------


def asset_estimate_usd(plan: AssetPlan) -> Decimal:
    """What an asset's drafts and its final are estimated to cost together."""
    return plan.draft_estimate.usd + plan.final_estimate.usd


def campaign_estimate_usd(plans: Sequence[AssetPlan]) -> Decimal:
    """The pre-flight estimate of a campaign: every asset's drafts and final."""
    return sum((asset_estimate_usd(plan) for plan in plans), Decimal(0))


def draft_first_saving(plans: Sequence[AssetPlan]) -> tuple[Decimal, Decimal]:
    """(draft-first estimate, k-high-variants estimate) over the whole campaign."""
    variants = sum((plan.high_variants_estimate.usd for plan in plans), Decimal(0))
    return campaign_estimate_usd(plans), variants


def budget_refusal(brief: CampaignBrief, plans: Sequence[AssetPlan]) -> str | None:
    """The refusal message when drafts + finals cannot fit the budget, else None."""
    total = campaign_estimate_usd(plans)
    if total <= brief.budget_usd:
        return None
    lines = [
        f"campaign {brief.campaign!r} is estimated at {usd(total)}, over its budget of "
        f"{usd(brief.budget_usd)}; nothing was sent. Estimate per asset:",
        *(
            f"  {p.asset.id}: drafts {usd(p.draft_estimate.usd)} ({p.draft.n}× {p.draft.quality}) "
            f"+ final {usd(p.final_estimate.usd)} ({p.final_quality}) "
            f"= {usd(asset_estimate_usd(p))}"
            for p in plans
        ),
    ]
    return "\n".join(lines)
