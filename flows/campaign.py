"""Campaign flow: cheap drafts → selection (auto or a reviewer in the UI) → high-quality finals.

Run states (documented in the README): the run is **Completed** when every asset ended with a
final, a reviewer's rejection, or an approval timeout (a *suspended* run that times out is
failed by the Prefect server instead: nothing of ours runs then); it is **Failed**
(`CampaignIncompleteError`, after writing the manifest and every artifact) when any asset
failed, was stopped by the budget or did not finish. The same holds per adaptation: a
reviewer's rejection or a review's timeout (`not_reviewed`) leaves the run Completed, a
failed, budget-stopped or unfinished adaptation fails it (`FAILING_STATUSES`, for both). One
asset's failure — of any kind — never stops the others (`AssetBoundary`). A run that fails or
is cancelled mid-stage still writes its manifest and artifacts, then re-raises; a run killed
outright leaves its job records, from which `prefect-evolink report` rebuilds the manifest
(`prefect_evolink.tasks.recovery`).

The run is put together from one module per concept: `campaign_boundary` (each asset's outcome
and the boundary around the work on it), `campaign_stages` (drafts, selection, finals),
`campaign_booking` (budget, cost rows, journal), `campaign_review` (the review sheet, its form
and the approval step), `campaign_adaptation_review` (the adaptations' review) and
`campaign_manifest` (the run's record). This module holds the flow and `CampaignRun`, which
assembles them; the names users import from here are re-exported.
"""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger
from prefect.exceptions import Pause

from evolink.brief import CampaignBrief
from evolink.campaign import (
    FAILING_STATUSES,
    CampaignManifest,
    RunState,
    Selector,
    budget_refusal,
    campaign_estimate_usd,
    load_selector,
)
from evolink.cost import usd
from evolink.errors import BriefError, BudgetExceededError, CampaignIncompleteError
from evolink.jobs import utcnow
from evolink.plans import AssetPlan, check_plans
from evolink.polling import DEFAULT_DEADLINE_SECONDS, PollSchedule
from prefect_evolink.blocks import (
    AssetStorage,
    EvoLinkCredentials,
    EvoLinkSpendCap,
    LocalAssetStorage,
    S3AssetStorage,
    load_storage,
)
from prefect_evolink.flows import campaign_review
from prefect_evolink.flows.campaign_adaptation_review import (
    ADAPTATION_REVIEW_KEY,
    approve_adaptations,
)
from prefect_evolink.flows.campaign_booking import RESUBMITS, Booking
from prefect_evolink.flows.campaign_boundary import ADAPTATION_STAGE, AssetBoundary
from prefect_evolink.flows.campaign_manifest import ManifestWriter, previous_manifest
from prefect_evolink.flows.campaign_review import (
    DEFAULT_APPROVAL_TIMEOUT_SECONDS,
    REVIEW_FIELDS_MAX,
    REVIEW_KEY,
    Decision,
    approval_wait,
    compact_review_input,
    review_form,
    review_input,
)
from prefect_evolink.flows.campaign_stages import (
    DRAFT_LINK_REUSE_SECONDS,
    DRAFT_LINK_USABLE_SECONDS,
    CampaignStages,
)
from prefect_evolink.flows.run_blocks import RunBlocks
from prefect_evolink.tasks.brief_source import CampaignBriefParameter, load_campaign_brief
from prefect_evolink.tasks.campaign_progress import Progress
from prefect_evolink.tasks.dispatch import sync_or_async_flow
from prefect_evolink.tasks.image_delivery import ImageDelivery
from prefect_evolink.tasks.recovery import manifest_key
from prefect_evolink.tasks.references import AssetReferences, resolve_references
from prefect_evolink.tasks.spend import reserve_spend

DEFAULT_SELECTOR = "evolink.campaign:largest_file"

