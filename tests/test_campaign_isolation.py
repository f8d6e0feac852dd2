"""Issue 10: a campaign never dies of one asset, and its manifest always exists.

On the simulator, with two assets of the example brief (social-square, story-vertical): an
outage during every kind of call the flow makes — create, poll, the chosen draft's link lookup,
download, storage — longer than the client's own attempts for one asset (recovered by the
step's task-level retry) and longer than the task retries too for the other (that asset fails,
the other finishes). Then a selector that raises, a run that fails or is cancelled mid-way, and
a run killed by SIGKILL whose manifest is rebuilt from the job records (function and CLI).
Every time: the manifest is written and what it says was billed is what the simulator billed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
from botocore.exceptions import ClientError
from pydantic import Field, SecretStr

from bench.harness.fault_matrix import (
    CAMPAIGN,
    QUICK_ASSETS,
    SOCIAL,
    STORY,
    prefect_api_url,
    write_brief,
)
from evolink.brief import AssetBrief
from evolink.campaign import AssetStatus, CampaignManifest
from evolink.cost import usd
from evolink.errors import CampaignIncompleteError
from evolink.jobs import JOBS_PREFIX, StoredImage
from evolink.simulator import EvoLinkSimulator, Fault, LedgerEntry
from prefect_evolink import cli
from prefect_evolink.blocks import EvoLinkCredentials, LocalAssetStorage, StoredObject
from prefect_evolink.flows import campaign_stages
from prefect_evolink.flows.campaign import CampaignRun, manifest_key, run_campaign
from prefect_evolink.tasks.recovery import rebuild_campaign

pytestmark = pytest.mark.usefixtures("prefect_harness")

CLIENT_ATTEMPTS = 2  # EvoLinkCredentials.max_attempts in these tests
RECOVERED = CLIENT_ATTEMPTS + 1  # past the client's attempts: the step's retry gets through
EXHAUSTED = CLIENT_ATTEMPTS * 3  # every attempt of all 3 task runs (EVOLINK_TASK_RETRY_DELAYS)
HERE = __name__  # the module as pytest imported it: selectors are loaded from it by path


def credentials(sim: EvoLinkSimulator) -> EvoLinkCredentials:
    return EvoLinkCredentials(
        api_key=SecretStr(sim.api_key),
        base_url=sim.base_url,
        max_attempts=CLIENT_ATTEMPTS,
        poll_min_interval=0.05,
        poll_max_interval=0.2,
    )


def billed(ledger: list[LedgerEntry]) -> Decimal:
    return sum((Decimal(str(e.billed_usd)) for e in ledger), Decimal(0))


def run(brief: Path, sim: EvoLinkSimulator, storage: LocalAssetStorage, **kw: Any) -> Any:
    return run_campaign(
        str(brief),
        credentials=credentials(sim),
        storage=storage,
        poll_deadline_seconds=30,
        **kw,
    )


def run_incomplete(
    brief: Path, sim: EvoLinkSimulator, storage: LocalAssetStorage, **kw: Any
) -> CampaignIncompleteError:
    with pytest.raises(CampaignIncompleteError) as info:
        asyncio.run(run(brief, sim, storage, **kw))
    return info.value


def stored_manifest(storage: LocalAssetStorage) -> CampaignManifest:
    data = storage.get_json(manifest_key(CAMPAIGN))
    assert data is not None, "no manifest was written"
    return CampaignManifest.model_validate(data)


def outcome(manifest: CampaignManifest, asset: str) -> Any:
    return next(o for o in manifest.assets if o.asset == asset)


def statuses(manifest: CampaignManifest) -> list[tuple[str, AssetStatus, str]]:
    return [(o.asset, o.status, o.detail) for o in manifest.assets]


def check_books(manifest: CampaignManifest, sim: EvoLinkSimulator) -> None:
    """What the manifest says was billed is what the simulator billed, task by task."""
    ledger = sim.ledger()
    assert manifest.totals.unknown_bills == 0, manifest.jobs
    assert Decimal(manifest.totals.billed_usd) == billed(ledger), (manifest.totals, ledger)
    paid = {e.task_id: e.billed_usd for e in ledger if e.billed_usd}
    rows = {r.task_id: Decimal(r.billed_usd or "0") for r in manifest.jobs}
    assert {t: rows.get(t) for t in paid} == paid


# --- storage that fails ----------------------------------------------------------------------

_PUT_FILE_FAILURES: dict[str, int] = {}


class OutageLocalStorage(LocalAssetStorage):
    """Local storage whose image uploads fail like a busy S3 (ClientError SlowDown, retryable):
    `failures` times per key for keys under the campaign's asset folders listed there."""

    _block_type_name: ClassVar[str | None] = "Test Outage Local Storage"
    _block_type_slug: ClassVar[str | None] = "test-outage-local-storage"

    failures: dict[str, int] = Field(default_factory=dict, description="asset → per-key failures")

    def put_file(self, key: str, path: Path, *, content_type: str, metadata: Any) -> StoredObject:
        asset = key.split("/")[1] if key.count("/") >= 2 else ""
        book = f"{self.base_dir}:{key}"
        if _PUT_FILE_FAILURES.get(book, 0) < self.failures.get(asset, 0):
            _PUT_FILE_FAILURES[book] = _PUT_FILE_FAILURES.get(book, 0) + 1
            raise ClientError(
                {"Error": {"Code": "SlowDown", "Message": "injected storage outage"}}, "PutObject"
            )
        return super().put_file(key, path, content_type=content_type, metadata=metadata)


