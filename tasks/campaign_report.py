"""Campaign artifacts: what reviewers and managers read in the Prefect UI.

Every key is stable per campaign, so the Artifacts page shows each one's history across runs:

- `<campaign>-review` (markdown): every asset's drafts side by side, labelled `image-0` … as the
  Resume form's options, with the final's estimate and links to the full drafts where storage
  can presign them (S3; local storage has none).
- `<campaign>-finals` (markdown): the contact sheet — every asset of the run with its final's
  thumbnail, size, cost and durable storage URI, or why it has none.
- `<campaign>-<asset>-final` (markdown): one asset's outcome in the run — its final, or
  "No current final" and why.
- `<campaign>-cost` (table): one row per paid job, and one per asset left without a final:
  Asset, Stage, Quality, Size, Images, Estimated, Billed, Credits, Status.
- `<campaign>-cost-details` (table): the same jobs' task ids, seconds and tokens.
- `<campaign>-summary` (markdown): spend by stage, the budget, the draft-first saving in words,
  every asset's outcome, and paid jobs whose images were not stored.
- `<campaign>-progress` (progress): jobs finished so far.

The paused run's Resume dialog shows the review grid too: its description
(`review_description`) is markdown with small thumbnails, so a reviewer chooses while looking at
the drafts.

History that does not mislead: every run that ends (completed, failed or cancelled) publishes
`<campaign>-<asset>-final` for **every** asset of its brief, whatever the outcome. An asset the
reviewer rejected, that failed, or that the budget stopped gets a version saying "No current
final" with the reason, the run and the date, so the latest version of a key — what the
Artifacts page shows — is never an older run's final presented as current. Earlier finals stay
in the key's history, each labelled with the run that made it. Two cases keep an older version
on top: a run killed outright (it publishes nothing; `prefect-evolink report` rebuilds its
manifest, not its artifacts) and an asset removed from the brief (no later run mentions it).

Pictures are never published with `create_image_artifact`: the UI prints the data URI as the
"Image URL" line and stretches the picture. Data URIs appear only as markdown pictures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from evolink.brief import AssetPlan
from evolink.campaign import AssetOutcome, AssetStatus, CampaignManifest, JobRow
from evolink.cost import usd
from evolink.jobs import StoredImage
from evolink.previews import (
    REVIEW_EDGE,
    SHEET_EDGE,
    GridCell,
    Thumbnail,
    cell_text,
    grid,
    thumbnail,
)
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.tasks.recovery import manifest_key
from prefect_evolink.tasks.reporting import artifact_key
from prefect_evolink.tasks.steps import evolink_step

logger = logging.getLogger(__name__)

REVIEW_LINK_MAX_SECONDS: Final = 7 * 24 * 3600
"""S3 presigned URLs (SigV4) live at most 7 days; the review's links never claim longer."""
DESCRIPTION_BUDGET_CHARS: Final = 300_000
"""Most characters of thumbnails in the Resume dialog's description. The API stored and the UI
rendered descriptions of 40 KB and 400 KB; 4 assets × 4 drafts take about 30 KB."""
ARTIFACT_BUDGET_CHARS: Final = 1_000_000
"""Most characters of thumbnails in one artifact: a keyed artifact past about 1.5 MB is not
published as an event, and the run's Artifacts tab downloads every artifact whole."""

COST_COLUMNS: Final = (
    "Asset",
    "Stage",
    "Quality",
    "Size",
    "Images",
    "Estimated",
    "Billed",
    "Credits",
    "Status",
)
DETAIL_COLUMNS: Final = ("Asset", "Stage", "Task id", "Seconds", "Tokens (out / img / text)")
NONE: Final = "—"
"""An empty table cell. Not "-": the older UI renders each table cell as markdown, where a lone
"-" is a list bullet."""

_NO_FINAL: Final = {
    AssetStatus.REJECTED: "rejected",
    AssetStatus.NOT_REVIEWED: "not reviewed",
    AssetStatus.BUDGET_STOPPED: "over budget",
    AssetStatus.FAILED: "failed",
    AssetStatus.CANCELLED: "cancelled",
    AssetStatus.PENDING: "unfinished",
}
"""Why an asset has no final, in the few words a table cell holds (the detail is elsewhere)."""