__all__ = [  # the flow, the run, and what users and tests import from here
    "ADAPTATION_REVIEW_KEY",
    "DEFAULT_APPROVAL_TIMEOUT_SECONDS",
    "DEFAULT_SELECTOR",
    "DRAFT_LINK_REUSE_SECONDS",
    "DRAFT_LINK_USABLE_SECONDS",
    "RESUBMITS",
    "REVIEW_FIELDS_MAX",
    "REVIEW_KEY",
    "CampaignRun",
    "Decision",
    "approval_wait",
    "compact_review_input",
    "manifest_key",
    "review_form",
    "review_input",
    "run_campaign",
]


class CampaignRun:
    """One run of a campaign, assembled from its parts — each asset's outcome and boundary
    (`assets`), the books (`booking`), the stages (`stages`) and the manifest (`record`) — with
    the steps the flow takes between them: drafts, a choice (`auto_select` or `approve`),
    finals."""

    def __init__(
        self,
        brief: CampaignBrief,
        plans: list[AssetPlan],
        references: dict[str, AssetReferences],
        credentials: EvoLinkCredentials,
        storage: AssetStorage,
        schedule: PollSchedule,
        max_concurrent_assets: int,
        previous: CampaignManifest | None = None,
        redo_drafts: frozenset[str] = frozenset(),
    ):
        self.brief = brief
        self.storage = storage
        self.assets = AssetBoundary(plans, max_concurrent_assets)
        self.booking = Booking(brief, credentials, storage, schedule, self.assets, previous)
        self.delivery = ImageDelivery(credentials, storage, brief.campaign)
        """How images of ours reach EvoLink; its uploads are deleted when the run ends."""
        self.stages = CampaignStages(
            brief,
            references,
            credentials,
            storage,
            self.assets,
            self.booking,
            redo_drafts,
            self.delivery,
        )
        self.record = ManifestWriter(brief, self.assets, self.booking, storage)

    async def drafts(self) -> None:
        """Every asset's drafts, each inside the asset boundary."""
        await self.assets.each_asset("draft", self.stages.drafts)

    def auto_select(self, selector: Selector) -> None:
        """The selector chooses every asset's draft (selection 'auto')."""
        self.stages.auto_select(selector)

    async def approve(self, selector: Selector, timeout: int, poll_seconds: int) -> bool:
        """A reviewer chooses, the selector's choices as the form's defaults (selection
        'approval'). False when the wait timed out: no finals will be sent."""
        suggested = self.stages.suggestions(selector)
        return await campaign_review.approve(
            self.assets, self.brief.campaign, self.storage, suggested, timeout, poll_seconds
        )

    async def finals(self) -> None:
        """The final of every asset whose draft was chosen, each inside the asset boundary."""
        await self.assets.each_asset("final", self.stages.final)

    @property
    def adapted(self) -> list[AssetPlan]:
        """The plans of the assets that have adaptations."""
        return [plan for plan in self.assets.plans if plan.adaptations]

    async def adaptations(self) -> None:
        """The adaptations of every asset whose final is stored, each asset inside the asset
        boundary and each adaptation inside its own."""
        if self.adapted:
            await self.assets.each_asset(ADAPTATION_STAGE, self.stages.adaptations, self.adapted)

    async def approve_adaptations(self, timeout: int, poll_seconds: int) -> None:
        """A reviewer approves or rejects each adaptation made (adaptation_selection
        'approval'); a timeout leaves them not reviewed."""
        self.assets.stage = "adaptation review"
        await approve_adaptations(
            self.assets, self.brief.campaign, self.storage, timeout, poll_seconds
        )