# --- selectors, loaded by the flow from this module -------------------------------------------

_ARM: dict[str, Any] = {}


def arming_selector(asset: AssetBrief, drafts: list[StoredImage]) -> int | None:
    """Picks the first draft, and arms the faults waiting for this asset's selection first: the
    next request for its prompt is the chosen draft's link lookup."""
    sim: EvoLinkSimulator = _ARM["sim"]
    for fault in _ARM.get(asset.id, []):
        sim.add_fault(fault)
    if "generation_seconds" in _ARM:
        sim.generation_seconds = _ARM["generation_seconds"]
    return drafts[0].index


def picky_selector(asset: AssetBrief, drafts: list[StoredImage]) -> int | None:
    if asset.id == "story-vertical":
        raise ValueError("no draft of story-vertical is good enough (a selector bug)")
    return drafts[0].index


@pytest.fixture
def brief(tmp_path: Path) -> Path:
    return write_brief(tmp_path, assets=QUICK_ASSETS)


@pytest.fixture
def storage(tmp_path: Path) -> LocalAssetStorage:
    return LocalAssetStorage(base_dir=str(tmp_path / "assets"))


@pytest.fixture(autouse=True)
def _clean_selector_state() -> Iterator[None]:
    yield
    _ARM.clear()


# --- the outage, call by call ---------------------------------------------------------------

OUTAGES: dict[str, tuple[Fault, Fault]] = {
    # (the recovered asset's fault, the failing asset's fault)
    "create": (
        Fault(kind="server_error", route="create", times=RECOVERED, match_prompt=SOCIAL),
        Fault(kind="server_error", route="create", times=None, match_prompt=STORY),
    ),
    "poll": (
        Fault(kind="server_error", route="get", status=502, times=RECOVERED, match_prompt=SOCIAL),
        Fault(kind="server_error", route="get", status=502, times=EXHAUSTED, match_prompt=STORY),
    ),
    "draft-lookup": (
        Fault(kind="server_error", route="get", status=500, times=RECOVERED, match_prompt=SOCIAL),
        Fault(kind="server_error", route="get", status=500, times=EXHAUSTED, match_prompt=STORY),
    ),
    "download": (
        Fault(kind="server_error", route="download", times=RECOVERED, match_prompt=SOCIAL),
        Fault(kind="server_error", route="download", times=None, match_prompt=STORY),
    ),
}


