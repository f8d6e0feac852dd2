"""Adaptations of an approved final and the brand kit (issue #21), on the simulator.

An adaptation is one paid edit job whose first reference is the stored final; the brand kit
goes into every draft, final and adaptation. These tests run the campaign flow in this process
against the simulator on 127.0.0.1 and local storage, and read what EvoLink was sent and billed
from the simulator's ledger.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run
from pydantic import SecretStr

from evolink.adaptations import KEEP_INSTRUCTION, adaptation_stage
from evolink.brief import parse_brief
from evolink.campaign import AssetStatus, CampaignManifest, budget_refusal
from evolink.cost import estimate_tokens, usd
from evolink.errors import BriefError, BudgetExceededError, CampaignIncompleteError
from evolink.jobs import job_key
from evolink.models import MAX_REFERENCE_IMAGES
from evolink.plans import check_plans
from evolink.simulator import EvoLinkSimulator, Fault, render_png
from prefect_evolink.blocks import EvoLinkCredentials, LocalAssetStorage, S3AssetStorage
from prefect_evolink.flows.campaign import (
    ADAPTATION_REVIEW_KEY,
    REVIEW_KEY,
    manifest_key,
    run_campaign,
)
from prefect_evolink.tasks.campaign_cost import cost_summary
from prefect_evolink.tasks.recovery import rebuild_campaign
from tests.conftest import artifacts_with_prefix
from tests.test_campaign import wait_for_paused_run

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
    odd = brief_data()
    odd["assets"] = odd["assets"][:1]
    odd["assets"][0]["adaptations"] = [{"id": "odd", "size": "7:1"}]
    bad = parse_brief(odd)
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
        assert Decimal(adaptation.record.estimated_usd) == entry.billed_usd  # the edit's price
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

    # `prefect-evolink report` rebuilds the adaptations from the job records alone.
    storage = LocalAssetStorage(base_dir=str(assets_dir))
    (assets_dir / manifest_key("adapt")).unlink()
    key = SecretStr(evolink_env.api_key)
    asked = EvoLinkCredentials(api_key=key, base_url=evolink_env.base_url)
    rebuilt = asyncio.run(rebuild_campaign("adapt", storage, asked, write=False)).manifest
    assert {row.task_id for row in rebuilt.jobs} >= {row.task_id for row in manifest.jobs}
    assert rebuilt.totals.billed_usd == manifest.totals.billed_usd  # + the refused one, unpaid
    assert sorted(  # no brief: in the order the records were made
        (o.asset, a.id, a.status, a.record.task_id if a.record else "")
        for o in rebuilt.assets
        for a in o.adaptations
    ) == sorted(
        (o.asset, a.id, a.status, a.record.task_id if a.record else "")
        for o in manifest.assets
        for a in o.adaptations
    )
    rebuilt_de = rebuilt.assets[[o.asset for o in rebuilt.assets].index("hero")].adaptation("de")
    assert rebuilt_de is not None and "content_policy_violation" in rebuilt_de.detail
    # … and prints them under their asset, with what they saved (`report` prints these lines)
    printed = "\n".join(cost_summary(manifest))
    assert re.search(r"\n    · story +final +file://\S+/hero/adapt-story/", printed), printed
    assert re.search(r"\n    · de +failed +adaptation de: content_policy_violation", printed)
    assert "the same adaptations as 2 format(s) made from scratch, with drafts: $" in printed

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


def test_spend_reports_group_every_adaptation_under_one_stage() -> None:
    """`prefect-evolink spend` groups by stage: draft, final, adaptation (the adaptation's id
    stays in the job's namespace and its campaign's cost rows)."""
    from evolink.spend_jobs import _stage

    assert _stage("campaign/spring/hero/adapt-story") == "adaptation"
    assert _stage("campaign/spring/hero/final") == "final"
    assert _stage("campaign/spring/hero/draft") == "draft"


# --- the final as the first reference: S3, and a day later on local storage -------------------


def one_asset(adaptations: list[dict[str, Any]] | None) -> dict[str, Any]:
    data = brief_data()
    data["assets"] = data["assets"][:1]
    data["defaults"]["adaptations"] = adaptations or []
    return data


def test_on_s3_the_adaptation_gets_the_stored_final_presigned(
    evolink_env: EvoLinkSimulator,
    s3_server: str,
    s3_storage: Callable[..., S3AssetStorage],
    tmp_path: Path,
) -> None:
    storage = s3_storage("adaptations", "adaptations-s3", "mkt")
    manifest = campaign(
        write_brief(tmp_path, one_asset([{"id": "story", "size": "9:16"}])),
        storage=S3AssetStorage.load("adaptations-s3"),
    )
    [outcome] = manifest.assets
    adaptation = outcome.adaptation("story")
    assert outcome.final is not None and adaptation is not None and adaptation.record
    entry = next(e for e in evolink_env.ledger() if e.task_id == adaptation.record.task_id)
    sent = entry.request["image_urls"][0]
    assert sent.startswith(f"{s3_server}/adaptations/mkt/") and "Signature" in sent
    assert httpx.get(sent).content == storage.get_bytes(outcome.final.images[0].key)


def test_adaptations_added_a_day_later_are_made_from_the_uploaded_stored_final(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """Day one: the master is made and approved. Day two: EvoLink forgot its tasks and links,
    the team adds adaptations to the brief and runs it again: no draft and no final is paid
    again; the stored final goes to EvoLink through the Files API, once, and is deleted after."""
    first = campaign(write_brief(tmp_path, one_asset(None)))
    assert len(evolink_env.ledger()) == 2 and first.assets[0].adaptations == []
    evolink_env.age()

    later = campaign(
        write_brief(
            tmp_path, one_asset([{"id": "story", "size": "9:16"}, {"id": "de", "prompt": GERMAN}])
        )
    )
    ledger = evolink_env.ledger()
    assert len(ledger) == 2 + 2  # the two adaptations only
    [outcome] = later.assets
    assert [a.status for a in outcome.adaptations] == [AssetStatus.FINAL] * 2
    firsts = {e.request["image_urls"][0] for e in ledger[2:]}
    assert len(firsts) == 1 and firsts.pop().startswith(evolink_env.files_base_url)
    counts = evolink_env.file_request_counts
    assert counts["upload"] == 1 and counts["delete"] == 1
    assert Decimal(later.totals.billed_usd) == sum((e.billed_usd for e in ledger), Decimal(0))


def test_an_error_in_the_adaptation_stage_ends_the_adaptations_never_the_final() -> None:
    """Whatever escapes an asset's adaptation stage (a bug, storage) fails its unsettled
    adaptations and leaves its stored final as it is; a cancellation cancels them."""
    from prefect import flow

    from evolink.jobs import JobRecord
    from prefect_evolink.flows.campaign_boundary import ADAPTATION_STAGE, AssetBoundary

    plans = check_plans(parse_brief(brief_data()), {})

    @flow
    def stage(error: BaseException) -> AssetBoundary:
        boundary = AssetBoundary(plans, 2)
        final = JobRecord.model_construct(task_id="task-final")
        for plan in plans:
            boundary.update(plan.asset.id, status=AssetStatus.FINAL, final=final)

        async def work(plan: Any) -> None:
            for adaptation in plan.adaptations:
                boundary.update_adaptation(plan.asset.id, adaptation.id)
            if plan.adaptations:
                boundary.update_adaptation(plan.asset.id, plan.adaptations[0].id, detail="made")
                boundary.update_adaptation(
                    plan.asset.id, plan.adaptations[0].id, status=AssetStatus.FINAL
                )
            raise error

        try:
            asyncio.run(boundary.each_asset(ADAPTATION_STAGE, work, plans[:2]))
        except BaseException as raised:
            assert raised is error
        return boundary

    failed = stage(RuntimeError("disk full"))
    assert {o.asset: o.status for o in failed.outcomes.values()} == {
        "hero": AssetStatus.FINAL,
        "square": AssetStatus.FINAL,
        "plain": AssetStatus.FINAL,
    }
    hero = failed.outcomes["hero"]
    assert [(a.id, a.status) for a in hero.adaptations] == [
        ("story", AssetStatus.FINAL),
        ("de", AssetStatus.FAILED),
    ]
    assert "disk full" in (hero.adaptation("de") or hero).detail

    cancelled = stage(asyncio.CancelledError())
    assert cancelled.outcomes["hero"].status is AssetStatus.FINAL
    de = cancelled.outcomes["hero"].adaptation("de")
    assert de is not None and de.status is AssetStatus.CANCELLED


# --- the adaptations' review (adaptation_selection="approval") ------------------------------


def start_in_thread(brief: Path, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["manifest"] = campaign(brief, approval_poll_seconds=1, **kwargs)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_pause(key: str) -> Any:
    """The flow run paused under the pause key `key` (the drafts' or the adaptations')."""
    return wait_for_paused_run(120, key)


def run_input(run: Any, name: str) -> Any:
    async def read() -> Any:
        async with get_client() as client:
            keyset = run.state.state_details.run_input_keyset
            return await client.read_flow_run_input(run.id, keyset[name])

    return asyncio.run(read())


@pytest.mark.usefixtures("prefect_harness")
def test_both_reviews_pause_in_turn_and_a_rejected_adaptation_touches_nothing_else(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """selection and adaptation_selection 'approval': the run pauses for its drafts (key
    'review'), then, after the finals and adaptations, for its adaptations (its own key). The
    reviewer rejects one adaptation and approves another; the rejected one stays stored and
    paid, marked; nothing more is sent; a rerun pays nothing."""
    brief = write_brief(tmp_path)
    thread, outcome = start_in_thread(
        brief, selection="approval", adaptation_selection="approval", approval_timeout_seconds=300
    )
    drafts_review = wait_for_pause(REVIEW_KEY)
    assert len(evolink_env.ledger()) == 3  # drafts only
    resume_flow_run(
        drafts_review.id, run_input={"hero": "image-1", "square": "image-0", "plain": "reject"}
    )

    review = wait_for_pause(ADAPTATION_REVIEW_KEY)
    assert review.id == drafts_review.id  # the same run, paused a second time
    assert len(evolink_env.ledger()) == 3 + 2 + 3  # + finals of hero and square + adaptations
    description = run_input(review, "description")
    assert "**hero** — master and adaptations" in description
    assert description.count("](data:image/jpeg;base64,") == 2 + 3  # 2 masters, 3 adaptations
    fields = json.loads(run_input(review, "schema"))["properties"]
    assert {name: f["title"] for name, f in fields.items()} == {
        "hero__story": "hero · story (9:16)",
        "hero__de": "hero · de (16:9)",
        "square__feed": "square · feed (4:5)",
    }
    assert all(f["default"] == "approve" for f in fields.values())
    sheet = asyncio.run(artifacts_with_prefix("adapt-adaptations-review"))
    assert "data:image/jpeg;base64," in sheet["adapt-adaptations-review"].data
    creates = evolink_env.request_counts["create"]

    resume_flow_run(review.id, run_input={"hero__story": "reject", "hero__de": "approve"})
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    manifest: CampaignManifest = outcome["manifest"]
    assert manifest.run_state == "completed" and not manifest.failed_adaptations
    assert evolink_env.request_counts["create"] == creates  # the review sends nothing
    hero, square, plain = manifest.assets
    assert (hero.status, hero.chosen_draft, plain.status) == (
        AssetStatus.FINAL,
        1,
        AssetStatus.REJECTED,
    )
    story, de = hero.adaptations
    assert (story.status, story.detail) == (AssetStatus.REJECTED, "rejected by reviewer")
    assert (de.status, de.detail) == (AssetStatus.FINAL, "approved by reviewer")
    [feed] = square.adaptations
    assert (feed.status, feed.detail) == (AssetStatus.FINAL, "approved by reviewer")
    # the rejected adaptation stays stored and on the books
    assert story.record is not None
    assert Path(story.record.images[0].uri.removeprefix("file://")).is_file()
    assert ("hero", "adapt-story") in {(r.asset, r.stage) for r in manifest.jobs}
    assert Decimal(manifest.totals.billed_usd) == sum(
        (e.billed_usd for e in evolink_env.ledger()), Decimal(0)
    )
    assert stored_manifest(assets_dir) == manifest

    # A rerun is a new run with new reviews; every job is reused: nothing is created. This
    # time the reviewer approves every adaptation (the fields' defaults).
    thread, outcome = start_in_thread(
        brief, selection="approval", adaptation_selection="approval", approval_timeout_seconds=300
    )
    drafts_review = wait_for_pause(REVIEW_KEY)
    resume_flow_run(
        drafts_review.id, run_input={"hero": "image-1", "square": "image-0", "plain": "reject"}
    )
    resume_flow_run(wait_for_pause(ADAPTATION_REVIEW_KEY).id, run_input={})
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    assert evolink_env.request_counts["create"] == creates
    again: CampaignManifest = outcome["manifest"]
    assert [(a.id, a.status) for o in again.assets for a in o.adaptations] == [
        ("story", AssetStatus.FINAL),
        ("de", AssetStatus.FINAL),
        ("feed", AssetStatus.FINAL),
    ]
    assert again.totals.billed_usd == manifest.totals.billed_usd


@pytest.mark.usefixtures("prefect_harness")
def test_an_adaptations_review_nobody_answers_leaves_them_not_reviewed_and_the_run_completed(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    data = brief_data()
    data["assets"] = data["assets"][1:]  # square (1 adaptation) and plain (none)
    thread, outcome = start_in_thread(
        write_brief(tmp_path, data), adaptation_selection="approval", approval_timeout_seconds=2
    )
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    manifest: CampaignManifest = outcome["manifest"]
    assert manifest.run_state == "completed" and not manifest.failed_adaptations
    assert [o.status for o in manifest.assets] == [AssetStatus.FINAL] * 2
    [feed] = manifest.assets[0].adaptations
    assert feed.status is AssetStatus.NOT_REVIEWED and feed.record is not None
    assert feed.detail == "no review within 2s: stored, not approved"
    assert len(evolink_env.ledger()) == 2 * 2 + 1


@pytest.mark.usefixtures("prefect_harness")
def test_a_review_of_many_adaptations_is_one_list_of_those_to_reject(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `REVIEW_FIELDS_MAX` adaptations (lowered so 2 count as many) the Resume form is one
    pick list of the run's own adaptations to reject; the server refuses one that does not
    exist, and every adaptation not listed is approved."""
    from prefect_evolink.flows import campaign_review_form

    monkeypatch.setattr(campaign_review_form, "REVIEW_FIELDS_MAX", 1)
    data = brief_data()
    data["assets"] = data["assets"][:1]
    thread, outcome = start_in_thread(
        write_brief(tmp_path, data), adaptation_selection="approval", approval_timeout_seconds=300
    )
    review = wait_for_pause(ADAPTATION_REVIEW_KEY)
    assert "Reject adaptations" in run_input(review, "description")
    with pytest.raises(RuntimeError, match="Cannot resume this run"):
        resume_flow_run(review.id, run_input={"reject": ["hero · stroy (9:16)"]})
    resume_flow_run(review.id, run_input={"reject": ["hero · story (9:16)"]})
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    [hero] = outcome["manifest"].assets
    assert [(a.id, a.status, a.detail) for a in hero.adaptations] == [
        ("story", AssetStatus.REJECTED, "rejected by reviewer"),
        ("de", AssetStatus.FINAL, "approved by reviewer"),
    ]