@sync_or_async_flow(name="evolink-campaign", log_prints=True)
async def run_campaign(
    brief: CampaignBriefParameter,
    selection: Literal["auto", "approval"] = "auto",
    adaptation_selection: Literal["auto", "approval"] = "auto",
    selector: str = DEFAULT_SELECTOR,
    max_concurrent_assets: int = 4,
    approval_timeout_seconds: int = DEFAULT_APPROVAL_TIMEOUT_SECONDS,
    approval_poll_seconds: int = 10,
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    credentials: EvoLinkCredentials | None = None,
    storage: LocalAssetStorage | S3AssetStorage | None = None,
    spend_cap: EvoLinkSpendCap | None = None,
    redo_drafts: list[str] | None = None,
) -> CampaignManifest:
    """Run a campaign brief: drafts for every asset, one chosen per asset, finals for those.

    Nothing is sent when the brief is invalid or its estimate is over budget. A rerun of the
    same brief reattaches to every job already submitted and pays only for what is missing.
    Cheap drafts first, then one high-quality final per asset, costs a fraction of generating
    every variant at final quality; the run's artifacts show the estimate, the bill and the
    saving (`<campaign>-cost`, `-cost-details`, `-summary`, `-progress`, `-review`, the
    contact sheet `-finals` and `-<asset>-final`), and the
    manifest `<campaign>/manifest.json` in storage records every job.

    Blocks: the form offers the saved blocks of each kind; a deployment's defaults reference
    saved blocks. Without credentials, `EVOLINK_API_KEY` is used; without storage, the block
    the brief names (`defaults.storage_block`), else the local `assets/` directory; without a
    spend cap, none (`RunBlocks`).

    Args:
        brief: The campaign brief: a brief (in the deployment's run form: campaign, budget,
            defaults and assets), or where to read one: `storage:<key>` in the storage block
            (e.g. `storage:briefs/spring-launch.yaml`), `s3://<bucket>/<key>`, or a local
            YAML/JSON file relative to the run's working directory. Local reference images
            resolve against a local brief's folder (the working directory for a brief
            object); a brief read from storage refers to images by `storage:`, `s3://` or
            `https://`.
        selection: 'auto' lets `selector` choose each asset's draft; 'approval' waits until
            a reviewer picks a draft (or rejects the asset) in the Prefect UI: a deployed run
            suspends (its process exits; the resume reruns it from the top, reattaching the
            drafts), a local run pauses in its process.
        adaptation_selection: 'auto' keeps every adaptation made; 'approval' waits, after the
            adaptations, until a reviewer approves or rejects each one in the Prefect UI (one
            approve/reject field per adaptation; past `REVIEW_FIELDS_MAX`, a list of those to
            reject), the same way as the drafts' review and under its own pause key (a deployed
            run suspends once per review). A rejected adaptation stays stored and paid, marked
            `rejected`; the final and the other adaptations are untouched. Nobody answering
            within `approval_timeout_seconds` leaves them `not_reviewed`, which (as for
            drafts) does not fail the run.
        selector: The function that picks a draft, as 'package.module:function'; with
            'approval' it only suggests the form's defaults.
        max_concurrent_assets: Most assets worked on at once in this run (the provider limits
            still bound jobs across all runs).
        approval_timeout_seconds: How long an 'approval' run waits for each review; after it
            no final is sent: a paused run completes without them, a suspended one is failed
            by the Prefect server ("never resumed"). The default, 20 h, keeps the review
            inside the drafts' life at EvoLink (result links last 24 h); after that, on local
            storage, the chosen stored draft is uploaded to EvoLink's Files API for its final.
        approval_poll_seconds: Seconds between checks for the reviewer's answer (paused runs).
        poll_deadline_seconds: Most seconds to wait for EvoLink to finish one job before that
            asset fails (a rerun reattaches to the job and pays nothing new).
        credentials: An EvoLink Credentials block (the form offers the saved ones); without
            it, `EVOLINK_API_KEY` is used.
        storage: A Local or S3 asset storage block (the form offers the saved ones). Wins over
            the brief's `storage_block`; without either, local `assets/`. Local reference
            images are sent presigned from S3, or uploaded to EvoLink's Files API on local
            storage (and deleted once the jobs that used them are stored).
        spend_cap: An EvoLink Spend Cap block (the form offers the saved ones): before anything
            is sent, the period's spend plus the campaign's whole estimate (drafts and finals,
            also for jobs a rerun will reuse) must fit the cap — an estimate check with
            reservations; without it, no cap.
        redo_drafts: Asset ids whose drafts EvoLink no longer has (a day later, on local
            storage) to make again rather than upload the stored ones: their fresh drafts are
            paid for and used, once — a rerun with the same
            list finds them. Assets whose drafts are still usable are not redone.

    Returns:
        The campaign manifest: every asset's outcome, every paid job with its estimate and
        bill, totals by stage, and the budget left.

    Raises:
        BriefError: The brief is invalid or a reference cannot be resolved; the message names
            the asset and the field, and nothing is sent. (Brief data given as a dict is
            checked as the run starts: Prefect's `ParameterTypeError`, in the same words.)
        BudgetExceededError: The estimate of drafts and finals is over the brief's budget;
            nothing is sent and the message lists the estimate per asset.
        SpendCapExceededError: The period's spend, the other running runs' reservations and
            the campaign's estimate are over the spend cap; nothing is sent.
        MissingCredentialsError: No credentials block and no `EVOLINK_API_KEY`.
        CampaignIncompleteError: Some asset failed (any error while working on it: EvoLink
            past every retry, storage, the selector, …), was stopped by the budget or did not
            finish; raised after the manifest and every artifact were written, and carrying
            the manifest (`manifest`) and its storage URI (`manifest_uri`). The other assets
            always run to their end.

    A run that fails for another reason or is cancelled mid-way still writes its manifest
    (`run_state` failed/cancelled, every paid job booked — with an unknown bill when it was
    still generating) and its artifacts, then re-raises. A run killed outright leaves its job
    records: `prefect-evolink report CAMPAIGN` rebuilds the manifest from them.

    Example:
        ```python
        from prefect_evolink import EvoLinkCredentials, S3AssetStorage, run_campaign

        manifest = run_campaign(
            "storage:briefs/spring-launch.yaml",
            selection="approval",
            credentials=EvoLinkCredentials.load("evolink"),
            storage=S3AssetStorage.load("evolink-assets"),
        )
        print(manifest.totals.billed_usd)
        ```
    """
    logger = get_run_logger()
    started_at = utcnow()
    loaded = await load_campaign_brief(
        brief, storage if storage is not None else load_storage(None)
    )
    brief = loaded.brief
    logger.info("Brief: %s", loaded.source)
    redo = frozenset(redo_drafts or ())
    unknown = sorted(redo - {asset.id for asset in brief.assets})
    if unknown:
        raise BriefError(
            [f"redo_drafts: {', '.join(unknown)} is not an asset of campaign {brief.campaign}"]
        )
    chosen_selector = load_selector(selector)
    blocks = await RunBlocks.resolve(
        credentials, storage if storage is not None else brief.defaults.storage_block, spend_cap
    )
    credentials, asset_storage = blocks.credentials, blocks.storage
    references = await resolve_references(brief, loaded.base_dir, asset_storage)
    plans = check_plans(
        brief,
        {a: (r.urls, r.mask.url if r.mask else None) for a, r in references.items()},
        next(iter(references.values())).brand_urls if references else [],
    )
    refusal = budget_refusal(brief, plans)
    if refusal:
        raise BudgetExceededError(refusal)
    if (
        selection == "approval"
        and approval_timeout_seconds > DEFAULT_APPROVAL_TIMEOUT_SECONDS
        and not isinstance(asset_storage, S3AssetStorage)
    ):
        logger.info(
            "approval_timeout_seconds=%d is longer than the drafts stay usable at EvoLink on "
            "local storage (%d h): an answer after that uploads the chosen stored drafts to "
            "EvoLink's Files API for their finals (deleted after the run)",
            approval_timeout_seconds,
            int(DRAFT_LINK_USABLE_SECONDS // 3600),
        )

    run = CampaignRun(
        brief,
        plans,
        references,
        credentials,
        asset_storage,
        credentials.poll_schedule(poll_deadline_seconds),
        max_concurrent_assets,
        previous=await previous_manifest(asset_storage, brief.campaign),
        redo_drafts=redo,
    )
    logger.info(
        "Campaign %s: %d assets, estimate %s of budget %s",
        brief.campaign,
        len(plans),
        usd(campaign_estimate_usd(plans)),
        usd(brief.budget_usd),
    )
    reservation = await reserve_spend(  # one check before anything is sent
        blocks.spend_cap, asset_storage, campaign_estimate_usd(plans), f"campaign {brief.campaign}"
    )
    paused = False
    try:
        run.assets.progress = await Progress.start(
            brief.campaign, 2 * len(plans) + len(run.adapted)
        )
        await run.record.checkpoint(selection, started_at)
        await run.drafts()
        await run.record.checkpoint(selection, started_at)  # a review may take a day
        reviewed = True
        run.assets.stage = "review" if selection == "approval" else "selection"
        if selection == "approval":
            reviewed = await run.approve(
                chosen_selector, approval_timeout_seconds, approval_poll_seconds
            )
            # The reviewer's answer exists nowhere else: a run killed during the finals leaves
            # it in this manifest, which `report` rebuilds from (the records cannot know it).
            await run.record.checkpoint(selection, started_at)
        else:
            run.auto_select(chosen_selector)
        if reviewed:
            await run.finals()
            await run.adaptations()
            if adaptation_selection == "approval" and run.adapted:
                await run.record.checkpoint(selection, started_at)  # a review may take a day
                await run.approve_adaptations(approval_timeout_seconds, approval_poll_seconds)
    except Pause:
        # Suspended for review (a deployed run): the process exits, no worker is held. The
        # manifest says what holds if nobody answers in time (no finals); a resume reruns the
        # flow, which overwrites it. Its uploads stay for the finals (recorded, reused).
        await run.record.checkpoint(selection, started_at)
        paused = True
        raise
    except BaseException as error:
        # Failed or cancelled mid-run: the manifest and the artifacts still record every
        # outcome and every job paid for, then the error goes on its way.
        stopped: RunState = "failed" if isinstance(error, Exception) else "cancelled"
        run.assets.interrupt(error)
        try:
            _, uri = await run.record.finish(selection, started_at, stopped)
        except BaseException as secondary:  # noqa: BLE001 — never hide the original error
            logger.error("The manifest of the %s run was not written: %r", stopped, secondary)
        else:
            error.add_note(f"The run's manifest ({stopped}): {uri}")
        raise
    finally:
        await reservation.release()  # its jobs' records count from here on
        if not paused:  # the uploads whose jobs are stored are deleted (never raises)
            await run.delivery.cleanup()

    failing = any(
        o.status in FAILING_STATUSES or any(a.status in FAILING_STATUSES for a in o.adaptations)
        for o in run.assets.outcomes.values()
    )
    state: RunState = "failed" if failing else "completed"
    manifest, uri = await run.record.finish(selection, started_at, state)
    if manifest.failed_assets or manifest.failed_adaptations:
        raise CampaignIncompleteError(
            _incomplete(manifest, len(plans)) + f". Manifest: {uri}",
            manifest=manifest,
            manifest_uri=uri,
        )
    return manifest


def _incomplete(manifest: CampaignManifest, assets: int) -> str:
    """What `CampaignIncompleteError` says: the assets without a final, the adaptations not
    made."""
    parts = []
    if manifest.failed_assets:
        parts.append(
            f"{len(manifest.failed_assets)} of {assets} asset(s) did not get a final: "
            + "; ".join(f"{o.asset} ({o.status.value}: {o.detail})" for o in manifest.failed_assets)
        )
    if manifest.failed_adaptations:
        parts.append(
            f"{len(manifest.failed_adaptations)} adaptation(s) not made: "
            + "; ".join(
                f"{asset}/{a.id} ({a.status.value}: {a.detail})"
                for asset, a in manifest.failed_adaptations
            )
        )
    return "; ".join(parts)
