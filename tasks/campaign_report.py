"""Campaign artifacts: cost table, summary, progress, review sheet and final previews.

Keys are stable per campaign (`<campaign>-cost`, `-summary`, `-progress`, `-review`,
`-<asset>-final`), so the Prefect UI's Artifacts page shows each one's history across runs.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from uuid import UUID

from prefect.artifacts import (
    acreate_image_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from evolink.brief import AssetPlan
from evolink.campaign import AssetOutcome, AssetStatus, CampaignManifest
from evolink.cost import usd
from evolink.jobs import StoredImage
from evolink.previews import thumbnail_data_uri
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.tasks.reporting import artifact_key


class Progress:
    """A progress artifact advanced as draft and final jobs finish."""

    def __init__(self, artifact_id: UUID, total_steps: int):
        self._id = artifact_id
        self._total = max(1, total_steps)
        self._done = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, campaign: str, total_steps: int) -> Progress:
        artifact_id = await acreate_progress_artifact(
            progress=0.0,
            key=artifact_key(campaign, "progress"),
            description=f"Draft and final jobs of campaign {campaign} finished so far",
        )
        return cls(artifact_id, total_steps)

    async def advance(self, steps: int = 1) -> None:
        async with self._lock:
            self._done = min(self._total, self._done + steps)
            await aupdate_progress_artifact(self._id, progress=100.0 * self._done / self._total)


def _thumbnail(storage: AssetStorage, image: StoredImage) -> str | None:
    data = storage.get_bytes(image.key)
    return thumbnail_data_uri(data) if data else None


async def publish_review_sheet(
    campaign: str,
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    storage: AssetStorage,
    suggested: dict[str, int | None],
) -> None:
    """What the reviewer sees before choosing: every asset's drafts and its final's estimate."""
    lines = [
        f"# Review drafts — {campaign}",
        "",
        "Pick one draft per asset (or reject it) in the form of the paused run.",
        "",
    ]
    for plan in plans:
        outcome = outcomes[plan.asset.id]
        lines.append(f"## {plan.asset.id}")
        if outcome.drafts is None:
            lines += [f"_no drafts: {outcome.status.value} {outcome.detail}_", ""]
            continue
        lines.append(
            f"Final would cost about **{usd(plan.final_estimate.usd)}** "
            f"({plan.final_quality}, {plan.final_estimate.width}x{plan.final_estimate.height}); "
            f"suggested: image-{suggested.get(plan.asset.id)}"
        )
        lines.append("")
        for image in outcome.drafts.images:
            uri = await asyncio.to_thread(_thumbnail, storage, image)
            preview = f"![image-{image.index}]({uri})" if uri else "(preview unavailable)"
            lines.append(f"**image-{image.index}** {preview} `{image.uri}`")
            lines.append("")
    await acreate_markdown_artifact(
        key=artifact_key(campaign, "review"),
        markdown="\n".join(lines),
        description=f"Drafts of {campaign} awaiting review",
    )


async def publish_final_previews(manifest: CampaignManifest, storage: AssetStorage) -> None:
    """One image artifact per final, as a data-URI thumbnail (durable, unlike presigned links)."""
    for outcome in manifest.assets:
        if outcome.status is not AssetStatus.FINAL or outcome.final is None:
            continue
        image = outcome.final.images[0]
        uri = await asyncio.to_thread(_thumbnail, storage, image)
        if uri is None:
            continue
        await acreate_image_artifact(
            image_url=uri,
            key=artifact_key(manifest.campaign, outcome.asset, "final"),
            description=f"Final of {outcome.asset}: `{image.uri}` (sha256 {image.sha256[:16]}…)",
        )


async def publish_campaign_report(manifest: CampaignManifest) -> None:
    table = [
        {
            "asset": row.asset,
            "stage": row.stage,
            "quality": row.quality,
            "pixels": row.pixel_size,
            "images": row.images,
            "output_tokens": row.output_tokens,
            "image_input_tokens": row.image_input_tokens,
            "text_input_tokens": row.text_input_tokens,
            "estimated_usd": usd(row.estimated_usd),
            "billed_usd": usd(row.billed_usd),
            "billed_credits": row.billed_credits or "unknown",
            "task_id": row.task_id,
            "duration_s": row.duration_s,
            "stored_at": f"NOT STORED (paid): {row.failed}"
            if row.failed
            else row.stored_at[0].rsplit("/", 1)[0]
            if row.stored_at
            else "",
        }
        for row in manifest.jobs
    ]
    failures = [
        {
            "asset": o.asset,
            "stage": "-",
            "quality": "-",
            "pixels": "-",
            "images": 0,
            "output_tokens": 0,
            "image_input_tokens": 0,
            "text_input_tokens": 0,
            "estimated_usd": "-",
            "billed_usd": "$0",
            "billed_credits": "0",
            "task_id": "-",
            "duration_s": 0,
            "stored_at": f"{o.status.value}: {o.detail}",
        }
        for o in manifest.assets
        if o.status is not AssetStatus.FINAL
    ]
    await acreate_table_artifact(
        key=artifact_key(manifest.campaign, "cost"),
        table=table + failures,
        description=f"Every paid job of {manifest.campaign}: estimated before, billed after",
    )
    await acreate_markdown_artifact(
        key=artifact_key(manifest.campaign, "summary"),
        markdown=summary_markdown(manifest),
        description=f"Spend, budget and outcome of campaign {manifest.campaign}",
    )


def summary_markdown(manifest: CampaignManifest) -> str:
    totals = manifest.totals
    spent = Decimal(totals.billed_usd)
    budget = Decimal(manifest.budget_usd)
    variants = Decimal(manifest.high_quality_variants_usd)
    lines = [
        f"# {manifest.campaign}",
        "",
        "| | USD |",
        "|---|---|",
        *(f"| {stage} | {usd(amount)} |" for stage, amount in sorted(totals.by_stage.items())),
        f"| **total billed** | **{usd(spent)}** ({totals.billed_credits} credits) |",
        f"| pre-flight estimate | {usd(manifest.pre_flight_estimate_usd)} |",
        f"| budget | {usd(budget)} — used {spent / budget:.0%}, left {usd(budget - spent)} |",
        f"| same finals as k high-quality variants | {usd(variants)} |",
        "",
    ]
    if variants > 0:
        lines.append(
            f"Draft-first cost **{spent / variants:.2f}×** of generating every variant at "
            "final quality."
        )
    if totals.unknown_bills:
        lines.append(
            f"\n{totals.unknown_bills} job(s) reported no bill; counted at their estimate."
        )
    lines += ["", "| asset | outcome | chosen draft | detail |", "|---|---|---|---|"]
    lines += [
        f"| {o.asset} | {o.status.value} | "
        f"{'-' if o.chosen_draft is None else f'image-{o.chosen_draft}'} | {o.detail} |"
        for o in manifest.assets
    ]
    return "\n".join(lines)