@evolink_step("evolink-save-manifest", "save manifest {manifest.campaign}")
async def save_manifest(manifest: CampaignManifest, storage: AssetStorage) -> str:
    """Store a campaign's manifest at `<campaign>/manifest.json`, retried like any step.

    The run calls it when it ends — completed, failed or cancelled — so a run that paid for
    anything always leaves its manifest (a killed run's is rebuilt by `prefect-evolink report`).

    Args:
        manifest: The campaign manifest to store.
        storage: Where the campaign's images are; the manifest goes beside them.

    Returns:
        The manifest's storage URI.

    Raises:
        ClientError: S3 refused the write for good (no such bucket, access denied); other S3
            and connection errors are retried.

    Example:
        A Prefect task: call it inside a flow:
        ```python
        uri = await save_manifest(manifest, storage)
        ```
    """
    stored = await storage.aput_json(manifest_key(manifest.campaign), manifest)
    return stored.uri


PROGRESS_STEP_PERCENT: Final = 1.0
"""The progress artifact is rewritten when the share done has grown by this many points (and
at 100 %), not after every job: a 1,000-asset campaign makes 2,000 jobs, and each update is
an API write. The artifact shows whole percents anyway."""


class Progress:
    """A progress artifact advanced as draft and final jobs finish (see `PROGRESS_STEP_PERCENT`)."""

    def __init__(self, artifact_id: UUID, total_steps: int):
        self._id = artifact_id
        self._total = max(1, total_steps)
        self._done = 0
        self._shown = 0.0
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
        """One more job done. A failed update is logged, never raised: progress is a view."""
        async with self._lock:
            self._done = min(self._total, self._done + steps)
            percent = 100.0 * self._done / self._total
            if percent < 100.0 and percent - self._shown < PROGRESS_STEP_PERCENT:
                return
            self._shown = percent
            try:
                await aupdate_progress_artifact(self._id, progress=percent)
            except Exception as error:  # noqa: BLE001
                logger.warning("Progress artifact not updated: %s", error)


# --- pictures ------------------------------------------------------------------------------


def _thumbnail(storage: AssetStorage, image: StoredImage, edge: int) -> Thumbnail | None:
    """A thumbnail, or None when the image cannot be read (a preview is not worth failing a run
    for). Blocking: call it in a worker thread."""
    try:
        data = storage.get_bytes(image.key)
        return thumbnail(data, edge) if data else None
    except Exception as error:  # noqa: BLE001
        logger.warning("No preview of %s: %s", image.uri, error)
        return None


def _full_size_link(storage: AssetStorage, image: StoredImage, seconds: int) -> str | None:
    """A temporary HTTPS link to the full image (S3), or None (local storage has none)."""
    try:
        return storage.presigned_url(image.key, seconds)
    except Exception as error:  # noqa: BLE001
        logger.warning("No link to %s: %s", image.uri, error)
        return None


def _picture(preview: Thumbnail | None, alt: str) -> str:
    return preview.markdown(alt) if preview is not None else "_no preview_"


def _run_label() -> str:
    """The flow run's name, for the artifacts' history ("run bright-owl")."""
    from prefect.runtime import flow_run

    name = flow_run.name or "outside a flow run"
    return f"run {name}"


def _folder(uri: str) -> str:
    return uri.rsplit("/", 1)[0] + "/"


# --- review: the Resume dialog and the review artifact -------------------------------------


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


class _Budget:
    """Pictures go in while their data URIs fit `chars`; past it, words replace them."""

    def __init__(self, chars: int):
        self.left = chars
        self.omitted = 0

    def picture(self, preview: Thumbnail | None, alt: str) -> str:
        if preview is None:
            return "_no preview_"
        if len(preview.data_uri) > self.left:
            self.omitted += 1
            return "_not shown_"
        self.left -= len(preview.data_uri)
        return preview.markdown(alt)

    def skip(self) -> str:
        """A picture left out because the budget was known to be spent before it was made."""
        self.omitted += 1
        return "_not shown_"

    def room(self, chars: int = 1) -> bool:
        return self.left >= chars


