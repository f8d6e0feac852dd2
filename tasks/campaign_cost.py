"""The cost of a campaign run, as a manager reads it: the `<campaign>-cost` table, its
`<campaign>-cost-details` table and the `<campaign>-summary` — and, as plain text, the cost of a
manifest `prefect-evolink report` rebuilt (`cost_summary`).

One concept: money. The rows and the sums come from the manifest (`evolink.campaign`); this
module only lays them out — a few words per cell, so the tables fit a screen in both Prefect
UIs — and says what draft-first saved, and what the adaptations cost next to making each
format from scratch with drafts (`adaptations_words`).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from evolink.adaptations import adaptation_of_stage
from evolink.campaign import AssetOutcome, AssetStatus, CampaignManifest, JobRow
from evolink.campaign import totals as row_totals
from evolink.cost import usd
from evolink.previews import cell_text
from prefect_evolink.tasks.campaign_artifacts import adaptation_words, outcome_words, run_label
from prefect_evolink.tasks.reporting import artifact_key

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


async def publish_campaign_report(manifest: CampaignManifest) -> None:
    """The cost table, its details table and the summary (see the module docstring)."""
    run = run_label()
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


def cost_rows(manifest: CampaignManifest) -> list[dict[str, Any]]:
    """The `<campaign>-cost` table: what a manager reads, in `COST_COLUMNS` order — one row per
    paid job, then one per asset left without a final (nothing billed for its final).

    Every cell is a few words, so the table fits the content column of a 1,440-px screen in both
    Prefect UIs (their table cells do not wrap): task ids, durations and tokens are in
    `cost_detail_rows`, reasons in the summary, storage locations in the manifest."""
    rows = [
        {
            "Asset": row.asset,
            "Stage": stage_label(row.stage),
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


def stages_in_order(by_stage: dict[str, str]) -> list[tuple[str, str]]:
    """Spend by stage in the order a run pays it: draft, final, adaptation, then any other."""
    rank = {"draft": 0, "final": 1, "adaptation": 2}
    return sorted(by_stage.items(), key=lambda item: (rank.get(item[0], 3), item[0]))


def stage_label(stage: str) -> str:
    """A job's stage as the tables show it: 'draft', 'final', 'adapt: story' (short: the cost
    table fits a 1,440 px screen in both Prefect UIs, tests/test_ui.py)."""
    adaptation = adaptation_of_stage(stage)
    return stage if adaptation is None else f"adapt: {adaptation}"


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


def cost_detail_rows(manifest: CampaignManifest) -> list[dict[str, Any]]:
    """The `<campaign>-cost-details` table, in `DETAIL_COLUMNS` order: the same jobs' task ids,
    seconds from submission to result, and tokens (output / image input / text input, as
    estimated). Storage locations stay in the manifest (every image's URI), the contact sheet
    and the review: a URI column would not fit the page."""
    return [
        {
            "Asset": row.asset,
            "Stage": stage_label(row.stage),
            "Task id": row.task_id,
            "Seconds": row.duration_s,
            "Tokens (out / img / text)": (
                f"{row.output_tokens} / {row.image_input_tokens} / {row.text_input_tokens}"
            ),
        }
        for row in manifest.jobs
    ]


def summary_markdown(manifest: CampaignManifest) -> str:
    """The `<campaign>-summary`: spend by stage, the budget, the draft-first saving in words,
    what the adaptations cost next to making their formats from scratch (when the brief has
    adaptations), paid jobs whose images were not stored, and every asset's outcome."""
    totals = manifest.totals
    spent = Decimal(totals.billed_usd)
    budget = Decimal(manifest.budget_usd)
    used = f"used {spent / budget:.0%}, " if budget > 0 else ""
    words = draft_first_words(manifest)
    adapted = adaptations_words(manifest)
    lines = [
        f"# {manifest.campaign}",
        "",
        f"Run: **{manifest.run_state}**",
        "",
        "| | USD |",
        "|---|---|",
        *(f"| {stage} | {usd(amount)} |" for stage, amount in stages_in_order(totals.by_stage)),
        f"| **total billed** | **{usd(spent)}** ({totals.billed_credits} credits) |",
        f"| pre-flight estimate | {usd(manifest.pre_flight_estimate_usd)} |",
        f"| budget | {usd(budget)} — {used}left {usd(budget - spent)} |",
    ]
    if words is not None:
        lines.append(f"| same finals as {words[0]} | {usd(manifest.high_quality_variants_usd)} |")
    if adapted is not None:
        lines.append(
            f"| same adaptations as {adapted[0]} | {usd(manifest.adaptations_from_scratch_usd)} |"
        )
    lines.append("")
    if words is not None:
        lines.append(words[1])
    if adapted is not None:
        lines += ["", adapted[1]]
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
        f"{cell_text(_detail(o))} |"
        for o in manifest.assets
    ]
    return "\n".join(lines)


