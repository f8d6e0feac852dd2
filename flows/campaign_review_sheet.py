"""The review sheet of a campaign: its drafts in the Resume dialog and the review artifact.

Why a module of its own: the sheet is what the reviewer looks at — `<campaign>-review`, larger
pictures and links, and the Resume dialog's description, smaller — made from the stored drafts
within the artifacts' budgets. It labels each draft as the form's option (`image-0` …, see
`campaign_review_form`); the approval step (`campaign_review`) publishes it before it waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from prefect.artifacts import acreate_markdown_artifact

from evolink.campaign import AssetOutcome
from evolink.cost import usd
from evolink.jobs import StoredImage
from evolink.plans import AssetPlan
from evolink.previews import REVIEW_EDGE, SHEET_EDGE, GridCell, Thumbnail, grid, thumbnail
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.flows.campaign_review_form import reviewable
from prefect_evolink.tasks.campaign_artifacts import ARTIFACT_BUDGET_CHARS, PictureBudget, run_label
from prefect_evolink.tasks.reporting import artifact_key

logger = logging.getLogger(__name__)

REVIEW_LINK_MAX_SECONDS: Final = 7 * 24 * 3600
"""S3 presigned URLs (SigV4) live at most 7 days; the review's links never claim longer."""
DESCRIPTION_BUDGET_CHARS: Final = 300_000
"""Most characters of thumbnails in the Resume dialog's description. The API stored and the UI
rendered descriptions of 40 KB and 400 KB; 4 assets × 4 drafts take about 30 KB."""


@dataclass(frozen=True, slots=True)
class DraftPreview:
    """One draft as the review shows it: its option label, thumbnails and full-size link.

    `small` (`REVIEW_EDGE`) goes in the Resume dialog, `large` (`SHEET_EDGE`) in the artifact.
    """

    label: str
    image: StoredImage
    small: Thumbnail | None
    large: Thumbnail | None
    link: str | None
    omitted: bool = False
    """No thumbnails were made: the review's budgets were spent by the drafts before it."""


async def publish_review_sheet(
    campaign: str,
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    storage: AssetStorage,
    suggested: dict[str, int | None],
    links_valid_seconds: int = 24 * 3600,
    compact: bool = False,
    deadline_rule: str = "",
) -> str:
    """Publish `<campaign>-review` and return the Resume dialog's description (same grid);
    `compact`: the form is the two lists of a review of many assets, not a choice per asset;
    `deadline_rule`: how long the review may take and why, shown under the drafts.

    Full-size links are presigned for `links_valid_seconds` (at most 7 days), where the storage
    can presign (S3); local storage has no links, only the thumbnails and its paths.
    """
    seconds = max(60, min(links_valid_seconds, REVIEW_LINK_MAX_SECONDS))
    drafts = await review_drafts(plans, outcomes, storage, suggested, seconds)
    has_links = any(d.link for previews in drafts.values() for d in previews)
    expires = datetime.now(UTC) + timedelta(seconds=seconds) if has_links else None
    try:
        await acreate_markdown_artifact(
            key=artifact_key(campaign, "review"),
            markdown=review_markdown(
                campaign, plans, outcomes, suggested, drafts, expires, compact=compact
            )
            + (f"\n\n**Review deadline.** {deadline_rule}\n" if deadline_rule else ""),
            description=f"Drafts of {campaign} awaiting review ({run_label()})",
        )
    except Exception as error:  # noqa: BLE001 — the Resume dialog still shows the drafts
        logger.error("Review artifact not published: %s", error)
    return review_description(campaign, plans, outcomes, suggested, drafts, compact=compact)


