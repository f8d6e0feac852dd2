"""The review of a campaign's adaptations: the sheet, the Resume form, the wait and the answer.

One concept: with `adaptation_selection="approval"`, a reviewer approves or rejects each
adaptation that was made (status final, stored) after the adaptations stage, the same way the
drafts are reviewed (`campaign_review`): a deployed run suspends under its own pause key
(`ADAPTATION_REVIEW_KEY`, so a run that reviews its drafts too suspends twice, and each rerun
reads the answers it already has), a local run pauses in its process.

- The sheet: the Resume dialog's description shows, per asset, its master (the final) and every
  adaptation made from it as thumbnails labelled as the form's fields; the artifact
  `<campaign>-adaptations-review` shows them larger, with full-size links where the storage
  presigns (S3).
- The form: one `approve` / `reject` choice per adaptation (default approve), titled
  `<asset> · <adaptation> (<size>)`; past `REVIEW_FIELDS_MAX` adaptations, one pick list of
  the adaptations to reject (every other is approved).
- The answer: an approved adaptation stays final ("approved by reviewer"); a rejected one is
  `rejected` ("rejected by reviewer") — its image stays stored and its cost on the books, only
  its outcome says so — and touches neither the asset's final nor its other adaptations.
  Nobody answering in time leaves the adaptations `not_reviewed` (stored, not approved), which,
  like a drafts review's timeout, does not fail the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, Pause
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input import RunInput
from pydantic import Field

from evolink.adaptations import AdaptationPlan
from evolink.campaign import AssetStatus
from evolink.cost import usd
from evolink.jobs import JobRecord, StoredImage, utcnow
from evolink.previews import REVIEW_EDGE, SHEET_EDGE, GridCell, Thumbnail, grid, thumbnail
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.flows import campaign_review_form
from prefect_evolink.flows.campaign_boundary import AssetBoundary
from prefect_evolink.flows.campaign_review import answered_before, approval_wait, resumed_answer
from prefect_evolink.flows.campaign_review_form import form_model
from prefect_evolink.flows.campaign_review_sheet import (
    DESCRIPTION_BUDGET_CHARS,
    REVIEW_LINK_MAX_SECONDS,
)
from prefect_evolink.tasks.campaign_artifacts import ARTIFACT_BUDGET_CHARS, PictureBudget, run_label
from prefect_evolink.tasks.reporting import artifact_key

logger = logging.getLogger(__name__)

ADAPTATION_REVIEW_KEY: Final = "review-adaptations"
"""The pause key of the adaptations' review, apart from the drafts' (`REVIEW_KEY`): each
review fires once per run, and a rerun finds each answer under its own key."""
APPROVED: Final = "approved by reviewer"
REJECTED: Final = "rejected by reviewer"

AdaptationRef = tuple[str, str]
"""(asset id, adaptation id)."""


@dataclass(frozen=True, slots=True)
class MadeAdaptation:
    """An adaptation that was made and stored: what the review shows and asks about."""

    asset: str
    plan: AdaptationPlan
    record: JobRecord

    @property
    def ref(self) -> AdaptationRef:
        return self.asset, self.plan.id

    @property
    def label(self) -> str:
        """`hero · story (9:16)`: the form's title (or option) and the sheet's caption."""
        return f"{self.asset} · {self.short_label}"

    @property
    def short_label(self) -> str:
        return f"{self.plan.id} ({self.plan.request.size})"

    @property
    def image(self) -> StoredImage:
        return self.record.images[0]

    @property
    def change(self) -> str:
        """What the adaptation changes, in a line: its prompt, else its format."""
        what = self.plan.adaptation.prompt or f"{self.plan.request.size} format"
        return what if len(what) <= 80 else what[:79] + "…"

    @property
    def cost(self) -> str:
        billed = self.record.billed_usd
        return f"billed {usd(billed)}" if billed is not None else "bill unknown"


def made_adaptations(assets: AssetBoundary) -> list[MadeAdaptation]:
    """Every adaptation made in this run (final, with a stored image), in the brief's order."""
    made: list[MadeAdaptation] = []
    for plan in assets.plans:
        outcome = assets.outcomes[plan.asset.id]
        for adaptation in plan.adaptations:
            found = outcome.adaptation(adaptation.id)
            if (
                found is not None
                and found.status is AssetStatus.FINAL
                and found.record is not None
                and found.record.images
            ):
                made.append(MadeAdaptation(plan.asset.id, adaptation, found.record))
    return made


