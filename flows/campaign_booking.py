"""The books of a campaign run: the budget, the cost rows and the journal.

One concept: every job the run may pay for goes through `Booking.paid_job`, which reserves its
estimate in the budget, notes its keys in the journal (so a rebuild can attribute a job a killed
run never recorded), runs it, and books what it cost — whether or not its images were stored,
and as unknown when the run stopped before its bill was read. A rerun keeps the jobs earlier
runs paid for on its books (`keep_earlier_jobs`), and the bills nobody could read are asked for
once more before the manifest is written (`read_unknown_bills`). The stages decide *what* to
pay for (`campaign_stages`); this module is the only one that touches the money.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Final

from prefect import get_run_logger

from evolink.adaptations import adaptation_of_stage
from evolink.brief import CampaignBrief
from evolink.budget import Budget
from evolink.campaign import (
    AssetStatus,
    CampaignManifest,
    JobRow,
    UncertainSubmission,
    campaign_namespace,
    job_row,
    submitted_job_record,
)
from evolink.cost import CostEstimate, usd
from evolink.endpoint import record_endpoint, reusable_here
from evolink.errors import PaidJobNotStoredError, TaskFailedError
from evolink.jobs import (
    JobRecord,
    SubmitRecord,
    idempotency_key,
    job_key,
)
from evolink.models import ImageRequest
from evolink.plans import AssetPlan
from evolink.polling import PollSchedule
from evolink.records import RecordStore
from evolink.recovery import JournalEntry, stored_row
from evolink.states import TaskStatus
from prefect_evolink.blocks import AssetStorage, EvoLinkCredentials, safe_key
from prefect_evolink.flows.campaign_boundary import AssetBoundary
from prefect_evolink.tasks.job import JobTrail, run_image_job
from prefect_evolink.tasks.lookup import fetch_task
from prefect_evolink.tasks.recovery import READERS, _bounded, read_journal

RESUBMITS: Final = 1
"""A task that failed with a code a new submission may fix is resubmitted once per job."""


class Booking:
    """A run's budget, its cost rows and the submissions it cannot tell were sent.

    `rows` holds one row per paid job (this run's, then the earlier runs' it keeps);
    `uncertain` the creates that may or may not have reached EvoLink; `booked_keys` the job
    keys this run booked itself. An asset the budget stops is recorded in `assets`.
    """

    def __init__(
        self,
        brief: CampaignBrief,
        credentials: EvoLinkCredentials,
        storage: AssetStorage,
        schedule: PollSchedule,
        assets: AssetBoundary,
        previous: CampaignManifest | None = None,
    ):
        self.campaign = brief.campaign
        self.credentials = credentials
        self.storage = storage
        self.schedule = schedule
        self.assets = assets
        self.previous = previous
        """The manifest an earlier run left, if any: its paid jobs stay on the books."""
        self.budget = Budget(brief.budget_usd)
        self.rows: list[JobRow] = []
        self.uncertain: list[UncertainSubmission] = []
        self.booked_keys: set[str] = set()
        self.logger = get_run_logger()

    def namespace(self, asset: str, stage: str) -> str:
        return campaign_namespace(self.campaign, asset, stage)

    async def paid_job(
        self,
        plan: AssetPlan,
        stage: str,
        request: ImageRequest,
        estimate: CostEstimate,
        identity: dict[str, Any],
        prepare: Callable[[], Awaitable[ImageRequest]] | None = None,
        trail: JobTrail | None = None,
    ) -> JobRecord | None:
        """Reserve, run, book. None when the budget stopped it (the asset is recorded as
        BUDGET_STOPPED); raises when the job failed, after booking whatever it may have cost.
        `prepare`: see `run_image_job`; `trail`: what the job left on its way (the caller's, to
        read after it returns)."""
        asset = plan.asset.id
        amount = await self.budget.reserve(estimate.usd)
        if amount is None:
            needed = estimate.usd * self.budget.calibration
            detail = f"{stage} needs ≈{usd(needed)}, {usd(self.budget.left_usd)} left"
            adaptation = adaptation_of_stage(stage)
            if adaptation is None:
                self.assets.update(asset, status=AssetStatus.BUDGET_STOPPED, detail=detail)
            else:  # the final is stored: only this adaptation is stopped
                self.assets.update_adaptation(
                    asset, adaptation, status=AssetStatus.BUDGET_STOPPED, detail=detail
                )
            self.logger.warning("Budget: %s %s not sent (%s)", asset, stage, detail)
            return None
        trail = trail if trail is not None else JobTrail()
        try:
            await self.journal(asset, stage, request, estimate, identity)
            record = await run_image_job(
                request,
                namespace=self.namespace(asset, stage),
                dest_prefix=safe_key(self.campaign, asset, stage),
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
            campaign=self.campaign,
            asset=asset,
            stage=stage,
            namespace=namespace,
            job_keys=keys,
            estimated_usd=str(estimate.usd),
        )
        try:
            await RecordStore(self.storage).put_journal(self.campaign, asset, stage, keys[0], entry)
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
        submitted = trail.submitted
        if submitted is None and trail.sending is not None:
            # A cancellation can land after the submit record was stored and before the step
            # returned it: the record, not the trail, says whether the task exists.
            submitted = await self._submit_record(trail.sending)
        if submitted is not None:  # the task exists: it is billed if it completes
            note = (
                f"{reason} — task {submitted.task_id} may still complete and be billed: "
                "bill unknown, counted at its estimate"
            )
            record = submitted_job_record(submitted)
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

    async def _submit_record(self, key: str) -> SubmitRecord | None:
        try:
            return await RecordStore(self.storage).get_submit(key)
        except Exception:  # noqa: BLE001 — cannot tell: the intent decides (see the caller)
            return None

    async def _intent_written(self, key: str) -> bool:
        try:
            return await RecordStore(self.storage).has_intent(key)
        except Exception:  # noqa: BLE001 — cannot tell: assume it was sent
            return True

    async def keep_earlier_jobs(self) -> None:
        """A rerun keeps on its books every job paid in the campaign's earlier runs that this
        run did not book itself (drafts a redo replaced, a charged attempt before a resubmit,
        jobs of assets this run did not reach): from the job records of the keys in the
        campaign's journal, then from the earlier manifest's rows — only jobs made at this
        endpoint. So a rerun never lowers what the manifest says was billed."""
        if self.previous is None:
            return
        campaign, endpoint = self.campaign, self.credentials.endpoint
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
        found = await _bounded(  # a 1,000-asset rerun reads 16 at a time, not 2,000 at once
            [RecordStore(self.storage).get_result_data(key) for _, key in keys], READERS
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


def _charged(billed: Any) -> bool:
    """Whether a `BilledCost` says money was taken (an unknown bill is not a charge)."""
    return bool((billed.usd or 0) > 0 or (billed.credits or 0) > 0)
