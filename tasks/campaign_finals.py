"""The finals of a campaign run: the contact sheet `<campaign>-finals`, and one
`<campaign>-<asset>-final` per asset of the brief.

One concept: what the run delivered, picture by picture — each asset's final (its master) and
the final's adaptations (`evolink.adaptations`), each labelled with its id and pixel size, or
shown as failed, rejected or over budget, without a picture. Every run that ends publishes an
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

from evolink.adaptations import adaptation_stage
from evolink.campaign import AdaptationOutcome, AssetOutcome, AssetStatus, CampaignManifest, JobRow
from evolink.cost import usd
from evolink.jobs import StoredImage
from evolink.previews import SHEET_EDGE, GridCell, Thumbnail, grid, thumbnail
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.tasks.campaign_artifacts import (
    ARTIFACT_BUDGET_CHARS,
    PictureBudget,
    adaptation_words,
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
    the run — a final and its adaptations, or "no current final" and why (see the module
    docstring).

    Assets are done `PREVIEW_WORKERS` at a time, each of an asset's pictures (its final, then
    its adaptations, one image read at a time) thumbnailed, published in its asset's artifact
    and dropped — except the first ones whose data URIs fit the contact sheet's budget
    (`ARTIFACT_BUDGET_CHARS`), kept for the sheet. So memory stays flat however many assets."""
    run = run_label()
    finals = [o for o in manifest.assets if o.status is AssetStatus.FINAL and o.final]
    sheet: dict[str, Thumbnail | None] = {}
    kept = 0
    queue = iter(manifest.assets)

    def keep(key: str, preview: Thumbnail | None) -> None:
        nonlocal kept
        size = len(preview.data_uri) if preview is not None else 0
        if kept + size <= ARTIFACT_BUDGET_CHARS:
            sheet[key] = preview
            kept += size

    async def worker() -> None:
        for outcome in queue:  # shared by the workers: each asset once
            preview = None
            adapted: dict[str, Thumbnail | None] = {}
            if outcome.status is AssetStatus.FINAL and outcome.final is not None:
                image = outcome.final.images[0]
                preview = await asyncio.to_thread(_thumbnail, storage, image, SHEET_EDGE)
                keep(outcome.asset, preview)
                for adaptation in outcome.adaptations:
                    shown = _shown_image(adaptation)
                    if shown is None:
                        continue
                    small = await asyncio.to_thread(_thumbnail, storage, shown, SHEET_EDGE)
                    adapted[adaptation.id] = small
                    keep(sheet_key(outcome.asset, adaptation.id), small)
            markdown, description = asset_final_markdown(manifest, outcome, preview, run, adapted)
            await acreate_markdown_artifact(
                key=artifact_key(manifest.campaign, outcome.asset, "final"),
                markdown=markdown,
                description=description,
            )

    await asyncio.gather(*(worker() for _ in range(PREVIEW_WORKERS)))
    adaptations = _adaptation_counts(manifest)
    made = f", {adaptations[0]} of {adaptations[1]} adaptation(s)" if adaptations[1] else ""
    await acreate_markdown_artifact(
        key=artifact_key(manifest.campaign, "finals"),
        markdown=contact_sheet_markdown(manifest, sheet, run),
        description=(
            f"Finals of {manifest.campaign}: {len(finals)} of {len(manifest.assets)} asset(s)"
            f"{made} ({run})"
        ),
    )


def sheet_key(asset: str, adaptation_id: str) -> str:
    """The contact sheet's key of an adaptation's thumbnail (`<asset>/adapt-<id>`); a final's
    is its asset id (ids never contain '/')."""
    return f"{asset}/{adaptation_stage(adaptation_id)}"


