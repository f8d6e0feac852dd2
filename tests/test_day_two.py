"""Day two: time passes between runs. EvoLink forgets tasks, links and idempotency keys, the
simulator restarts, a user switches endpoints or keys — and a rerun never fails, fakes, loses or
pays twice for anything.

The CLI cases run `python -m prefect_evolink` as a user would, against the session's Prefect
server (a real `prefect server` process started by Prefect's test harness) and a simulator on
127.0.0.1; the approval cases run the flow in this process and answer its review from code.
The cold start on a just-booted machine is `tests/test_cold_start.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from evolink.campaign import AssetStatus, CampaignManifest
from evolink.errors import CampaignIncompleteError
from evolink.simulator import EvoLinkSimulator
from prefect_evolink.cli import EXIT_CREDENTIALS, EXIT_OK, SIMULATOR_STATE_DIR
from prefect_evolink.flows import campaign_stages
from prefect_evolink.flows.campaign import run_campaign
from tests.conftest import TEST_API_KEY
from tests.test_campaign import start_in_thread, wait_for_paused_run
from tests.test_cli import Run, run_cli

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def api_url(prefect_harness: None) -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url
    return str(url)


def brief_file(tmp_path: Path, campaign: str = "day-two") -> Path:
    data: dict[str, Any] = {
        "campaign": campaign,
        "budget_usd": 2,
        "defaults": {"drafts": 2, "size": "1:1"},
        "assets": [
            {"id": "mug", "prompt": "a ceramic mug of cocoa on a wooden table"},
            {"id": "case", "prompt": "the earbuds' charging case on a calm lake at dusk"},
        ],
    }
    path = tmp_path / "brief.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def against(sim: EvoLinkSimulator, key: str | None = None) -> dict[str, str]:
    """The environment that points the CLI at `sim` (with its key, or another)."""
    return {
        "EVOLINK_API_KEY": key or sim.api_key,
        "EVOLINK_BASE_URL": sim.base_url,
        "EVOLINK_FILES_BASE_URL": sim.files_base_url,
        "EVOLINK_ALLOW_PRIVATE_URLS": "true",
    }


def manifest_of(tmp_path: Path, campaign: str = "day-two") -> CampaignManifest:
    return CampaignManifest.model_validate_json(
        (tmp_path / "a" / campaign / "manifest.json").read_text()
    )


def ledger_usd(*sims: EvoLinkSimulator) -> Decimal:
    return sum((entry.billed_usd for sim in sims for entry in sim.ledger()), Decimal(0))


def finals_on_disk(manifest: CampaignManifest) -> dict[str, tuple[str, int]]:
    """Each final image's path → (sha256 of its bytes, mtime in ns): what must stay untouched."""
    found: dict[str, tuple[str, int]] = {}
    for outcome in manifest.assets:
        assert outcome.final is not None, outcome
        for image in outcome.final.images:
            path = Path(image.uri.removeprefix("file://"))
            found[str(path)] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mtime_ns,
            )
    return found


def ok(run: Run) -> Run:
    assert run.code == EXIT_OK, run
    return run


# --- reruns after EvoLink forgot ----------------------------------------------------------


def test_rerun_after_evolink_forgot_everything_pays_nothing_and_keeps_the_books(
    tmp_path: Path, api_url: str, simulator: EvoLinkSimulator
) -> None:
    """Run, let every task, link and Idempotency-Key expire, run the same command again: exit 0,
    not one EvoLink call, the manifest's bill is still the provider's ledger, finals untouched."""
    brief = brief_file(tmp_path)
    ok(run_cli(tmp_path, "campaign", str(brief), api_url=api_url, **against(simulator)))
    first = manifest_of(tmp_path)
    tasks = len(simulator.ledger())
    assert tasks == 4 and Decimal(first.totals.billed_usd) == ledger_usd(simulator)
    finals = finals_on_disk(first)

    simulator.age()
    calls = simulator.request_counts
    again = ok(run_cli(tmp_path, "campaign", str(brief), api_url=api_url, **against(simulator)))

    assert simulator.request_counts == calls, again  # not one create, query or download
    assert len(simulator.ledger()) == tasks
    second = manifest_of(tmp_path)
    assert Decimal(second.totals.billed_usd) == ledger_usd(simulator)
    assert {row.task_id for row in second.jobs} == {e.task_id for e in simulator.ledger()}
    assert all(o.status is AssetStatus.FINAL for o in second.assets)
    assert finals_on_disk(second) == finals


