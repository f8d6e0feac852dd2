"""Campaign flow: cheap drafts → selection (auto or a reviewer in the UI) → high-quality finals.

Run states (documented in the README): the run is **Completed** when every asset ended with a
final, a reviewer's rejection, or an approval timeout; it is **Failed** (after writing the
manifest and every artifact) when any asset failed or its final was stopped by the budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field, create_model

from evolink.brief import AssetPlan, CampaignBrief, check_plans, load_brief
from evolink.budget import Budget
from evolink.campaign import (
    AssetOutcome,
    AssetStatus,
    CampaignManifest,
    JobRow,
    Selector,
    budget_refusal,
    campaign_estimate_usd,
    draft_first_saving,
    job_row,
    load_selector,
    totals,
)
from evolink.cost import usd
from evolink.errors import (
    BudgetExceededError,
    CampaignIncompleteError,
    PaidJobNotStoredError,
    TaskFailedError,
)
from evolink.jobs import JobRecord, StoredImage, utcnow
from evolink.polling import DEFAULT_DEADLINE_SECONDS, PollSchedule
from prefect_evolink.blocks import (
    AssetStorage,
    EvoLinkCredentials,
    LocalAssetStorage,
    S3AssetStorage,
    safe_key,
)
from prefect_evolink.flows.parameters import resolve_blocks
from prefect_evolink.tasks.campaign_report import (
    Progress,
    publish_campaign_report,
    publish_final_previews,
    publish_review_sheet,
)
from prefect_evolink.tasks.job import run_image_job
from prefect_evolink.tasks.references import PRESIGN_SECONDS, AssetReferences, resolve_references

DEFAULT_SELECTOR = "evolink.campaign:largest_file"
T = TypeVar("T")


def manifest_key(campaign: str) -> str:
    return safe_key(campaign, "manifest.json")


def review_input(
    plans: list[AssetPlan], outcomes: dict[str, AssetOutcome], suggested: dict[str, int | None]
) -> tuple[type[RunInput], dict[str, str]]:
    """A form with one choice per asset that has drafts: `image-N` or `reject`.

    Returns the RunInput model and the map field name → asset id (field names must be
    identifiers; asset ids may contain '-').
    """
    fields: dict[str, Any] = {}
    names: dict[str, str] = {}
    for plan in plans:
        drafts = outcomes[plan.asset.id].drafts
        if drafts is None:
            continue
        name = plan.asset.id.replace("-", "_")
        while name in fields:
            name += "_"
        options = (*(f"image-{image.index}" for image in drafts.images), "reject")
        default = suggested.get(plan.asset.id)
        fields[name] = (
            Literal[options],
            Field(
                default="reject" if default is None else f"image-{default}",
                title=plan.asset.id,
                description=f"final ≈ {usd(plan.final_estimate.usd)} ({plan.final_quality})",
            ),
        )
        names[name] = plan.asset.id
    return create_model("CampaignReview", __base__=RunInput, **fields), names


class CampaignRun:
    """The state of one run: plans, budget, progress and each asset's outcome so far."""

    def __init__(
        self,
        brief: CampaignBrief,
        plans: list[AssetPlan],
        references: dict[str, AssetReferences],
        credentials: EvoLinkCredentials,
        storage: AssetStorage,
        schedule: PollSchedule,
        max_concurrent_assets: int,
    ):
        self.brief = brief
        self.plans = plans
        self.references = references
        self.credentials = credentials
        self.storage = storage
        self.schedule = schedule
        self.budget = Budget(brief.budget_usd)
        self.outcomes: dict[str, AssetOutcome] = {
            p.asset.id: AssetOutcome(asset=p.asset.id, status=AssetStatus.NOT_REVIEWED)
            for p in plans
        }
        self.rows: list[JobRow] = []
        self._slots = asyncio.Semaphore(max(1, max_concurrent_assets))
        self.progress: Progress | None = None
        self.logger = get_run_logger()

    def namespace(self, asset: str, stage: str) -> str:
        return f"campaign/{self.brief.campaign}/{asset}/{stage}"

    async def each_asset(self, work: Callable[[AssetPlan], Awaitable[T]]) -> list[T]:
        async def bounded(plan: AssetPlan) -> T:
            async with self._slots:
                return await work(plan)

        return await asyncio.gather(*(bounded(plan) for plan in self.plans))

    def update(self, asset: str, **changes: Any) -> None:
        self.outcomes[asset] = self.outcomes[asset].model_copy(update=changes)

    async def paid_job(
        self, plan: AssetPlan, stage: str, request: Any, estimate: Any, identity: dict[str, Any]
    ) -> JobRecord | None:
        """Reserve, run, settle. None (with the outcome updated) when it did not produce images."""
        asset = plan.asset.id
        amount = await self.budget.reserve(estimate.usd)
        if amount is None:
            needed = estimate.usd * self.budget.calibration
            self.update(
                asset,
                status=AssetStatus.BUDGET_STOPPED,
                detail=f"{stage} needs ≈{usd(needed)}, {usd(self.budget.left_usd)} left",
            )
            self.logger.warning(
                "Budget: %s %s not sent (%s)", asset, stage, self.outcomes[asset].detail
            )
            return None
        try:
            record = await run_image_job(
                request,
                namespace=self.namespace(asset, stage),
                dest_prefix=safe_key(self.brief.campaign, asset, stage),
                credentials=self.credentials,
                storage=self.storage,
                schedule=self.schedule,
                identity=identity,
            )
        except TaskFailedError as error:  # failed tasks are not charged
            await self.budget.release(amount)
            self.update(asset, status=AssetStatus.FAILED, detail=f"{stage}: {error.code}")
            self.logger.error("Asset %s: %s", asset, error)
            return None
        except PaidJobNotStoredError as error:  # paid for: the bill goes in the cost rows
            await self.book(asset, stage, error.record, amount, estimate, failed=str(error))
            self.update(asset, status=AssetStatus.FAILED, detail=f"{stage}: {error}")
            self.logger.error("Asset %s %s failed after it was paid: %s", asset, stage, error)
            return None
        except Exception as error:  # noqa: BLE001 — one asset must not stop the others
            await self.budget.settle(amount, estimate.usd, None)  # may have been charged
            self.update(
                asset, status=AssetStatus.FAILED, detail=f"{stage}: {type(error).__name__}: {error}"
            )
            self.logger.error("Asset %s %s failed: %s", asset, stage, error)
            return None
        finally:
            if self.progress is not None:
                await self.progress.advance()
        await self.book(asset, stage, record, amount, estimate)
        return record

    async def book(
        self,
        asset: str,
        stage: str,
        record: JobRecord,
        reserved: Decimal,
        estimate: Any,
        failed: str | None = None,
    ) -> None:
        """A paid job into the budget and the cost rows — whether or not its images made it."""
        billed = None if record.billed_usd is None else Decimal(record.billed_usd)
        await self.budget.settle(reserved, estimate.usd, billed)
        self.rows.append(job_row(asset, stage, record, estimate, failed=failed))

    async def drafts(self, plan: AssetPlan) -> None:
        identity = {
            "request": plan.draft.model_dump(exclude={"image_urls", "mask_url"}),
            "references": self.references[plan.asset.id].identities,
        }
        record = await self.paid_job(plan, "draft", plan.draft, plan.draft_estimate, identity)
        if record is not None:
            self.update(plan.asset.id, drafts=record)

    async def draft_url(self, drafts: JobRecord, image: StoredImage) -> str:
        """A URL EvoLink can fetch the chosen draft from: presigned S3, else its result link."""
        url = await self.storage.apresigned_url(image.key, PRESIGN_SECONDS)
        if url is not None:
            return url
        async with self.credentials.get_client() as client:
            task = await client.get_task(drafts.task_id)
        return task.results[image.index]

    async def final(self, plan: AssetPlan) -> None:
        outcome = self.outcomes[plan.asset.id]
        if outcome.drafts is None or outcome.chosen_draft is None:
            if self.progress is not None:
                await self.progress.advance()
            return
        image = outcome.drafts.images[outcome.chosen_draft]
        request = plan.final_request(await self.draft_url(outcome.drafts, image))
        identity = {
            "request": request.model_dump(exclude={"image_urls", "mask_url"}),
            "draft_sha256": image.sha256,
            "references": self.references[plan.asset.id].identities,
        }
        record = await self.paid_job(plan, "final", request, plan.final_estimate, identity)
        if record is not None:
            self.update(plan.asset.id, status=AssetStatus.FINAL, final=record, detail="")

    def auto_select(self, selector: Selector) -> None:
        for plan in self.plans:
            drafts = self.outcomes[plan.asset.id].drafts
            if drafts is None:
                continue
            choice = selector(plan.asset, list(drafts.images))
            if choice is None:
                self.update(plan.asset.id, status=AssetStatus.REJECTED, detail="selector rejected")
            else:
                self.update(plan.asset.id, chosen_draft=choice, detail=f"auto: image-{choice}")

    async def approve(self, selector: Selector, timeout: int, poll_seconds: int) -> bool:
        """Pause for a reviewer. False when the pause timed out (no finals will be sent)."""
        suggested = {
            p.asset.id: selector(p.asset, list(d.images))
            for p in self.plans
            if (d := self.outcomes[p.asset.id].drafts) is not None
        }
        if not suggested:
            return True
        await publish_review_sheet(
            self.brief.campaign, self.plans, self.outcomes, self.storage, suggested
        )
        form, names = review_input(self.plans, self.outcomes, suggested)
        estimate = sum(
            (p.final_estimate.usd for p in self.plans if p.asset.id in suggested), Decimal(0)
        )
        self.logger.info(
            "Waiting for review of %d asset(s); finals would cost ≈%s. Open the paused run in "
            "the Prefect UI (artifact %s-review shows the drafts).",
            len(suggested),
            usd(estimate),
            self.brief.campaign,
        )
        try:
            answer = await apause_flow_run(
                wait_for_input=form, timeout=timeout, poll_interval=poll_seconds, key="review"
            )
        except FlowPauseTimeout:
            for asset in suggested:
                self.update(
                    asset,
                    status=AssetStatus.NOT_REVIEWED,
                    detail=f"no review within {timeout}s: no final sent",
                )
            self.logger.warning("Review timed out after %ss; no finals sent", timeout)
            return False
        for name, asset in names.items():
            choice = getattr(answer, name)
            if choice == "reject":
                self.update(asset, status=AssetStatus.REJECTED, detail="rejected by reviewer")
            else:
                index = int(choice.removeprefix("image-"))
                self.update(asset, chosen_draft=index, detail=f"approved: image-{index}")
        return True

    def manifest(self, selection: str, started_at: Any) -> CampaignManifest:
        ours = campaign_estimate_usd(self.plans)
        delivered = [p for p in self.plans if self.outcomes[p.asset.id].status is AssetStatus.FINAL]
        _, variants = draft_first_saving(delivered)  # what the finals we have would have cost
        order = {p.asset.id: i for i, p in enumerate(self.plans)}
        rows = sorted(self.rows, key=lambda r: (order[r.asset], r.stage != "draft"))
        return CampaignManifest(
            campaign=self.brief.campaign,
            flow_run_id=str(flow_run.id) if flow_run.id else None,
            started_at=started_at,
            finished_at=utcnow(),
            selection=selection,
            budget_usd=str(self.brief.budget_usd),
            budget_left_usd=str(self.budget.left_usd),
            pre_flight_estimate_usd=str(ours),
            high_quality_variants_usd=str(variants),
            totals=totals(rows),
            assets=[self.outcomes[p.asset.id] for p in self.plans],
            jobs=rows,
        )