def contact_sheet_markdown(
    manifest: CampaignManifest,
    previews: dict[str, Thumbnail | None],
    run: str,
    budget_chars: int = ARTIFACT_BUDGET_CHARS,
) -> str:
    """The `<campaign>-finals` contact sheet: every asset of the run — the final's thumbnail,
    size and cost, or why there is none — then each final's storage URI. Without adaptations,
    four assets to a row; with them, one row per asset: the final (its master), then its
    adaptations, each labelled `<asset> · <id>` with its pixel size and cost, or why it has no
    picture (failed, rejected, over budget…).

    `previews` holds the finals' thumbnails by asset id and the adaptations' by `sheet_key`.
    Thumbnails stop at `budget_chars` of data URIs (about 120 pictures); each asset's own
    `<campaign>-<asset>-final` artifact still shows its pictures."""
    finals = [o for o in manifest.assets if o.status is AssetStatus.FINAL and o.final]
    budget = PictureBudget(budget_chars)
    adapted = any(o.adaptations for o in manifest.assets)
    rows: list[list[GridCell]] = []
    for outcome in manifest.assets:
        if outcome.status is AssetStatus.FINAL and outcome.final is not None:
            image = outcome.final.images[0]
            preview = previews.get(outcome.asset)
            picture = (
                budget.picture(preview, outcome.asset)
                if outcome.asset in previews
                else budget.skip()
            )
            cells = [
                GridCell(
                    outcome.asset,
                    picture,
                    (f"{image.width}x{image.height}", _final_cost(manifest, outcome)),
                )
            ]
            for adaptation in outcome.adaptations:
                key = sheet_key(outcome.asset, adaptation.id)
                label = f"{outcome.asset} · {adaptation.id}"
                cells.append(
                    _adaptation_cell(manifest, outcome, adaptation, label, budget, key, previews)
                )
        else:
            cells = [GridCell(outcome.asset, f"_no final: {outcome_words(outcome)}_", ("—", "—"))]
        rows.append(cells)
    billed = manifest.totals.by_stage.get("final", "0")
    made, planned = _adaptation_counts(manifest)
    adaptations = (
        f" · {made} of {planned} adaptation(s) made, billed "
        f"**{usd(manifest.totals.by_stage.get('adaptation', '0'))}**"
        if adapted
        else ""
    )
    if adapted:
        pictures: list[str] = []
        for cells in rows:
            if pictures:
                pictures.append("")
            pictures += grid(cells)
    else:
        pictures = grid([cell for cells in rows for cell in cells])
    lines = [
        f"# Finals — {manifest.campaign}",
        "",
        f"{len(finals)} of {len(manifest.assets)} asset(s) have a final · finals billed "
        f"**{usd(billed)}**{adaptations} · {run}, {manifest.finished_at:%Y-%m-%d %H:%M} UTC "
        f"({manifest.run_state})",
        "",
        *pictures,
        "",
    ]
    if budget.omitted:
        lines += [
            f"_{budget.omitted} thumbnail(s) not shown, to keep this artifact small: each "
            f"asset's `{artifact_key(manifest.campaign, '<asset>', 'final')}` shows its pictures._",
            "",
        ]
    if finals:
        lines += ["Stored at (durable storage URIs; the manifest lists every image):", ""]
        for o in finals:
            if o.final is None or not o.final.images:
                continue
            lines.append(f"- **{o.asset}** — `{o.final.images[0].uri}`")
            lines += [
                f"- **{o.asset} · {a.id}** — `{shown.uri}`"
                for a in o.adaptations
                if (shown := _shown_image(a)) is not None
            ]
    missing = [o for o in manifest.assets if o.status is not AssetStatus.FINAL]
    if missing:
        lines += ["", "Without a final in this run:", ""]
        lines += [f"- **{o.asset}** — {_reason(o)}" for o in missing]
    unmade = [(o, a) for o in manifest.assets for a in o.adaptations if _shown_image(a) is None]
    if unmade:
        lines += ["", "Adaptations without a picture in this run:", ""]
        lines += [f"- **{o.asset} · {a.id}** — {_adaptation_reason(a)}" for o, a in unmade]
    return "\n".join(lines).rstrip() + "\n"


