"""Adaptations of an approved final and the brand kit (issue #21), on the simulator.

An adaptation is one paid edit job whose first reference is the stored final; the brand kit
goes into every draft, final and adaptation. These tests run the campaign flow in this process
against the simulator on 127.0.0.1 and local storage, and read what EvoLink was sent and billed
from the simulator's ledger.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from evolink.adaptations import KEEP_INSTRUCTION, adaptation_stage
from evolink.brief import check_plans, parse_brief
from evolink.campaign import AssetStatus, CampaignManifest, budget_refusal
from evolink.cost import estimate_tokens, usd
from evolink.errors import BriefError, BudgetExceededError, CampaignIncompleteError
from evolink.jobs import job_key
from evolink.models import MAX_REFERENCE_IMAGES
from evolink.simulator import EvoLinkSimulator, Fault, render_png
from prefect_evolink.flows.campaign import manifest_key, run_campaign
from tests.conftest import artifacts_with_prefix

GERMAN = "Translate every visible text into German, same layout"


def brief_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "campaign": "adapt",
        "budget_usd": 5,
        "defaults": {
            "drafts": 2,
            "size": "16:9",
            "adaptations": [{"id": "story", "size": "9:16"}, {"id": "de", "prompt": GERMAN}],
            "brand": {"style": "pearl white and aurora green", "avoid": ["competitor logos"]},
        },
        "assets": [
            {"id": "hero", "prompt": "earbuds case floating above a lake, headline 'Aurora'"},
            {
                "id": "square",
                "size": "1:1",
                "prompt": "a runner at sunrise wearing the earbuds",
                "adaptations": [{"id": "feed", "size": "4:5"}],
            },
            {"id": "plain", "size": "1:1", "prompt": "the case on grey", "adaptations": []},
        ],
    }
    data.update(changes)
    return data


def write_brief(tmp_path: Path, data: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "brief.yaml"
    path.write_text(yaml.safe_dump(data or brief_data()))
    return path


def campaign(brief: Path, **kwargs: Any) -> CampaignManifest:
    return asyncio.run(run_campaign.aio(str(brief), poll_deadline_seconds=30, **kwargs))


def stored_manifest(assets_dir: Path) -> CampaignManifest:
    return CampaignManifest.model_validate_json((assets_dir / manifest_key("adapt")).read_text())


# --- the brief ------------------------------------------------------------------------------


def test_adaptation_and_brand_errors_name_the_asset_the_adaptation_and_the_field() -> None:
    data = brief_data()
    data["defaults"]["adaptations"].append({"id": "empty"})
    data["defaults"]["brand"]["avoid"] = ["logos", " "]
    data["assets"][1]["adaptations"] = [
        {"id": "feed", "size": "4:5", "quality": "ultra"},
        {"id": "feed", "prompt": "again"},
        {"id": "Bad", "size": "1:1"},
    ]
    with pytest.raises(BriefError) as info:
        parse_brief(data)
    problems = info.value.problems
    assert "defaults: adaptation 'empty': changes nothing" in "\n".join(problems)
    assert any(p.startswith("defaults: brand.avoid: entry 1 is empty") for p in problems)
    assert any(
        p.startswith("asset 'square' (#2): adaptation 'feed': quality: Input should be")
        for p in problems
    ), problems
    assert any(p.startswith("asset 'square' (#2): adaptation 'Bad': id: must be") for p in problems)

    duplicate = brief_data()
    duplicate["assets"][1]["adaptations"] = [{"id": "feed", "size": "4:5"}] * 2
    with pytest.raises(BriefError, match=r"asset 'square' \(#2\): adaptations: adaptation id "):
        parse_brief(duplicate)

    # A size the API refuses is found when the requests are planned, before anything is sent.
    bad_size = parse_brief(brief_data())
    bad = bad_size.model_copy(
        update={
            "assets": [
                bad_size.assets[0].model_copy(
                    update={"adaptations": [{"id": "odd", "size": "7:1"}]}
                )
            ]
        }
    )
    bad = parse_brief(bad.model_dump(mode="json"))
    with pytest.raises(BriefError) as planned:
        check_plans(bad, {})
    assert planned.value.problems[0].startswith("asset 'hero': adaptation 'odd': size:")


def test_the_brand_references_count_against_the_16_image_limit() -> None:
    data = brief_data()
    data["defaults"]["brand"]["references"] = [
        f"https://cdn.example.com/b{i}.png" for i in range(3)
    ]
    data["assets"][0]["reference_images"] = [f"https://cdn.example.com/r{i}.png" for i in range(13)]
    with pytest.raises(BriefError) as info:
        parse_brief(data)
    [problem] = info.value.problems
    assert problem.startswith("asset 'hero' (#1): reference_images: 13 + 3 brand reference(s)")
    assert f"over EvoLink's limit of {MAX_REFERENCE_IMAGES}: drop 1" in problem
    data["assets"][0]["reference_images"].pop()
    parse_brief(data)  # 12 + 3 + the chosen draft = 16: allowed


def test_the_brand_kit_and_the_adaptations_are_in_every_jobs_identity() -> None:
    brief = parse_brief(brief_data())
    [hero, square, plain] = check_plans(brief, {})
    for plan in (hero, square, plain):
        assert "Brand style: pearl white and aurora green" in plan.draft.prompt
        assert "Never show: competitor logos." in plan.final_request("https://x/d.png").prompt
    assert [a.id for a in hero.adaptations] == ["story", "de"]
    assert [a.id for a in square.adaptations] == ["feed"] and plain.adaptations == []
    story, de = hero.adaptations
    assert story.request.size == "9:16" and de.request.size == "16:9"
    assert story.request.quality == "high" and story.request.n == 1
    assert (
        story.request.prompt.startswith(KEEP_INSTRUCTION) and "9:16 format" in story.request.prompt
    )
    assert f"Change only this: {GERMAN}" in de.request.prompt
    assert "Brand style" in de.request.prompt
    # an edit with one reference (the final) is priced with its reference tokens
    assert story.estimate.height > story.estimate.width
    assert (
        story.estimate.image_input_tokens
        == estimate_tokens(
            width=1, height=1, quality="high", n=1, references=1, prompt=""
        ).image_input_tokens
    )
    # the brief's estimate and its refusal include the adaptations
    refusal = budget_refusal(brief.model_copy(update={"budget_usd": Decimal("0.01")}), [hero])
    assert refusal is not None and "+ 2 adaptation(s) $" in refusal

    def draft_key(data: dict[str, Any]) -> str:
        plan = check_plans(parse_brief(data), {})[0]
        return job_key("campaign/adapt/hero/draft", plan.draft)

    other_style = brief_data()
    other_style["defaults"]["brand"]["style"] = "matte black"
    assert draft_key(brief_data()) != draft_key(other_style)
    assert story.identity("aaa", []) != story.identity("bbb", [])  # another final, another job
    assert story.identity("aaa", []) != story.identity("aaa", ["sha256:brand"])


# --- end to end -----------------------------------------------------------------------------


def test_masters_and_adaptations_end_to_end_and_a_day_two_rerun_makes_nothing(
    prefect_harness: None, evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    brief = write_brief(tmp_path)
    manifest = campaign(brief)
    ledger = evolink_env.ledger()
    assert len(ledger) == 3 * 2 + 3  # drafts and finals of 3 assets, 3 adaptations
    outcomes = {o.asset: o for o in manifest.assets}
    assert all(o.status is AssetStatus.FINAL for o in outcomes.values())
    assert [a.id for a in outcomes["hero"].adaptations] == ["story", "de"]
    assert [a.id for a in outcomes["square"].adaptations] == ["feed"]
    assert outcomes["plain"].adaptations == []

    for asset, adaptation_id, expect in [
        ("hero", "story", "portrait"),
        ("hero", "de", "landscape"),
        ("square", "feed", "portrait"),
    ]:
        outcome = outcomes[asset]
        adaptation = outcome.adaptation(adaptation_id)
        assert adaptation is not None and adaptation.status is AssetStatus.FINAL
        assert adaptation.record is not None and outcome.final is not None
        [image] = adaptation.record.images
        assert f"/adapt/{asset}/{adaptation_stage(adaptation_id)}/" in image.uri
        stored = Path(image.uri.removeprefix("file://"))
        assert stored.is_file()
        assert (image.width < image.height) == (expect == "portrait"), image
        entry = next(e for e in ledger if e.task_id == adaptation.record.task_id)
        final_task = evolink_env.task(outcome.final.task_id)
        assert final_task is not None
        # the first reference is the final (its fresh result link), and it is billed as one
        assert entry.request["image_urls"][0] == final_task["results"][0]
        assert entry.image_input_tokens > 0 and entry.billed_usd > 0
        assert entry.request["prompt"].startswith(KEEP_INSTRUCTION)

    rows = [r for r in manifest.jobs if r.stage.startswith("adapt-")]
    assert {(r.asset, r.stage) for r in rows} == {
        ("hero", "adapt-story"),
        ("hero", "adapt-de"),
        ("square", "adapt-feed"),
    }
    assert Decimal(manifest.totals.by_stage["adaptation"]) == sum(
        (e.billed_usd for e in ledger if "Adapt the approved" in e.request["prompt"]), Decimal(0)
    )
    assert Decimal(manifest.totals.billed_usd) == sum((e.billed_usd for e in ledger), Decimal(0))
    assert manifest.adaptations_from_scratch_usd is not None
    assert Decimal(manifest.adaptations_from_scratch_usd) > Decimal(
        manifest.totals.by_stage["adaptation"]
    )
    assert stored_manifest(assets_dir) == manifest
    artifacts_show_the_adaptations(manifest)

    # Day two: EvoLink forgot every task and link; the same brief again sends nothing.
    evolink_env.age()
    calls = evolink_env.request_counts
    again = campaign(brief)
    assert evolink_env.request_counts == calls
    assert len(evolink_env.ledger()) == len(ledger)
    assert [
        (a.id, a.record.task_id if a.record else None) for o in again.assets for a in o.adaptations
    ] == [
        (a.id, a.record.task_id if a.record else None)
        for o in manifest.assets
        for a in o.adaptations
    ]
    assert again.totals.billed_usd == manifest.totals.billed_usd


def artifacts_show_the_adaptations(manifest: CampaignManifest) -> None:
    """The run's artifacts: the contact sheet (a row per asset: the final, then its
    adaptations), each asset's own artifact, the cost table and the summary's comparison."""
    artifacts = asyncio.run(artifacts_with_prefix("adapt-%"))
    sheet = artifacts["adapt-finals"].data
    assert sheet.count("](data:image/jpeg;base64,") == 3 + 3  # 3 finals, 3 adaptations
    assert "| hero | hero · story | hero · de |" in sheet
    assert "| square | square · feed |" in sheet and "| plain |" in sheet
    for outcome in manifest.assets:
        for adaptation in outcome.adaptations:
            assert adaptation.record is not None
            [image] = adaptation.record.images
            assert f"![{outcome.asset} · {adaptation.id}](data:image/jpeg;base64," in sheet
            assert f" {image.width}x{image.height} " in sheet  # its pixel size, in its column
            assert f"- **{outcome.asset} · {adaptation.id}** — `{image.uri}`" in sheet
    assert "3 of 3 adaptation(s) made" in sheet
    hero = artifacts["adapt-hero-final"]
    assert "## Adaptations" in hero.data and hero.data.count("](data:image/jpeg;base64,") == 3
    assert ", 2 of 2 adaptation(s) (" in hero.description
    rows = json.loads(artifacts["adapt-cost"].data)
    stages = [r["Stage"] for r in rows if r["Asset"] == "hero"]
    assert stages[:2] == ["draft", "final"]  # then the adaptations, as they finished
    assert sorted(stages[2:]) == ["adapt: de", "adapt: story"]
    summary = artifacts["adapt-summary"].data
    scratch = manifest.adaptations_from_scratch_usd
    assert scratch is not None
    assert (
        f"| same adaptations as 3 format(s) made from scratch, with drafts | {usd(scratch)} |"
        in summary
    )
    assert f"| adaptation | {usd(manifest.totals.by_stage['adaptation'])} |" in summary
    assert "Adaptations: 3 version(s) of the approved finals" in summary


def test_an_adaptation_that_fails_fails_only_itself_and_a_reworded_one_is_all_that_is_new(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    evolink_env.add_fault(
        Fault(kind="fail_task", error_code="content_policy_violation", match_prompt="German")
    )
    brief = write_brief(tmp_path)
    with pytest.raises(CampaignIncompleteError, match=r"1 adaptation\(s\) not made: hero/de"):
        campaign(brief)
    manifest = stored_manifest(assets_dir)
    assert manifest.run_state == "failed"
    assert all(o.status is AssetStatus.FINAL for o in manifest.assets)
    hero = manifest.assets[0]
    statuses = {a.id: a.status for a in hero.adaptations}
    assert statuses == {"story": AssetStatus.FINAL, "de": AssetStatus.FAILED}
    failed = hero.adaptation("de")
    assert failed is not None and "content_policy_violation" in failed.detail
    assert manifest.assets[1].adaptations[0].status is AssetStatus.FINAL
    assert [(asset, a.id) for asset, a in manifest.failed_adaptations] == [("hero", "de")]
    creates = evolink_env.request_counts["create"]

    # The user rewords the refused adaptation: only it is new; the rest is found stored.
    data = brief_data()
    data["defaults"]["adaptations"][1]["prompt"] = "Use German for every visible text"
    rerun = campaign(write_brief(tmp_path, data))
    assert evolink_env.request_counts["create"] == creates + 1
    assert rerun.run_state == "completed" and not rerun.failed_adaptations
    assert Decimal(rerun.totals.billed_usd) == sum(
        (e.billed_usd for e in evolink_env.ledger()), Decimal(0)
    )


def test_a_budget_that_cannot_afford_the_adaptations_refuses_before_spending(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    data = brief_data()
    plans = check_plans(parse_brief(data), {})
    without = sum((p.draft_estimate.usd + p.final_estimate.usd for p in plans), Decimal(0))
    data["budget_usd"] = float(without + Decimal("0.01"))  # drafts and finals fit, not more
    with pytest.raises(BudgetExceededError) as info:
        campaign(write_brief(tmp_path, data))
    assert "hero: drafts $" in str(info.value) and "+ 2 adaptation(s) $" in str(info.value)
    assert evolink_env.request_counts.get("create", 0) == 0
    assert not (assets_dir / manifest_key("adapt")).exists()


def test_brand_references_go_with_every_draft_final_and_adaptation(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """A local brand reference on local storage: uploaded to the Files API once, sent last in
    every job's references (after the final, in an adaptation)."""
    (tmp_path / "brand").mkdir()
    (tmp_path / "brand" / "style.png").write_bytes(render_png(64, 64, "brand-style"))
    data = brief_data()
    data["defaults"]["brand"]["references"] = ["brand/style.png"]
    data["assets"] = data["assets"][:1]
    data["defaults"]["adaptations"] = data["defaults"]["adaptations"][:1]
    manifest = campaign(write_brief(tmp_path, data))
    ledger = evolink_env.ledger()
    assert len(ledger) == 3 and manifest.run_state == "completed"
    uploaded = {e.request["image_urls"][-1] for e in ledger}
    assert len(uploaded) == 1 and uploaded.pop().startswith(evolink_env.files_base_url)
    assert [len(e.request["image_urls"]) for e in ledger] == [1, 2, 2]
    assert evolink_env.file_request_counts["upload"] == 1