def _reviewable(
    plans: Sequence[AssetPlan], outcomes: dict[str, AssetOutcome], suggested: dict[str, Any]
) -> list[AssetPlan]:
    return [p for p in plans if outcomes[p.asset.id].drafts is not None and p.asset.id in suggested]


def _suggestion(suggested: dict[str, int | None], asset: str) -> str:
    choice = suggested.get(asset)
    return "reject" if choice is None else f"image-{choice}"


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
    shown = _reviewable(plans, outcomes, suggested)
    total = sum((p.final_estimate.usd for p in shown), Decimal(0))
    budget = _Budget(budget_chars)
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
    budget = _Budget(budget_chars)
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
            description=f"Drafts of {campaign} awaiting review ({_run_label()})",
        )
    except Exception as error:  # noqa: BLE001 — the Resume dialog still shows the drafts
        logger.error("Review artifact not published: %s", error)
    return review_description(campaign, plans, outcomes, suggested, drafts, compact=compact)


# --- finals: the contact sheet and each asset's keyed artifact ----------------------------


def outcome_words(outcome: AssetOutcome) -> str:
    """An asset's outcome in a word or two: 'final', 'rejected', 'failed', 'over budget'…"""
    if outcome.status is AssetStatus.FINAL:
        return "final"
    return _NO_FINAL.get(outcome.status, outcome.status.value)


def _reason(outcome: AssetOutcome) -> str:
    """Why an asset has no final, in full: 'rejected by reviewer', 'failed — final: …'."""
    words = outcome_words(outcome)
    if not outcome.detail:
        return words
    return outcome.detail if words in outcome.detail else f"{words} — {outcome.detail}"


def _final_row(manifest: CampaignManifest, asset: str) -> JobRow | None:
    rows = [r for r in manifest.jobs if r.asset == asset and r.stage == "final" and not r.failed]
    return rows[-1] if rows else None


def _final_cost(manifest: CampaignManifest, outcome: AssetOutcome) -> str:
    row = _final_row(manifest, outcome.asset)
    if row is not None:
        return usd(row.billed_usd) if row.billed_usd is not None else "bill unknown"
    if outcome.final is not None:
        return usd(outcome.final.billed_usd)
    return "unknown"


def contact_sheet_markdown(
    manifest: CampaignManifest,
    previews: dict[str, Thumbnail | None],
    run: str,
    budget_chars: int = ARTIFACT_BUDGET_CHARS,
) -> str:
    """The `<campaign>-finals` contact sheet: every asset of the run, four to a row — the
    final's thumbnail, size and cost, or why there is none — then each final's storage URI.
    Thumbnails stop at `budget_chars` of data URIs (about 120 finals); each asset's own
    `<campaign>-<asset>-final` artifact still shows its picture."""
    finals = [o for o in manifest.assets if o.status is AssetStatus.FINAL and o.final]
    budget = _Budget(budget_chars)
    cells = []
    for outcome in manifest.assets:
        if outcome.status is AssetStatus.FINAL and outcome.final is not None:
            image = outcome.final.images[0]
            preview = previews.get(outcome.asset)
            picture = (
                budget.picture(preview, outcome.asset)
                if outcome.asset in previews
                else budget.skip()
            )
            cells.append(
                GridCell(
                    outcome.asset,
                    picture,
                    (f"{image.width}x{image.height}", _final_cost(manifest, outcome)),
                )
            )
        else:
            cells.append(
                GridCell(outcome.asset, f"_no final: {outcome_words(outcome)}_", ("—", "—"))
            )
    billed = manifest.totals.by_stage.get("final", "0")
    lines = [
        f"# Finals — {manifest.campaign}",
        "",
        f"{len(finals)} of {len(manifest.assets)} asset(s) have a final · finals billed "
        f"**{usd(billed)}** · {run}, {manifest.finished_at:%Y-%m-%d %H:%M} UTC "
        f"({manifest.run_state})",
        "",
        *grid(cells),
        "",
    ]
    if budget.omitted:
        lines += [
            f"_{budget.omitted} thumbnail(s) not shown, to keep this artifact small: each "
            f"asset's `{artifact_key(manifest.campaign, '<asset>', 'final')}` shows its final._",
            "",
        ]
    if finals:
        lines += ["Stored at (durable storage URIs; the manifest lists every image):", ""]
        lines += [
            f"- **{o.asset}** — `{o.final.images[0].uri}`"
            for o in finals
            if o.final is not None and o.final.images
        ]
    missing = [o for o in manifest.assets if o.status is not AssetStatus.FINAL]
    if missing:
        lines += ["", "Without a final in this run:", ""]
        lines += [f"- **{o.asset}** — {_reason(o)}" for o in missing]
    return "\n".join(lines).rstrip() + "\n"