@flow(name="evolink-campaign", log_prints=True)
async def run_campaign(
    brief_path: str,
    selection: Literal["auto", "approval"] = "auto",
    selector: str = DEFAULT_SELECTOR,
    credentials_block: str | None = None,
    storage_block: str | None = None,
    max_concurrent_assets: int = 4,
    approval_timeout_seconds: int = 24 * 3600,
    approval_poll_seconds: int = 10,
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    credentials: EvoLinkCredentials | None = None,
    storage: LocalAssetStorage | S3AssetStorage | None = None,
) -> CampaignManifest:
    """Run a campaign brief: drafts for every asset, one chosen per asset, finals for those.

    Nothing is sent when the brief is invalid or its estimate is over budget. A rerun of the
    same brief reattaches to every job already submitted and pays only for what is missing.
    Cheap drafts first, then one high-quality final per asset, costs a fraction of generating
    every variant at final quality; the run's artifacts show the estimate, the bill and the
    saving (`<campaign>-cost`, `-summary`, `-progress`, `-review`, `-<asset>-final`), and the
    manifest `<campaign>/manifest.json` in storage records every job.

    Blocks: a block object wins over a block name. Credentials come from `credentials`, else
    the block named `credentials_block`, else `EVOLINK_API_KEY`; storage from `storage`, else
    the block named `storage_block`, else the brief's `defaults.storage_block`, else the local
    `assets/` directory.

    Args:
        brief_path: Path of the campaign brief (YAML), relative to the run's working directory
            (a deployment's project directory). Local reference images are relative to it.
        selection: 'auto' lets `selector` choose each asset's draft; 'approval' pauses the run
            until a reviewer picks a draft (or rejects the asset) in the Prefect UI.
        selector: The function that picks a draft, as 'package.module:function'; with
            'approval' it only suggests the form's defaults.
        credentials_block: Name of a saved EvoLink Credentials block. Ignored when
            `credentials` is given; with neither, `EVOLINK_API_KEY` is used.
        storage_block: Name of a saved storage block (`<name>` or `<block-type-slug>/<name>`).
            Ignored when `storage` is given; with neither, the brief's `storage_block` is used.
        max_concurrent_assets: Most assets worked on at once in this run (the provider limits
            still bound jobs across all runs).
        approval_timeout_seconds: How long an 'approval' run waits for the review; after it
            no final is sent and the run completes without them.
        approval_poll_seconds: Seconds between checks for the reviewer's answer.
        poll_deadline_seconds: Most seconds to wait for EvoLink to finish one job before that
            asset fails (a rerun reattaches to the job and pays nothing new).
        credentials: An EvoLink Credentials block (the form offers the saved ones). Wins over
            `credentials_block`.
        storage: A Local or S3 asset storage block (the form offers the saved ones). Wins over
            `storage_block` and the brief's `storage_block`; S3 is needed for local reference
            images, which EvoLink fetches as presigned URLs.

    Returns:
        The campaign manifest: every asset's outcome, every paid job with its estimate and
        bill, totals by stage, and the budget left.

    Raises:
        BriefError: The brief is invalid or a reference cannot be resolved; the message names
            the asset and the field, and nothing is sent.
        BudgetExceededError: The estimate of drafts and finals is over the brief's budget;
            nothing is sent and the message lists the estimate per asset.
        MissingCredentialsError: No credentials block and no `EVOLINK_API_KEY`.
        CampaignIncompleteError: Some asset failed or its final was stopped by the budget;
            raised after the manifest and every artifact were written.

    Example:
        ```python
        import asyncio
        from prefect_evolink import S3AssetStorage, run_campaign

        manifest = asyncio.run(
            run_campaign(
                "briefs/spring-launch.yaml",
                selection="approval",
                credentials_block="evolink",
                storage=S3AssetStorage.load("evolink-assets"),
            )
        )
        print(manifest.totals.billed_usd)
        ```
    """
    logger = get_run_logger()
    started_at = utcnow()
    brief = load_brief(brief_path)
    chosen_selector = load_selector(selector)
    credentials, asset_storage = await resolve_blocks(
        credentials=credentials,
        credentials_block=credentials_block,
        storage=storage,
        storage_block=storage_block or brief.defaults.storage_block,
    )
    references = await resolve_references(brief, Path(brief_path).resolve().parent, asset_storage)
    plans = check_plans(
        brief, {a: (r.urls, r.mask.url if r.mask else None) for a, r in references.items()}
    )
    refusal = budget_refusal(brief, plans)
    if refusal:
        raise BudgetExceededError(refusal)

    run = CampaignRun(
        brief,
        plans,
        references,
        credentials,
        asset_storage,
        credentials.poll_schedule(poll_deadline_seconds),
        max_concurrent_assets,
    )
    run.progress = await Progress.start(brief.campaign, 2 * len(plans))
    logger.info(
        "Campaign %s: %d assets, estimate %s of budget %s",
        brief.campaign,
        len(plans),
        usd(campaign_estimate_usd(plans)),
        usd(brief.budget_usd),
    )

    await run.each_asset(run.drafts)
    reviewed = True
    if selection == "approval":
        reviewed = await run.approve(
            chosen_selector, approval_timeout_seconds, approval_poll_seconds
        )
    else:
        run.auto_select(chosen_selector)
    if reviewed:
        await run.each_asset(run.final)

    manifest = run.manifest(selection, started_at)
    stored = await asset_storage.aput_json(manifest_key(brief.campaign), manifest)
    await publish_campaign_report(manifest)
    await publish_final_previews(manifest, asset_storage)
    logger.info(
        "Manifest: %s — billed %s of budget %s",
        stored.uri,
        usd(manifest.totals.billed_usd),
        usd(brief.budget_usd),
    )
    if manifest.failed_assets:
        raise CampaignIncompleteError(
            f"{len(manifest.failed_assets)} of {len(plans)} asset(s) did not get a final: "
            + "; ".join(f"{o.asset} ({o.status.value}: {o.detail})" for o in manifest.failed_assets)
            + f". Manifest: {stored.uri}"
        )
    return manifest
