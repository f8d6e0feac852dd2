"""The campaign flow on the simulator: drafts → selection → finals, budget, failures, artifacts."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from evolink.brief import load_brief, parse_brief
from evolink.campaign import (
    AssetStatus,
    CampaignManifest,
    adaptations_saving,
    campaign_estimate_usd,
)
from evolink.errors import BriefError, BudgetExceededError, CampaignIncompleteError
from evolink.plans import check_plans
from evolink.simulator import EvoLinkSimulator, Fault, render_png
from prefect_evolink.blocks import S3AssetStorage
from prefect_evolink.flows.campaign import manifest_key, run_campaign
from tests.conftest import artifacts_with_prefix

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "briefs" / "spring-launch.yaml"


def example_without_adaptations() -> dict[str, Any]:
    """The example brief without its adaptations (issue #21): the tests that use it are about
    drafts, finals, review and budget — 2 paid jobs per asset, counted as such. The adaptations
    are tests/test_adaptations.py's; the example's whole run is tests/test_day_two.py's demo.
    Its brand line stays: it goes into every job."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    data["defaults"].pop("adaptations", None)
    for asset in data["assets"]:
        asset.pop("adaptations", None)
    return data


def small_brief(tmp_path: Path, **changes: Any) -> Path:
    """The example brief with 2 drafts per asset and no adaptations: same shape, faster."""
    data = example_without_adaptations()
    data["defaults"]["drafts"] = 2
    data.update(changes)
    path = tmp_path / "brief.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def campaign(brief: Path, **kwargs: Any) -> CampaignManifest:
    return asyncio.run(
        run_campaign.aio(str(brief), approval_poll_seconds=1, poll_deadline_seconds=30, **kwargs)
    )


# --- brief validation ------------------------------------------------------------------------


def test_brief_errors_name_the_asset_and_the_field(tmp_path: Path) -> None:
    data = {
        "campaign": "c",
        "budget_usd": 5,
        "assets": [
            {"id": "ok-one", "prompt": "p"},
            {"id": "Bad Id", "prompt": "p"},
            {"id": "banner", "prompt": "p", "drafts": 11, "colour": "red"},
        ],
    }
    with pytest.raises(BriefError) as info:
        parse_brief(data)
    text = str(info.value)
    assert "asset 'Bad Id' (#2): id:" in text
    assert "asset 'banner' (#3): drafts: Input should be less than or equal to 10" in text
    assert "asset 'banner' (#3): colour: Extra inputs are not permitted" in text

    brief = parse_brief(
        {
            "campaign": "c",
            "budget_usd": 5,
            "assets": [{"id": "tall", "prompt": "p", "size": "1024x4096"}],
        }
    )
    with pytest.raises(BriefError, match="asset 'tall': size: explicit size"):
        check_plans(brief, {})
    with pytest.raises(BriefError, match="budget_usd"):
        parse_brief({"campaign": "c", "budget_usd": 0, "assets": [{"id": "a", "prompt": "p"}]})
    with pytest.raises(BriefError, match="id 'a' is used twice"):
        parse_brief({"campaign": "c", "budget_usd": 1, "assets": [{"id": "a", "prompt": "p"}] * 2})


def test_example_brief_is_valid_and_draft_first_is_cheaper() -> None:
    brief = load_brief(EXAMPLE)
    assert [a.id for a in brief.assets] == [
        "launch-banner",
        "social-square",
        "story-vertical",
        "product-shot",
    ]
    plans = check_plans(brief, {"product-shot": (brief.assets[3].reference_images, None)})
    ours = sum((p.draft_estimate.usd + p.final_estimate.usd for p in plans), Decimal(0))
    variants = sum((p.high_variants_estimate.usd for p in plans), Decimal(0))
    assert ours <= brief.budget_usd and ours < Decimal("0.31") * variants
    # The key visual's two adaptations and the brand line (issue #21), within the budget too.
    assert [(a.id, a.request.size) for a in plans[0].adaptations] == [
        ("story", "9:16"),
        ("de", "16:9"),
    ]
    assert all(not p.adaptations for p in plans[1:])
    assert brief.defaults.brand is not None and brief.defaults.brand.style
    assert all("Brand style: " in p.draft.prompt for p in plans)
    assert campaign_estimate_usd(plans) <= brief.budget_usd
    saving = adaptations_saving(plans)
    assert saving is not None and saving[0] < saving[1]  # adapting beats from scratch


def test_references_and_drafts_travel_as_presigned_s3_urls(
    evolink_env: EvoLinkSimulator,
    s3_server: str,
    s3_storage: Callable[..., S3AssetStorage],
    tmp_path: Path,
) -> None:
    storage = s3_storage("campaign-refs", "campaign-test-s3", "mkt")
    photo = tmp_path / "case-photo.png"
    photo.write_bytes(render_png(64, 64, "case-photo"))
    brief = small_brief(
        tmp_path,
        budget_usd=1,
        assets=[
            {
                "id": "shot",
                "prompt": "studio product shot",
                "size": "1:1",
                "drafts": 1,
                "reference_images": ["case-photo.png"],
            },
        ],
    )
    manifest = campaign(brief, storage=S3AssetStorage.load("campaign-test-s3"))

    draft_entry, final_entry = evolink_env.ledger()
    [uploaded] = [k for k in storage.list_keys() if "/references/" in k]
    assert storage.get_bytes(uploaded) == photo.read_bytes()
    reference = draft_entry.request["image_urls"][0]
    assert (
        reference.startswith(f"{s3_server}/campaign-refs/mkt/{uploaded}?")
        and "Signature" in reference
    )
    assert httpx.get(reference).content == photo.read_bytes()  # EvoLink could fetch it
    chosen = final_entry.request["image_urls"][0]
    [outcome] = manifest.assets
    assert outcome.final is not None and outcome.drafts is not None
    assert httpx.get(chosen).content == storage.get_bytes(outcome.drafts.images[0].key)
    assert final_entry.request["image_urls"][1] == reference  # the brief's reference rides along
    assert "Signature" not in storage.get_bytes("aurora-spring-launch/manifest.json").decode()  # type: ignore[union-attr]


# --- end to end ----------------------------------------------------------------------------


def test_example_campaign_end_to_end(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = campaign(small_brief(tmp_path))
    ledger = evolink_env.ledger()
    assert [o.status for o in manifest.assets] == [AssetStatus.FINAL] * 4
    assert len(ledger) == 8 and all(e.status == "completed" for e in ledger)

    for outcome in manifest.assets:
        assert (
            outcome.drafts is not None
            and outcome.final is not None
            and outcome.chosen_draft is not None
        )
        assert len(outcome.drafts.images) == 2 and len(outcome.final.images) == 1
        for image in outcome.drafts.images + outcome.final.images:
            assert Path(image.uri.removeprefix("file://")).is_file()
        assert f"/aurora-spring-launch/{outcome.asset}/draft/" in outcome.drafts.images[0].uri
        assert f"/aurora-spring-launch/{outcome.asset}/final/" in outcome.final.images[0].uri
        # the final was sent with the chosen draft as its first reference image
        final_entry = next(e for e in ledger if e.task_id == outcome.final.task_id)
        draft_task = evolink_env.task(outcome.drafts.task_id)
        assert draft_task is not None
        assert final_entry.request["image_urls"][0] == draft_task["results"][outcome.chosen_draft]
        assert final_entry.request["quality"] == "high"

    billed = sum((Decimal(str(e.billed_usd)) for e in ledger), Decimal(0))
    assert Decimal(manifest.totals.billed_usd) == billed
    assert Decimal(manifest.totals.billed_credits) == sum(
        (Decimal(str(e.billed_credits)) for e in ledger), Decimal(0)
    )
    text = (assets_dir / manifest_key("aurora-spring-launch")).read_text()
    assert json.loads(text)["totals"] == manifest.model_dump(mode="json")["totals"]
    assert "sig=" not in text and "expires=" not in text  # no signed link outlives its run here
    monkeypatch.setenv("EVOLINK_ALLOW_PRIVATE_URLS", "false")
    assert CampaignManifest.model_validate_json(text).totals == manifest.totals  # readable anywhere
    monkeypatch.setenv("EVOLINK_ALLOW_PRIVATE_URLS", "true")

    artifacts = asyncio.run(artifacts_with_prefix("aurora-spring-launch-%"))
    assert {
        "aurora-spring-launch-cost",
        "aurora-spring-launch-cost-details",
        "aurora-spring-launch-summary",
        "aurora-spring-launch-progress",
        "aurora-spring-launch-finals",
        "aurora-spring-launch-launch-banner-final",
    } <= set(artifacts)
    rows = json.loads(artifacts["aurora-spring-launch-cost"].data)
    assert len(rows) == 8 and {r["Stage"] for r in rows} == {"draft", "final"}
    assert {r["Billed"] for r in rows} == {f"${Decimal(str(e.billed_usd)):.6f}" for e in ledger}
    details = json.loads(artifacts["aurora-spring-launch-cost-details"].data)
    assert {r["Task id"] for r in details} == {e.task_id for e in ledger}
    assert artifacts["aurora-spring-launch-progress"].data == 100.0
    assert "total billed" in artifacts["aurora-spring-launch-summary"].data
    assert "2 low-quality drafts per asset" in artifacts["aurora-spring-launch-summary"].data
    banner = artifacts["aurora-spring-launch-launch-banner-final"]
    assert banner.type == "markdown" and "](data:image/jpeg;base64," in banner.data
    assert banner.description.startswith("Current final of launch-banner")
    sheet = artifacts["aurora-spring-launch-finals"].data
    assert sheet.count("](data:image/jpeg;base64,") == 4
    assert all(o.final.images[0].uri in sheet for o in manifest.assets if o.final)

    # a rerun pays for nothing new
    again = campaign(small_brief(tmp_path))
    assert len(evolink_env.ledger()) == 8
    assert [o.final.task_id for o in again.assets if o.final] == [
        o.final.task_id for o in manifest.assets if o.final
    ]


def test_one_asset_failing_does_not_stop_the_others(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    evolink_env.add_fault(
        Fault(kind="fail_task", error_code="content_policy_violation", match_prompt="jogging")
    )
    with pytest.raises(CampaignIncompleteError, match="social-square"):
        campaign(small_brief(tmp_path))
    manifest = CampaignManifest.model_validate_json(
        (assets_dir / manifest_key("aurora-spring-launch")).read_text()
    )
    statuses = {o.asset: o.status for o in manifest.assets}
    assert statuses.pop("social-square") is AssetStatus.FAILED
    assert set(statuses.values()) == {AssetStatus.FINAL}
    assert len(evolink_env.ledger()) == 1 + 3 * 2  # no resubmission of the policy failure
    artifacts = asyncio.run(artifacts_with_prefix("aurora-spring-launch-%"))
    assert "content_policy_violation" in artifacts["aurora-spring-launch-summary"].data
    assert {"Asset": "social-square", "Stage": "draft", "Status": "failed"}.items() <= next(
        r for r in json.loads(artifacts["aurora-spring-launch-cost"].data) if r["Billed"] == "—"
    ).items()
    square = artifacts["aurora-spring-launch-social-square-final"]
    assert square.description.startswith("No current final of social-square — failed")
    assert "content_policy_violation" in square.data


# --- budget --------------------------------------------------------------------------------


def test_estimate_over_budget_sends_nothing(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(BudgetExceededError) as info:
        campaign(small_brief(tmp_path, budget_usd=0.2))
    assert "launch-banner: drafts $" in str(info.value) and "product-shot" in str(info.value)
    assert evolink_env.request_counts.get("create", 0) == 0


def test_budget_reached_mid_run_stops_finals(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """The estimate fits, but every job bills 50 % over its estimate (a pricier reality)."""
    brief_path = small_brief(tmp_path, budget_usd=0.85)
    plans = check_plans(
        load_brief(brief_path), {"product-shot": (["https://x.example/a.png"], None)}
    )
    evolink_env.bill_multiplier = 1.5
    with pytest.raises(CampaignIncompleteError, match="budget_stopped"):
        campaign(brief_path)
    manifest = CampaignManifest.model_validate_json(
        (assets_dir / manifest_key("aurora-spring-launch")).read_text()
    )
    finals = [e for e in evolink_env.ledger() if e.request["quality"] == "high"]
    stopped = [o for o in manifest.assets if o.status is AssetStatus.BUDGET_STOPPED]
    assert stopped and len(finals) + len(stopped) == 4
    worst = max(p.final_estimate.usd for p in plans)
    assert Decimal(manifest.totals.billed_usd) <= Decimal("0.85") + worst
    # calibrated reservations keep even a 50 %-over reality inside the budget itself here
    assert Decimal(manifest.totals.billed_usd) <= Decimal("0.85")
    assert Decimal(manifest.totals.billed_usd) == sum(
        (Decimal(str(e.billed_usd)) for e in evolink_env.ledger()), Decimal(0)
    )


# --- approval ------------------------------------------------------------------------------


def two_asset_brief(tmp_path: Path) -> Path:
    data = example_without_adaptations()
    return small_brief(tmp_path, assets=data["assets"][:2])


def start_in_thread(brief: Path, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["manifest"] = campaign(brief, selection="approval", **kwargs)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_paused_run(timeout: float = 90, key: str | None = None) -> Any:
    """The paused campaign run (paused under the pause key `key`, when given: the drafts'
    review or the adaptations')."""

    async def paused() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = asyncio.run(paused())
        if key is not None:
            runs = [r for r in runs if r.state.state_details.pause_key == key]
        if runs:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"the campaign never paused for review {key or ''}".rstrip())


def test_approval_resumed_from_code_with_a_choice_and_a_rejection(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    brief = two_asset_brief(tmp_path)
    thread, outcome = start_in_thread(brief, approval_timeout_seconds=120)
    run = wait_for_paused_run()
    assert len(evolink_env.ledger()) == 2  # drafts only, while waiting
    review = asyncio.run(artifacts_with_prefix("aurora-spring-launch-review"))[
        "aurora-spring-launch-review"
    ]
    assert "launch-banner" in review.data and "data:image/jpeg;base64," in review.data
    resume_flow_run(run.id, run_input={"launch_banner": "image-1", "social_square": "reject"})
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    manifest: CampaignManifest = outcome["manifest"]
    banner, square = manifest.assets
    assert (banner.status, banner.chosen_draft) == (AssetStatus.FINAL, 1)
    assert square.status is AssetStatus.REJECTED and square.final is None
    finals = [e for e in evolink_env.ledger() if e.request["quality"] == "high"]
    assert len(finals) == 1
    draft_task = evolink_env.task(banner.drafts.task_id)  # type: ignore[union-attr]
    assert draft_task is not None and finals[0].request["image_urls"][0] == draft_task["results"][1]
    # the saving is stated for the finals actually made, not for the rejected asset
    banner_plan = check_plans(load_brief(brief), {})[0]
    assert Decimal(manifest.high_quality_variants_usd) == banner_plan.high_variants_estimate.usd


def test_the_reviewer_s_answer_is_stored_before_the_finals_are_sent(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """The answer lives only in the run until a manifest holds it: the run stores one right
    after the review, so a run killed during its finals leaves the choice and the rejection
    where `report` finds them, and the manifest rebuilt from the records keeps both."""
    from prefect_evolink.blocks import LocalAssetStorage
    from prefect_evolink.tasks.recovery import rebuild_campaign

    thread, outcome = start_in_thread(two_asset_brief(tmp_path), approval_timeout_seconds=120)
    run = wait_for_paused_run()
    evolink_env.add_fault(Fault(kind="slow_task", seconds=6))  # the final, made after the review
    resume_flow_run(run.id, run_input={"launch_banner": "image-1", "social_square": "reject"})
    storage = LocalAssetStorage(base_dir=str(assets_dir))
    key = manifest_key("aurora-spring-launch")
    deadline = time.monotonic() + 60
    while not [e for e in evolink_env.ledger() if e.request["quality"] == "high"]:
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.05)
    [final] = [e for e in evolink_env.ledger() if e.request["quality"] == "high"]
    task = evolink_env.task(final.task_id)
    assert task is not None and task["status"] != "completed"  # the finals are running
    stored = CampaignManifest.model_validate(storage.get_json(key))
    assert stored.run_state == "running"
    by_asset = {o.asset: o for o in stored.assets}
    assert by_asset["social-square"].status is AssetStatus.REJECTED
    assert by_asset["launch-banner"].chosen_draft == 1
    rebuilt = asyncio.run(rebuild_campaign("aurora-spring-launch", storage, write=False)).manifest
    by_asset = {o.asset: o for o in rebuilt.assets}
    assert by_asset["social-square"].status is AssetStatus.REJECTED, by_asset["social-square"]
    assert by_asset["launch-banner"].chosen_draft == 1
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")


def test_a_rerun_reads_the_answer_where_prefect_saved_it_for_the_suspended_review() -> None:
    """`saved_answer` reads the form and the answer from the keys Prefect derives from the
    suspension (`keyset_from_paused_state`): a key of our own making would find nothing, and
    the rerun would miss the answer."""
    from prefect import flow
    from prefect.input.actions import acreate_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.states import Suspended

    from prefect_evolink.flows.campaign_review import REVIEW_KEY, saved_answer
    from prefect_evolink.flows.campaign_review_form import form_model

    @flow
    def reviewed() -> None: ...

    form = form_model("CampaignReview", {"launch_banner": (str, "image-0")}, None)

    async def save_then_read() -> tuple[Any, Any]:
        async with get_client() as client:
            run = await client.create_flow_run(reviewed)
        keyset = keyset_from_paused_state(Suspended(pause_key=REVIEW_KEY))
        await form.asave(keyset, flow_run_id=run.id)
        await acreate_flow_run_input(
            keyset["response"], {"launch_banner": "image-2"}, flow_run_id=run.id
        )
        return await saved_answer(run.id), form.model_json_schema(by_alias=True)

    saved, schema = asyncio.run(save_then_read())
    assert saved == (schema, {"launch_banner": "image-2"})


def test_a_review_of_many_assets_takes_exceptions_and_the_server_refuses_a_typo(
    evolink_env: EvoLinkSimulator,
    assets_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past `REVIEW_FIELDS_MAX` assets the Resume form lists exceptions only (lowered here so
    4 assets count as many): rejected assets and other drafts picked; every other asset gets
    its suggested draft. The server checks the answer against the form: an asset that does not
    exist is refused and the run stays paused, nothing sent."""
    from prefect_evolink.flows import campaign_review_form

    monkeypatch.setattr(campaign_review_form, "REVIEW_FIELDS_MAX", 1)
    thread, outcome = start_in_thread(small_brief(tmp_path), approval_timeout_seconds=120)
    run = wait_for_paused_run()
    with pytest.raises(RuntimeError, match="Cannot resume this run"):
        resume_flow_run(run.id, run_input={"reject": ["social-squre"], "use_instead": []})
    assert [e.request["quality"] for e in evolink_env.ledger()] == ["low"] * 4
    resume_flow_run(
        run.id, run_input={"reject": ["social-square"], "use_instead": ["launch-banner: image-0"]}
    )
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    manifest: CampaignManifest = outcome["manifest"]
    by_asset = {o.asset: o for o in manifest.assets}
    assert by_asset["social-square"].status is AssetStatus.REJECTED
    banner = by_asset["launch-banner"]
    assert (banner.status, banner.chosen_draft) == (AssetStatus.FINAL, 0)
    review = asyncio.run(artifacts_with_prefix("aurora-spring-launch-review"))[
        "aurora-spring-launch-review"
    ].data
    assert "under *Use another draft*" in review
    for asset in ("story-vertical", "product-shot"):  # not mentioned: their suggestion
        suggested = re.search(rf"## {asset}\n\n[^\n]*suggested: \*\*image-(\d)", review)
        assert suggested, review[:2000]
        assert by_asset[asset].status is AssetStatus.FINAL
        assert by_asset[asset].chosen_draft == int(suggested[1])
    finals = [e for e in evolink_env.ledger() if e.request["quality"] == "high"]
    assert len(finals) == 3


def test_approval_timeout_spends_nothing_on_finals(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    thread, outcome = start_in_thread(two_asset_brief(tmp_path), approval_timeout_seconds=2)
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    manifest: CampaignManifest = outcome["manifest"]
    assert {o.status for o in manifest.assets} == {AssetStatus.NOT_REVIEWED}
    assert [e.request["quality"] for e in evolink_env.ledger()] == ["low", "low"]
