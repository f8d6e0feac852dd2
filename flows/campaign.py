"""Campaign flow: cheap drafts → selection (auto or a reviewer in the UI) → high-quality finals.

Run states (documented in the README): the run is **Completed** when every asset ended with a
final, a reviewer's rejection, or an approval timeout (a *suspended* run that times out is
failed by the Prefect server instead: nothing of ours runs then); it is **Failed**
(`CampaignIncompleteError`, after writing the manifest and every artifact) when any asset
failed, was stopped by the budget or did not finish. One asset's failure — of any kind —
never stops the others (`CampaignRun`). A run that fails or is cancelled mid-stage still
writes its manifest and artifacts, then re-raises; a run killed outright leaves its job
records, from which `prefect-evolink report` rebuilds the manifest
(`prefect_evolink.tasks.recovery`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, cast

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, Pause
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field, create_model

from evolink.brief import (
    PLACEHOLDER_DRAFT_URL,
    AssetPlan,
    CampaignBrief,
    check_plans,
    load_brief,
)
from evolink.budget import Budget
from evolink.campaign import (
    FAILING_STATUSES,
    AssetOutcome,
    AssetStatus,
    CampaignManifest,
    JobRow,
    RunState,
    Selector,
    UncertainSubmission,
    budget_refusal,
    campaign_estimate_usd,
    campaign_namespace,
    draft_first_saving,
    failure_detail,
    job_row,
    load_selector,
    submitted_job_record,
    totals,
)
from evolink.cost import CostEstimate, usd
from evolink.endpoint import record_endpoint, reusable_here
from evolink.errors import (
    BriefError,
    BudgetExceededError,
    CampaignIncompleteError,
    DraftUnavailableError,
    NotFoundError,
    PaidJobNotStoredError,
    ResultExpiredError,
    TaskFailedError,
)
from evolink.jobs import (
    JobRecord,
    StoredImage,
    idempotency_key,
    intent_record_key,
    job_key,
    job_record_key,
    utcnow,
)
from evolink.models import ImageRequest
from evolink.polling import DEFAULT_DEADLINE_SECONDS, PollSchedule
from evolink.recovery import JournalEntry, stored_row
from evolink.states import TaskStatus
from prefect_evolink.blocks import (
    AssetStorage,
    EvoLinkCredentials,
    EvoLinkSpendCap,
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
    save_manifest,
)
from prefect_evolink.tasks.job import (
    JobTrail,
    find_finished_job,
    forget_results,
    run_image_job,
)
from prefect_evolink.tasks.lookup import fetch_task, lookup_result_url
from prefect_evolink.tasks.recovery import journal_key, manifest_key, read_journal, read_manifest
from prefect_evolink.tasks.references import PRESIGN_SECONDS, AssetReferences, resolve_references
from prefect_evolink.tasks.spend import reserve_spend, resolve_spend_cap

DEFAULT_SELECTOR = "evolink.campaign:largest_file"
RESUBMITS: Final = 1
"""A task that failed with a code a new submission may fix is resubmitted once per job."""

DRAFT_LINK_REUSE_SECONDS: Final = 3600.0
"""A final is made from its chosen draft's result link. The link the draft job's poll returned
is reused (kept in memory, never stored) while younger than this — links live 24 h — instead of
a look-up task and query per asset; an older one (a long review, a rerun) is looked up."""

DRAFT_LINK_USABLE_SECONDS: Final = 23 * 3600.0
"""EvoLink keeps a result link 24 h after its task completed (and may forget the task itself).
A final made from a draft older than this is not sent on its link: the final's own generation
and EvoLink's fetch of the draft need the hour left. The draft is then sent presigned from S3
storage, or the asset fails with `DraftUnavailableError` (local storage) — never a final that
EvoLink would fail, and never a silent new payment."""

DEFAULT_APPROVAL_TIMEOUT_SECONDS: Final = 20 * 3600
"""How long an approval run waits for its reviewer by default: inside the drafts' usable life
(`DRAFT_LINK_USABLE_SECONDS`), so on local storage an answer in time always gets its finals.
Longer is allowed, with a warning on local storage (a late answer's assets fail with
`DraftUnavailableError`, whose message names both ways out)."""

REVIEW_KEY: Final = "review"
"""The pause key of the review: a rerun of a suspended run finds the answer under it."""

REVIEW_FIELDS_MAX: Final = 40
"""Up to this many assets to review, the Resume form has one choice per asset. Beyond, it has
two searchable lists — assets to reject, drafts to use instead of the suggestion — and every
other asset gets its suggested draft: a thousand dropdowns are no form to review in."""

Decision = tuple[int | None, str]
"""A reviewer's decision on one asset: the chosen draft's index (None: no final) and why."""

__all__ = [
    "DEFAULT_APPROVAL_TIMEOUT_SECONDS",
    "DEFAULT_SELECTOR",
    "CampaignRun",
    "approval_wait",
    "manifest_key",
    "run_campaign",
]


def approval_wait(run: FlowRun | None = None) -> Literal["suspend", "pause"]:
    """How the approval step waits for its reviewer: the one rule, in one place.

    A run that came from a deployment (its flow run has a `deployment_id`) **suspends**: the
    flow-run process exits, and no worker slot, container or pod is held while the reviewer
    takes their time; the resume reschedules the run, which runs again from the top (drafts
    reattach from their job records, nothing is paid twice) and reads the answer. Any other
    run — a flow called directly, in a script or a test — **pauses** in its process, since
    nothing could restart it. `run` defaults to the current flow run.
    """
    if run is None:
        context = FlowRunContext.get()
        run = context.flow_run if context is not None else None
    return "suspend" if run is not None and run.deployment_id is not None else "pause"


def _answered_before(run: FlowRun | None) -> bool:
    """The run was suspended for review and has been resumed: this is its rerun."""
    return run is not None and REVIEW_KEY in (run.empirical_policy.pause_keys or set())


def review_input(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    description: str | None = None,
) -> tuple[type[RunInput], dict[str, str]]:
    """A form with one choice per suggested asset (drafts, no failure): `image-N` or `reject`.

    Each field's default is the selector's suggestion, its title the asset id and its help text
    the final's estimate. `description` (markdown: the drafts' thumbnails, see
    `publish_review_sheet`) is shown above the fields in the Resume dialog; it is attached with
    `RunInput.with_initial_data(description=…)` *without* field values, because that method
    redefines every field it is given a value for and so would drop the titles and help texts
    (the defaults are already on the fields).

    Returns the RunInput model and the map field name → asset id (field names must be
    identifiers; asset ids may contain '-').
    """
    fields: dict[str, Any] = {}
    names: dict[str, str] = {}
    for plan in plans:
        drafts = outcomes[plan.asset.id].drafts
        if drafts is None or not _reviewable(plan, outcomes, suggested):
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
    return _form("CampaignReview", fields, description), names


def review_form(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    description: str | None = None,
) -> tuple[type[RunInput], Callable[[Any], dict[str, Decision]]]:
    """The Resume form for this review and how to read its answer: one choice per asset
    (`review_input`) up to `REVIEW_FIELDS_MAX` assets, the two lists of `compact_review_input`
    beyond."""
    if _many_to_review(plans, outcomes, suggested):
        return compact_review_input(plans, outcomes, suggested, description)
    form, names = review_input(plans, outcomes, suggested, description)

    def read(answer: Any) -> dict[str, Decision]:
        decisions: dict[str, Decision] = {}
        for name, asset in names.items():
            choice = getattr(answer, name)
            if choice == "reject":
                decisions[asset] = (None, "rejected by reviewer")
            else:
                index = int(choice.removeprefix("image-"))
                decisions[asset] = (index, f"approved: image-{index}")
        return decisions

    return form, read


def compact_review_input(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    description: str | None = None,
) -> tuple[type[RunInput], Callable[[Any], dict[str, Decision]]]:
    """A form for a review of many assets: `reject` (assets to make no final of) and
    `use_instead` (`<asset>: image-N`, a draft to make final instead of the suggestion), both
    lists of the campaign's own values, which the UI offers as searchable pick lists and the
    server checks on resume (a typo cannot name an asset that does not exist). Every other
    asset gets its suggested draft; one whose suggestion is reject gets a final only when one
    of its drafts is picked.

    Ambiguity spends nothing: an asset both rejected and picked, or picked twice, is rejected,
    and the reason says so.
    """
    assets: list[str] = []
    options: dict[str, tuple[str, int]] = {}
    for plan in plans:
        if not _reviewable(plan, outcomes, suggested):
            continue
        asset = plan.asset.id
        assets.append(asset)
        drafts = outcomes[asset].drafts
        for image in drafts.images if drafts is not None else []:
            options[f"{asset}: image-{image.index}"] = (asset, image.index)
    fields: dict[str, Any] = {
        "reject": (
            list[Literal[tuple(assets)]],  # type: ignore[misc]  # built at run time
            Field(
                default=[],
                title="Reject: no final",
                description="Assets to make no final of (their suggestion is ignored).",
            ),
        ),
        "use_instead": (
            list[Literal[tuple(options)]],  # type: ignore[misc]
            Field(
                default=[],
                title="Use another draft",
                description="A draft to make final instead of its asset's suggestion, listed "
                "as 'asset: image-N'.",
            ),
        ),
    }

    def read(answer: Any) -> dict[str, Decision]:
        rejected = set(answer.reject)
        picked: dict[str, list[int]] = {}
        for option in answer.use_instead:
            asset, index = options[option]
            picked.setdefault(asset, []).append(index)
        decisions: dict[str, Decision] = {}
        for asset in assets:
            choices = sorted(set(picked.get(asset, [])))
            if asset in rejected and choices:
                decisions[asset] = (None, "rejected: both rejected and a draft picked")
            elif asset in rejected:
                decisions[asset] = (None, "rejected by reviewer")
            elif len(choices) > 1:
                listed = ", ".join(f"image-{i}" for i in choices)
                decisions[asset] = (None, f"rejected: {listed} all picked, one is needed")
            elif choices:
                decisions[asset] = (choices[0], f"approved: image-{choices[0]} (picked)")
            elif (suggestion := suggested[asset]) is None:
                decisions[asset] = (None, "rejected: suggested reject, no draft picked")
            else:
                decisions[asset] = (suggestion, f"approved: image-{suggestion} (suggested)")
        return decisions

    return _form("CampaignReviewMany", fields, description), read


def _reviewable(
    plan: AssetPlan, outcomes: dict[str, AssetOutcome], suggested: dict[str, int | None]
) -> bool:
    """An asset in this review: it has drafts and a suggestion (or a suggested rejection)."""
    return outcomes[plan.asset.id].drafts is not None and plan.asset.id in suggested


def _many_to_review(
    plans: list[AssetPlan], outcomes: dict[str, AssetOutcome], suggested: dict[str, int | None]
) -> bool:
    """More assets to review than one field each would make a usable form."""
    return sum(_reviewable(p, outcomes, suggested) for p in plans) > REVIEW_FIELDS_MAX


def _form(name: str, fields: dict[str, Any], description: str | None) -> type[RunInput]:
    form: type[RunInput] = create_model(name, __base__=RunInput, **fields)
    if description is not None:
        form = form.with_initial_data(description=description)
    return form


class CampaignRun:
    """The state of one run: plans, budget, progress and each asset's outcome so far.

    The asset boundary: whatever goes wrong while working on one asset — a provider error past
    every retry, storage, the selector, a bad reference, a bug — ends that asset as FAILED with
    the error's type and message, after every job it paid for was booked; the other assets go
    on. Only the budget (per request) and a cancellation (for all) stop work, and both are
    recorded in the outcomes too.
    """

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
        self.previous = previous
        """The manifest an earlier run left, if any: its paid jobs stay on the books."""
        self.redo_drafts = redo_drafts
        """Assets whose drafts are no longer at EvoLink to make again (`--redo-drafts`)."""
        self.booked_keys: set[str] = set()
        self.plans = plans
        self.references = references
        self.credentials = credentials
        self.storage = storage
        self.schedule = schedule
        self.budget = Budget(brief.budget_usd)
        self.outcomes: dict[str, AssetOutcome] = {
            p.asset.id: AssetOutcome(asset=p.asset.id, status=AssetStatus.PENDING) for p in plans
        }
        self.rows: list[JobRow] = []
        self.uncertain: list[UncertainSubmission] = []
        self.stage = "start"
        self.workers = max(1, max_concurrent_assets)
        self.progress: Progress | None = None
        self.draft_links: dict[str, tuple[float, list[str]]] = {}
        """Per asset, when its drafts completed and their result links (see
        `DRAFT_LINK_REUSE_SECONDS`); taken out by its final."""
        self.logger = get_run_logger()

    def namespace(self, asset: str, stage: str) -> str:
        return campaign_namespace(self.brief.campaign, asset, stage)

    async def each_asset(self, stage: str, work: Callable[[AssetPlan], Awaitable[None]]) -> None:
        """Run one stage for every asset, each inside the asset boundary, `workers` at a time.

        A fixed pool of workers pulls the next plan from one shared iterator, so the run holds
        `workers` coroutines whatever the campaign's size, not one per asset (a 10,000-asset
        brief would otherwise create 10,000 waiting tasks up front). Each worker takes its
        next asset only when the last one is settled, which is also what bounds the memory of
        the jobs in flight. An asset a cancellation left unstarted stays PENDING here and is
        recorded by `interrupt`.
        """
        self.stage = stage
        queue = iter(self.plans)

        async def worker() -> None:
            for plan in queue:  # one iterator shared by every worker: each plan runs once
                await self.guarded(stage, plan, work)

        await asyncio.gather(*(worker() for _ in range(min(self.workers, len(self.plans)))))

    async def guarded(
        self, stage: str, plan: AssetPlan, work: Callable[[AssetPlan], Awaitable[None]]
    ) -> None:
        """One asset's stage inside the asset boundary (see the class docstring)."""
        asset = plan.asset.id
        try:
            await work(plan)
        except Exception as error:  # noqa: BLE001 — the asset boundary
            self.fail(asset, stage, error)
        except BaseException as error:  # cancellation: recorded, then on its way
            self.cancelled(asset, stage, error)
            raise
        finally:
            if self.progress is not None:
                await self.progress.advance()

    def update(self, asset: str, **changes: Any) -> None:
        self.outcomes[asset] = self.outcomes[asset].model_copy(update=changes)

    def fail(self, asset: str, stage: str, error: BaseException) -> None:
        """End one asset as FAILED, naming the error; the others carry on."""
        self.update(
            asset,
            status=AssetStatus.FAILED,
            detail=failure_detail(stage, error),
            error_type=type(error).__name__,
            error=str(error),
        )
        self.logger.error(
            "Asset %s failed at %s: %s: %s", asset, stage, type(error).__name__, error
        )

    def cancelled(self, asset: str, stage: str, error: BaseException) -> None:
        name = type(error).__name__
        self.update(
            asset,
            status=AssetStatus.CANCELLED,
            detail=f"{stage}: the run was cancelled ({name}) before this asset finished",
            error_type=name,
            error=str(error) or name,
        )

    def interrupt(self, error: BaseException) -> None:
        """The run itself stopped: every asset not yet settled is recorded as stopped by it."""
        name = type(error).__name__
        for asset, outcome in self.outcomes.items():
            if outcome.status is not AssetStatus.PENDING:
                continue
            if isinstance(error, Exception):
                self.fail(asset, self.stage, error)
                self.update(asset, detail=f"{self.stage}: the run failed: {name}: {error}")
            else:
                self.cancelled(asset, self.stage, error)

    async def paid_job(
        self,
        plan: AssetPlan,
        stage: str,
        request: ImageRequest,
        estimate: CostEstimate,
        identity: dict[str, Any],
        prepare: Callable[[], Awaitable[ImageRequest]] | None = None,
    ) -> JobRecord | None:
        """Reserve, run, book. None when the budget stopped it; raises when the job failed,
        after booking whatever it may have cost. `prepare`: see `run_image_job`."""
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
        trail = JobTrail()
        try:
            await self.journal(asset, stage, request, estimate, identity)
            record = await run_image_job(
                request,
                namespace=self.namespace(asset, stage),
                dest_prefix=safe_key(self.brief.campaign, asset, stage),
                credentials=self.credentials,
                storage=self.storage,
                schedule=self.schedule,
                resubmits=RESUBMITS,
                identity=identity,
                trail=trail,
                prepare=prepare,
            )
        except TaskFailedError as error:
            billed = getattr(error, "billed", None)
            if trail.submitted is not None and billed is not None and _charged(billed):
                # failed or cancelled at EvoLink after it charged: a paid job with no image
                record = submitted_job_record(trail.submitted, billed)
                await self.book(asset, stage, record, amount, estimate, failed=str(error))
            else:  # failed tasks are not charged
                await self.budget.release(amount)
            raise
        except PaidJobNotStoredError as error:  # paid for: the bill goes in the cost rows
            await self.book(asset, stage, error.record, amount, estimate, failed=str(error))
            raise
        except BaseException as error:
            await self.book_unsettled(asset, stage, trail, amount, estimate, error)
            raise
        await self.book(asset, stage, record, amount, estimate)
        if stage == "draft" and trail.result_links is not None and trail.completed_at:
            self.draft_links[asset] = (trail.completed_at, trail.result_links)
        return record

    async def journal(
        self,
        asset: str,
        stage: str,
        request: ImageRequest,
        estimate: CostEstimate,
        identity: dict[str, Any],
    ) -> None:
        """Note the job keys this stage may send, so a rebuild can attribute an intent record
        that never got its submit record (a killed run). Best effort: the records suffice for
        everything else."""
        namespace = self.namespace(asset, stage)
        scope = self.credentials.endpoint_scope
        keys = [
            job_key(namespace, request, attempt=attempt, identity=identity, endpoint=scope)
            for attempt in range(1, RESUBMITS + 2)
        ]
        entry = JournalEntry(
            campaign=self.brief.campaign,
            asset=asset,
            stage=stage,
            namespace=namespace,
            job_keys=keys,
            estimated_usd=str(estimate.usd),
        )
        try:
            await self.storage.aput_json(
                journal_key(self.brief.campaign, asset, stage, keys[0]), entry
            )
        except Exception as error:  # noqa: BLE001 — the job records still tell the story
            self.logger.warning("Journal entry of %s %s not written: %s", asset, stage, error)

    async def book(
        self,
        asset: str,
        stage: str,
        record: JobRecord,
        reserved: Decimal,
        estimate: CostEstimate,
        failed: str | None = None,
    ) -> None:
        """A paid job into the budget and the cost rows — whether or not its images made it."""
        billed = None if record.billed_usd is None else Decimal(record.billed_usd)
        await self.budget.settle(reserved, estimate.usd, billed)
        self.rows.append(job_row(asset, stage, record, estimate, failed=failed))
        self.booked_keys.add(record.job_key)

    async def book_unsettled(
        self,
        asset: str,
        stage: str,
        trail: JobTrail,
        reserved: Decimal,
        estimate: CostEstimate,
        error: BaseException,
    ) -> None:
        """A job that stopped before its bill was read: booked as unknown if it may be paid."""
        reason = f"{type(error).__name__}: {error}"
        if trail.submitted is not None:  # the task exists: it is billed if it completes
            note = (
                f"{reason} — task {trail.submitted.task_id} may still complete and be billed: "
                "bill unknown, counted at its estimate"
            )
            record = submitted_job_record(trail.submitted)
            await self.book(asset, stage, record, reserved, estimate, failed=note)
        elif trail.sending is not None and await self._intent_written(trail.sending):
            # the create may or may not have reached EvoLink: listed, held in the budget
            self.uncertain.append(
                UncertainSubmission(
                    asset=asset,
                    stage=stage,
                    job_key=trail.sending,
                    idempotency_key=idempotency_key(trail.sending),
                    estimated_usd=str(estimate.usd),
                )
            )
            await self.budget.settle(reserved, estimate.usd, None)
        else:  # nothing was sent
            await self.budget.release(reserved)

    async def _intent_written(self, key: str) -> bool:
        try:
            return await self.storage.aexists(intent_record_key(key))
        except Exception:  # noqa: BLE001 — cannot tell: assume it was sent
            return True

    async def _redo_needless(self, plan: AssetPlan, record: JobRecord) -> str:
        """Why the drafts of `record` need no redo ("" when they do): a final made from one of
        them is stored, S3 presigns them, or EvoLink still serves their links (one look-up)."""
        for image in record.images:
            request, identity = self.final_job(plan, image)
            _, final = await find_finished_job(
                request,
                namespace=self.namespace(plan.asset.id, "final"),
                credentials=self.credentials,
                storage=self.storage,
                resubmits=RESUBMITS,
                identity=identity,
            )
            if final is not None:
                return f"its final (task {final.task_id}) is stored"
        if not record.images:
            return "its drafts job stored no image"
        first = record.images[0]
        if await self.storage.apresigned_url(first.key, PRESIGN_SECONDS):
            return "its stored drafts are sent presigned from S3"
        if (utcnow() - record.completed_at).total_seconds() >= DRAFT_LINK_USABLE_SECONDS:
            return ""
        try:
            await lookup_result_url(record.task_id, first.index, self.credentials)
        except (NotFoundError, ResultExpiredError):
            return ""
        return f"its drafts (task {record.task_id}) are still at EvoLink"

    async def keep_earlier_jobs(self) -> None:
        """A rerun keeps on its books every job paid in the campaign's earlier runs that this
        run did not book itself (drafts a redo replaced, a charged attempt before a resubmit,
        jobs of assets this run did not reach): from the job records of the keys in the
        campaign's journal, then from the earlier manifest's rows — only jobs made at this
        endpoint. So a rerun never lowers what the manifest says was billed."""
        if self.previous is None:
            return
        campaign, endpoint = self.brief.campaign, self.credentials.endpoint
        booked = {row.task_id for row in self.rows}
        earlier: list[JobRow] = []
        problems: list[str] = []
        journal = await read_journal(self.storage, campaign, problems)
        keys = [
            (entry, key)
            for entry in journal
            for key in entry.job_keys
            if key not in self.booked_keys
        ]
        found = await asyncio.gather(
            *(self.storage.aget_json(job_record_key(key)) for _, key in keys)
        )
        for (entry, _), data in zip(keys, found, strict=True):
            if data is None or not reusable_here(data, self.credentials.base_url):
                continue
            record = JobRecord.model_validate(data)
            if record.task_id not in booked:
                earlier.append(stored_row(entry.asset, entry.stage, record))
                booked.add(record.task_id)
        records = {
            r.task_id: r.model_dump(mode="json")
            for o in self.previous.assets
            for r in (o.drafts, o.final)
            if r is not None
        }
        known: dict[str, JobRow] = {}
        for row in self.previous.jobs:
            made_at = row.endpoint or (
                record_endpoint(records[row.task_id]) if row.task_id in records else None
            )
            if made_at != endpoint:
                continue
            if row.billed_usd is not None:
                known[row.task_id] = row
            if row.task_id not in booked:
                earlier.append(row)
                booked.add(row.task_id)
        for i, row in enumerate(self.rows):  # a bill read before EvoLink forgot the task
            before = known.get(row.task_id)
            if row.billed_usd is None and before is not None:
                self.rows[i] = row.model_copy(
                    update={
                        "billed_usd": before.billed_usd,
                        "billed_credits": before.billed_credits,
                        "failed": f"{row.failed or ''}; billed as an earlier run read it".lstrip(
                            "; "
                        ),
                    }
                )
        for problem in problems:
            self.logger.warning("Earlier jobs: %s", problem)
        if earlier:
            self.logger.info(
                "%d job(s) paid in earlier runs of %s stay on its books", len(earlier), campaign
            )
        self.rows.extend(row.model_copy(update={"earlier_run": True}) for row in earlier)

    async def read_unknown_bills(self) -> None:
        """Ask EvoLink (a step with retries) for the bills the run could not read itself."""

        async def read(row: JobRow) -> JobRow:
            try:
                task = await fetch_task(row.task_id, self.credentials)
            except Exception as error:  # noqa: BLE001 — the bill stays unknown
                self.logger.warning("Bill of task %s still unknown: %s", row.task_id, error)
                return row
            billed = task.billed
            if task.status is TaskStatus.COMPLETED and billed.usd is not None:
                note = f"; completed at EvoLink, billed {usd(billed.usd)}"
            elif (
                task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) and billed.usd is not None
            ):
                note = f"; {task.status.value} at EvoLink, " + (
                    f"charged {usd(billed.usd)}" if _charged(billed) else "not charged"
                )
            else:
                return row
            return row.model_copy(
                update={
                    "billed_usd": str(billed.usd),
                    "billed_credits": None if billed.credits is None else str(billed.credits),
                    "failed": (row.failed or "") + note,
                }
            )

        unknown = [i for i, row in enumerate(self.rows) if row.billed_usd is None]
        read_rows = await asyncio.gather(*(read(self.rows[i]) for i in unknown))
        for i, row in zip(unknown, read_rows, strict=True):
            self.rows[i] = row

    async def drafts(self, plan: AssetPlan) -> None:
        identity = {
            "request": plan.draft.model_dump(exclude={"image_urls", "mask_url"}),
            "references": self.references[plan.asset.id].identities,
        }
        record = await self.paid_job(plan, "draft", plan.draft, plan.draft_estimate, identity)
        if record is None:
            return
        record = await self.newest_drafts(plan, identity, record)
        if plan.asset.id in self.redo_drafts:
            record = await self.redo(plan, identity, record)
        self.update(plan.asset.id, drafts=record)

    def _redo_key(self, plan: AssetPlan, identity: dict[str, Any], of: JobRecord) -> str:
        return job_key(
            self.namespace(plan.asset.id, "draft"),
            plan.draft,
            identity=_redo_identity(identity, of),
            endpoint=self.credentials.endpoint_scope,
        )

    async def newest_drafts(
        self, plan: AssetPlan, identity: dict[str, Any], record: JobRecord
    ) -> JobRecord:
        """The asset's newest drafts: a redo (`--redo-drafts`) is keyed by the drafts it
        replaced, so following the chain from the first drafts finds it — storage reads only,
        in every later run, with or without the flag."""
        while True:
            data = await self.storage.aget_json(
                job_record_key(self._redo_key(plan, identity, record))
            )
            if data is None or not reusable_here(data, self.credentials.base_url):
                return record
            record = JobRecord.model_validate(data)
            await self.book(plan.asset.id, "draft", record, Decimal(0), plan.draft_estimate)

    async def redo(self, plan: AssetPlan, identity: dict[str, Any], record: JobRecord) -> JobRecord:
        """Pay for fresh drafts of an asset named in `--redo-drafts` — only when its newest
        drafts can no longer make a final (`draft_url`'s rule): a rerun with the same flag after
        the redo finds the redo and pays nothing, and S3 storage never needs one."""
        asset = plan.asset.id
        why_not = await self._redo_needless(plan, record)
        if why_not:
            self.logger.info("--redo-drafts %s: not redone — %s", asset, why_not)
            return record
        self.logger.warning(
            "--redo-drafts %s: paying for fresh drafts (≈%s): the drafts of task %s are no "
            "longer at EvoLink",
            asset,
            usd(plan.draft_estimate.usd),
            record.task_id,
        )
        redone = await self.paid_job(
            plan, "draft", plan.draft, plan.draft_estimate, _redo_identity(identity, record)
        )
        return record if redone is None else redone

    async def draft_url(self, plan: AssetPlan, drafts: JobRecord, image: StoredImage) -> str:
        """A URL EvoLink can fetch the chosen draft from: presigned S3, else its result link —
        the one its poll returned while fresh (`DRAFT_LINK_REUSE_SECONDS`), else looked up
        while EvoLink still keeps it (`DRAFT_LINK_USABLE_SECONDS`). Else
        `DraftUnavailableError`, before anything is sent."""
        asset = plan.asset.id
        fresh = self.draft_links.pop(asset, None)
        url = await self.storage.apresigned_url(image.key, PRESIGN_SECONDS)
        if url is not None:
            return url
        if fresh is not None:
            completed_at, links = fresh
            if (
                time.monotonic() - completed_at < DRAFT_LINK_REUSE_SECONDS
                and 0 <= image.index < len(links)
            ):
                return links[image.index]
        age = (utcnow() - drafts.completed_at).total_seconds()
        if age >= DRAFT_LINK_USABLE_SECONDS:
            cause = (
                f"it was made {age / 3600:.1f} h ago, and EvoLink keeps result links 24 h "
                "(the final needs the last hour)"
            )
            raise DraftUnavailableError(
                asset, image.index, drafts.task_id, cause, plan.draft_estimate.usd
            )
        try:
            return cast(str, await lookup_result_url(drafts.task_id, image.index, self.credentials))
        except (NotFoundError, ResultExpiredError) as error:
            cause = f"EvoLink no longer has it ({type(error).__name__}: {error})"
            raise DraftUnavailableError(
                asset, image.index, drafts.task_id, cause, plan.draft_estimate.usd
            ) from error

    def final_job(self, plan: AssetPlan, image: StoredImage) -> tuple[ImageRequest, dict[str, Any]]:
        """The final's request with a placeholder for the draft's URL (never sent: the URL is
        made by `final`'s `prepare`) and its identity, which the job key is made of."""
        request = plan.final_request(PLACEHOLDER_DRAFT_URL)
        identity = {
            "request": request.model_dump(exclude={"image_urls", "mask_url"}),
            "draft_sha256": image.sha256,
            "references": self.references[plan.asset.id].identities,
        }
        return request, identity

    async def final(self, plan: AssetPlan) -> None:
        """The final of an asset whose draft was chosen. Its key comes from what defines it
        (the request without URLs, the chosen draft's sha256), so a stored final is found with
        no EvoLink call; the draft's URL is made only when the final is really sent."""
        outcome = self.outcomes[plan.asset.id]
        if (
            outcome.status is not AssetStatus.PENDING
            or outcome.drafts is None
            or outcome.chosen_draft is None
        ):
            return
        drafts = outcome.drafts
        [image] = [i for i in drafts.images if i.index == outcome.chosen_draft]
        request, identity = self.final_job(plan, image)
        links: list[str] = []

        async def prepare() -> ImageRequest:
            links.append(await self.draft_url(plan, drafts, image))
            return plan.final_request(links[-1])

        try:
            record = await self.paid_job(
                plan, "final", request, plan.final_estimate, identity, prepare=prepare
            )
        finally:
            self.draft_links.pop(plan.asset.id, None)
            forget_results(*links)  # the look-up's result: see `forget_results`
        if record is not None:
            self.update(plan.asset.id, status=AssetStatus.FINAL, final=record, detail="")

    def select(self, selector: Selector, plan: AssetPlan) -> tuple[bool, int | None]:
        """(True, the selector's choice) — or (False, None) with the asset failed when the
        selector raised or chose something that is not one of the asset's drafts."""
        drafts = self.outcomes[plan.asset.id].drafts
        if drafts is None or self.outcomes[plan.asset.id].status is not AssetStatus.PENDING:
            return False, None
        indexes = [image.index for image in drafts.images]
        try:
            choice = selector(plan.asset, list(drafts.images))
            if choice is not None and (isinstance(choice, bool) or choice not in indexes):
                raise ValueError(f"the selector chose {choice!r}, not one of the drafts {indexes}")
        except Exception as error:  # noqa: BLE001 — a selector bug fails its asset only
            self.fail(plan.asset.id, "selection", error)
            return False, None
        return True, choice

    def auto_select(self, selector: Selector) -> None:
        for plan in self.plans:
            selected, choice = self.select(selector, plan)
            if not selected:
                continue
            if choice is None:
                self.update(plan.asset.id, status=AssetStatus.REJECTED, detail="selector rejected")
            else:
                self.update(plan.asset.id, chosen_draft=choice, detail=f"auto: image-{choice}")

    async def approve(self, selector: Selector, timeout: int, poll_seconds: int) -> bool:
        """Wait for a reviewer (see `approval_wait`). False when the wait timed out (no finals
        will be sent).

        A deployed run suspends: `asuspend_flow_run` raises `Pause` after recording each
        awaiting asset as `not_reviewed` until the deadline (the caller writes that manifest),
        and the process exits. On the rerun after the resume, the same call with the same key
        returns the submitted answer (Prefect rejects a second suspension with a key that has
        already fired and loads the input saved under it).
        """
        suggested: dict[str, int | None] = {}
        for plan in self.plans:
            selected, choice = self.select(selector, plan)
            if selected:
                suggested[plan.asset.id] = choice
        if not suggested:
            return True
        context = FlowRunContext.get()
        current = context.flow_run if context is not None else None
        wait = approval_wait(current)
        resumed = wait == "suspend" and _answered_before(current)
        description = None
        if not resumed:  # a resumed rerun only reads the answer: no new review sheet
            description = await publish_review_sheet(
                self.brief.campaign,
                self.plans,
                self.outcomes,
                self.storage,
                suggested,
                links_valid_seconds=timeout + 3600,
                compact=_many_to_review(self.plans, self.outcomes, suggested),
                deadline_rule=self.deadline_rule(timeout),
            )
        form, read_answer = review_form(self.plans, self.outcomes, suggested, description)
        estimate = sum(
            (p.final_estimate.usd for p in self.plans if p.asset.id in suggested), Decimal(0)
        )
        if resumed:
            self.logger.info("Resumed after review: reading the reviewer's answer")
        else:
            self.logger.info(
                "Waiting for review of %d asset(s); finals would cost ≈%s. Open the %s run in "
                "the Prefect UI and click Resume: the dialog shows the drafts (larger: artifact "
                "%s-review).",
                len(suggested),
                usd(estimate),
                "suspended" if wait == "suspend" else "paused",
                self.brief.campaign,
            )
        try:
            if wait == "suspend":
                try:
                    answer = await asuspend_flow_run(
                        wait_for_input=form, timeout=timeout, key=REVIEW_KEY
                    )
                except Pause:
                    until = (utcnow() + timedelta(seconds=timeout)).isoformat(timespec="seconds")
                    for asset in suggested:  # what stays true if nobody answers in time
                        self.update(
                            asset,
                            status=AssetStatus.NOT_REVIEWED,
                            detail=f"suspended for review until {until}: no final sent unless "
                            "resumed by then",
                        )
                    self.logger.info("Suspended for review until %s; no process is held", until)
                    raise
            else:
                answer = await apause_flow_run(
                    wait_for_input=form, timeout=timeout, poll_interval=poll_seconds, key=REVIEW_KEY
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
        for asset, (index, detail) in read_answer(answer).items():
            if index is None:
                self.update(asset, status=AssetStatus.REJECTED, detail=detail)
            else:
                self.update(asset, chosen_draft=index, detail=detail)
        return True

    def deadline_rule(self, timeout: int) -> str:
        """The review's deadline and why, for the review artifact."""
        until = (utcnow() + timedelta(seconds=timeout)).isoformat(timespec="minutes")
        if isinstance(self.storage, S3AssetStorage):
            return (
                f"Answer by {until} ({timeout / 3600:.1f} h). On S3 storage a final is made "
                "from the stored draft (presigned), so a late answer still gets its finals."
            )
        usable = int(DRAFT_LINK_USABLE_SECONDS // 3600)
        return (
            f"Answer by {until} ({timeout / 3600:.1f} h). On local storage a final is made "
            f"from its draft's result link at EvoLink, usable {usable} h after the draft: the "
            "default deadline (20 h) stays inside it. Drafts answered for later cannot become "
            "finals: rerun with --redo-drafts ASSET (fresh drafts, paid) or use S3 storage."
        )

    def manifest(self, selection: str, started_at: Any, state: RunState) -> CampaignManifest:
        ours = campaign_estimate_usd(self.plans)
        delivered = [p for p in self.plans if self.outcomes[p.asset.id].status is AssetStatus.FINAL]
        _, variants = draft_first_saving(delivered)  # what the finals we have would have cost
        order = {p.asset.id: i for i, p in enumerate(self.plans)}
        rows = sorted(self.rows, key=lambda r: (order[r.asset], r.stage != "draft"))
        summed = totals(rows)
        left = self.budget.limit_usd - Decimal(summed.billed_usd) - self.budget.reserved_usd
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
            assets=[self.outcomes[p.asset.id] for p in self.plans],
            jobs=rows,
            run_state=state,
            submissions_unknown=list(self.uncertain),
        )

    async def checkpoint(self, selection: str, started_at: Any) -> None:
        """The manifest so far, marked running: what a killed run leaves besides its records."""
        try:
            await self.storage.aput_json(
                manifest_key(self.brief.campaign), self.manifest(selection, started_at, "running")
            )
        except Exception as error:  # noqa: BLE001 — the final write is the one that must work
            self.logger.warning("Manifest checkpoint not written: %s", error)

    async def finish(
        self, selection: str, started_at: Any, state: RunState
    ) -> tuple[CampaignManifest, str]:
        """Store the manifest (a step, with retries), then publish the cost artifacts."""
        try:
            await self.keep_earlier_jobs()
        except Exception as error:  # noqa: BLE001 — this run's own rows are still right
            self.logger.error("Jobs of earlier runs not read: %s", error)
        if state != "cancelled":
            await self.read_unknown_bills()
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


def _redo_identity(identity: dict[str, Any], replaced: JobRecord) -> dict[str, Any]:
    """A redo's job identity: the drafts' own, plus the task whose drafts it replaces."""
    return {**identity, "redo_of": replaced.task_id}


async def _previous_manifest(storage: AssetStorage, campaign: str) -> CampaignManifest | None:
    """The manifest an earlier run left; None when there is none or it cannot be read (the
    job records still keep this run's own books right)."""
    try:
        return await read_manifest(storage, campaign)
    except Exception as error:  # noqa: BLE001 — see above
        get_run_logger().warning("Earlier manifest of %s not read: %s", campaign, error)
        return None


def _charged(billed: Any) -> bool:
    """Whether a `BilledCost` says money was taken (an unknown bill is not a charge)."""
    return bool((billed.usd or 0) > 0 or (billed.credits or 0) > 0)


@flow(name="evolink-campaign", log_prints=True)
async def run_campaign(
    brief_path: str,
    selection: Literal["auto", "approval"] = "auto",
    selector: str = DEFAULT_SELECTOR,
    credentials_block: str | None = None,
    storage_block: str | None = None,
    max_concurrent_assets: int = 4,
    approval_timeout_seconds: int = DEFAULT_APPROVAL_TIMEOUT_SECONDS,
    approval_poll_seconds: int = 10,
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    credentials: EvoLinkCredentials | None = None,
    storage: LocalAssetStorage | S3AssetStorage | None = None,
    spend_cap_block: str | None = None,
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

    Blocks: a block object wins over a block name. Credentials come from `credentials`, else
    the block named `credentials_block`, else `EVOLINK_API_KEY`; storage from `storage`, else
    the block named `storage_block`, else the brief's `defaults.storage_block`, else the local
    `assets/` directory.

    Args:
        brief_path: Path of the campaign brief (YAML), relative to the run's working directory
            (a deployment's project directory). Local reference images are relative to it.
        selection: 'auto' lets `selector` choose each asset's draft; 'approval' waits until
            a reviewer picks a draft (or rejects the asset) in the Prefect UI: a deployed run
            suspends (its process exits; the resume reruns it from the top, reattaching the
            drafts), a local run pauses in its process.
        selector: The function that picks a draft, as 'package.module:function'; with
            'approval' it only suggests the form's defaults.
        credentials_block: Name of a saved EvoLink Credentials block. Ignored when
            `credentials` is given; with neither, `EVOLINK_API_KEY` is used.
        storage_block: Name of a saved storage block (`<name>` or `<block-type-slug>/<name>`).
            Ignored when `storage` is given; with neither, the brief's `storage_block` is used.
        max_concurrent_assets: Most assets worked on at once in this run (the provider limits
            still bound jobs across all runs).
        approval_timeout_seconds: How long an 'approval' run waits for the review; after it
            no final is sent: a paused run completes without them, a suspended one is failed
            by the Prefect server ("never resumed"). The default, 20 h, keeps the review
            inside the drafts' life at EvoLink (result links last 24 h); longer is warned
            about on local storage, where a final needs its draft's link.
        approval_poll_seconds: Seconds between checks for the reviewer's answer (paused runs).
        poll_deadline_seconds: Most seconds to wait for EvoLink to finish one job before that
            asset fails (a rerun reattaches to the job and pays nothing new).
        credentials: An EvoLink Credentials block (the form offers the saved ones). Wins over
            `credentials_block`.
        storage: A Local or S3 asset storage block (the form offers the saved ones). Wins over
            `storage_block` and the brief's `storage_block`; S3 is needed for local reference
            images, which EvoLink fetches as presigned URLs.
        spend_cap_block: Name of a saved EvoLink Spend Cap block: before anything is sent, the
            period's spend plus the campaign's whole estimate (drafts and finals, also for
            jobs a rerun will reuse) must fit the cap — an estimate check with reservations.
            Ignored when `spend_cap` is given; with neither, no cap.
        spend_cap: An EvoLink Spend Cap block (the form offers the saved ones). Wins over
            `spend_cap_block`.
        redo_drafts: Asset ids whose drafts EvoLink no longer has (a day later, on local
            storage): their fresh drafts are paid for and used, once — a rerun with the same
            list finds them. Assets whose drafts are still usable are not redone.

    Returns:
        The campaign manifest: every asset's outcome, every paid job with its estimate and
        bill, totals by stage, and the budget left.

    Raises:
        BriefError: The brief is invalid or a reference cannot be resolved; the message names
            the asset and the field, and nothing is sent.
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
    redo = frozenset(redo_drafts or ())
    unknown = sorted(redo - {asset.id for asset in brief.assets})
    if unknown:
        raise BriefError(
            [f"redo_drafts: {', '.join(unknown)} is not an asset of campaign {brief.campaign}"]
        )
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
    if (
        selection == "approval"
        and approval_timeout_seconds > DEFAULT_APPROVAL_TIMEOUT_SECONDS
        and not isinstance(asset_storage, S3AssetStorage)
    ):
        logger.warning(
            "approval_timeout_seconds=%d is longer than the drafts stay usable at EvoLink on "
            "local storage (%d h): an answer after that fails its assets' finals "
            "(DraftUnavailableError: use S3 storage, or rerun with --redo-drafts)",
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
        previous=await _previous_manifest(asset_storage, brief.campaign),
        redo_drafts=redo,
    )
    logger.info(
        "Campaign %s: %d assets, estimate %s of budget %s",
        brief.campaign,
        len(plans),
        usd(campaign_estimate_usd(plans)),
        usd(brief.budget_usd),
    )
    cap = await resolve_spend_cap(spend_cap, spend_cap_block)  # one check before anything is sent
    reservation = await reserve_spend(
        cap, asset_storage, campaign_estimate_usd(plans), f"campaign {brief.campaign}"
    )
    try:
        run.progress = await Progress.start(brief.campaign, 2 * len(plans))
        await run.checkpoint(selection, started_at)
        await run.each_asset("draft", run.drafts)
        await run.checkpoint(selection, started_at)  # a review may take a day
        reviewed = True
        run.stage = "review" if selection == "approval" else "selection"
        if selection == "approval":
            reviewed = await run.approve(
                chosen_selector, approval_timeout_seconds, approval_poll_seconds
            )
        else:
            run.auto_select(chosen_selector)
        if reviewed:
            await run.each_asset("final", run.final)
    except Pause:
        # Suspended for review (a deployed run): the process exits, no worker is held. The
        # manifest says what holds if nobody answers in time (no finals); a resume reruns the
        # flow, which overwrites it.
        await run.checkpoint(selection, started_at)
        raise
    except BaseException as error:
        # Failed or cancelled mid-run: the manifest and the artifacts still record every
        # outcome and every job paid for, then the error goes on its way.
        stopped: RunState = "failed" if isinstance(error, Exception) else "cancelled"
        run.interrupt(error)
        try:
            _, uri = await run.finish(selection, started_at, stopped)
        except BaseException as secondary:  # noqa: BLE001 — never hide the original error
            logger.error("The manifest of the %s run was not written: %r", stopped, secondary)
        else:
            error.add_note(f"The run's manifest ({stopped}): {uri}")
        raise
    finally:
        await reservation.release()  # its jobs' records count from here on

    failing = any(o.status in FAILING_STATUSES for o in run.outcomes.values())
    manifest, uri = await run.finish(selection, started_at, "failed" if failing else "completed")
    if manifest.failed_assets:
        raise CampaignIncompleteError(
            f"{len(manifest.failed_assets)} of {len(plans)} asset(s) did not get a final: "
            + "; ".join(f"{o.asset} ({o.status.value}: {o.detail})" for o in manifest.failed_assets)
            + f". Manifest: {uri}",
            manifest=manifest,
            manifest_uri=uri,
        )
    return manifest