def test_rerun_against_a_restarted_simulator_that_knows_nothing(
    tmp_path: Path, api_url: str
) -> None:
    """The simulator process restarted without its state (as the real API forgets): a rerun of
    a finished campaign needs nothing from it."""
    brief = brief_file(tmp_path)
    with EvoLinkSimulator(api_key=TEST_API_KEY, generation_seconds=0.3) as first:
        ok(run_cli(tmp_path, "campaign", str(brief), api_url=api_url, **against(first)))
        port, billed = first.port, ledger_usd(first)
    with EvoLinkSimulator(api_key=TEST_API_KEY, generation_seconds=0.3, port=port) as fresh:
        assert fresh.base_url.endswith(f":{port}")
        ok(run_cli(tmp_path, "campaign", str(brief), api_url=api_url, **against(fresh)))
        assert not fresh.ledger() and not any(fresh.request_counts.values())
    assert Decimal(manifest_of(tmp_path).totals.billed_usd) == billed


def test_demo_three_times_in_one_folder(tmp_path: Path, api_url: str) -> None:
    """The README's first command, run again and again in one folder: the bundled simulator
    keeps its state next to the assets, so every run exits 0 and only the first one pays. It
    makes masters and adaptations (the key visual's story and German versions, issue #21) and
    its output shows both, with what the adaptations cost next to making them from scratch."""
    outputs = []
    for _ in range(3):
        run = ok(run_cli(tmp_path, "demo", api_url=api_url, EVOLINK_API_KEY=None))
        assert "USING THE BUNDLED LOCAL EVOLINK SIMULATOR" in run.out
        assert "by the bundled simulator: synthetic images, nothing billed" in run.out
        outputs.append(run.out)
    state = tmp_path / "a" / SIMULATOR_STATE_DIR
    with EvoLinkSimulator(state_dir=state) as sim:  # the demo's simulator, state and all
        ledger = sim.ledger()
    manifest = manifest_of(tmp_path, "aurora-spring-launch")
    drafts = [r for r in manifest.jobs if r.stage == "draft"]
    adaptations = [r for r in manifest.jobs if r.stage.startswith("adapt-")]
    assert sorted((r.asset, r.stage) for r in adaptations) == [
        ("launch-banner", "adapt-de"),
        ("launch-banner", "adapt-story"),
    ]
    assert len(ledger) == len(manifest.jobs) == len(drafts) + len(manifest.assets) + 2
    assert Decimal(manifest.totals.billed_usd) == sum((e.billed_usd for e in ledger), Decimal(0))
    assert all(row.simulator for row in manifest.jobs)
    banner = manifest.assets[0]
    assert [(a.id, a.status) for a in banner.adaptations] == [
        ("story", AssetStatus.FINAL),
        ("de", AssetStatus.FINAL),
    ]
    scratch = manifest.adaptations_from_scratch_usd
    assert scratch is not None
    billed = Decimal(manifest.totals.by_stage["adaptation"])
    assert billed == sum((Decimal(r.billed_usd or 0) for r in adaptations), Decimal(0))
    assert billed < Decimal(scratch)
    for out in outputs:  # every run prints the same books: the reruns paid nothing new
        assert f"  adaptation  ${billed:.6f}" in out, out
        for adaptation in banner.adaptations:
            assert adaptation.record is not None
            assert f"    · {adaptation.id:<12} made" in out
            assert adaptation.record.images[0].uri in out
        assert (
            f"  the same adaptations as 2 format(s) made from scratch, with drafts: "
            f"${Decimal(scratch):.6f}" in out
        )


# --- switching endpoints and keys ---------------------------------------------------------


def test_a_simulator_job_is_never_reused_at_another_endpoint(
    tmp_path: Path, api_url: str, simulator: EvoLinkSimulator
) -> None:
    """The same request at a second API (another port, another key) is a job of its own there:
    a task is created and its image stored, and the log says why the first was not reused."""
    ok(run_cli(tmp_path, "demo", "--single", api_url=api_url, **against(simulator)))
    with EvoLinkSimulator(api_key="sk-second-0123456789abcdef", generation_seconds=0.3) as other:
        run = ok(run_cli(tmp_path, "demo", "--single", api_url=api_url, **against(other)))
        [entry], url = other.ledger(), other.base_url
    assert len(simulator.ledger()) == 1
    assert "records are never reused across endpoints" in run.output, run
    assert f"Using an EvoLink SIMULATOR at {url}" in run.out  # never "the real API"
    assert entry.task_id in run.out  # the stored images are the second API's task's
    stored = [
        line.split()[0] for line in run.out.splitlines() if line.strip().startswith("file://")
    ]
    assert stored and all(Path(uri.removeprefix("file://")).exists() for uri in stored)