def asset_final_markdown(
    manifest: CampaignManifest, outcome: AssetOutcome, preview: Thumbnail | None, run: str
) -> tuple[str, str]:
    """(markdown, description) of `<campaign>-<asset>-final` for this run's outcome.

    Without a final, both say so first ("No current final"), so the Artifacts page — which
    shows a key's latest version and its description — never presents an older final as
    current."""
    when = f"{manifest.finished_at:%Y-%m-%d %H:%M} UTC"
    if outcome.status is AssetStatus.FINAL and outcome.final is not None:
        image = outcome.final.images[0]
        chosen = "-" if outcome.chosen_draft is None else f"image-{outcome.chosen_draft}"
        lines = [
            f"# {outcome.asset} — final",
            "",
            _picture(preview, outcome.asset),
            "",
            f"- size: {image.width}x{image.height} ({outcome.final.request.quality} quality)",
            f"- final billed: {_final_cost(manifest, outcome)}",
            f"- from draft: {chosen}",
            f"- {run}, {when}",
            f"- stored at: `{image.uri}`",
            f"- sha256: `{image.sha256[:16]}…`",
        ]
        description = (
            f"Current final of {outcome.asset}: {image.width}x{image.height}, "
            f"{_final_cost(manifest, outcome)} ({run}, {when})"
        )
        return "\n".join(lines) + "\n", description
    words = outcome_words(outcome)
    lines = [
        f"# {outcome.asset} — no current final",
        "",
        f"**No current final — {words}** in {run} ({when}).",
        "",
        f"Why: {_reason(outcome)}",
        "",
        "Finals in earlier versions of this artifact are **not** current: the latest run of "
        f"campaign {manifest.campaign} did not produce or approve one for this asset.",
    ]
    description = f"No current final of {outcome.asset} — {words} ({run}, {when})"
    return "\n".join(lines) + "\n", description


PREVIEW_WORKERS: Final = 4
"""Finals thumbnailed and published at once at the end of a run: each reads a whole image, so
a 1,000-asset run holds 4 images in memory, not 1,000."""


async def publish_final_previews(manifest: CampaignManifest, storage: AssetStorage) -> None:
    """The contact sheet `<campaign>-finals`, and `<campaign>-<asset>-final` for every asset of
    the run — a final, or "no current final" and why (see the module docstring).

    Assets are done `PREVIEW_WORKERS` at a time, each thumbnail made, published in its asset's
    artifact and dropped — except the first ones whose data URIs fit the contact sheet's budget
    (`ARTIFACT_BUDGET_CHARS`), kept for the sheet. So memory stays flat however many assets."""
    run = _run_label()
    finals = [o for o in manifest.assets if o.status is AssetStatus.FINAL and o.final]
    sheet: dict[str, Thumbnail | None] = {}
    kept = 0
    queue = iter(manifest.assets)

    async def worker() -> None:
        nonlocal kept
        for outcome in queue:  # shared by the workers: each asset once
            preview = None
            if outcome.status is AssetStatus.FINAL and outcome.final is not None:
                image = outcome.final.images[0]
                preview = await asyncio.to_thread(_thumbnail, storage, image, SHEET_EDGE)
                size = len(preview.data_uri) if preview is not None else 0
                if kept + size <= ARTIFACT_BUDGET_CHARS:
                    sheet[outcome.asset] = preview
                    kept += size
            markdown, description = asset_final_markdown(manifest, outcome, preview, run)
            await acreate_markdown_artifact(
                key=artifact_key(manifest.campaign, outcome.asset, "final"),
                markdown=markdown,
                description=description,
            )

    await asyncio.gather(*(worker() for _ in range(PREVIEW_WORKERS)))
    await acreate_markdown_artifact(
        key=artifact_key(manifest.campaign, "finals"),
        markdown=contact_sheet_markdown(manifest, sheet, run),
        description=(
            f"Finals of {manifest.campaign}: {len(finals)} of {len(manifest.assets)} asset(s) "
            f"({run})"
        ),
    )