@pytest.mark.parametrize("call", [*OUTAGES, "storage"])
def test_an_outage_fails_one_asset_and_the_others_finish(
    call: str,
    simulator: EvoLinkSimulator,
    tmp_path: Path,
    brief: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = simulator
    storage: LocalAssetStorage = LocalAssetStorage(base_dir=str(tmp_path / "assets"))
    kw: dict[str, Any] = {}
    if call == "storage":
        storage = OutageLocalStorage(
            base_dir=str(tmp_path / "assets"),
            failures={"social-square": 1, "story-vertical": 10**6},
        )
    elif call == "draft-lookup":  # armed when each asset's draft is chosen
        # as when the review outlasted the links the drafts' polls returned: looked up again
        monkeypatch.setattr(campaign_stages, "DRAFT_LINK_REUSE_SECONDS", 0.0)
        _ARM.update({"sim": sim, "social-square": [OUTAGES[call][0]]})
        _ARM["story-vertical"] = [OUTAGES[call][1]]
        kw["selector"] = f"{HERE}:arming_selector"
    else:
        sim.add_faults(OUTAGES[call])

    error = run_incomplete(brief, sim, storage, **kw)

    manifest = stored_manifest(storage)
    assert error.manifest is not None and error.manifest_uri is not None
    assert error.manifest.totals == manifest.totals and error.manifest_uri.endswith(
        manifest_key(CAMPAIGN)
    )
    assert manifest.run_state == "failed"
    social, story = outcome(manifest, "social-square"), outcome(manifest, "story-vertical")
    assert social.status is AssetStatus.FINAL, social
    assert story.status is AssetStatus.FAILED, story
    expected = "ClientError" if call == "storage" else "ServerError"
    assert expected in story.detail and story.error, story
    assert story.error_type == (
        "PaidJobNotStoredError" if call in ("download", "storage") else expected
    ), story
    assert story.detail.startswith("final:" if call == "draft-lookup" else "draft:"), story.detail
    check_books(manifest, sim)

    if call == "storage":
        assert _PUT_FILE_FAILURES, "the storage outage never happened"
    else:  # the recovered asset's outage outlasted the client's own attempts
        recovered, failing = sim.faults
        assert recovered.fired == RECOVERED and recovered.times == 0, recovered
        assert failing.fired >= EXHAUSTED, failing
    stories = [e for e in sim.ledger() if STORY in e.request["prompt"]]
    if call == "create":  # nothing was created, but the attempt is on record
        assert stories == []
        [unknown] = manifest.submissions_unknown
        assert (unknown.asset, unknown.stage) == ("story-vertical", "draft")
    else:  # its draft was billed and is booked, with why its images are missing (or its final)
        assert [e.request["quality"] for e in stories] == ["low"]
        assert [r.stage for r in manifest.jobs if r.asset == "story-vertical"] == ["draft"]
        assert manifest.submissions_unknown == []

    # the same books, rebuilt from the job records alone (EvoLink asked for missing bills)
    rebuilt = asyncio.run(rebuild_campaign(CAMPAIGN, storage, credentials(sim), write=False))
    check_books(rebuilt.manifest, sim)
    assert rebuilt.manifest.submissions_unknown == manifest.submissions_unknown
    assert statuses(rebuilt.manifest) == statuses(manifest)


def test_a_selector_that_raises_fails_its_asset_only(
    simulator: EvoLinkSimulator, brief: Path, storage: LocalAssetStorage
) -> None:
    error = run_incomplete(brief, simulator, storage, selector=f"{HERE}:picky_selector")
    manifest = stored_manifest(storage)
    story = outcome(manifest, "story-vertical")
    assert story.status is AssetStatus.FAILED and story.error_type == "ValueError"
    assert story.detail.startswith("selection: ValueError: no draft of story-vertical"), story
    assert story.drafts is not None  # its drafts were paid for and are kept
    assert outcome(manifest, "social-square").status is AssetStatus.FINAL
    assert "story-vertical" in str(error)
    check_books(manifest, simulator)
    assert [e.request["quality"] for e in simulator.ledger()].count("high") == 1
    rebuilt = asyncio.run(rebuild_campaign(CAMPAIGN, storage, None, write=False)).manifest
    assert rebuilt.totals == manifest.totals and statuses(rebuilt) == statuses(manifest)


# --- a run that fails or is cancelled mid-way ------------------------------------------------


def test_a_run_failing_unexpectedly_still_writes_its_manifest(
    simulator: EvoLinkSimulator,
    brief: Path,
    storage: LocalAssetStorage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: CampaignRun, selector: Any) -> None:
        raise RuntimeError("boom between the stages")

    monkeypatch.setattr(CampaignRun, "auto_select", broken)
    with pytest.raises(RuntimeError, match="boom") as info:
        asyncio.run(run(brief, simulator, storage))
    manifest = stored_manifest(storage)
    assert manifest.run_state == "failed"
    assert any(manifest_key(CAMPAIGN) in note for note in info.value.__notes__)
    for o in manifest.assets:
        assert o.status is AssetStatus.FAILED and o.error_type == "RuntimeError", o
        assert o.detail == "selection: the run failed: RuntimeError: boom between the stages", o
    assert [r.stage for r in manifest.jobs] == ["draft", "draft"]
    check_books(manifest, simulator)


def test_a_cancelled_run_writes_its_manifest_then_the_records_complete_it(
    simulator: EvoLinkSimulator, brief: Path, storage: LocalAssetStorage
) -> None:
    sim = simulator
    _ARM.update({"sim": sim, "generation_seconds": 2.0})  # finals take long enough to cancel

    async def cancel_mid_finals() -> None:
        flow = asyncio.ensure_future(run(brief, sim, storage, selector=f"{HERE}:arming_selector"))
        deadline = time.monotonic() + 60
        while not flow.done() and time.monotonic() < deadline:
            finals = [e for e in sim.ledger() if e.request["quality"] == "high"]
            submitted = list(Path(storage.base_dir, JOBS_PREFIX).glob("*/submit.json"))
            if len(finals) == 2 and len(submitted) == 4:
                break
            await asyncio.sleep(0.02)
        flow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flow

    asyncio.run(cancel_mid_finals())
    manifest = stored_manifest(storage)
    ledger = sim.ledger()
    assert manifest.run_state == "cancelled"
    assert {e.status for e in ledger if e.request["quality"] == "high"} <= {"pending", "processing"}
    for o in manifest.assets:
        assert o.status is AssetStatus.CANCELLED and o.error_type == "CancelledError", o
        assert o.detail.startswith("final: the run was cancelled"), o
    # drafts billed, finals booked with their bill unknown (counted at estimate), none dropped
    assert {r.task_id for r in manifest.jobs} == {e.task_id for e in ledger}
    known = [r for r in manifest.jobs if r.billed_usd is not None]
    assert [r.stage for r in known] == ["draft", "draft"] and manifest.totals.unknown_bills == 2
    assert sum((Decimal(r.billed_usd or 0) for r in known), Decimal(0)) == billed(ledger)

    # once the finals have finished at EvoLink, the records and EvoLink's bills settle the books
    deadline = time.monotonic() + 30
    while any(e.status != "completed" for e in sim.ledger()) and time.monotonic() < deadline:
        time.sleep(0.1)
    rebuilt = asyncio.run(rebuild_campaign(CAMPAIGN, storage, credentials(sim)))
    check_books(rebuilt.manifest, sim)
    assert rebuilt.manifest.run_state == "cancelled" and rebuilt.manifest.rebuilt_at is not None
    assert stored_manifest(storage) == rebuilt.manifest


# --- a run killed by the OS --------------------------------------------------------------------

CHILD = (
    "import asyncio, sys\n"
    "from prefect_evolink.flows.campaign import run_campaign\n"
    "asyncio.run(run_campaign.aio(sys.argv[1], poll_deadline_seconds=60))\n"
)


def test_a_killed_run_is_rebuilt_from_its_records_to_what_was_billed(
    evolink_env: EvoLinkSimulator,
    brief: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = evolink_env
    sim.add_fault(Fault(kind="slow_task", seconds=3, match_prompt=STORY))
    assets = tmp_path / "assets"
    jobs = assets / JOBS_PREFIX
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api_url(),
        "EVOLINK_ASSETS_DIR": str(assets),
    }
    log = tmp_path / "child.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(brief)],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            # kill once social-square's drafts are stored and billed while story-vertical's
            # (slow) are still generating — no create in flight: finals wait for every draft
            deadline = time.monotonic() + 90
            while True:
                results = list(jobs.glob("*/result.json")) if jobs.is_dir() else []
                submits = list(jobs.glob("*/submit.json")) if jobs.is_dir() else []
                if results and len(submits) == len(sim.ledger()) == 2:
                    break
                assert child.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(30)
        finally:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait(30)
    assert child.returncode == -signal.SIGKILL
    storage = LocalAssetStorage(base_dir=str(assets))
    left_behind = stored_manifest(storage)
    assert left_behind.run_state == "running" and left_behind.jobs == []  # its checkpoint

    # offline (EvoLink not asked): the unfinished draft is booked at its estimate, not dropped
    offline = asyncio.run(rebuild_campaign(CAMPAIGN, storage, None, write=False)).manifest
    assert len(offline.jobs) == 2 and offline.totals.unknown_bills == 1
    assert outcome(offline, "story-vertical").status is AssetStatus.PENDING

    while any(e.status != "completed" for e in sim.ledger()):
        time.sleep(0.1)  # the killed run's last task still finishes, and is billed
    assert cli.main(["report", CAMPAIGN, "--assets-dir", str(assets)]) == 0
    printed = capsys.readouterr().out
    rebuilt = stored_manifest(storage)
    check_books(rebuilt, sim)
    assert rebuilt.run_state == "unfinished" and rebuilt.rebuilt_at is not None
    assert f"Manifest rebuilt from the job records: {storage.uri(manifest_key(CAMPAIGN))}" in (
        printed
    )
    assert f"total   {usd(rebuilt.totals.billed_usd)} billed" in printed, printed
    story = outcome(rebuilt, "story-vertical")
    assert story.status is AssetStatus.PENDING and "no result record" in story.detail, story
    assert outcome(rebuilt, "social-square").detail == "drafts stored; no final job in the records"