def test_a_wrong_key_after_a_simulator_run_exits_4(
    tmp_path: Path, api_url: str, simulator: EvoLinkSimulator
) -> None:
    ok(run_cli(tmp_path, "demo", "--single", api_url=api_url, **against(simulator)))
    with EvoLinkSimulator(api_key="sk-the-right-one-0123456789", generation_seconds=0.3) as other:
        run = run_cli(
            tmp_path,
            "demo",
            "--single",
            api_url=api_url,
            **against(other, key="sk-wrong-key-0123456789abcdef"),
        )
        assert not other.ledger()
    assert run.code == EXIT_CREDENTIALS, run
    assert "reusing its record" not in run.output, run
    assert "sk-wrong-key" not in run.output


# --- an approval answered after the drafts' links aged ------------------------------------


@pytest.fixture
def late_answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The reviewer answers after the poll's own links went stale: the in-process run may not
    reuse them (in production that window is 1 h of a 20 h review), so it must ask EvoLink."""
    monkeypatch.setattr(campaign_stages, "DRAFT_LINK_REUSE_SECONDS", 0.0)  # where it is read
    yield


def drafts_nobody_chose(sim: EvoLinkSimulator, tmp_path: Path) -> Path:
    """Day one: drafts made and stored, the review not answered in time (no final); then a day
    passes and EvoLink forgets everything. Returns the brief."""
    brief = brief_file(tmp_path)
    first = asyncio.run(
        run_campaign.aio(
            str(brief), selection="approval", approval_timeout_seconds=1, approval_poll_seconds=1
        )
    )
    assert all(o.final is None for o in first.assets)
    sim.age()
    return brief


REVIEWERS_PICKS = {"mug": 1, "case": 0}
"""What `answer_late`'s reviewer chooses, as draft indexes."""


def reviewers_picks(asset: Any, drafts: list[Any]) -> int | None:
    """A selector that picks what the reviewer picked: a later automatic rerun asks for the same
    finals (the default selector could pick other drafts, which would be new finals, paid)."""
    return REVIEWERS_PICKS[asset.id]


def answer_late(sim: EvoLinkSimulator, brief: Path, **kwargs: Any) -> dict[str, Any]:
    from prefect.flow_runs import resume_flow_run

    thread, outcome = start_in_thread(brief, approval_timeout_seconds=300, **kwargs)
    run = wait_for_paused_run()
    drafts = len(sim.ledger())
    sim.age()  # a day later: EvoLink forgot the drafts' tasks and links
    resume_flow_run(run.id, run_input={a: f"image-{i}" for a, i in REVIEWERS_PICKS.items()})
    thread.join(300)
    assert not thread.is_alive()
    outcome["drafts"] = drafts
    return outcome


