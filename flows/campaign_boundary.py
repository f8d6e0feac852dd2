"""The asset boundary of a campaign run: every asset's outcome, and the fence around its work.

One concept: whatever goes wrong while working on one asset ends that asset, never the run.
The stages (`campaign_stages`), the books (`campaign_booking`) and the review
(`campaign_review`) record what happened to an asset here; the manifest
(`campaign_manifest`) is written from it. Kept apart from them so each reads and changes an
asset's outcome the same way, and so the rule of the boundary is in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from prefect import get_run_logger

from evolink.campaign import AdaptationOutcome, AssetOutcome, AssetStatus, failure_detail
from evolink.plans import AssetPlan
from prefect_evolink.tasks.campaign_progress import Progress

ADAPTATION_STAGE: Final = "adaptation"
"""The stage that makes the adaptations of stored finals: what goes wrong in it ends the
asset's adaptations, never its final."""


class AssetBoundary:
    """Each asset's outcome so far, and the boundary every stage works on one asset inside.

    The asset boundary: whatever goes wrong while working on one asset — a provider error past
    every retry, storage, the selector, a bad reference, a bug — ends that asset as FAILED with
    the error's type and message, after every job it paid for was booked; the other assets go
    on. Only the budget (per request) and a cancellation (for all) stop work, and both are
    recorded in the outcomes too.
    """

    def __init__(self, plans: list[AssetPlan], max_concurrent_assets: int):
        self.plans = plans
        self.outcomes: dict[str, AssetOutcome] = {
            p.asset.id: AssetOutcome(asset=p.asset.id, status=AssetStatus.PENDING) for p in plans
        }
        self.stage = "start"
        self.workers = max(1, max_concurrent_assets)
        self.progress: Progress | None = None
        self.logger = get_run_logger()

    async def each_asset(
        self,
        stage: str,
        work: Callable[[AssetPlan], Awaitable[None]],
        plans: list[AssetPlan] | None = None,
    ) -> None:
        """Run one stage for every asset, each inside the asset boundary, `workers` at a time.

        A fixed pool of workers pulls the next plan from one shared iterator, so the run holds
        `workers` coroutines whatever the campaign's size, not one per asset (a 10,000-asset
        brief would otherwise create 10,000 waiting tasks up front). Each worker takes its
        next asset only when the last one is settled, which is also what bounds the memory of
        the jobs in flight. An asset a cancellation left unstarted stays PENDING here and is
        recorded by `interrupt`.
        """
        self.stage = stage
        chosen = self.plans if plans is None else plans
        queue = iter(chosen)

        async def worker() -> None:
            for plan in queue:  # one iterator shared by every worker: each plan runs once
                await self.guarded(stage, plan, work)

        await asyncio.gather(*(worker() for _ in range(min(self.workers, len(chosen)))))

    async def guarded(
        self, stage: str, plan: AssetPlan, work: Callable[[AssetPlan], Awaitable[None]]
    ) -> None:
        """One asset's stage inside the asset boundary (see the class docstring)."""
        asset = plan.asset.id
        try:
            await work(plan)
        except Exception as error:  # noqa: BLE001 — the asset boundary
            if stage == ADAPTATION_STAGE:  # the final is stored: only its adaptations end
                self.end_adaptations(asset, error)
            else:
                self.fail(asset, stage, error)
        except BaseException as error:  # cancellation: recorded, then on its way
            if stage == ADAPTATION_STAGE:
                self.end_adaptations(asset, error)
            else:
                self.cancelled(asset, stage, error)
            raise
        finally:
            if self.progress is not None:
                await self.progress.advance()

    def update(self, asset: str, **changes: Any) -> None:
        self.outcomes[asset] = self.outcomes[asset].model_copy(update=changes)

    def update_adaptation(self, asset: str, adaptation: str, **changes: Any) -> None:
        """Change (or start, as PENDING) the outcome of one adaptation of `asset`."""
        current = self.outcomes[asset].adaptations
        found = next((a for a in current if a.id == adaptation), None)
        if found is None:
            found = AdaptationOutcome(id=adaptation, status=AssetStatus.PENDING)
            current = [*current, found]
        changed = found.model_copy(update=changes)
        self.update(asset, adaptations=[changed if a.id == adaptation else a for a in current])

    def end_adaptations(self, asset: str, error: BaseException) -> None:
        """Every adaptation of `asset` not yet settled ends with `error` (failed, or cancelled
        by a cancellation); the asset's final stays as it is."""
        for adaptation in self.outcomes[asset].adaptations:
            if adaptation.status is not AssetStatus.PENDING:
                continue
            if isinstance(error, Exception):
                self.fail_adaptation(asset, adaptation.id, error)
            else:
                self.cancel_adaptation(asset, adaptation.id, error)

    def fail_adaptation(self, asset: str, adaptation: str, error: BaseException) -> None:
        """End one adaptation as FAILED, naming the error; the asset's final and its other
        adaptations are untouched (the adaptations' own boundary)."""
        self.update_adaptation(
            asset,
            adaptation,
            status=AssetStatus.FAILED,
            detail=failure_detail(f"adaptation {adaptation}", error),
            error_type=type(error).__name__,
            error=str(error),
        )
        self.logger.error(
            "Adaptation %s of %s failed: %s: %s", adaptation, asset, type(error).__name__, error
        )

    def cancel_adaptation(self, asset: str, adaptation: str, error: BaseException) -> None:
        name = type(error).__name__
        self.update_adaptation(
            asset,
            adaptation,
            status=AssetStatus.CANCELLED,
            detail=f"the run was cancelled ({name}) before this adaptation finished",
            error_type=name,
            error=str(error) or name,
        )

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
            self.end_adaptations(asset, error)
            if outcome.status is not AssetStatus.PENDING:
                continue
            if isinstance(error, Exception):
                self.fail(asset, self.stage, error)
                self.update(asset, detail=f"{self.stage}: the run failed: {name}: {error}")
            else:
                self.cancelled(asset, self.stage, error)
