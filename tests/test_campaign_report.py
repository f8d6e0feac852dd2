"""The campaign artifacts' builders, fast: thumbnails and their sizes, the review grid in the
Resume dialog and its form, the contact sheet, the cost tables' headers, the summary's words,
and "no current final" — all without a Prefect API (the browser checks are in test_ui.py)."""

from __future__ import annotations

import base64
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from evolink.brief import load_brief
from evolink.campaign import (
    AdaptationOutcome,
    AssetOutcome,
    AssetStatus,
    CampaignManifest,
    job_row,
    totals,
)
from evolink.cost import usd
from evolink.jobs import JobRecord, SentRequest, StoredImage
from evolink.plans import AssetPlan, check_plans
from evolink.previews import (
    DATA_URI_PREFIX,
    GRID_COLUMNS,
    REVIEW_EDGE,
    SHEET_EDGE,
    GridCell,
    grid,
    thumbnail,
)
from evolink.simulator import render_png
from prefect_evolink.flows.campaign import review_form, review_input
from prefect_evolink.tasks.campaign_report import (
    COST_COLUMNS,
    DETAIL_COLUMNS,
    NONE,
    DraftPreview,
    adaptations_words,
    asset_final_markdown,
    contact_sheet_markdown,
    cost_detail_rows,
    cost_rows,
    draft_first_words,
    review_description,
    review_markdown,
    sheet_key,
    stage_label,
    summary_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "briefs" / "spring-launch.yaml"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RUN = "run bright-owl"

DATA_URI = re.compile(r"data:image/[a-z]+;base64,")
PICTURE = re.compile(r"!\[[^\[\]]*\]\(data:image/jpeg;base64,[A-Za-z0-9+/=]+\)")


def assert_data_uris_only_as_pictures(markdown: str) -> None:
    """Every data URI is the whole target of a markdown picture — never a link, a line of text
    or a URL printed beside the picture."""
    pictures = PICTURE.findall(markdown)
    assert len(DATA_URI.findall(markdown)) == len(pictures)
    rest = PICTURE.sub("PICTURE", markdown)
    assert "data:" not in rest and "base64" not in rest
    assert not re.search(r"(?<!!)\[[^\]]*\]\(PICTURE", rest)


def decoded(data_uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data_uri.removeprefix(DATA_URI_PREFIX))))


# --- fixtures: a campaign on paper ---------------------------------------------------------


@pytest.fixture(scope="module")
def plans() -> list[AssetPlan]:
    brief = load_brief(EXAMPLE)
    return check_plans(brief, {"product-shot": (["https://x.example/case.png"], None)})


def image(asset: str, stage: str, index: int, width: int, height: int) -> StoredImage:
    key = f"aurora-spring-launch/{asset}/{stage}/abc123/image-{index}.png"
    return StoredImage(
        index=index,
        key=key,
        uri=f"s3://marketing-assets/evolink/{key}",
        sha256=f"{index:02d}" * 32,
        size_bytes=1000 + index,
        content_type="image/png",
        width=width,
        height=height,
        source_url=f"https://files.example/{asset}/{stage}/{index}.png",
    )


def record(
    plan: AssetPlan, stage: str, billed: str | None = "0.01", stored: bool = True
) -> JobRecord:
    request = plan.draft if stage == "draft" else plan.final_request("https://x.example/d.png")
    estimate = plan.draft_estimate if stage == "draft" else plan.final_estimate
    width, height = estimate.width, estimate.height
    return JobRecord(
        job_key=f"{plan.asset.id}-{stage}",
        namespace=f"campaign/aurora-spring-launch/{plan.asset.id}/{stage}",
        task_id=f"task-unified-1796021338-{plan.asset.id[:6]}{stage[0]}",
        request=SentRequest(
            model=request.model,
            prompt=request.prompt,
            size=request.size,
            quality=request.quality,
            n=request.n,
        ),
        estimated_usd=str(estimate.usd),
        estimated_credits=str(estimate.credits),
        billed_usd=billed,
        billed_credits=None if billed is None else "0.68",
        billed_source="task",
        images=[image(plan.asset.id, stage, i, width, height) for i in range(request.n)]
        if stored
        else [],
        submitted_at=NOW,
        completed_at=NOW + timedelta(seconds=7),
    )


