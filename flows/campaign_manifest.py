"""The manifest of a campaign run: built from the run's outcomes and books, checkpointed while
it works, saved and published when it ends, and the earlier run's read back on a rerun.

One concept: `<campaign>/manifest.json`, the record of every asset's outcome and every job
paid for. A run writes it at the start, after the drafts and when it suspends (marked
`running`: what a killed run leaves besides its job records), and once more when it ends —
completed, failed or cancelled — after the books are complete: the earlier runs' jobs kept,
the bills the run could not read asked for again. Then the cost and finals artifacts, which
are views of it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import cast

from prefect import get_run_logger
from prefect.runtime import flow_run

from evolink.adaptations import stage_kind
from evolink.brief import CampaignBrief
from evolink.campaign import (
    AdaptationOutcome,
    AssetStatus,
    CampaignManifest,
    RunState,
    adaptations_saving,
    campaign_estimate_usd,
    draft_first_saving,
    totals,
)
from evolink.cost import usd
from evolink.jobs import utcnow
from evolink.records import RecordStore
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.flows.campaign_booking import Booking
from prefect_evolink.flows.campaign_boundary import AssetBoundary
from prefect_evolink.tasks.campaign_cost import publish_campaign_report
from prefect_evolink.tasks.campaign_finals import publish_final_previews
from prefect_evolink.tasks.campaign_progress import save_manifest
from prefect_evolink.tasks.recovery import read_manifest


class ManifestWriter:
    """Writes one run's manifest from its asset boundary (`assets`) and its books (`booking`)."""

    def __init__(
        self,
        brief: CampaignBrief,
        assets: AssetBoundary,
        booking: Booking,
        storage: AssetStorage,
    ):
        self.brief = brief
        self.assets = assets
        self.booking = booking
        self.storage = storage
        self.logger = get_run_logger()

    async def finish(
        self, selection: str, started_at: datetime, state: RunState
    ) -> tuple[CampaignManifest, str]:
        """Store the manifest (a step, with retries), then publish the cost artifacts."""
        try:
            await self.booking.keep_earlier_jobs()
        except Exception as error:  # noqa: BLE001 — this run's own rows are still right
            self.logger.error("Jobs of earlier runs not read: %s", error)
        if state != "cancelled":
            await self.booking.read_unknown_bills()
        manifest = self.manifest(selection, started_at, state)
        uri = cast(str, await save_manifest(manifest, self.storage))
        try:
            await publish_campaign_report(manifest)
            await publish_final_previews(manifest, self.storage)
        except Exception as error:  # noqa: BLE001 — the manifest is the record; these are views
            self.logger.error("Campaign artifacts not (all) published: %s", error)
        self.logger.info(
            "Manifest: %s — billed %s of budget %s (%s)",
            uri,
            usd(manifest.totals.billed_usd),
            usd(self.brief.budget_usd),
            state,
        )
        return manifest, uri

    async def checkpoint(self, selection: str, started_at: datetime) -> None:
        """The manifest so far, marked running: what a killed run leaves besides its records."""
        try:
            await RecordStore(self.storage).put_manifest(
                self.manifest(selection, started_at, "running")
            )
        except Exception as error:  # noqa: BLE001 — the final write is the one that must work
            self.logger.warning("Manifest checkpoint not written: %s", error)

    def manifest(self, selection: str, started_at: datetime, state: RunState) -> CampaignManifest:
        """The manifest as the run stands: outcomes in the brief's order, jobs by asset (drafts
        first), totals, and the budget left."""
        plans, outcomes, budget = self.assets.plans, self.assets.outcomes, self.booking.budget
        ours = campaign_estimate_usd(plans)
        delivered = [p for p in plans if outcomes[p.asset.id].status is AssetStatus.FINAL]
        _, variants = draft_first_saving(delivered)  # what the finals we have would have cost
        order = {p.asset.id: i for i, p in enumerate(plans)}
        rank = {"draft": 0, "final": 1, "adaptation": 2}
        rows = sorted(
            self.booking.rows, key=lambda r: (order[r.asset], rank.get(stage_kind(r.stage), 3))
        )
        summed = totals(rows)

        def made(asset: str, adaptation: str) -> bool:
            found: AdaptationOutcome | None = outcomes[asset].adaptation(adaptation)
            return found is not None and found.record is not None

        adapted = adaptations_saving(plans, made)
        left = budget.limit_usd - Decimal(summed.billed_usd) - budget.reserved_usd
        return CampaignManifest(
            campaign=self.brief.campaign,
            flow_run_id=str(flow_run.id) if flow_run.id else None,
            started_at=started_at,
            finished_at=utcnow(),
            selection=selection,
            budget_usd=str(self.brief.budget_usd),
            budget_left_usd=str(left),
            pre_flight_estimate_usd=str(ours),
            high_quality_variants_usd=str(variants),
            totals=summed,
            assets=[outcomes[p.asset.id] for p in plans],
            jobs=rows,
            run_state=state,
            submissions_unknown=list(self.booking.uncertain),
            adaptations_from_scratch_usd=None if adapted is None else str(adapted[1]),
        )


async def previous_manifest(storage: AssetStorage, campaign: str) -> CampaignManifest | None:
    """The manifest an earlier run left; None when there is none or it cannot be read (the
    job records still keep this run's own books right)."""
    try:
        return await read_manifest(storage, campaign)
    except Exception as error:  # noqa: BLE001 — see above
        get_run_logger().warning("Earlier manifest of %s not read: %s", campaign, error)
        return None