def many_adaptations(made: list[MadeAdaptation]) -> bool:
    """More adaptations than one field each would make a usable form (`REVIEW_FIELDS_MAX`)."""
    return len(made) > campaign_review_form.REVIEW_FIELDS_MAX


# --- the form ---------------------------------------------------------------------------------


def adaptation_review_form(
    made: list[MadeAdaptation], description: str | None = None
) -> tuple[type[RunInput], Callable[[Any], dict[AdaptationRef, bool]]]:
    """The Resume form and how to read its answer (adaptation → approved): one choice per
    adaptation up to `REVIEW_FIELDS_MAX`, else one list of those to reject."""
    if many_adaptations(made):
        return compact_adaptation_review_input(made, description)
    fields: dict[str, Any] = {}
    names: dict[str, AdaptationRef] = {}
    for adaptation in made:
        name = f"{adaptation.asset}__{adaptation.plan.id}".replace("-", "_")
        while name in fields:
            name += "_"
        fields[name] = (
            Literal["approve", "reject"],
            Field(
                default="approve",
                title=adaptation.label,
                description=f"{adaptation.change} · {adaptation.cost}",
            ),
        )
        names[name] = adaptation.ref

    def read(answer: Any) -> dict[AdaptationRef, bool]:
        return {ref: getattr(answer, name) != "reject" for name, ref in names.items()}

    return form_model("AdaptationReview", fields, description), read


def compact_adaptation_review_input(
    made: list[MadeAdaptation], description: str | None = None
) -> tuple[type[RunInput], Callable[[Any], dict[AdaptationRef, bool]]]:
    """A form for many adaptations: `reject`, a list of the run's own adaptation labels (a
    searchable pick list in the UI, checked by the server on resume); every other one is
    approved."""
    labels = {adaptation.label: adaptation.ref for adaptation in made}
    fields: dict[str, Any] = {
        "reject": (
            list[Literal[tuple(labels)]],  # type: ignore[misc]  # built at run time
            Field(
                default=[],
                title="Reject adaptations",
                description="Adaptations to reject (they stay stored, marked rejected); every "
                "other one is approved.",
            ),
        )
    }

    def read(answer: Any) -> dict[AdaptationRef, bool]:
        rejected = set(answer.reject)
        return {ref: label not in rejected for label, ref in labels.items()}

    return form_model("AdaptationReviewMany", fields, description), read


# --- the sheet --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preview:
    label: str
    image: StoredImage
    small: Thumbnail | None
    large: Thumbnail | None
    link: str | None
    lines: tuple[str, ...] = ()


async def _previews(
    storage: AssetStorage, images: list[tuple[str, StoredImage, tuple[str, ...]]], seconds: int
) -> list[Preview]:
    made = [0, 0]  # characters of small and large thumbnails so far

    def read(image: StoredImage) -> tuple[Thumbnail | None, Thumbnail | None, str | None]:
        link = None
        try:
            link = storage.presigned_url(image.key, seconds)
        except Exception as error:  # noqa: BLE001 — a link is not worth failing a run for
            logger.warning("No link to %s: %s", image.uri, error)
        if made[0] > DESCRIPTION_BUDGET_CHARS and made[1] > ARTIFACT_BUDGET_CHARS:
            return None, None, link
        try:
            data = storage.get_bytes(image.key)
            if not data:
                return None, None, link
            small, large = thumbnail(data, REVIEW_EDGE), thumbnail(data, SHEET_EDGE)
        except Exception as error:  # noqa: BLE001 — a preview is not worth failing a run for
            logger.warning("No preview of %s: %s", image.uri, error)
            return None, None, link
        made[0] += len(small.data_uri)
        made[1] += len(large.data_uri)
        return small, large, link

    found = []
    for label, image, lines in images:
        small, large, link = await asyncio.to_thread(read, image)
        found.append(Preview(label, image, small, large, link, lines))
    return found