@pytest.fixture(scope="module")
def outcomes(plans: list[AssetPlan]) -> dict[str, AssetOutcome]:
    """launch-banner and product-shot got finals, social-square was rejected, story-vertical
    failed at its final."""
    banner, square, story, shot = plans
    return {
        "launch-banner": AssetOutcome(
            asset="launch-banner",
            status=AssetStatus.FINAL,
            chosen_draft=2,
            drafts=record(banner, "draft"),
            final=record(banner, "final", billed="0.117880"),
        ),
        "social-square": AssetOutcome(
            asset="social-square",
            status=AssetStatus.REJECTED,
            detail="rejected by reviewer",
            drafts=record(square, "draft"),
        ),
        "story-vertical": AssetOutcome(
            asset="story-vertical",
            status=AssetStatus.FAILED,
            detail="final: content_policy_violation",
            error_type="TaskFailedError",
            drafts=record(story, "draft"),
        ),
        "product-shot": AssetOutcome(
            asset="product-shot",
            status=AssetStatus.FINAL,
            chosen_draft=0,
            drafts=record(shot, "draft"),
            final=record(shot, "final", billed=None),
        ),
    }


@pytest.fixture(scope="module")
def manifest(plans: list[AssetPlan], outcomes: dict[str, AssetOutcome]) -> CampaignManifest:
    rows = []
    for plan in plans:
        outcome = outcomes[plan.asset.id]
        assert outcome.drafts is not None
        rows.append(job_row(plan.asset.id, "draft", outcome.drafts, plan.draft_estimate))
        if outcome.final is not None:
            rows.append(job_row(plan.asset.id, "final", outcome.final, plan.final_estimate))
    story = plans[2]
    unstored = record(story, "final", stored=False)
    rows.append(
        job_row(
            "story-vertical",
            "final",
            unstored,
            story.final_estimate,
            failed="PaidJobNotStoredError: S3 refused the write",
        )
    )
    delivered = [p for p in plans if outcomes[p.asset.id].status is AssetStatus.FINAL]
    return CampaignManifest(
        campaign="aurora-spring-launch",
        flow_run_id=None,
        started_at=NOW,
        finished_at=NOW + timedelta(minutes=3),
        selection="approval",
        budget_usd="1.5",
        budget_left_usd="0.9",
        pre_flight_estimate_usd="0.857184",
        high_quality_variants_usd=str(sum((p.high_variants_estimate.usd for p in delivered), 0)),
        totals=totals(rows),
        assets=[outcomes[p.asset.id] for p in plans],
        jobs=rows,
        run_state="failed",
    )


@pytest.fixture(scope="module")
def drafts(
    plans: list[AssetPlan], outcomes: dict[str, AssetOutcome]
) -> dict[str, list[DraftPreview]]:
    found = {}
    for plan in plans:
        record_ = outcomes[plan.asset.id].drafts
        assert record_ is not None
        found[plan.asset.id] = [
            DraftPreview(
                label=f"image-{i.index}",
                image=i,
                small=thumbnail(render_png(i.width or 64, i.height or 64, i.key), REVIEW_EDGE),
                large=thumbnail(render_png(i.width or 64, i.height or 64, i.key), SHEET_EDGE),
                link=None,
            )
            for i in record_.images
        ]
    return found


SUGGESTED: dict[str, int | None] = {
    "launch-banner": 2,
    "social-square": None,
    "story-vertical": 1,
    "product-shot": 0,
}


# --- thumbnails and grids ------------------------------------------------------------------


def test_thumbnails_fit_their_box_and_never_grow() -> None:
    wide = thumbnail(render_png(1360, 768, "wide"), REVIEW_EDGE)
    assert (wide.width, wide.height) == (84, 47)
    assert decoded(wide.data_uri).size == (84, 47)
    tall = thumbnail(render_png(768, 1360, "tall"), SHEET_EDGE)
    assert (tall.width, tall.height) == (90, 160)
    small = thumbnail(render_png(40, 30, "small"), SHEET_EDGE)
    assert (small.width, small.height) == (40, 30)  # never enlarged (it would blur)
    assert 4 * (REVIEW_EDGE + 24) <= 454  # four columns in the older UI's 512-px dialog

    clear = io.BytesIO()
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(clear, format="PNG")
    flat = decoded(thumbnail(clear.getvalue(), 16).data_uri).convert("RGB")
    assert flat.getpixel((8, 8)) == pytest.approx((255, 255, 255), abs=3)  # white, not black


def test_grid_puts_four_pictures_in_a_row_under_their_labels() -> None:
    cells = [GridCell(f"image-{i}", f"P{i}", (f"line {i}",)) for i in range(6)]
    lines = grid(cells)
    assert lines == [
        "| image-0 | image-1 | image-2 | image-3 |",
        "|:-:|:-:|:-:|:-:|",
        "| P0 | P1 | P2 | P3 |",
        "| line 0 | line 1 | line 2 | line 3 |",
        "",
        "| image-4 | image-5 |",
        "|:-:|:-:|",
        "| P4 | P5 |",
        "| line 4 | line 5 |",
    ]
    assert GRID_COLUMNS == 4
    assert grid([GridCell("a|b [c]", "P")])[0] == "| a/b (c) |"  # a label cannot break the table