def _detail(outcome: AssetOutcome) -> str:
    """An asset's detail, and what became of each adaptation of its final."""
    if not outcome.adaptations:
        return outcome.detail
    each = ", ".join(
        f"{a.id} {adaptation_words(a)}" + (f" ({a.detail})" if a.detail else "")
        for a in outcome.adaptations
    )
    return "; ".join(part for part in (outcome.detail, f"adaptations: {each}") if part)


def adaptations_words(manifest: CampaignManifest) -> tuple[str, str] | None:
    """(the alternative, in words; the comparison sentence), or None when the brief has no
    adaptations (`adaptations_from_scratch_usd` is None) or none was made in this run.

    The alternative to an adaptation is making its format from scratch: drafts and a final of
    its own, as the asset's were made (`evolink.adaptations.AdaptationPlan.from_scratch_usd`).
    """
    if manifest.adaptations_from_scratch_usd is None:
        return None
    scratch = Decimal(manifest.adaptations_from_scratch_usd)
    made = [(o, a) for o in manifest.assets for a in o.adaptations if a.record is not None]
    if not made or scratch <= 0:
        return None
    billed = Decimal(manifest.totals.by_stage.get("adaptation", "0"))
    drafts = [o.drafts.request.n for o, _ in made if o.drafts is not None]
    with_drafts = f"{_counts(drafts)} drafts" if drafts else "drafts"
    alternative = f"{len(made)} format(s) made from scratch, with drafts"
    names = ", ".join(f"{o.asset} · {a.id}" for o, a in made)
    sentence = (
        f"Adaptations: {len(made)} version(s) of the approved finals ({names}), one edit job "
        f"each from the stored final, billed **{usd(billed)}**. Making the same {len(made)} "
        f"format(s) from scratch — {with_drafts} and a final of their own each — would have "
        f"cost **{usd(scratch)}** (estimated) — **{billed / scratch:.2f}×** of that"
    )
    if billed < scratch:
        sentence += f", a saving of **{usd(scratch - billed)}**"
    sentence += "; and each keeps its final's composition, product and text."
    return alternative, sentence


def draft_first_words(manifest: CampaignManifest) -> tuple[str, str] | None:
    """(the alternative, in words; the saving sentence), or None without a final.

    The alternative to draft-first is generating, per delivered final, as many high-quality
    variants as there were drafts ("4 high-quality variants per asset") and picking from those.
    What the adaptations cost is left out here: they have their own comparison
    (`adaptations_words`).
    """
    variants = Decimal(manifest.high_quality_variants_usd)
    finals = [o for o in manifest.assets if o.status is AssetStatus.FINAL and o.final and o.drafts]
    if variants <= 0 or not finals:
        return None
    drafts = _counts([o.drafts.request.n for o in finals if o.drafts is not None])
    draft_quality = "/".join(sorted({o.drafts.request.quality for o in finals if o.drafts}))
    final_quality = "/".join(sorted({o.final.request.quality for o in finals if o.final}))
    adapted = Decimal(manifest.totals.by_stage.get("adaptation", "0"))
    spent = Decimal(manifest.totals.billed_usd) - adapted  # the adaptations compare apart
    billed = "for its drafts and finals" if adapted else "in all"
    alternative = f"{drafts} {final_quality}-quality variants per asset, no drafts"
    saving = (
        f"Draft-first: {drafts} {draft_quality}-quality drafts per asset, then one "
        f"{final_quality}-quality final from the chosen draft. Getting the same "
        f"{len(finals)} final(s) by generating {drafts} {final_quality}-quality variants per "
        f"asset would have cost **{usd(variants)}**; this run billed **{usd(spent)}** {billed} "
        f"(drafts of every asset included) — **{spent / variants:.2f}×** of that"
    )
    if spent < variants:
        saving += f", a saving of **{usd(variants - spent)}**."
    else:
        saving += "."
    return alternative, saving