# --- cost: the manager's table, the details table, the summary -----------------------------


def _job_status(row: JobRow) -> str:
    """'stored', or 'not stored' for a paid job whose images are (partly) missing — its reason
    is in the summary. An unknown bill shows as "unknown" in the Billed column."""
    return "not stored" if row.failed else "stored"


def _ended_at(outcome: AssetOutcome) -> str:
    """The stage an asset without a final ended at: 'review', 'draft', 'final'…"""
    if outcome.status in (AssetStatus.REJECTED, AssetStatus.NOT_REVIEWED):
        return "review"
    stage, colon, _ = outcome.detail.partition(":")
    return stage if colon and stage.isalpha() else NONE


def cost_rows(manifest: CampaignManifest) -> list[dict[str, Any]]:
    """The `<campaign>-cost` table: what a manager reads, in `COST_COLUMNS` order — one row per
    paid job, then one per asset left without a final (nothing billed for its final).

    Every cell is a few words, so the table fits the content column of a 1,440-px screen in both
    Prefect UIs (their table cells do not wrap): task ids, durations and tokens are in
    `cost_detail_rows`, reasons in the summary, storage locations in the manifest."""
    rows = [
        {
            "Asset": row.asset,
            "Stage": row.stage,
            "Quality": row.quality,
            "Size": row.pixel_size,
            "Images": row.images,
            "Estimated": usd(row.estimated_usd),
            "Billed": usd(row.billed_usd),
            "Credits": row.billed_credits or "unknown",
            "Status": _job_status(row),
        }
        for row in manifest.jobs
    ]
    rows += [
        {
            "Asset": o.asset,
            "Stage": _ended_at(o),
            "Quality": NONE,
            "Size": NONE,
            "Images": 0,
            "Estimated": NONE,
            "Billed": NONE,
            "Credits": NONE,
            "Status": outcome_words(o),
        }
        for o in manifest.assets
        if o.status is not AssetStatus.FINAL
    ]
    return rows


def cost_detail_rows(manifest: CampaignManifest) -> list[dict[str, Any]]:
    """The `<campaign>-cost-details` table, in `DETAIL_COLUMNS` order: the same jobs' task ids,
    seconds from submission to result, and tokens (output / image input / text input, as
    estimated). Storage locations stay in the manifest (every image's URI), the contact sheet
    and the review: a URI column would not fit the page."""
    return [
        {
            "Asset": row.asset,
            "Stage": row.stage,
            "Task id": row.task_id,
            "Seconds": row.duration_s,
            "Tokens (out / img / text)": (
                f"{row.output_tokens} / {row.image_input_tokens} / {row.text_input_tokens}"
            ),
        }
        for row in manifest.jobs
    ]


async def publish_campaign_report(manifest: CampaignManifest) -> None:
    """The cost table, its details table and the summary (see the module docstring)."""
    run = _run_label()
    await acreate_table_artifact(
        key=artifact_key(manifest.campaign, "cost"),
        table=cost_rows(manifest),
        description=(
            f"Cost of {manifest.campaign} per job: estimated before, billed after ({run}). "
            f"Task ids, seconds and tokens: `{artifact_key(manifest.campaign, 'cost-details')}`"
        ),
    )
    await acreate_table_artifact(
        key=artifact_key(manifest.campaign, "cost-details"),
        table=cost_detail_rows(manifest),
        description=f"Task ids, seconds and tokens of the paid jobs of {manifest.campaign} ({run})",
    )
    await acreate_markdown_artifact(
        key=artifact_key(manifest.campaign, "summary"),
        markdown=summary_markdown(manifest),
        description=f"Spend, budget and outcome of campaign {manifest.campaign} ({run})",
    )