async def publish_adaptation_review_sheet(
    campaign: str,
    assets: AssetBoundary,
    made: list[MadeAdaptation],
    storage: AssetStorage,
    links_valid_seconds: int,
    deadline: str,
) -> str:
    """Publish `<campaign>-adaptations-review` and return the Resume dialog's description:
    per asset, its master and each adaptation made from it, labelled as the form's fields."""
    seconds = max(60, min(links_valid_seconds, REVIEW_LINK_MAX_SECONDS))
    by_asset: dict[str, list[MadeAdaptation]] = {}
    for adaptation in made:
        by_asset.setdefault(adaptation.asset, []).append(adaptation)
    rows: dict[str, list[Preview]] = {}
    for asset, adaptations in by_asset.items():
        final = assets.outcomes[asset].final
        images: list[tuple[str, StoredImage, tuple[str, ...]]] = []
        if final is not None and final.images:
            images.append(("master", final.images[0], ("approved final",)))
        images += [(a.short_label, a.image, (a.cost,)) for a in adaptations]
        rows[asset] = await _previews(storage, images, seconds)
    compact = many_adaptations(made)
    how = (
        "Every adaptation is **approved** unless you list it under **Reject adaptations**"
        if compact
        else "Approve or **reject** each adaptation in the fields below"
    )
    key = artifact_key(campaign, "adaptations", "review")
    intro = (
        f"{how}; a rejected adaptation stays stored (and paid), marked rejected, and changes "
        f"nothing else. {len(made)} adaptation(s) of {len(by_asset)} asset(s)."
    )
    small_budget = PictureBudget(DESCRIPTION_BUDGET_CHARS)
    large_budget = PictureBudget(ARTIFACT_BUDGET_CHARS)
    dialog = [f"{intro} Larger previews: artifact `{key}`.", ""]
    sheet = [f"# Review adaptations — {campaign}", "", intro, ""]
    expires = datetime.now(UTC) + timedelta(seconds=seconds)
    if any(p.link for previews in rows.values() for p in previews):
        sheet += [f"The *full size* links are valid until {expires:%Y-%m-%d %H:%M} UTC.", ""]
    for asset, previews in rows.items():
        dialog += [f"**{asset}** — master and adaptations", ""]
        dialog += grid(
            [GridCell(p.label, small_budget.picture(p.small, p.label)) for p in previews]
        )
        dialog.append("")
        sheet += [f"## {asset}", ""]
        sheet += grid(
            [
                GridCell(
                    p.label,
                    large_budget.picture(p.large or p.small, p.label),
                    (*p.lines, *((f"[full size]({p.link})",) if p.link else ())),
                )
                for p in previews
            ]
        )
        sheet.append("")
    for budget, lines in ((small_budget, dialog), (large_budget, sheet)):
        if budget.omitted:
            lines.append(f"_{budget.omitted} thumbnail(s) not shown, to keep this small._")
    sheet.append(f"**Review deadline.** {deadline}")
    try:
        await acreate_markdown_artifact(
            key=key,
            markdown="\n".join(sheet).rstrip() + "\n",
            description=f"Adaptations of {campaign} awaiting review ({run_label()})",
        )
    except Exception as error:  # noqa: BLE001 — the Resume dialog still shows them
        logger.error("Adaptations review artifact not published: %s", error)
    return "\n".join(dialog).rstrip() + "\n"


# --- the approval step ------------------------------------------------------------------------