def _counts(values: Sequence[int]) -> str:
    """4 → '4'; 2 and 4 → '2–4'."""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def cost_summary(manifest: CampaignManifest) -> list[str]:
    """Plain-text lines: what each asset came to, what was billed, what is not known.

    Jobs made at the bundled simulator (`JobRow.simulator`) are synthetic: nobody paid for
    them. A manifest of simulator jobs only says so on its total; one that mixes both shows
    the real total and, apart from it, the simulator's — never one sum of the two. Jobs paid
    in earlier runs of the campaign (`JobRow.earlier_run`) are ordinary paid jobs, counted.
    """
    simulator_label = "bundled simulator: synthetic, nothing billed by EvoLink"
    totals_ = manifest.totals
    lines = [f"Campaign {manifest.campaign} ({manifest.run_state})"]
    for outcome in manifest.assets:
        where = outcome.final.images[0].uri if outcome.final and outcome.final.images else ""
        text = where or outcome.detail
        lines.append(f"  {outcome.asset:<16} {outcome.status.value:<14} {text}")
        for adaptation in outcome.adaptations:  # the final's versions, under it
            record = adaptation.record
            stored = record.images[0].uri if record is not None and record.images else ""
            shown = " — ".join(part for part in (stored, adaptation.detail) if part)
            lines.append(f"    · {adaptation.id:<12} {adaptation.status.value:<14} {shown}")
    lines.append("Cost:")
    for row in manifest.jobs:
        billed = usd(row.billed_usd) if row.billed_usd is not None else "unknown"
        stored = f"{row.images} image(s) stored" if not row.failed else f"NOT STORED: {row.failed}"
        marks = ("; simulator" if row.simulator else "") + (
            "; paid in an earlier run" if row.earlier_run else ""
        )
        lines.append(
            f"  {row.asset:<16} {stage_label(row.stage):<6} task {row.task_id}: estimated "
            f"{usd(row.estimated_usd)}, billed {billed} — {stored}{marks}"
        )

    def total_line(
        label: str, rows: Sequence[JobRow], billed: str, credits: str, unknown: int
    ) -> str:
        not_known = f", {unknown} bill(s) unknown, counted at estimate" if unknown else ""
        earlier = sum(1 for row in rows if row.earlier_run)
        return (
            f"  {label:<7} {usd(billed)} billed ({credits} credits{not_known}) for "
            f"{len(rows)} paid job(s)"
            + (f", {earlier} of them paid in earlier runs" if earlier else "")
        )

    simulated = [row for row in manifest.jobs if row.simulator]
    real = [row for row in manifest.jobs if not row.simulator]
    if simulated and real:  # never one sum: the real total, and the simulator's apart
        paid, synthetic = row_totals(real), row_totals(simulated)
        for stage, amount in sorted(paid.by_stage.items()):
            lines.append(f"  {stage:<7} {usd(amount)}")
        lines.append(
            total_line("total", real, paid.billed_usd, paid.billed_credits, paid.unknown_bills)
        )
        lines.append(
            total_line(
                "simulator",
                simulated,
                synthetic.billed_usd,
                synthetic.billed_credits,
                synthetic.unknown_bills,
            )
            + f" ({simulator_label}) — not in the total above"
        )
    else:
        for stage, amount in sorted(totals_.by_stage.items()):
            lines.append(f"  {stage:<7} {usd(amount)}")
        label = f" ({simulator_label})" if simulated else ""
        lines.append(
            total_line(
                "total",
                manifest.jobs,
                totals_.billed_usd,
                totals_.billed_credits,
                totals_.unknown_bills,
            )
            + label
        )
    if Decimal(manifest.budget_usd) > 0:
        lines.append(f"  budget  {usd(manifest.budget_usd)}, {usd(manifest.budget_left_usd)} left")
    adapted = adaptations_words(manifest)
    if adapted is not None:
        alternative, _ = adapted
        lines.append(
            f"  the same adaptations as {alternative}: {usd(manifest.adaptations_from_scratch_usd)}"
        )
    for job in manifest.submissions_unknown:
        lines.append(
            f"  {job.asset} {job.stage}: {job.note} ({job.idempotency_key}, "
            f"≈{usd(job.estimated_usd)} if EvoLink created it)"
        )
    return lines