def _counts(values: Sequence[int]) -> str:
    """4 → '4'; 2 and 4 → '2–4'."""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def draft_first_words(manifest: CampaignManifest) -> tuple[str, str] | None:
    """(the alternative, in words; the saving sentence), or None without a final.

    The alternative to draft-first is generating, per delivered final, as many high-quality
    variants as there were drafts ("4 high-quality variants per asset") and picking from those.
    """
    variants = Decimal(manifest.high_quality_variants_usd)
    finals = [o for o in manifest.assets if o.status is AssetStatus.FINAL and o.final and o.drafts]
    if variants <= 0 or not finals:
        return None
    drafts = _counts([o.drafts.request.n for o in finals if o.drafts is not None])
    draft_quality = "/".join(sorted({o.drafts.request.quality for o in finals if o.drafts}))
    final_quality = "/".join(sorted({o.final.request.quality for o in finals if o.final}))
    spent = Decimal(manifest.totals.billed_usd)
    alternative = f"{drafts} {final_quality}-quality variants per asset, no drafts"
    saving = (
        f"Draft-first: {drafts} {draft_quality}-quality drafts per asset, then one "
        f"{final_quality}-quality final from the chosen draft. Getting the same "
        f"{len(finals)} final(s) by generating {drafts} {final_quality}-quality variants per "
        f"asset would have cost **{usd(variants)}**; this run billed **{usd(spent)}** in all "
        f"(drafts of every asset included) — **{spent / variants:.2f}×** of that"
    )
    if spent < variants:
        saving += f", a saving of **{usd(variants - spent)}**."
    else:
        saving += "."
    return alternative, saving


def summary_markdown(manifest: CampaignManifest) -> str:
    totals = manifest.totals
    spent = Decimal(totals.billed_usd)
    budget = Decimal(manifest.budget_usd)
    used = f"used {spent / budget:.0%}, " if budget > 0 else ""
    words = draft_first_words(manifest)
    lines = [
        f"# {manifest.campaign}",
        "",
        f"Run: **{manifest.run_state}**",
        "",
        "| | USD |",
        "|---|---|",
        *(f"| {stage} | {usd(amount)} |" for stage, amount in sorted(totals.by_stage.items())),
        f"| **total billed** | **{usd(spent)}** ({totals.billed_credits} credits) |",
        f"| pre-flight estimate | {usd(manifest.pre_flight_estimate_usd)} |",
        f"| budget | {usd(budget)} — {used}left {usd(budget - spent)} |",
    ]
    if words is not None:
        lines.append(f"| same finals as {words[0]} | {usd(manifest.high_quality_variants_usd)} |")
    lines.append("")
    if words is not None:
        lines.append(words[1])
    if totals.unknown_bills:
        lines.append(
            f"\n{totals.unknown_bills} job(s) reported no bill; counted at their estimate."
        )
    unstored = [row for row in manifest.jobs if row.failed]
    if unstored:
        lines += ["", "Paid jobs whose images were not (all) stored:", ""]
        lines += [
            f"- {row.asset} {row.stage} (`{row.task_id}`, billed {usd(row.billed_usd)}): "
            f"{row.failed}"
            for row in unstored
        ]
    for job in manifest.submissions_unknown:
        lines.append(
            f"\n{job.asset} {job.stage}: {job.note} (`{job.idempotency_key}`, "
            f"≈{usd(job.estimated_usd)} if EvoLink created it; not counted above)."
        )
    lines += ["", "| Asset | Outcome | Chosen draft | Detail |", "|---|---|---|---|"]
    lines += [
        f"| {o.asset} | {o.status.value} | "
        f"{'-' if o.chosen_draft is None else f'image-{o.chosen_draft}'} | "
        f"{cell_text(o.detail)} |"
        for o in manifest.assets
    ]
    return "\n".join(lines)
