"""The stages of a campaign run: drafts, the choice of a draft, finals, adaptations.

One concept: what is made for each asset, in order. `drafts` pays for an asset's cheap drafts
(or finds them stored, and a redo's newer ones: `--redo-drafts`), `select`/`auto_select` choose
one (a reviewer chooses in `campaign_review` instead, from `suggestions`), `final` makes the
high-quality final from the chosen draft — its draft URL made only when the final is really
sent (`draft_url`) — and `adaptations` makes each adaptation of a stored final, one edit job
each, isolated from the others (`evolink.adaptations`). Every paid job goes through the run's
books (`campaign_booking`); every outcome is recorded in its asset boundary
(`campaign_boundary`).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any, Final, cast

from prefect import get_run_logger

from evolink.adaptations import AdaptationPlan
from evolink.brief import CampaignBrief
from evolink.campaign import AssetStatus, Selector, campaign_namespace
from evolink.cost import usd
from evolink.endpoint import reusable_here
from evolink.errors import NotFoundError, ResultExpiredError
from evolink.jobs import JobRecord, StoredImage, job_key, utcnow
from evolink.models import ImageRequest
from evolink.plans import PLACEHOLDER_DRAFT_URL, AssetPlan
from evolink.records import RecordStore
from prefect_evolink.blocks import AssetStorage, EvoLinkCredentials
from prefect_evolink.flows.campaign_booking import RESUBMITS, Booking
from prefect_evolink.flows.campaign_boundary import AssetBoundary
from prefect_evolink.tasks.image_delivery import PRESIGN_SECONDS, ImageDelivery
from prefect_evolink.tasks.job import JobTrail, find_finished_job, forget_results
from prefect_evolink.tasks.lookup import lookup_result_url
from prefect_evolink.tasks.references import AssetReferences

DRAFT_LINK_REUSE_SECONDS: Final = 3600.0
"""A final is made from its chosen draft's result link. The link the draft job's poll returned
is reused (kept in memory, never stored) while younger than this — links live 24 h — instead of
a look-up task and query per asset; an older one (a long review, a rerun) is looked up."""

DRAFT_LINK_USABLE_SECONDS: Final = 23 * 3600.0
"""EvoLink keeps a result link 24 h after its task completed (and may forget the task itself).
A final made from a draft older than this is not sent on its link: the final's own generation
and EvoLink's fetch of the draft need the hour left. The stored draft is then delivered by the
one rule of `tasks.image_delivery` — presigned from S3 storage, or uploaded to EvoLink's Files
API (local storage) — never a final that EvoLink would fail, and never a new draft paid."""


class CampaignStages:
    """The work of each stage on one asset, and the choice between them.

    `draft_links` holds, per asset, when its drafts completed and their result links (see
    `DRAFT_LINK_REUSE_SECONDS`); taken out by its final.
    """

    def __init__(
        self,
        brief: CampaignBrief,
        references: dict[str, AssetReferences],
        credentials: EvoLinkCredentials,
        storage: AssetStorage,
        assets: AssetBoundary,
        booking: Booking,
        redo_drafts: frozenset[str] = frozenset(),
        delivery: ImageDelivery | None = None,
    ):
        self.campaign = brief.campaign
        self.delivery = delivery or ImageDelivery(credentials, storage, brief.campaign)
        """How every image of ours reaches EvoLink (`tasks.image_delivery`)."""
        self.references = references
        self.credentials = credentials
        self.storage = storage
        self.assets = assets
        self.booking = booking
        self.redo_drafts = redo_drafts
        """Assets whose drafts are no longer at EvoLink to make again (`--redo-drafts`)."""
        self.draft_links: dict[str, tuple[float, list[str]]] = {}
        self.final_links: dict[str, tuple[float, list[str]]] = {}
        """Per asset, when its final completed and its result link, for its adaptations."""
        self.logger = get_run_logger()

    def namespace(self, asset: str, stage: str) -> str:
        return campaign_namespace(self.campaign, asset, stage)

    async def drafts(self, plan: AssetPlan) -> None:
        """An asset's drafts: paid for, or found stored; then a redo's newer ones
        (`newest_drafts`), and a new redo when the asset is named in `--redo-drafts`."""
        identity = {
            "request": plan.draft.model_dump(exclude={"image_urls", "mask_url"}),
            "references": self.references[plan.asset.id].identities,
        }
        record = await self.draft_job(plan, identity)
        if record is None:
            return
        record = await self.newest_drafts(plan, identity, record)
        if plan.asset.id in self.redo_drafts:
            record = await self.redo(plan, identity, record)
        self.assets.update(plan.asset.id, drafts=record)

    async def draft_job(self, plan: AssetPlan, identity: dict[str, Any]) -> JobRecord | None:
        """Pay for (or find) an asset's drafts; while their result links are fresh, keep them
        for its final (`draft_links`)."""
        trail = JobTrail()
        pending = self.references[plan.asset.id].pending

        async def prepare() -> ImageRequest:  # local references: delivered when really sent
            return await self.delivery.deliver_request(plan.draft, pending, job=trail.sending)

        record = await self.booking.paid_job(
            plan,
            "draft",
            plan.draft,
            plan.draft_estimate,
            identity,
            trail=trail,
            prepare=prepare if pending else None,
        )
        if record is not None and trail.result_links is not None and trail.completed_at:
            self.draft_links[plan.asset.id] = (trail.completed_at, trail.result_links)
        return record

    async def newest_drafts(
        self, plan: AssetPlan, identity: dict[str, Any], record: JobRecord
    ) -> JobRecord:
        """The asset's newest drafts: a redo (`--redo-drafts`) is keyed by the drafts it
        replaced, so following the chain from the first drafts finds it — storage reads only,
        in every later run, with or without the flag."""
        while True:
            data = await RecordStore(self.storage).get_result_data(
                self._redo_key(plan, identity, record)
            )
            if data is None or not reusable_here(data, self.credentials.base_url):
                return record
            record = JobRecord.model_validate(data)
            await self.booking.book(plan.asset.id, "draft", record, Decimal(0), plan.draft_estimate)

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
        redone = await self.draft_job(plan, _redo_identity(identity, record))
        return record if redone is None else redone

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

    def _redo_key(self, plan: AssetPlan, identity: dict[str, Any], of: JobRecord) -> str:
        return job_key(
            self.namespace(plan.asset.id, "draft"),
            plan.draft,
            identity=_redo_identity(identity, of),
            endpoint=self.credentials.endpoint_scope,
        )

    async def final(self, plan: AssetPlan) -> None:
        """The final of an asset whose draft was chosen. Its key comes from what defines it
        (the request without URLs, the chosen draft's sha256), so a stored final is found with
        no EvoLink call; the draft's URL is made only when the final is really sent."""
        outcome = self.assets.outcomes[plan.asset.id]
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
        trail = JobTrail()

        async def prepare() -> ImageRequest:
            links.append(await self.draft_url(plan, drafts, image, job=trail.sending))
            return await self.delivery.deliver_request(
                plan.final_request(links[-1]),
                self.references[plan.asset.id].pending,
                job=trail.sending,
            )

        try:
            record = await self.booking.paid_job(
                plan, "final", request, plan.final_estimate, identity, prepare=prepare, trail=trail
            )
        finally:
            self.draft_links.pop(plan.asset.id, None)
            forget_results(*links)  # the look-up's result: see `forget_results`
        if record is not None:
            if plan.adaptations and trail.result_links is not None and trail.completed_at:
                self.final_links[plan.asset.id] = (trail.completed_at, trail.result_links)
            self.assets.update(plan.asset.id, status=AssetStatus.FINAL, final=record, detail="")

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

    async def draft_url(
        self, plan: AssetPlan, drafts: JobRecord, image: StoredImage, job: str | None = None
    ) -> str:
        """A URL EvoLink can fetch the chosen draft from (`stored_image_url`)."""
        fresh = self.draft_links.pop(plan.asset.id, None)
        return await self.stored_image_url(plan.asset.id, "draft", drafts, image, fresh, job)

    async def stored_image_url(
        self,
        asset: str,
        what: str,
        made_by: JobRecord,
        image: StoredImage,
        fresh: tuple[float, list[str]] | None,
        job: str | None = None,
    ) -> str:
        """A URL EvoLink can fetch a stored image of ours from (a chosen draft for its final, a
        final for its adaptations), by the one rule of `tasks.image_delivery`: presigned S3,
        else its result link — the one its poll returned while fresh
        (`DRAFT_LINK_REUSE_SECONDS`), else looked up while EvoLink still keeps it
        (`DRAFT_LINK_USABLE_SECONDS`) — else the stored image uploaded to the Files API."""

        async def result_link() -> str | None:
            if fresh is not None:
                completed_at, links = fresh
                if (
                    time.monotonic() - completed_at < DRAFT_LINK_REUSE_SECONDS
                    and 0 <= image.index < len(links)
                ):
                    return links[image.index]
            age = (utcnow() - made_by.completed_at).total_seconds()
            if age >= DRAFT_LINK_USABLE_SECONDS:
                self.logger.info(
                    "%s: %s image-%d was made %.1f h ago (EvoLink keeps links 24 h): the "
                    "stored %s is sent instead",
                    asset,
                    what,
                    image.index,
                    age / 3600,
                    what,
                )
                return None
            try:
                return cast(
                    str, await lookup_result_url(made_by.task_id, image.index, self.credentials)
                )
            except (NotFoundError, ResultExpiredError) as error:
                self.logger.info(
                    "%s: EvoLink no longer has %s image-%d (%s): the stored %s is sent instead",
                    asset,
                    what,
                    image.index,
                    type(error).__name__,
                    what,
                )
                return None

        return await self.delivery.stored_image(
            image.key, image.sha256, job=job, fresh_link=result_link
        )

    async def adaptations(self, plan: AssetPlan) -> None:
        """Every adaptation of an asset whose final is stored, at once; each one isolated: a
        failure ends that adaptation only (`adaptation`)."""
        asset = plan.asset.id
        outcome = self.assets.outcomes[asset]
        if (
            outcome.status is not AssetStatus.FINAL
            or outcome.final is None
            or not outcome.final.images
            or not plan.adaptations
        ):
            return
        for adaptation in plan.adaptations:
            self.assets.update_adaptation(asset, adaptation.id, status=AssetStatus.PENDING)
        final = outcome.final
        try:
            await asyncio.gather(*(self.adaptation(plan, a, final) for a in plan.adaptations))
        finally:
            self.final_links.pop(asset, None)

    async def adaptation(
        self, plan: AssetPlan, adaptation: AdaptationPlan, final: JobRecord
    ) -> None:
        """One adaptation: an edit job whose first reference is the stored final. Its key comes
        from the request without URLs, the final's sha256 and the brand references, so a rerun
        (also a day later, on another machine) finds it stored and pays nothing; the final's
        URL is made only when the adaptation is really sent."""
        asset = plan.asset.id
        image = final.images[0]
        references = self.references[asset]
        identity = adaptation.identity(image.sha256, references.brand_identities)
        trail = JobTrail()
        links: list[str] = []

        async def prepare() -> ImageRequest:
            fresh = self.final_links.get(asset)
            links.append(
                await self.stored_image_url(asset, "final", final, image, fresh, trail.sending)
            )
            return await self.delivery.deliver_request(
                adaptation.request_for(links[-1]), references.pending, job=trail.sending
            )

        try:
            record = await self.booking.paid_job(
                plan,
                adaptation.stage,
                adaptation.request,
                adaptation.estimate,
                identity,
                prepare=prepare,
                trail=trail,
            )
        except Exception as error:  # noqa: BLE001 — the adaptation's own boundary
            self.assets.fail_adaptation(asset, adaptation.id, error)
            return
        except BaseException as error:
            self.assets.cancel_adaptation(asset, adaptation.id, error)
            raise
        finally:
            forget_results(*links)
        if record is not None:
            self.assets.update_adaptation(
                asset, adaptation.id, status=AssetStatus.FINAL, record=record, detail=""
            )

    def suggestions(self, selector: Selector) -> dict[str, int | None]:
        """The selector's choice for every asset it could choose for — a reviewer's defaults.
        An asset the selector fails on is failed (`select`) and left out."""
        suggested: dict[str, int | None] = {}
        for plan in self.assets.plans:
            selected, choice = self.select(selector, plan)
            if selected:
                suggested[plan.asset.id] = choice
        return suggested

    def auto_select(self, selector: Selector) -> None:
        """Every asset's draft as the selector chooses it (`select`); None rejects the asset."""
        for plan in self.assets.plans:
            selected, choice = self.select(selector, plan)
            if not selected:
                continue
            if choice is None:
                self.assets.update(
                    plan.asset.id, status=AssetStatus.REJECTED, detail="selector rejected"
                )
            else:
                self.assets.update(
                    plan.asset.id, chosen_draft=choice, detail=f"auto: image-{choice}"
                )

    def select(self, selector: Selector, plan: AssetPlan) -> tuple[bool, int | None]:
        """(True, the selector's choice) — or (False, None) with the asset failed when the
        selector raised or chose something that is not one of the asset's drafts."""
        drafts = self.assets.outcomes[plan.asset.id].drafts
        if drafts is None or self.assets.outcomes[plan.asset.id].status is not AssetStatus.PENDING:
            return False, None
        indexes = [image.index for image in drafts.images]
        try:
            choice = selector(plan.asset, list(drafts.images))
            if choice is not None and (isinstance(choice, bool) or choice not in indexes):
                raise ValueError(f"the selector chose {choice!r}, not one of the drafts {indexes}")
        except Exception as error:  # noqa: BLE001 — a selector bug fails its asset only
            self.assets.fail(plan.asset.id, "selection", error)
            return False, None
        return True, choice


def _redo_identity(identity: dict[str, Any], replaced: JobRecord) -> dict[str, Any]:
    """A redo's job identity: the drafts' own, plus the task whose drafts it replaces."""
    return {**identity, "redo_of": replaced.task_id}