# --- review: the Resume dialog and the review artifact -------------------------------------


def test_review_description_shows_each_assets_drafts_labelled_as_the_forms_options(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    drafts: dict[str, list[DraftPreview]],
) -> None:
    text = review_description("aurora-spring-launch", plans, outcomes, SUGGESTED, drafts)
    assert_data_uris_only_as_pictures(text)
    assert len(PICTURE.findall(text)) == 16
    assert text.count("| image-0 | image-1 | image-2 | image-3 |") == 4
    for plan in plans:
        assert f"**{plan.asset.id}** — final ≈ {usd(plan.final_estimate.usd)}" in text
    assert "suggested: reject" in text and "suggested: image-2" in text
    assert "http" not in text  # no links in the dialog: the choice is made there
    assert "aurora-spring-launch-review" in text
    assert len(text.encode()) < 60_000, len(text.encode())  # 16 simulator drafts: ~25 KB

    form, names = review_input(plans, outcomes, SUGGESTED, text)
    assert form._description == text  # what the Resume dialog shows above the fields
    schema = form.model_json_schema()["properties"]
    assert names == {a.replace("-", "_"): a for a in SUGGESTED}
    for name, asset in names.items():
        field = schema[name]
        assert field["title"] == asset  # with_initial_data(**values) would have dropped these
        assert field["description"].startswith("final ≈ $")
        assert field["enum"] == ["image-0", "image-1", "image-2", "image-3", "reject"]
    assert schema["launch_banner"]["default"] == "image-2"
    assert schema["social_square"]["default"] == "reject"