async def approve_adaptations(
    assets: AssetBoundary,
    campaign: str,
    storage: AssetStorage,
    timeout: int,
    poll_seconds: int,
) -> None:
    """Wait for a reviewer's answer on every adaptation made (see the module docstring) and
    record it. Nothing to review (no adaptation made): no wait.

    A deployed run suspends: `asuspend_flow_run` raises `Pause` after each made adaptation is
    recorded `not_reviewed` until the deadline (the caller writes that manifest), and the
    process exits. The rerun after the resume reattaches every job and gets here again, and
    reads the answer Prefect saved under the key against the adaptations made now
    (`read_saved_answer`): one that failed on the rerun is left out, one the reviewer was not
    shown stays `not_reviewed`.
    """
    made = made_adaptations(assets)
    if not made:
        return
    run_logger = get_run_logger()
    context = FlowRunContext.get()
    current = context.flow_run if context is not None else None
    wait = approval_wait(current)
    resumed = wait == "suspend" and answered_before(current, ADAPTATION_REVIEW_KEY)
    until = (utcnow() + timedelta(seconds=timeout)).isoformat(timespec="seconds")
    description = None
    if not resumed:  # a resumed rerun only reads the answer: no new sheet
        description = await publish_adaptation_review_sheet(
            campaign,
            assets,
            made,
            storage,
            links_valid_seconds=timeout + 3600,
            deadline=f"Answer by {until}. Adaptations nobody reviews in time stay stored, "
            "marked not_reviewed (not approved).",
        )
    form, read_answer = adaptation_review_form(made, description)
    labels = {adaptation.ref: adaptation.label for adaptation in made}
    if resumed:
        run_logger.info("Resumed after the adaptations' review: reading the reviewer's answer")
    else:
        run_logger.info(
            "Waiting for review of %d adaptation(s). Open the %s run in the Prefect UI and "
            "click Resume (larger: artifact %s).",
            len(made),
            "suspended" if wait == "suspend" else "paused",
            artifact_key(campaign, "adaptations", "review"),
        )

    def unanswered(detail: str) -> None:
        for adaptation in made:
            assets.update_adaptation(
                adaptation.asset, adaptation.plan.id, status=AssetStatus.NOT_REVIEWED, detail=detail
            )

    if resumed and current is not None:
        found = await resumed_answer(
            current.id, ADAPTATION_REVIEW_KEY, form, read_answer, labels.__getitem__
        )
        if found is not None:
            decisions, undecided = found
            for (asset, adaptation), detail in undecided.items():
                detail += " (stored, not approved)"
                assets.update_adaptation(
                    asset, adaptation, status=AssetStatus.NOT_REVIEWED, detail=detail
                )
                run_logger.warning("%s/%s: %s", asset, adaptation, detail)
            _record(assets, decisions, run_logger)
            return
    try:
        if wait == "suspend":
            try:
                answer = await asuspend_flow_run(
                    wait_for_input=form, timeout=timeout, key=ADAPTATION_REVIEW_KEY
                )
            except Pause:
                unanswered(
                    f"suspended for review until {until}: stored, not approved unless resumed "
                    "by then"
                )
                run_logger.info("Suspended for the adaptations' review until %s", until)
                raise
        else:
            answer = await apause_flow_run(
                wait_for_input=form,
                timeout=timeout,
                poll_interval=poll_seconds,
                key=ADAPTATION_REVIEW_KEY,
            )
    except FlowPauseTimeout:
        unanswered(f"no review within {timeout}s: stored, not approved")
        run_logger.warning("Adaptations' review timed out after %ss", timeout)
        return
    _record(assets, read_answer(answer), run_logger)


def _record(assets: AssetBoundary, decisions: dict[AdaptationRef, bool], run_logger: Any) -> None:
    for (asset, adaptation), approved in decisions.items():
        assets.update_adaptation(
            asset,
            adaptation,
            status=AssetStatus.FINAL if approved else AssetStatus.REJECTED,
            detail=APPROVED if approved else REJECTED,
        )
    rejected = [f"{a}/{i}" for (a, i), ok in decisions.items() if not ok]
    run_logger.info(
        "Adaptations reviewed: %d approved, %d rejected%s",
        len(decisions) - len(rejected),
        len(rejected),
        f" ({', '.join(rejected)})" if rejected else "",
    )
