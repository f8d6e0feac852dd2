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
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from evolink.adaptations import stage_kind
from evolink.brief import AssetBrief, CampaignBrief
from evolink.cost import UNKNOWN_COST, BilledCost, CostEstimate, usd
from evolink.jobs import JobRecord, StoredImage, SubmitRecord, utcnow
from evolink.plans import AssetPlan


class AssetStatus(StrEnum):
    FINAL = "final"  # final image stored
    REJECTED = "rejected"  # the reviewer rejected every draft: no final spent
    NOT_REVIEWED = "not_reviewed"  # approval timed out: no final spent
    BUDGET_STOPPED = "budget_stopped"  # the final did not fit what was left of the budget
    FAILED = "failed"  # anything went wrong with this asset (a job, storage, the selector, …)
    CANCELLED = "cancelled"  # the run was cancelled or interrupted before this asset finished
    PENDING = "pending"  # not finished yet: a run in progress, or one that was killed


#: Outcomes that make the run's final state Failed (see README "Campaign run states").
FAILING_STATUSES = frozenset(
    {AssetStatus.FAILED, AssetStatus.BUDGET_STOPPED, AssetStatus.CANCELLED, AssetStatus.PENDING}
)

#: What `CampaignManifest.run_state` says: the run was still going when this was written
#: ("running"), it ended ("completed", "failed", "cancelled"), or a manifest rebuilt from the
#: job records found only a "running" one ("unfinished": killed, or still running).
RunState = Literal["running", "completed", "failed", "cancelled", "unfinished"]

CAMPAIGN_NAMESPACE: Final = "campaign"
SUBMISSION_UNKNOWN: Final = "submission unknown — a rerun reattaches by its Idempotency-Key"


def campaign_namespace(campaign: str, asset: str, stage: str) -> str:
    """The job namespace of one asset's stage; the submit record of each job carries it."""
    return f"{CAMPAIGN_NAMESPACE}/{campaign}/{asset}/{stage}"


def parse_campaign_namespace(namespace: str) -> tuple[str, str, str] | None:
    """`campaign/<campaign>/<asset>/<stage>` → (campaign, asset, stage); None for other jobs.

    Asset ids and stages never contain '/', so a campaign name that does still parses.
    """
    head, _, rest = namespace.partition("/")
    parts = rest.rsplit("/", 2)
    if head != CAMPAIGN_NAMESPACE or len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


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
    endpoint: str | None = Field(
        default=None, description="the API the job was made at (evolink.endpoint); None: older"
    )
    simulator: bool = Field(
        default=False, description="made at the bundled simulator: synthetic, not real money"
    )
    earlier_run: bool = Field(
        default=False, description="paid in an earlier run of the campaign, kept on its books"
    )


class AdaptationOutcome(BaseModel):
    """What became of one adaptation of an asset's final (`evolink.adaptations`)."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: AssetStatus
    """FINAL: made and stored (approved, when adaptations are reviewed); REJECTED by the
    reviewer (its image stays stored, marked); NOT_REVIEWED; BUDGET_STOPPED; FAILED;
    CANCELLED; PENDING."""
    detail: str = ""
    error_type: str | None = None
    error: str | None = None
    record: JobRecord | None = None


class AssetOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    asset: str
    status: AssetStatus
    detail: str = ""
    error_type: str | None = Field(
        default=None, description="the exception that ended this asset (failed/cancelled)"
    )
    error: str | None = Field(default=None, description="its message")
    chosen_draft: int | None = None
    drafts: JobRecord | None = None
    final: JobRecord | None = None
    adaptations: list[AdaptationOutcome] = Field(
        default_factory=list,
        description="the adaptations of the final, once it is stored (in the brief's order)",
    )

    def adaptation(self, adaptation_id: str) -> AdaptationOutcome | None:
        return next((a for a in self.adaptations if a.id == adaptation_id), None)


class CampaignTotals(BaseModel):
    model_config = ConfigDict(frozen=True)

    estimated_usd: str
    billed_usd: str
    billed_credits: str
    unknown_bills: int = Field(
        description="jobs whose bill could not be read (counted at estimate)"
    )
    by_stage: dict[str, str]


class UncertainSubmission(BaseModel):
    """A job whose create call may or may not have reached EvoLink (its intent record exists,
    its submit record does not): not counted as billed, never dropped, never re-created — a
    rerun sends the same request with the same Idempotency-Key and reattaches to the task if
    there is one."""

    model_config = ConfigDict(frozen=True)

    asset: str
    stage: str
    job_key: str
    idempotency_key: str
    estimated_usd: str
    note: str = SUBMISSION_UNKNOWN


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
    high_quality_variants_usd: str = Field(
        description=(
            "what the delivered finals would have cost as high-quality variants, as many per "
            "asset as it had drafts, and no drafts (the draft-first comparison)"
        )
    )
    totals: CampaignTotals
    assets: list[AssetOutcome]
    jobs: list[JobRow]
    run_state: RunState = "completed"
    submissions_unknown: list[UncertainSubmission] = Field(
        default_factory=list,
        description="jobs sent (or about to be) whose task id was never recorded; not billed",
    )
    rebuilt_at: datetime | None = Field(
        default=None, description="set when rebuilt from the job records in storage"
    )
    adaptations_from_scratch_usd: str | None = Field(
        default=None,
        description=(
            "what the stored adaptations' formats would have cost made from scratch, each with "
            "drafts and a final of its own (the adaptations comparison); None: no adaptations"
        ),
    )

    @property
    def failed_assets(self) -> list[AssetOutcome]:
        return [outcome for outcome in self.assets if outcome.status in FAILING_STATUSES]

    @property
    def failed_adaptations(self) -> list[tuple[str, AdaptationOutcome]]:
        """(asset, adaptation) for every adaptation that failed, was stopped or not finished."""
        return [
            (outcome.asset, adaptation)
            for outcome in self.assets
            for adaptation in outcome.adaptations
            if adaptation.status in FAILING_STATUSES
        ]


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
        endpoint=record.endpoint,
        simulator=record.simulator,
    )


def estimate_of(submit: SubmitRecord) -> CostEstimate:
    """The estimate a submit record carries (`CostEstimate.as_dict`), as a `CostEstimate`."""
    data = submit.estimate
    return CostEstimate(
        width=int(data["width"]),
        height=int(data["height"]),
        quality=str(data["quality"]),
        n=int(data["n"]),
        output_tokens=int(data["output_tokens"]),
        image_input_tokens=int(data["image_input_tokens"]),
        text_input_tokens=int(data["text_input_tokens"]),
        usd=Decimal(str(data["usd"])),
        credits=Decimal(str(data["credits"])),
    )


def submitted_job_record(submit: SubmitRecord, billed: BilledCost = UNKNOWN_COST) -> JobRecord:
    """The record of a job that was submitted but delivered no image (yet): for its cost row."""
    return JobRecord.build(submit, estimate_of(submit), billed, [], completed_at=utcnow())


def failure_detail(stage: str, error: BaseException) -> str:
    """How an asset's outcome names the error that ended it: '<stage>: <what went wrong>'."""
    code = getattr(error, "code", None)
    if type(error).__name__ == "TaskFailedError" and code:
        return f"{stage}: {code}"  # what EvoLink said: content_policy_violation, …
    if type(error).__name__ == "PaidJobNotStoredError":
        return f"{stage}: {error}"  # its message starts with the cause's type
    return f"{stage}: {type(error).__name__}: {error}"


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
        kind = stage_kind(row.stage)  # every adaptation's job under "adaptation"
        by_stage[kind] = by_stage.get(kind, Decimal(0)) + amount
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