def _adaptation_cell(
    manifest: CampaignManifest,
    outcome: AssetOutcome,
    adaptation: AdaptationOutcome,
    label: str,
    budget: PictureBudget,
    key: str,
    previews: dict[str, Thumbnail | None],
) -> GridCell:
    """One adaptation in a grid: its picture, pixel size and cost — or, without a stored and
    accepted image, what became of it."""
    shown = _shown_image(adaptation)
    if shown is None:
        return GridCell(label, f"_{adaptation_words(adaptation)}_", ("—", "—"))
    picture = budget.picture(previews[key], label) if key in previews else budget.skip()
    return GridCell(
        label,
        picture,
        (f"{shown.width}x{shown.height}", _adaptation_cost(manifest, outcome.asset, adaptation)),
    )


def asset_final_markdown(
    manifest: CampaignManifest,
    outcome: AssetOutcome,
    preview: Thumbnail | None,
    run: str,
    adaptation_previews: dict[str, Thumbnail | None] | None = None,
) -> tuple[str, str]:
    """(markdown, description) of `<campaign>-<asset>-final` for this run's outcome: the final,
    then its adaptations side by side (`adaptation_previews`: their thumbnails by adaptation
    id), each with its pixel size and cost, or what became of it.

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
        lines += _adaptations_section(manifest, outcome, adaptation_previews or {})
        made = [a for a in outcome.adaptations if _shown_image(a) is not None]
        adapted = (
            f", {len(made)} of {len(outcome.adaptations)} adaptation(s)"
            if outcome.adaptations
            else ""
        )
        description = (
            f"Current final of {outcome.asset}: {image.width}x{image.height}, "
            f"{_final_cost(manifest, outcome)}{adapted} ({run}, {when})"
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


def _adaptations_section(
    manifest: CampaignManifest, outcome: AssetOutcome, previews: dict[str, Thumbnail | None]
) -> list[str]:
    """The adaptations of an asset's final, for its own artifact: a grid, then where each is
    stored or why it has no picture."""
    if not outcome.adaptations:
        return []
    budget = PictureBudget(ARTIFACT_BUDGET_CHARS)
    cells = [
        _adaptation_cell(manifest, outcome, a, a.id, budget, a.id, previews)
        for a in outcome.adaptations
    ]
    lines = ["", "## Adaptations", "", *grid(cells), ""]
    for adaptation in outcome.adaptations:
        shown = _shown_image(adaptation)
        where = f"`{shown.uri}`" if shown is not None else _adaptation_reason(adaptation)
        lines.append(f"- **{adaptation.id}** — {where}")
    return lines


def _reason(outcome: AssetOutcome) -> str:
    """Why an asset has no final, in full: 'rejected by reviewer', 'failed — final: …'."""
    words = outcome_words(outcome)
    if not outcome.detail:
        return words
    return outcome.detail if words in outcome.detail else f"{words} — {outcome.detail}"


def _adaptation_reason(adaptation: AdaptationOutcome) -> str:
    """Why an adaptation has no picture, in full: 'failed — adaptation de: …'."""
    words = adaptation_words(adaptation)
    if not adaptation.detail or words in adaptation.detail:
        return adaptation.detail or words
    return f"{words} — {adaptation.detail}"


def _shown_image(adaptation: AdaptationOutcome) -> StoredImage | None:
    """The adaptation's image when it was made, stored and not rejected; else None."""
    if adaptation.status is not AssetStatus.FINAL or adaptation.record is None:
        return None
    return adaptation.record.images[0] if adaptation.record.images else None


def _adaptation_counts(manifest: CampaignManifest) -> tuple[int, int]:
    """(adaptations with a picture, adaptations of the stored finals)."""
    every = [a for o in manifest.assets for a in o.adaptations]
    return sum(1 for a in every if _shown_image(a) is not None), len(every)


def _final_row(manifest: CampaignManifest, asset: str, stage: str = "final") -> JobRow | None:
    rows = [r for r in manifest.jobs if r.asset == asset and r.stage == stage and not r.failed]
    return rows[-1] if rows else None


def _adaptation_cost(manifest: CampaignManifest, asset: str, adaptation: AdaptationOutcome) -> str:
    row = _final_row(manifest, asset, adaptation_stage(adaptation.id))
    if row is not None:
        return usd(row.billed_usd) if row.billed_usd is not None else "bill unknown"
    if adaptation.record is not None and adaptation.record.billed_usd is not None:
        return usd(adaptation.record.billed_usd)
    return "unknown"


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