@pytest.mark.usefixtures("late_answers")
def test_late_approval_on_local_storage_uploads_the_stored_drafts_for_the_finals(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    brief = brief_file(tmp_path)
    outcome = answer_late(evolink_env, brief)

    assert "error" not in outcome, outcome.get("error")
    manifest: CampaignManifest = outcome["manifest"]
    assert all(o.status is AssetStatus.FINAL for o in manifest.assets)
    ledger = evolink_env.ledger()
    assert [e.request["quality"] for e in ledger] == ["low"] * 2 + ["high"] * 2  # 0 new drafts
    counts = evolink_env.file_request_counts
    assert counts["upload"] == 2  # the two chosen stored drafts, uploaded once each
    uploaded = {e.request["image_urls"][0] for e in ledger if e.request["quality"] == "high"}
    assert all(url.startswith(evolink_env.files_base_url) for url in uploaded), uploaded
    assert Decimal(manifest.totals.billed_usd) == ledger_usd(evolink_env)
    # Cleanup: the finals are stored, so their uploads are deleted and their records forgotten.
    assert counts["delete"] == 2
    assert evolink_env.service.files.live_files() == []
    assert not list((assets_dir / "_uploads").rglob("*.json"))

    calls, files = evolink_env.request_counts, evolink_env.file_request_counts
    again = asyncio.run(  # day three: the same finals asked for again
        run_campaign.aio(
            str(brief), selector="tests.test_day_two:reviewers_picks", poll_deadline_seconds=30
        )
    )
    assert evolink_env.request_counts == calls and evolink_env.file_request_counts == files
    assert {row.task_id for row in again.jobs} == {e.task_id for e in ledger}


@pytest.mark.usefixtures("late_answers")
def test_redo_drafts_stays_an_explicit_choice_on_day_two(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """Drafts made, nobody chose; a day later `--redo-drafts` pays for fresh drafts once (the
    user's choice), and the finals are made from them — no upload needed."""
    brief = drafts_nobody_chose(evolink_env, tmp_path)

    def redo() -> CampaignManifest:
        return asyncio.run(
            run_campaign.aio(str(brief), redo_drafts=["mug", "case"], poll_deadline_seconds=30)
        )

    redone = redo()
    ledger = evolink_env.ledger()
    assert [e.request["quality"] for e in ledger] == ["low"] * 4 + ["high"] * 2
    assert all(o.status is AssetStatus.FINAL for o in redone.assets)
    assert evolink_env.file_request_counts["upload"] == 0  # fresh links, nothing uploaded
    assert Decimal(redone.totals.billed_usd) == ledger_usd(evolink_env)

    calls = evolink_env.request_counts
    again = redo()  # the same command once more: the finals are stored, nothing is redone
    assert evolink_env.request_counts == calls
    assert {row.task_id for row in again.jobs} == {e.task_id for e in ledger}


@pytest.mark.usefixtures("late_answers")
def test_a_plain_rerun_a_day_later_uploads_the_stored_drafts_on_local_storage(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """Day two without any flag: drafts made and stored, nobody chose in time, EvoLink forgot
    everything; the rerun picks automatically and makes each final from the stored draft,
    uploaded to the Files API: 0 new drafts, each upload deleted once its final is stored."""
    brief = drafts_nobody_chose(evolink_env, tmp_path)

    rerun = asyncio.run(run_campaign.aio(str(brief), poll_deadline_seconds=30))
    assert all(o.status is AssetStatus.FINAL for o in rerun.assets)
    ledger = evolink_env.ledger()
    assert [e.request["quality"] for e in ledger] == ["low"] * 2 + ["high"] * 2  # no new drafts
    finals = [e for e in ledger if e.request["quality"] == "high"]
    assert all(e.request["image_urls"][0].startswith(evolink_env.files_base_url) for e in finals)
    counts = evolink_env.file_request_counts
    assert counts["upload"] == 2 and counts["delete"] == 2
    assert evolink_env.service.files.live_files() == []
    assert Decimal(rerun.totals.billed_usd) == ledger_usd(evolink_env)


@pytest.mark.usefixtures("late_answers")
def test_late_approval_on_s3_makes_finals_from_the_stored_drafts(
    evolink_env: EvoLinkSimulator, s3_storage: Any, tmp_path: Path
) -> None:
    storage = s3_storage("day-two", "day-two-s3", "mkt")
    brief = brief_file(tmp_path)
    outcome = answer_late(evolink_env, brief, storage=storage)
    assert "error" not in outcome, outcome.get("error")
    manifest: CampaignManifest = outcome["manifest"]
    assert all(o.status is AssetStatus.FINAL for o in manifest.assets)
    finals = [e for e in evolink_env.ledger() if e.request["quality"] == "high"]
    assert len(finals) == 2
    assert all("Signature" in e.request["image_urls"][0] for e in finals)  # presigned drafts
    assert Decimal(manifest.totals.billed_usd) == ledger_usd(evolink_env)
    assert json.loads(json.dumps(manifest.model_dump(mode="json")))  # a plain JSON record


def test_a_charged_failure_stays_billed_after_evolink_forgot_it(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """A draft cancelled after EvoLink charged for it: the rerun a day later finds the task
    gone, pays nothing new, and the manifest still books the charge as the first run read it."""
    from evolink.simulator import Fault

    evolink_env.add_fault(Fault(kind="cancel_task", billed_fraction=0.5, match_prompt="cocoa"))
    brief = brief_file(tmp_path)

    def run() -> CampaignManifest:
        with pytest.raises(CampaignIncompleteError) as failed:
            asyncio.run(run_campaign.aio(str(brief), poll_deadline_seconds=30))
        return failed.value.manifest  # type: ignore[no-any-return]

    first = run()
    charged = [e for e in evolink_env.ledger() if e.status == "cancelled"]
    assert len(charged) == 1 and charged[0].billed_usd > 0
    assert Decimal(first.totals.billed_usd) == ledger_usd(evolink_env)

    evolink_env.age()
    creates = evolink_env.request_counts["create"]
    second = run()
    assert evolink_env.request_counts["create"] == creates  # nothing paid twice
    assert Decimal(second.totals.billed_usd) == ledger_usd(evolink_env)
    [row] = [r for r in second.jobs if r.task_id == charged[0].task_id]
    assert row.billed_usd == str(charged[0].billed_usd)


def test_an_old_simulator_record_is_not_taken_for_a_real_job(tmp_path: Path) -> None:
    """Records written before endpoints were recorded have none; one whose images came from a
    loopback host was made on the simulator, and EvoLink's own API never reuses it: its job
    gets the explicitly scoped key, while an old record of the real API is still reused."""
    from prefect import flow
    from pydantic import SecretStr

    from evolink.endpoint import DEFAULT_ENDPOINT
    from evolink.jobs import job_key, job_record_key
    from evolink.models import parse_request
    from prefect_evolink.blocks import LocalAssetStorage
    from prefect_evolink.blocks.credentials import EvoLinkCredentials
    from prefect_evolink.tasks.job import find_finished_job

    storage = LocalAssetStorage(base_dir=str(tmp_path))
    request = parse_request({"prompt": "a mug", "size": "1:1", "quality": "low"})
    real = EvoLinkCredentials(api_key=SecretStr("sk-real-0123456789abcdef"))
    old = job_key("adhoc/mug", request)
    assert real.endpoint_scope == "" and old == job_key("adhoc/mug", request, endpoint="")

    def old_record(source: str) -> dict[str, Any]:
        return {
            "job_key": old,
            "namespace": "adhoc/mug",
            "task_id": "task-unified-1-old",
            "request": {
                "model": "gpt-image-2",
                "prompt": "a mug",
                "size": "1:1",
                "quality": "low",
                "n": 1,
            },
            "estimated_usd": "0.005",
            "estimated_credits": "0.3",
            "billed_usd": "0.005",
            "billed_credits": "0.3",
            "billed_source": "usage",
            "images": [
                {
                    "index": 0,
                    "key": "k",
                    "uri": "file:///k",
                    "sha256": "0" * 64,
                    "size_bytes": 1,
                    "content_type": "image/png",
                    "width": 1024,
                    "height": 1024,
                    "source_url": source,
                }
            ],
            "submitted_at": "2026-11-01T00:00:00Z",
            "completed_at": "2026-11-01T00:01:00Z",
        }

    @flow
    async def look() -> tuple[str, Any]:
        return await find_finished_job(
            request, namespace="adhoc/mug", credentials=real, storage=storage
        )

    storage.put_json(job_record_key(old), old_record("http://127.0.0.1:8787/files/t/0.png"))
    scope, found = asyncio.run(look())
    assert (scope, found) == (DEFAULT_ENDPOINT, None)  # set aside: the real job is new

    storage.put_json(job_record_key(old), old_record("https://files.evolink.ai/t/0.png"))
    scope, found = asyncio.run(look())
    assert scope == "" and found is not None and found.task_id == "task-unified-1-old"


def test_the_campaign_summary_prints_the_artifact_keys_it_published(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A campaign name with a space and a '!' is published under a slugged key: the summary
    names that key, not the name."""
    from prefect_evolink.cli import _print_campaign
    from prefect_evolink.tasks.reporting import artifact_key
    from tests.test_spend_endpoints import campaign_manifest

    _print_campaign(campaign_manifest("Summer Sale!", []), "file:///m.json")
    out = capsys.readouterr().out
    assert f"{artifact_key('Summer Sale!', 'cost')} (table)" in out
    assert f"{artifact_key('Summer Sale!', 'cost-details')}," in out
    assert "Summer Sale!-" not in out