async def review_drafts(
    plans: Sequence[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    storage: AssetStorage,
    suggested: dict[str, int | None],
    links_valid_seconds: int,
) -> dict[str, list[DraftPreview]]:
    """Every reviewable draft's thumbnails and full-size link (each image read once), until
    the thumbnails made would fill both the dialog's and the artifact's budget: the drafts
    after that are `omitted` (no image read), so memory does not grow with the campaign."""

    def previews(image: StoredImage) -> tuple[Thumbnail | None, Thumbnail | None]:
        try:
            data = storage.get_bytes(image.key)
            if not data:
                return None, None
            return thumbnail(data, REVIEW_EDGE), thumbnail(data, SHEET_EDGE)
        except Exception as error:  # noqa: BLE001 — a preview is not worth failing a run for
            logger.warning("No preview of %s: %s", image.uri, error)
            return None, None

    made = [0, 0]  # characters of small and large thumbnails made so far

    async def one(image: StoredImage) -> DraftPreview:
        label = f"image-{image.index}"
        if made[0] > DESCRIPTION_BUDGET_CHARS and made[1] > ARTIFACT_BUDGET_CHARS:
            # Neither the dialog nor the artifact has room left: a campaign of many assets
            # would otherwise hold thousands of thumbnails only to leave them out.
            link = await asyncio.to_thread(_full_size_link, storage, image, links_valid_seconds)
            return DraftPreview(label, image, None, None, link, omitted=True)
        (small, large), link = await asyncio.gather(
            asyncio.to_thread(previews, image),
            asyncio.to_thread(_full_size_link, storage, image, links_valid_seconds),
        )
        made[0] += len(small.data_uri) if small is not None else 0
        made[1] += len(large.data_uri) if large is not None else 0
        return DraftPreview(label, image, small, large, link)

    found: dict[str, list[DraftPreview]] = {}
    for plan in plans:
        record = outcomes[plan.asset.id].drafts
        if record is not None and plan.asset.id in suggested:
            found[plan.asset.id] = list(await asyncio.gather(*(one(i) for i in record.images)))
    return found


def review_description(
    campaign: str,
    plans: Sequence[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    drafts: dict[str, list[DraftPreview]],
    budget_chars: int = DESCRIPTION_BUDGET_CHARS,
    compact: bool = False,
) -> str:
    """The Resume dialog's markdown: per asset a row of draft thumbnails labelled as the form's
    options (`image-0` …), with the final's estimate and the suggested choice. `compact`: the
    form has two lists (reject, use another draft) instead of a choice per asset, and the first
    line says how to use them.

    No links: the dialog is where the choice is made; the review artifact has them. Pictures
    stop at `budget_chars` of data URIs (a campaign of many assets), and the text says so.
    """
    shown = _reviewable_plans(plans, outcomes, suggested)
    total = sum((p.final_estimate.usd for p in shown), Decimal(0))
    budget = PictureBudget(budget_chars)
    how = (
        "Every asset's **suggested** draft becomes its final unless you list the asset under "
        "**Reject** or pick another of its drafts under **Use another draft** (an asset "
        "suggested *reject* gets a final only if you pick one)"
        if compact
        else "Choose one draft per asset (or **reject**) in the fields below"
    )
    lines = [
        f"{how}: {len(shown)} final(s) would cost ≈ **{usd(total)}** in all. Larger previews: "
        f"artifact `{artifact_key(campaign, 'review')}`.",
        "",
    ]
    for plan in shown:
        asset = plan.asset.id
        lines += [
            f"**{asset}** — final ≈ {usd(plan.final_estimate.usd)} · "
            f"suggested: {_suggestion(suggested, asset)}",
            "",
            *grid(
                [
                    GridCell(
                        d.label, budget.skip() if d.omitted else budget.picture(d.small, d.label)
                    )
                    for d in drafts.get(asset, [])
                ]
            ),
            "",
        ]
    if budget.omitted:
        lines.append(
            f"_{budget.omitted} thumbnail(s) not shown, to keep this form small: see the review "
            "artifact._"
        )
    skipped = [p.asset.id for p in plans if p not in shown]
    if skipped:
        lines.append(
            "Not in this review: " + ", ".join(f"{a} ({outcomes[a].status.value})" for a in skipped)
        )
    return "\n".join(lines).rstrip() + "\n"


def review_markdown(
    campaign: str,
    plans: Sequence[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    drafts: dict[str, list[DraftPreview]],
    links_expire: datetime | None,
    budget_chars: int = ARTIFACT_BUDGET_CHARS,
    compact: bool = False,
) -> str:
    """The `<campaign>-review` artifact: the dialog's grid per asset, side by side, with larger
    thumbnails, full-size links where storage gives them, and where the drafts are stored."""
    budget = PictureBudget(budget_chars)
    how = (
        "Every asset's suggested draft becomes its final unless, in the paused run's **Resume** "
        "dialog, you list the asset under *Reject* or pick another of its drafts (`<asset>: "
        "image-N`) under *Use another draft*"
        if compact
        else "Choose one draft per asset (or reject it) in the paused run's **Resume** dialog"
    )
    lines = [
        f"# Review drafts — {campaign}",
        "",
        f"{how}; the dialog shows these drafts too, and its options are the labels below.",
    ]
    if links_expire is not None:
        lines.append(
            f"The *full size* links are temporary: valid until {links_expire:%Y-%m-%d %H:%M} UTC."
        )
    lines.append("")
    for plan in plans:
        asset = plan.asset.id
        outcome = outcomes[asset]
        lines.append(f"## {asset}")
        if outcome.drafts is None or asset not in suggested:
            detail = f": {outcome.detail}" if outcome.detail else ""
            lines += ["", f"_Nothing to review: {outcome.status.value}{detail}_", ""]
            continue
        estimate = plan.final_estimate
        cells = [
            GridCell(
                d.label,
                budget.skip() if d.omitted else budget.picture(d.large or d.small, d.label),
                (f"[full size]({d.link})",) if d.link else (),
            )
            for d in drafts.get(asset, [])
        ]
        lines += [
            "",
            f"Final ≈ **{usd(estimate.usd)}** ({plan.final_quality}, "
            f"{estimate.width}x{estimate.height}) · suggested: "
            f"**{_suggestion(suggested, asset)}**",
            "",
            *grid(cells),
            "",
        ]
        if outcome.drafts.images:
            lines += [f"Stored at `{_folder(outcome.drafts.images[0].uri)}`", ""]
    if budget.omitted:
        lines.append(f"_{budget.omitted} thumbnail(s) not shown, to keep this artifact small._")
    return "\n".join(lines).rstrip() + "\n"


def _reviewable_plans(
    plans: Sequence[AssetPlan], outcomes: dict[str, AssetOutcome], suggested: dict[str, Any]
) -> list[AssetPlan]:
    return [p for p in plans if reviewable(p, outcomes, suggested)]


def _suggestion(suggested: dict[str, int | None], asset: str) -> str:
    choice = suggested.get(asset)
    return "reject" if choice is None else f"image-{choice}"


def _full_size_link(storage: AssetStorage, image: StoredImage, seconds: int) -> str | None:
    """A temporary HTTPS link to the full image (S3), or None (local storage has none)."""
    try:
        return storage.presigned_url(image.key, seconds)
    except Exception as error:  # noqa: BLE001
        logger.warning("No link to %s: %s", image.uri, error)
        return None


def _folder(uri: str) -> str:
    return uri.rsplit("/", 1)[0] + "/"