def draft_first_usd(plan: AssetPlan) -> Decimal:
    """What an asset's drafts and its final are estimated to cost (the draft-first way)."""
    return plan.draft_estimate.usd + plan.final_estimate.usd


def asset_estimate_usd(plan: AssetPlan) -> Decimal:
    """What an asset's drafts, its final and its adaptations are estimated to cost together."""
    return plan.draft_estimate.usd + plan.final_estimate.usd + plan.adaptations_usd


def campaign_estimate_usd(plans: Sequence[AssetPlan]) -> Decimal:
    """The pre-flight estimate of a campaign: every asset's drafts, final and adaptations."""
    return sum((asset_estimate_usd(plan) for plan in plans), Decimal(0))


def draft_first_saving(plans: Sequence[AssetPlan]) -> tuple[Decimal, Decimal]:
    """(draft-first estimate, k-high-variants estimate) of the drafts and finals over the
    whole campaign (adaptations have a comparison of their own: `adaptations_saving`)."""
    ours = sum((draft_first_usd(p) for p in plans), Decimal(0))
    variants = sum((plan.high_variants_estimate.usd for plan in plans), Decimal(0))
    return ours, variants


def adaptations_saving(
    plans: Sequence[AssetPlan], made: Callable[[str, str], bool] | None = None
) -> tuple[Decimal, Decimal] | None:
    """(adaptations estimate, the same formats from scratch with drafts) over the adaptations
    `made(asset, adaptation)` says count (all by default); None when the brief has none."""
    pairs = [
        (p.asset.id, a)
        for p in plans
        for a in p.adaptations
        if made is None or made(p.asset.id, a.id)
    ]
    if not any(p.adaptations for p in plans):
        return None
    ours = sum((a.estimate.usd for _, a in pairs), Decimal(0))
    scratch = sum((a.from_scratch_usd for _, a in pairs), Decimal(0))
    return ours, scratch


def budget_refusal(brief: CampaignBrief, plans: Sequence[AssetPlan]) -> str | None:
    """The refusal message when drafts, finals and adaptations cannot fit the budget, else
    None."""
    total = campaign_estimate_usd(plans)
    if total <= brief.budget_usd:
        return None

    def line(p: AssetPlan) -> str:
        adaptations = (
            f"+ {len(p.adaptations)} adaptation(s) {usd(p.adaptations_usd)} "
            if p.adaptations
            else ""
        )
        return (
            f"  {p.asset.id}: drafts {usd(p.draft_estimate.usd)} ({p.draft.n}× {p.draft.quality}) "
            f"+ final {usd(p.final_estimate.usd)} ({p.final_quality}) {adaptations}"
            f"= {usd(asset_estimate_usd(p))}"
        )

    lines = [
        f"campaign {brief.campaign!r} is estimated at {usd(total)}, over its budget of "
        f"{usd(brief.budget_usd)}; nothing was sent. Estimate per asset:",
        *(line(p) for p in plans),
    ]
    return "\n".join(lines)