def test_a_review_of_many_assets_is_two_pick_lists_and_ambiguity_spends_nothing(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    drafts: dict[str, list[DraftPreview]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from prefect_evolink.flows import campaign_review_form

    small, _ = review_form(plans, outcomes, SUGGESTED)
    assert "launch_banner" in small.model_json_schema()["properties"]  # one field per asset
    monkeypatch.setattr(campaign_review_form, "REVIEW_FIELDS_MAX", 3)  # 4 assets: "many"
    form, read = review_form(plans, outcomes, SUGGESTED)
    schema = form.model_json_schema()
    assert set(schema["properties"]) == {"reject", "use_instead"}
    rejectable = schema["properties"]["reject"]["items"]["enum"]
    assert rejectable == list(SUGGESTED)  # the campaign's assets, nothing else
    pickable = schema["properties"]["use_instead"]["items"]["enum"]
    assert len(pickable) == 16 and "story-vertical: image-3" in pickable
    assert schema["properties"]["reject"]["default"] == []
    with pytest.raises(ValidationError):  # a typo names no asset
        form(reject=["launch-baner"])

    def decide(**answer: Any) -> dict[str, tuple[int | None, str]]:
        return read(form(**answer))

    # Nothing changed: every suggestion holds; a suggested reject stays without a final.
    assert {a: i for a, (i, _) in decide().items()} == SUGGESTED
    decided = decide(reject=["launch-banner"], use_instead=["social-square: image-3"])
    assert decided["launch-banner"] == (None, "rejected by reviewer")
    assert decided["social-square"] == (3, "approved: image-3 (picked)")
    assert decided["story-vertical"] == (1, "approved: image-1 (suggested)")
    ambiguous = decide(
        reject=["story-vertical"],
        use_instead=["story-vertical: image-0", "product-shot: image-0", "product-shot: image-2"],
    )
    assert ambiguous["story-vertical"][0] is None and "both" in ambiguous["story-vertical"][1]
    assert ambiguous["product-shot"] == (
        None,
        "rejected: image-0, image-2 all picked, one is needed",
    )

    text = review_description(
        "aurora-spring-launch", plans, outcomes, SUGGESTED, drafts, compact=True
    )
    assert text.startswith("Every asset's **suggested** draft becomes its final unless")


def test_an_answer_to_an_earlier_form_decides_only_what_the_reviewer_saw(
    plans: list[AssetPlan], outcomes: dict[str, AssetOutcome]
) -> None:
    """A suspended run reads its answer on the rerun, against a form built again from the brief
    of then. The brief changed meanwhile: banner and square were reviewed; story-vertical is
    new (its field's default, the suggested draft, must not become a final nobody approved);
    an asset since removed from the brief is ignored; product-shot's picked draft is gone."""
    from prefect_evolink.flows.campaign_review_form import read_saved_answer

    banner, square, _story, shot = plans
    then, _ = review_form([banner, square, shot], outcomes, SUGGESTED)
    saved_schema = then.model_json_schema()
    answer = {"launch_banner": "image-1", "social_square": "reject", "product_shot": "image-3"}
    answer["old_asset"] = "image-0"  # an asset the brief no longer has
    fewer = outcomes["product-shot"].model_copy(
        update={
            "drafts": record(shot, "draft").model_copy(
                update={"images": record(shot, "draft").images[:2]}
            )
        }
    )
    now_outcomes = {**outcomes, "product-shot": fewer}
    form, read = review_form(plans, now_outcomes, SUGGESTED)
    with pytest.raises(ValidationError):  # what Prefect's own load would do: fail the run
        form.model_validate(answer)

    decisions, undecided = read_saved_answer(form, read, saved_schema, answer)
    assert decisions == {
        "launch-banner": (1, "approved: image-1"),
        "social-square": (None, "rejected by reviewer"),
    }
    assert undecided["story-vertical"] == "added after the review: not reviewed"
    assert "'image-3' is no longer one of its options" in undecided["product-shot"]
    assert set(undecided) == {"story-vertical", "product-shot"}

    # the same answer to the same form: exactly what reading it directly gives
    then, read_then = review_form([banner, square, shot], outcomes, SUGGESTED)
    del answer["old_asset"]
    same, none = read_saved_answer(then, read_then, saved_schema, answer)
    assert not none and same == read_then(then(**answer))


def test_an_answer_to_an_earlier_compact_form_decides_only_what_the_reviewer_saw(
    plans: list[AssetPlan], outcomes: dict[str, AssetOutcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The many-assets form lists exceptions only, so every asset it does not name gets its
    suggestion: on a rerun, that must hold only for the assets the reviewer was shown."""
    from prefect_evolink.flows import campaign_review_form
    from prefect_evolink.flows.campaign_review_form import read_saved_answer

    monkeypatch.setattr(campaign_review_form, "REVIEW_FIELDS_MAX", 1)
    banner, square, _story, shot = plans
    then, _ = review_form([banner, square, shot], outcomes, SUGGESTED)
    answer = {
        "reject": ["social-square", "removed-asset"],
        "use_instead": ["launch-banner: image-0", "removed-asset: image-1"],
    }
    form, read = review_form(plans, outcomes, SUGGESTED)
    decisions, undecided = read_saved_answer(form, read, then.model_json_schema(), answer)
    assert decisions == {
        "launch-banner": (0, "approved: image-0 (picked)"),
        "social-square": (None, "rejected by reviewer"),
        "product-shot": (
            SUGGESTED["product-shot"],
            f"approved: image-{SUGGESTED['product-shot']} (suggested)",
        ),
    }
    assert undecided == {"story-vertical": "added after the review: not reviewed"}


@pytest.mark.parametrize("many", [False, True])
def test_an_answer_to_an_earlier_adaptation_review_decides_only_what_the_reviewer_saw(
    plans: list[AssetPlan], many: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adaptations' review read on a rerun: the German version failed this time (its answer
    is ignored, where Prefect would fail the run), and a square version was added to the brief
    meanwhile (not approved by default: not reviewed), in both forms of the review."""
    from prefect_evolink.flows import campaign_review_form
    from prefect_evolink.flows.campaign_adaptation_review import (
        MadeAdaptation,
        adaptation_review_form,
    )
    from prefect_evolink.flows.campaign_review_form import read_saved_answer

    if many:
        monkeypatch.setattr(campaign_review_form, "REVIEW_FIELDS_MAX", 1)
    banner = plans[0]
    story, german = banner.adaptations
    square = story.model_copy(
        update={"adaptation": story.adaptation.model_copy(update={"id": "square"})}
    )
    made = {
        a.id: MadeAdaptation("launch-banner", a, record(banner, "final"))
        for a in (story, german, square)
    }
    then, _ = adaptation_review_form([made["story"], made["de"]])
    if many:
        answer: dict[str, Any] = {"reject": [made["de"].label]}
    else:
        answer = {"launch_banner__story": "approve", "launch_banner__de": "reject"}
    form, read = adaptation_review_form([made["story"], made["square"]])
    with pytest.raises(ValidationError):
        form.model_validate(answer)
    labels = {m.ref: m.label for m in made.values()}
    decisions, undecided = read_saved_answer(
        form, read, then.model_json_schema(), answer, label_of=labels.__getitem__
    )
    assert decisions == {("launch-banner", "story"): True}
    assert undecided == {("launch-banner", "square"): "added after the review: not reviewed"}


def test_review_description_stops_pictures_at_its_budget(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    drafts: dict[str, list[DraftPreview]],
) -> None:
    one = len(drafts["launch-banner"][0].small.data_uri)  # type: ignore[union-attr]
    text = review_description(
        "aurora-spring-launch", plans, outcomes, SUGGESTED, drafts, budget_chars=one * 5
    )
    assert len(PICTURE.findall(text)) <= 5
    assert "thumbnail(s) not shown, to keep this form small" in text
    assert text.count("| image-0 | image-1 | image-2 | image-3 |") == 4  # every label stays


def test_review_artifact_puts_drafts_side_by_side_with_full_size_links(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    drafts: dict[str, list[DraftPreview]],
) -> None:
    local = review_markdown("aurora-spring-launch", plans, outcomes, SUGGESTED, drafts, None)
    assert_data_uris_only_as_pictures(local)
    assert "full size" not in local and "temporary" not in local
    assert local.count("| image-0 | image-1 | image-2 | image-3 |") == 4
    assert (
        "Stored at `s3://marketing-assets/evolink/aurora-spring-launch/launch-banner/draft/abc123/`"
        in local
    )
    for preview in drafts["launch-banner"]:
        assert preview.large is not None and preview.large.data_uri in local  # the larger ones

    signed = "https://marketing-assets.s3.amazonaws.com/x.png?X-Amz-Signature=abc&X-Amz-Expires=90"
    linked = {
        asset: [
            DraftPreview(p.label, p.image, p.small, p.large, signed + str(p.image.index))
            for p in previews
        ]
        for asset, previews in drafts.items()
    }
    expires = NOW + timedelta(days=1)
    text = review_markdown("aurora-spring-launch", plans, outcomes, SUGGESTED, linked, expires)
    assert_data_uris_only_as_pictures(text)
    assert text.count("[full size](https://") == 16
    assert "| [full size](" + signed + "0) | [full size](" + signed + "1) |" in text
    assert "valid until 2026-05-02 12:00 UTC" in text


# --- finals --------------------------------------------------------------------------------


def test_contact_sheet_shows_every_asset_with_its_final_or_why_not(
    manifest: CampaignManifest,
) -> None:
    previews = {
        "launch-banner": thumbnail(render_png(1360, 768, "banner"), SHEET_EDGE),
        "product-shot": thumbnail(render_png(1184, 880, "shot"), SHEET_EDGE),
    }
    sheet = contact_sheet_markdown(manifest, previews, RUN)
    assert_data_uris_only_as_pictures(sheet)
    assert sheet.count("](data:image/jpeg;base64,") == 2
    assert "| launch-banner | social-square | story-vertical | product-shot |" in sheet
    assert "_no final: rejected_" in sheet and "_no final: failed_" in sheet
    banner = manifest.assets[0].final
    assert banner is not None
    size = f"{banner.images[0].width}x{banner.images[0].height}"
    assert f"| {size} | — | — |" in sheet
    assert "| $0.117880 | — | — | bill unknown |" in sheet
    assert f"- **launch-banner** — `{banner.images[0].uri}`" in sheet
    assert "- **social-square** — rejected by reviewer" in sheet
    assert "- **story-vertical** — failed — final: content_policy_violation" in sheet
    assert "2 of 4 asset(s) have a final" in sheet and RUN in sheet


def test_every_asset_gets_its_keyed_artifact_and_no_stale_final_reads_as_current(
    manifest: CampaignManifest,
) -> None:
    final, rejected, failed, _ = manifest.assets
    preview = thumbnail(render_png(1360, 768, "banner"), SHEET_EDGE)
    markdown, description = asset_final_markdown(manifest, final, preview, RUN)
    assert_data_uris_only_as_pictures(markdown)
    assert description.startswith("Current final of launch-banner: ")
    assert "from draft: image-2" in markdown and "s3://marketing-assets/" in markdown

    markdown, description = asset_final_markdown(manifest, rejected, None, RUN)
    assert description == (
        "No current final of social-square — rejected (run bright-owl, 2026-05-01 12:03 UTC)"
    )
    assert "**No current final — rejected**" in markdown
    assert "earlier versions of this artifact are **not** current" in markdown
    assert "data:" not in markdown

    _, description = asset_final_markdown(manifest, failed, None, RUN)
    assert description.startswith("No current final of story-vertical — failed")


# --- cost ----------------------------------------------------------------------------------


def test_cost_table_has_human_headers_in_the_managers_order(manifest: CampaignManifest) -> None:
    rows = cost_rows(manifest)
    assert COST_COLUMNS == (
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
    assert all(tuple(row) == COST_COLUMNS for row in rows)
    jobs, left_out = rows[: len(manifest.jobs)], rows[len(manifest.jobs) :]
    assert [r["Billed"] for r in jobs] == [usd(j.billed_usd) for j in manifest.jobs]
    assert {r["Status"] for r in jobs} == {"stored", "not stored"}
    assert [r["Billed"] for r in jobs if r["Asset"] == "product-shot"] == ["$0.010000", "unknown"]
    assert [(r["Asset"], r["Stage"], r["Status"], r["Billed"]) for r in left_out] == [
        ("social-square", "review", "rejected", NONE),
        ("story-vertical", "final", "failed", NONE),
    ]
    # short cells only (both UIs keep table cells on one line): no ids, URIs or messages
    longest = max(len(str(value)) for row in rows for value in row.values())
    assert longest <= 15, longest
    text = repr(rows)
    assert "task-" not in text and "s3://" not in text and "_" not in "".join(COST_COLUMNS)


def test_details_table_holds_task_ids_seconds_and_tokens(manifest: CampaignManifest) -> None:
    rows = cost_detail_rows(manifest)
    assert all(tuple(row) == DETAIL_COLUMNS for row in rows)
    assert [r["Task id"] for r in rows] == [j.task_id for j in manifest.jobs]
    first = manifest.jobs[0]
    assert rows[0]["Seconds"] == 7.0
    assert rows[0]["Tokens (out / img / text)"] == (
        f"{first.output_tokens} / {first.image_input_tokens} / {first.text_input_tokens}"
    )


def test_summary_states_the_draft_first_saving_in_words(manifest: CampaignManifest) -> None:
    text = summary_markdown(manifest)
    assert " k " not in text and "k high" not in text
    assert "| same finals as 4 high-quality variants per asset, no drafts |" in text
    assert "Draft-first: 4 low-quality drafts per asset, then one high-quality final" in text
    assert "Getting the same 2 final(s) by generating 4 high-quality variants per asset" in text
    spent, variants = (
        Decimal(manifest.totals.billed_usd),
        Decimal(manifest.high_quality_variants_usd),
    )
    assert f"**{spent / variants:.2f}×** of that" in text
    assert f"a saving of **{usd(variants - spent)}**" in text
    assert "| Asset | Outcome | Chosen draft | Detail |" in text
    assert "PaidJobNotStoredError: S3 refused the write" in text  # the reason, in words
    assert "1 job(s) reported no bill" in text


def test_no_saving_is_claimed_without_a_final(manifest: CampaignManifest) -> None:
    nothing = manifest.model_copy(
        update={
            "assets": [a for a in manifest.assets if a.status is not AssetStatus.FINAL],
            "high_quality_variants_usd": "0",
        }
    )
    assert draft_first_words(nothing) is None
    text = summary_markdown(nothing)
    assert "Draft-first" not in text and "variants" not in text


@pytest.mark.parametrize("drafts_per_asset", [[2, 4], [3, 3]])
def test_mixed_draft_counts_are_a_range(
    manifest: CampaignManifest, drafts_per_asset: list[int]
) -> None:
    assets: list[Any] = []
    finals = [a for a in manifest.assets if a.final and a.drafts]
    for outcome, n in zip(finals, drafts_per_asset, strict=True):
        assert outcome.drafts is not None
        request = outcome.drafts.request.model_copy(update={"n": n})
        assets.append(
            outcome.model_copy(
                update={"drafts": outcome.drafts.model_copy(update={"request": request})}
            )
        )
    words = draft_first_words(manifest.model_copy(update={"assets": assets}))
    assert words is not None
    low, high = min(drafts_per_asset), max(drafts_per_asset)
    expected = str(low) if low == high else f"{low}–{high}"
    assert words[0] == f"{expected} high-quality variants per asset, no drafts"


# --- the review's pictures and links, read from real storage -------------------------------


def test_review_links_full_size_drafts_on_s3_and_none_on_local_disk(
    plans: list[AssetPlan], s3_server: str, tmp_path: Path
) -> None:
    import asyncio

    import httpx

    from prefect_evolink.blocks import LocalAssetStorage, S3AssetStorage
    from prefect_evolink.tasks.campaign_report import review_drafts

    banner = plans[0]
    png = render_png(1360, 768, "banner-draft")
    s3 = S3AssetStorage(
        bucket="review-links",
        prefix="mkt",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        addressing_style="path",
    )
    s3.get_client().create_bucket(Bucket="review-links")
    local = LocalAssetStorage(base_dir=str(tmp_path / "assets"))
    for storage in (s3, local):
        stored = storage.put_bytes(
            "aurora-spring-launch/launch-banner/draft/abc/image-0.png",
            png,
            content_type="image/png",
            metadata={},
        )
        drafts_record = record(banner, "draft").model_copy(
            update={
                "images": [
                    image("launch-banner", "draft", 0, 1360, 768).model_copy(
                        update={"key": stored.key, "uri": stored.uri}
                    )
                ]
            }
        )
        outcomes = {
            "launch-banner": AssetOutcome(
                asset="launch-banner", status=AssetStatus.PENDING, drafts=drafts_record
            )
        }
        found = asyncio.run(review_drafts([banner], outcomes, storage, {"launch-banner": 0}, 3600))
        [preview] = found["launch-banner"]
        assert preview.small is not None and (preview.small.width, preview.small.height) == (84, 47)
        assert preview.large is not None and preview.large.width == SHEET_EDGE
        if storage is s3:
            assert preview.link is not None and "Signature" in preview.link
            assert httpx.get(preview.link).content == png  # the full image, for the reviewer
        else:
            assert preview.link is None


# --- adaptations (issue #21) ---------------------------------------------------------------


def adaptation_record(plan: AssetPlan, index: int, billed: str = "0.118") -> JobRecord:
    adaptation = plan.adaptations[index]
    request, estimate = adaptation.request, adaptation.estimate
    return JobRecord(
        job_key=f"{plan.asset.id}-{adaptation.stage}",
        namespace=f"campaign/aurora-spring-launch/{plan.asset.id}/{adaptation.stage}",
        task_id=f"task-unified-1796021338-{adaptation.id}",
        request=SentRequest(
            model=request.model,
            prompt=request.prompt,
            size=request.size,
            quality=request.quality,
            n=1,
        ),
        estimated_usd=str(estimate.usd),
        estimated_credits=str(estimate.credits),
        billed_usd=billed,
        billed_credits="8.02",
        billed_source="task",
        images=[image(plan.asset.id, adaptation.stage, 0, estimate.width, estimate.height)],
        submitted_at=NOW,
        completed_at=NOW + timedelta(seconds=9),
    )


@pytest.fixture(scope="module")
def adapted(plans: list[AssetPlan], manifest: CampaignManifest) -> CampaignManifest:
    """The paper campaign with the example's adaptations of launch-banner: `story` made, `de`
    refused by EvoLink; and product-shot's `feed` stopped by the budget."""
    banner = plans[0]
    assert [a.id for a in banner.adaptations] == ["story", "de"]  # the example brief's
    story = adaptation_record(banner, 0)
    outcomes = list(manifest.assets)
    outcomes[0] = outcomes[0].model_copy(
        update={
            "adaptations": [
                AdaptationOutcome(id="story", status=AssetStatus.FINAL, record=story),
                AdaptationOutcome(
                    id="de",
                    status=AssetStatus.FAILED,
                    detail="adaptation de: content_policy_violation",
                ),
            ]
        }
    )
    outcomes[3] = outcomes[3].model_copy(
        update={
            "adaptations": [
                AdaptationOutcome(
                    id="feed",
                    status=AssetStatus.BUDGET_STOPPED,
                    detail="over budget: $0.01 left, the adaptation needs $0.12",
                )
            ]
        }
    )
    rows = [*manifest.jobs]
    rows.insert(2, job_row("launch-banner", "adapt-story", story, banner.adaptations[0].estimate))
    return manifest.model_copy(
        update={
            "assets": outcomes,
            "jobs": rows,
            "totals": totals(rows),
            "adaptations_from_scratch_usd": str(banner.adaptations[0].from_scratch_usd),
        }
    )


def test_contact_sheet_has_a_row_per_asset_the_master_then_its_adaptations(
    adapted: CampaignManifest,
) -> None:
    story = adapted.assets[0].adaptations[0].record
    assert story is not None
    previews = {
        "launch-banner": thumbnail(render_png(1360, 768, "banner"), SHEET_EDGE),
        sheet_key("launch-banner", "story"): thumbnail(render_png(768, 1360, "story"), SHEET_EDGE),
        "product-shot": thumbnail(render_png(1184, 880, "shot"), SHEET_EDGE),
    }
    assert sheet_key("launch-banner", "story") == "launch-banner/adapt-story"
    sheet = contact_sheet_markdown(adapted, previews, RUN)
    assert_data_uris_only_as_pictures(sheet)
    assert len(PICTURE.findall(sheet)) == 3  # two finals and the story, no failed picture
    assert "![launch-banner · story](data:image/jpeg;base64," in sheet
    # one table per asset: the master first, then its adaptations, each with its pixel size
    assert "| launch-banner | launch-banner · story | launch-banner · de |" in sheet
    assert "| social-square |" in sheet and "| story-vertical |" in sheet
    assert "| product-shot | product-shot · feed |" in sheet
    banner = adapted.assets[0].final
    assert banner is not None
    size = f"{banner.images[0].width}x{banner.images[0].height}"
    width, height = story.images[0].width, story.images[0].height
    assert height is not None and width is not None and height > width  # the 9:16 story
    assert f"| {size} | {width}x{height} | — |" in sheet
    assert "| $0.117880 | $0.118000 | — |" in sheet
    assert "| _failed_ |" in sheet and "| _over budget_ |" in sheet
    assert f"- **launch-banner · story** — `{story.images[0].uri}`" in sheet
    assert "- **launch-banner · de** — failed — adaptation de: content_policy_violation" in sheet
    assert "- **product-shot · feed** — over budget: $0.01 left" in sheet
    assert "1 of 3 adaptation(s) made, billed **$0.118000**" in sheet

    # its budget counts the adaptations' thumbnails like the finals'
    one = len(previews["launch-banner"].data_uri)
    small = contact_sheet_markdown(adapted, previews, RUN, budget_chars=one + 10)
    assert len(PICTURE.findall(small)) == 1 and "2 thumbnail(s) not shown" in small


def test_an_assets_artifact_shows_its_adaptations(adapted: CampaignManifest) -> None:
    banner = adapted.assets[0]
    story = banner.adaptations[0].record
    assert story is not None
    preview = thumbnail(render_png(1360, 768, "banner"), SHEET_EDGE)
    small = thumbnail(render_png(768, 1360, "story"), SHEET_EDGE)
    markdown, description = asset_final_markdown(adapted, banner, preview, RUN, {"story": small})
    assert_data_uris_only_as_pictures(markdown)
    assert len(PICTURE.findall(markdown)) == 2
    assert "## Adaptations" in markdown and "| story | de |" in markdown
    assert f"| {story.images[0].width}x{story.images[0].height} | — |" in markdown
    assert f"- **story** — `{story.images[0].uri}`" in markdown
    assert "- **de** — failed — adaptation de: content_policy_violation" in markdown
    assert description.startswith("Current final of launch-banner: ")
    assert ", 1 of 2 adaptation(s) (run bright-owl" in description
    # an asset without adaptations reads as before
    plain, _ = asset_final_markdown(adapted, adapted.assets[2], None, RUN)
    assert "Adaptations" not in plain


def test_cost_tables_and_summary_show_the_adaptations_and_what_they_saved(
    adapted: CampaignManifest, manifest: CampaignManifest
) -> None:
    rows = cost_rows(adapted)
    assert [r["Stage"] for r in rows if r["Asset"] == "launch-banner"] == [
        "draft",
        "final",
        "adapt: story",
    ]
    story = next(r for r in rows if r["Stage"] == "adapt: story")
    assert story["Billed"] == "$0.118000" and story["Images"] == 1 and story["Status"] == "stored"
    assert [r["Stage"] for r in cost_detail_rows(adapted)][2] == "adapt: story"
    assert stage_label("final") == "final" and stage_label("adapt-de") == "adapt: de"
    assert max(len(str(value)) for row in rows for value in row.values()) <= 15  # see above

    text = summary_markdown(adapted)
    scratch = Decimal(adapted.adaptations_from_scratch_usd or "0")
    billed = Decimal(adapted.totals.by_stage["adaptation"])
    assert billed == Decimal("0.118") and billed < scratch
    assert f"| adaptation | {usd(billed)} |" in text
    assert (
        f"| same adaptations as 1 format(s) made from scratch, with drafts | {usd(scratch)} |"
        in text
    )
    assert (
        "Adaptations: 1 version(s) of the approved finals (launch-banner · story), one edit job "
        f"each from the stored final, billed **{usd(billed)}**. Making the same 1 format(s) "
        f"from scratch — 4 drafts and a final of their own each — would have cost "
        f"**{usd(scratch)}** (estimated) — **{billed / scratch:.2f}×** of that, a saving of "
        f"**{usd(scratch - billed)}**" in text
    )
    assert "adaptations: story made, de failed (adaptation de: content_policy_violation)" in text
    # the draft-first comparison is about drafts and finals: the adaptations are not in it
    drafts_and_finals = Decimal(adapted.totals.billed_usd) - billed
    assert f"this run billed **{usd(drafts_and_finals)}** for its drafts and finals" in text
    assert draft_first_words(adapted) is not None
    assert text.index("| draft |") < text.index("| final |") < text.index("| adaptation |")
    words = adaptations_words(adapted)
    assert words is not None and words[0] == "1 format(s) made from scratch, with drafts"

    # a brief without adaptations: no such line (the manifest's figure is None)
    assert manifest.adaptations_from_scratch_usd is None
    assert adaptations_words(manifest) is None
    assert "adaptation" not in summary_markdown(manifest).lower()
    # adaptations planned, none made (every final failed or stopped): nothing to compare
    none_made = adapted.model_copy(
        update={
            "assets": [
                a.model_copy(update={"adaptations": [x for x in a.adaptations if not x.record]})
                for a in adapted.assets
            ]
        }
    )
    assert adaptations_words(none_made) is None
