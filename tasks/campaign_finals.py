"""The finals of a campaign run: the contact sheet `<campaign>-finals`, and one
`<campaign>-<asset>-final` per asset of the brief.

One concept: what the run delivered, picture by picture. Every run that ends publishes an
asset's artifact for **every** asset, a final or "No current final" and why, so the latest
version of a key is never an older run's final presented as current (see `campaign_report`).
Thumbnails are made a few at a time and kept only while they fit the contact sheet, so memory
does not grow with the campaign.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from prefect.artifacts import acreate_markdown_artifact

from evolink.campaign import AssetOutcome, AssetStatus, CampaignManifest, JobRow
from evolink.cost import usd
from evolink.jobs import StoredImage
from evolink.previews import SHEET_EDGE, GridCell, Thumbnail, grid, thumbnail
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.tasks.campaign_artifacts import (
    ARTIFACT_BUDGET_CHARS,
    PictureBudget,
    outcome_words,
    run_label,
)
from prefect_evolink.tasks.reporting import artifact_key

logger = logging.getLogger(__name__)

PREVIEW_WORKERS: Final = 4
"""Finals thumbnailed and published at once at the end of a run: each reads a whole image, so
a 1,000-asset run holds 4 images in memory, not 1,000."""


async def publish_final_previews(manifest: CampaignManifest, storage: AssetStorage) -> None:
    """The contact sheet `<campaign>-finals`, and `<campaign>-<asset>-final` for every asset of
    the run — a final, or "no current final" and why (see the module docstring).

    Assets are done `PREVIEW_WORKERS` at a time, each thumbnail made, published in its asset's
    artifact and dropped — except the first ones whose data URIs fit the contact sheet's budget
    (`ARTIFACT_BUDGET_CHARS`), kept for the sheet. So memory stays flat however many assets."""
    run = run_label()
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
    budget = PictureBudget(budget_chars)
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


def _thumbnail(storage: AssetStorage, image: StoredImage, edge: int) -> Thumbnail | None:
    """A thumbnail, or None when the image cannot be read (a preview is not worth failing a run
    for). Blocking: call it in a worker thread."""
    try:
        data = storage.get_bytes(image.key)
        return thumbnail(data, edge) if data else None
    except Exception as error:  # noqa: BLE001
        logger.warning("No preview of %s: %s", image.uri, error)
        return None


def _picture(preview: Thumbnail | None, alt: str) -> str:
    return preview.markdown(alt) if preview is not None else "_no preview_"
