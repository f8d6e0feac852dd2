"""Spend across runs (`evolink/spend.py`, `tasks/spend.py`, `tasks/spend_report.py`,
`flows/spend.py`) and the spend cap (`EvoLinkSpendCap`): the report adds up the manifests and the
job records in storage, each EvoLink task once; a capped run refuses before it sends anything;
two runs starting at once cannot both pass a cap only one fits.

On the simulator, with the session's Prefect test API where a flow or the lock is involved.
What the simulator bills is synthetic and never real spend (`tests/test_spend_endpoints.py`);
the tests here that need spend to count use it as a stand-in for a billing API
(`simulator_as_billing_api`).
"""

from __future__ import annotations

import asyncio
import csv
import inspect
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import prefect.testing.standard_test_suites.blocks as standard_blocks
import pytest
import yaml
from prefect import Flow
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect.utilities.callables import parameter_schema

import evolink.client
from evolink.campaign import CampaignManifest, JobRow, totals
from evolink.cost import estimate
from evolink.errors import SpendCapExceededError
from evolink.jobs import JobRecord, SentRequest, SubmitRecord
from evolink.layout import spend_lock_key
from evolink.models import parse_request
from evolink.simulator import EvoLinkSimulator, Fault
from evolink.spend import (
    NO_DEPLOYMENT,
    UNKNOWN,
    BillNote,
    JobFiles,
    Reservation,
    RunOrigin,
    build_report,
    collect_jobs,
    held_reservations,
    parse_bound,
    period_window,
    previous_period,
    window_label,
    zone,
)
from prefect_evolink import cli
from prefect_evolink.blocks import EvoLinkSpendCap, LocalAssetStorage, S3AssetStorage
from prefect_evolink.flows.asset_requested import generate_product_asset
from prefect_evolink.flows.campaign import run_campaign
from prefect_evolink.flows.generate import generate_image
from prefect_evolink.flows.spend import report_window, spend_report
from prefect_evolink.tasks import spend as spend_tasks
from prefect_evolink.tasks import spend_cap as spend_cap_tasks
from prefect_evolink.tasks.spend import (
    SPEND_CAP_LIMIT,
    gather_spend,
    reservation_key,
    run_origin,
)
from prefect_evolink.tasks.spend_report import report_csv
from tests.conftest import artifacts_with_prefix

ROOT = Path(__file__).resolve().parents[1]
BERLIN = zone("Europe/Berlin")
PRODUCT_ESTIMATE = estimate(
    parse_request({"prompt": "a ceramic mug", "size": "1:1", "quality": "low"})
).usd


# --- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def simulator_as_billing_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator as a stand-in for a billing API: its replies still carry its header, but
    the client looks for one nobody sends, so its jobs are recorded like those of any other
    endpoint — real spend, as the totals and the cap tests below need. (Jobs it is known to
    have made are summed apart and never count against a cap: test_spend_endpoints.py.)"""
    monkeypatch.setattr(evolink.client, "SIMULATOR_HEADER", "x-no-such-header")


def small_brief(tmp_path: Path, name: str = "spend-campaign", budget: float = 1.0) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "campaign": name,
                "budget_usd": budget,
                "defaults": {"drafts": 1},
                "assets": [
                    {"id": "mug", "prompt": "a ceramic mug of cocoa on a wooden table"},
                    {"id": "cup", "prompt": "a paper cup of coffee on a park bench"},
                ],
            }
        )
    )
    return path


def product(product_id: str, **kwargs: Any) -> Any:
    return asyncio.run(
        generate_product_asset.aio(
            product_id=product_id,
            prompt="a ceramic mug",
            quality="low",
            poll_deadline_seconds=30,
            **kwargs,
        )
    )


def report_of(assets_dir: Path, **kwargs: Any) -> Any:
    storage = LocalAssetStorage(base_dir=str(assets_dir))
    return asyncio.run(gather_spend(storage, since=None, until=None, **kwargs))


def stored_json(root: Path, pattern: str) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(root.glob(pattern))]


def request(prompt: str = "p", quality: str = "low") -> SentRequest:
    return SentRequest(model="gpt-image-2", prompt=prompt, size="1:1", quality=quality, n=1)


def submit(
    key: str, namespace: str, task: str, estimate: str, when: datetime, quality: str = "low"
) -> SubmitRecord:
    return SubmitRecord(
        job_key=key,
        namespace=namespace,
        idempotency_key=f"evl-{key}",
        task_id=task,
        request=request(quality=quality),
        estimate={"usd": estimate},
        submitted_at=when,
    )


def result(sub: SubmitRecord, billed: str | None) -> JobRecord:
    return JobRecord(
        job_key=sub.job_key,
        namespace=sub.namespace,
        task_id=sub.task_id,
        request=sub.request,
        estimated_usd=str(sub.estimate["usd"]),
        estimated_credits="0",
        billed_usd=billed,
        billed_credits=None if billed is None else "1",
        billed_source="test",
        images=[],
        submitted_at=sub.submitted_at,
        completed_at=sub.submitted_at,
    )


def row(asset: str, stage: str, task: str, estimate: str, billed: str | None) -> JobRow:
    return JobRow(
        asset=asset,
        stage=stage,
        quality="low",
        pixel_size="1x1",
        images=1,
        output_tokens=0,
        image_input_tokens=0,
        text_input_tokens=0,
        estimated_usd=estimate,
        billed_usd=billed,
        billed_credits=None if billed is None else "1",
        task_id=task,
        duration_s=1.0,
        stored_at=[],
    )


def manifest(campaign: str, rows: list[JobRow], when: datetime) -> CampaignManifest:
    return CampaignManifest(
        campaign=campaign,
        flow_run_id=None,
        started_at=when,
        finished_at=when + timedelta(hours=1),
        selection="auto",
        budget_usd="10",
        budget_left_usd="9",
        pre_flight_estimate_usd="1",
        high_quality_variants_usd="1",
        totals=totals(rows),
        assets=[],
        jobs=rows,
    )


# --- the sums, on records made by hand ------------------------------------------------------------

OCT = datetime(2026, 10, 10, 12, tzinfo=UTC)
NOV = datetime(2026, 11, 3, 12, tzinfo=UTC)


def test_each_task_counts_once_manifest_rows_first_then_the_records() -> None:
    """A campaign job is in its manifest and in the records: counted once, as the manifest
    books it; an unknown bill the result record knows is taken from there; other jobs come
    from their records; a failed uncharged job and a job the finished manifest settled drop
    out; a submit-only job of no manifest is an unknown bill counted at its estimate."""
    draft = submit("k1", "campaign/spring/mug/draft", "t1", "0.01", OCT)
    final = submit("k2", "campaign/spring/mug/final", "t2", "0.20", OCT)
    settled = submit("k3", "campaign/spring/cup/draft", "t3", "0.01", OCT)  # failed uncharged
    older = submit("k4", "campaign/spring/old/final", "t4", "0.30", OCT)  # an older brief's
    adhoc = submit("k5", "adhoc/hero", "t5", "0.05", NOV)
    failed = submit("k6", "product/sku-1", "t6", "0.04", NOV)
    pending = submit("k7", "product/sku-2", "t7", "0.04", NOV)
    jobs = {
        "k1": JobFiles("k1", draft, RunOrigin(flow_run_id="r1"), result(draft, "0.011")),
        "k2": JobFiles("k2", final, None, result(final, "0.25")),
        "k3": JobFiles("k3", settled, None),
        "k4": JobFiles("k4", older, None, result(older, "0.31")),
        "k5": JobFiles("k5", adhoc, RunOrigin(deployment="evolink-generate-image/x")),
        "k6": JobFiles(
            "k6",
            failed,
            None,
            bill=BillNote(
                job_key="k6", task_id="t6", status="failed", billed_usd="0", billed_credits="0"
            ),
        ),
        "k7": JobFiles("k7", pending, RunOrigin()),
    }
    rows = [row("mug", "draft", "t1", "0.01", "0.011"), row("mug", "final", "t2", "0.20", None)]
    manifests = {"spring": manifest("spring", rows, OCT - timedelta(hours=1))}

    counted = {job.task_id: job for job in collect_jobs(manifests, jobs)}

    assert sorted(counted) == ["t1", "t2", "t4", "t5", "t7"]
    assert counted["t1"].source == "manifest" and counted["t1"].billed_usd == "0.011"
    assert counted["t2"].source == "result" and counted["t2"].billed_usd == "0.25"
    assert counted["t4"].campaign == "spring" and counted["t4"].source == "result"
    assert counted["t5"].billed_usd is None and counted["t5"].source == "submit"
    assert counted["t5"].deployment == "evolink-generate-image/x"
    assert counted["t7"].deployment == NO_DEPLOYMENT
    assert counted["t2"].deployment == UNKNOWN  # a record from before origins were recorded
    assert (counted["t1"].kind, counted["t7"].kind, counted["t7"].product) == (
        "campaign",
        "product",
        "sku-2",
    )

    report = build_report(list(counted.values()), since=None, until=None)
    assert report.totals.jobs == 5
    assert report.totals.unknown_bills == 2  # t5, t7
    assert Decimal(report.totals.total_usd) == Decimal("0.011") + Decimal("0.25") + Decimal(
        "0.31"
    ) + Decimal("0.05") + Decimal("0.04")
    assert Decimal(report.totals.drift_usd) == Decimal("0.011") - Decimal("0.01") + Decimal(
        "0.05"
    ) + Decimal("0.01")
    assert report.group("month").keys() == {"2026-10", "2026-11"}
    assert report.group("stage").keys() == {"draft", "final", "single"}
    october = build_report(
        list(counted.values()),
        since=parse_bound("2026-10", BERLIN, end=False),
        until=parse_bound("2026-10", BERLIN, end=True),
        timezone="Europe/Berlin",
    )
    assert october.period == "2026-10" and october.totals.jobs == 3
    assert Decimal(october.group("campaign")["spring"].total_usd) == Decimal("0.571")
    lines = list(csv.DictReader(io.StringIO(report_csv(october))))
    assert lines[0]["dimension"] == "total" and lines[0]["total_usd"] == "0.571"
    assert {line["dimension"] for line in lines[1:]} >= {"campaign", "deployment", "quality"}


def test_periods_bounds_and_labels() -> None:
    assert period_window(NOV, "month", BERLIN).label == "2026-11"
    assert period_window(datetime(2026, 10, 31, 23, 30, tzinfo=UTC), "month", BERLIN).label == (
        "2026-11"  # already November in Berlin
    )
    assert period_window(NOV, "week", BERLIN).label == "2026-W45"
    assert period_window(NOV, "day", BERLIN).label == "2026-11-03"
    assert previous_period(datetime(2027, 1, 1, 5, tzinfo=UTC), "month", BERLIN).label == "2026-12"
    start, end = report_window(
        None, None, "Europe/Berlin", now=datetime(2026, 11, 1, 5, tzinfo=UTC)
    )
    assert (start, end) == (
        datetime(2026, 10, 1, tzinfo=BERLIN),
        datetime(2026, 11, 1, tzinfo=BERLIN),
    )
    assert window_label(start, end, BERLIN) == "2026-10"
    since = parse_bound("2026-10-01", BERLIN, end=False)
    until = parse_bound("2026-10-15", BERLIN, end=True)
    assert until == datetime(2026, 10, 16, tzinfo=BERLIN)
    assert window_label(since, until, BERLIN) == "2026-10-01_2026-10-15"
    assert window_label(None, None, BERLIN) == "all"
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_bound("last tuesday", BERLIN, end=False)
    with pytest.raises(ValueError, match="time zone"):
        zone("Mars/Olympus")


def test_reservations_count_until_released_expired_ended_or_replaced() -> None:
    now = NOV

    def reservation(run: str, usd: str, **changes: Any) -> Reservation:
        fields: dict[str, Any] = {
            "reservation_id": run,
            "flow_run_id": run,
            "label": f"run {run}",
            "period": "2026-11",
            "estimated_usd": usd,
            "reserved_at": now - timedelta(hours=1),
            "expires_at": now + timedelta(hours=1),
        }
        return Reservation(**{**fields, **changes})

    sub = submit("k", "product/p", "t", "0.30", now)
    jobs = collect_jobs({}, {"k": JobFiles("k", sub, RunOrigin(flow_run_id="r2"))})
    held = held_reservations(
        [
            reservation("r1", "1.00"),
            reservation("r2", "0.50"),  # its run already recorded 0.30 of it
            reservation("r3", "1.00", released_at=now),
            reservation("r4", "1.00", expires_at=now),
            reservation("r5", "1.00"),  # its flow run ended
            reservation("me", "1.00"),  # the checking run's own
        ],
        jobs,
        now=now,
        ended_runs={"r5"},
        exclude="me",
    )
    assert {h.reservation.reservation_id: h.held_usd for h in held} == {"r1": "1.00", "r2": "0.20"}


# --- the report of real runs ----------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness", "simulator_as_billing_api")
def test_report_totals_are_the_manifests_plus_the_other_jobs_records(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """A campaign (its jobs in its manifest and in the records), run twice (the rerun reuses
    every job), a product job, an ad-hoc job, and a product job that failed uncharged: the
    totals are the manifest's plus the other jobs' records, no task is counted twice, and they
    equal what the simulator billed."""
    brief = small_brief(tmp_path)
    first = asyncio.run(run_campaign.aio(str(brief), poll_deadline_seconds=30))
    again = asyncio.run(run_campaign.aio(str(brief), poll_deadline_seconds=30))
    assert [r.task_id for r in again.jobs] == [r.task_id for r in first.jobs]
    product("spend-sku")
    asyncio.run(
        generate_image.aio(
            parse_request({"prompt": "a teapot", "size": "1:1", "quality": "low"}),
            job_name="spend-adhoc",
            poll_deadline_seconds=30,
        )
    )
    evolink_env.add_fault(
        Fault(kind="fail_task", error_code="content_policy_violation", match_prompt="forbidden")
    )
    with pytest.raises(Exception, match="content_policy_violation"):
        asyncio.run(
            generate_product_asset.aio(
                product_id="spend-refused",
                prompt="a forbidden mug",
                quality="low",
                poll_deadline_seconds=30,
            )
        )

    report = report_of(assets_dir)

    manifests = stored_json(assets_dir, "*/manifest.json")
    assert [m["campaign"] for m in manifests] == ["spend-campaign"]
    results = stored_json(assets_dir, "_jobs/*/result.json")
    others = [r for r in results if not r["namespace"].startswith("campaign/")]
    expected = sum((Decimal(m["totals"]["billed_usd"]) for m in manifests), Decimal(0)) + sum(
        (Decimal(r["billed_usd"]) for r in others), Decimal(0)
    )
    assert Decimal(report.totals.total_usd) == expected
    billed = sum((entry.billed_usd for entry in evolink_env.billed_tasks()), Decimal(0))
    assert Decimal(report.totals.total_usd) == billed
    task_ids = [job.task_id for job in report.jobs]
    assert len(task_ids) == len(set(task_ids)) == len(first.jobs) + 2
    campaign_tasks = {r["task_id"] for r in results if r["namespace"].startswith("campaign/")}
    assert campaign_tasks == {r.task_id for r in first.jobs}  # in both: counted once
    assert report.totals.unknown_bills == 0
    assert report.group("kind").keys() == {"campaign", "product", "adhoc"}
    assert Decimal(report.group("campaign")["spend-campaign"].total_usd) == Decimal(
        first.totals.billed_usd
    )
    assert set(report.group("product")) == {"-", "spend-sku"}  # the refused one cost nothing
    assert report.group("deployment").keys() == {NO_DEPLOYMENT}
    assert {job.source for job in report.jobs} == {"manifest", "result"}
    # the refused job left a bill note: failed, not charged
    [note] = stored_json(assets_dir, "_jobs/*/bill.json")
    assert note["status"] == "failed" and note["billed_usd"] in (None, "0")


@pytest.mark.usefixtures("prefect_harness")
def test_old_records_say_unknown_and_new_ones_name_the_flow_run(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    state = asyncio.run(
        generate_product_asset.aio(
            product_id="origin-sku",
            prompt="a ceramic mug",
            quality="low",
            poll_deadline_seconds=30,
            return_state=True,
        )
    )
    [path] = assets_dir.glob("_jobs/*/submit.json")
    data = json.loads(path.read_text())
    assert data["origin"] == {
        "flow_run_id": str(state.state_details.flow_run_id),
        "flow": "evolink-product-asset",
        "deployment": None,
    }
    [job] = report_of(assets_dir).jobs
    assert job.deployment == NO_DEPLOYMENT and job.flow_run_id == data["origin"]["flow_run_id"]
    del data["origin"]  # as written before this change
    path.write_text(json.dumps(data))
    [job] = report_of(assets_dir).jobs
    assert job.deployment == UNKNOWN and job.flow_run_id is None


@pytest.mark.usefixtures("prefect_harness")
def test_the_origin_names_the_deployment_of_a_deployed_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client

    async def make() -> uuid.UUID:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("evolink-product-asset")
            return await client.create_deployment(flow_id=flow_id, name=f"d-{uuid.uuid4().hex[:6]}")

    deployment_id = asyncio.run(make())
    run_id = uuid.uuid4()
    context = SimpleNamespace(
        flow_run=SimpleNamespace(id=run_id, deployment_id=deployment_id),
        flow=SimpleNamespace(name="evolink-product-asset"),
    )
    monkeypatch.setattr(spend_tasks, "FlowRunContext", SimpleNamespace(get=lambda: context))
    origin = asyncio.run(run_origin())
    assert origin["flow_run_id"] == str(run_id)
    assert origin["deployment"].startswith("evolink-product-asset/d-")


@pytest.mark.usefixtures("prefect_harness", "simulator_as_billing_api")
def test_the_flow_stores_csv_and_json_and_publishes_stable_artifacts(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    product("report-sku")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    report = asyncio.run(spend_report.aio(since=today, until=today))
    assert report.period == f"{today}_{today}" and report.totals.jobs == 1
    base = assets_dir / "_reports" / "spend" / report.period
    stored = json.loads(base.with_suffix(".json").read_text())
    assert stored["totals"] == report.totals.model_dump(mode="json")
    lines = list(csv.DictReader(io.StringIO(base.with_suffix(".csv").read_text())))
    assert lines[0]["total_usd"] == report.totals.total_usd
    artifacts = asyncio.run(artifacts_with_prefix("evolink-spend%"))
    assert {"evolink-spend", "evolink-spend-summary"} <= set(artifacts)
    assert "unknown bills" in artifacts["evolink-spend-summary"].data
    # with neither bound: the previous month, which here holds nothing
    last_month = asyncio.run(spend_report.aio())
    assert last_month.totals.jobs == 0 and len(last_month.period) == 7


# --- the cap --------------------------------------------------------------------------------------


def saved_cap(limit: Decimal, name: str | None = None) -> str:
    name = name or f"cap-{uuid.uuid4().hex[:8]}"
    EvoLinkSpendCap(limit_usd=limit, period="month").save(name, overwrite=True)
    return name


@pytest.mark.usefixtures("prefect_harness", "simulator_as_billing_api")
def test_a_job_over_the_cap_is_refused_before_anything_is_sent(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    cap = saved_cap(PRODUCT_ESTIMATE * 3 / 2)
    product("cap-first", spend_cap=EvoLinkSpendCap.load(cap))  # fits: spent 0 + estimate
    with pytest.raises(SpendCapExceededError) as refused:
        product("cap-second", spend_cap=EvoLinkSpendCap.load(cap))
    text = str(refused.value)
    assert f"spend cap '{cap}'" in text
    assert f"spent so far ${PRODUCT_ESTIMATE:.6f}" in text
    assert f"product/cap-second ${PRODUCT_ESTIMATE:.6f}" in text
    assert "estimate check with reservations" in text
    assert evolink_env.request_counts["create"] == 1
    # the first run's reservation was released when it ended
    [reservation] = stored_json(assets_dir, "_reports/spend/reservations/*/*.json")
    assert reservation["released_at"] is not None
    # a rerun of a job already sent only reattaches: no check, nothing new paid
    product("cap-first", spend_cap=EvoLinkSpendCap.load(cap))
    assert evolink_env.request_counts["create"] == 1


@pytest.mark.usefixtures("prefect_harness")
def test_a_campaign_over_the_cap_sends_nothing_and_writes_no_manifest(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    brief = small_brief(tmp_path, "capped-campaign")
    with pytest.raises(SpendCapExceededError, match="the estimate of campaign capped-campaign"):
        asyncio.run(
            run_campaign.aio(
                str(brief),
                poll_deadline_seconds=30,
                spend_cap=EvoLinkSpendCap(limit_usd=Decimal("0.01")),
            )
        )
    assert evolink_env.request_counts.get("create", 0) == 0
    assert not (assets_dir / "capped-campaign" / "manifest.json").exists()
    manifest = asyncio.run(
        run_campaign.aio(
            str(brief), poll_deadline_seconds=30, spend_cap=EvoLinkSpendCap(limit_usd=1)
        )
    )
    assert [o.status.value for o in manifest.assets] == ["final", "final"]
    [reservation] = stored_json(assets_dir, "_reports/spend/reservations/*/*.json")
    assert reservation["label"] == "campaign capped-campaign"
    assert reservation["released_at"] is not None


@pytest.mark.usefixtures("prefect_harness")
def test_a_running_runs_reservation_counts_against_the_cap(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    storage = LocalAssetStorage(base_dir=str(assets_dir))
    window = period_window(datetime.now(UTC), "month", zone("UTC"))
    now = datetime.now(UTC)
    held = Reservation(
        reservation_id="other-run",
        flow_run_id=None,  # not a flow run the API knows: held until it expires
        label="campaign elsewhere",
        period=window.label,
        estimated_usd="0.01",
        reserved_at=now,
        expires_at=now + timedelta(hours=1),
    )
    storage.put_json(reservation_key(window.label, "other-run"), held)
    cap = EvoLinkSpendCap(limit_usd=Decimal("0.012"))
    with pytest.raises(SpendCapExceededError, match=r"reserved by 1 running run\(s\) \(campaign"):
        product("held-sku", spend_cap=cap)
    assert evolink_env.request_counts.get("create", 0) == 0
    storage.put_json(
        reservation_key(window.label, "other-run"), held.model_copy(update={"expires_at": now})
    )
    product("held-sku", spend_cap=cap)  # an expired reservation no longer counts
    assert evolink_env.request_counts["create"] == 1


@dataclass
class Race:
    states: list[Any]
    peak_inside: int  # most runs inside the check-and-reserve at once
    overlapped: bool  # the second run tried to enter while the first was inside


def race(
    monkeypatch: pytest.MonkeyPatch,
    cap: EvoLinkSpendCap,
    *,
    locked: bool,
    storage: LocalAssetStorage | S3AssetStorage | None = None,
) -> Race:
    """Two product runs of one process start at once (on `storage`, else the local default).
    The first to reach the check holds it (up to 20 s) until the other has tried to take the
    lock, so their checks overlap for sure — unless the lock keeps the second out. (Flow runs
    that start together on the SQLite test API do not start at the same moment: one is often
    answered 503 and retries after about 2 s.)"""
    real_lock, real_read = spend_cap_tasks.spend_cap_lock, spend_cap_tasks.cap_spend
    attempts: list[float] = []
    seen = {"inside": 0, "peak": 0, "overlapped": False}

    @asynccontextmanager
    async def watched_lock(*args: Any, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        if locked:
            async with real_lock(*args, **kwargs):
                yield
        else:
            yield

    async def held_read(*args: Any, **kwargs: Any) -> Any:
        seen["inside"] += 1
        seen["peak"] = max(seen["peak"], seen["inside"])
        try:
            found = await real_read(*args, **kwargs)
            deadline = time.monotonic() + 20
            while len(attempts) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if len(attempts) == 2 and seen["inside"] == 1 and not seen["overlapped"]:
                seen["overlapped"] = True
            await asyncio.sleep(0.5)  # the other run, if it got in, reads the spend meanwhile
            return found
        finally:
            seen["inside"] -= 1

    monkeypatch.setattr(spend_cap_tasks, "spend_cap_lock", watched_lock)
    monkeypatch.setattr(spend_cap_tasks, "cap_spend", held_read)

    async def both() -> list[Any]:
        return await asyncio.gather(
            *(
                generate_product_asset(
                    product_id=f"race-{which}",
                    prompt="a ceramic mug",
                    quality="low",
                    poll_deadline_seconds=30,
                    spend_cap=cap,
                    storage=storage,
                    return_state=True,
                )
                for which in ("a", "b")
            )
        )

    states = asyncio.run(both())
    return Race(states, seen["peak"], bool(seen["overlapped"]))


@pytest.mark.usefixtures("prefect_harness", "simulator_as_billing_api")
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_at_once_cannot_both_pass_a_cap_only_one_fits(
    evolink_env: EvoLinkSimulator,
    assets_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_storage: Callable[[str, str], S3AssetStorage],
    where: str,
) -> None:
    """On local storage the lock is a file lock (the cross-process race is below); on S3 the
    global concurrency limit `evolink-spend-cap`, created when missing."""
    storage = s3_storage("spend-race", "spend-race") if where == "s3" else None
    cap = EvoLinkSpendCap(limit_usd=PRODUCT_ESTIMATE * 3 / 2)
    result = race(monkeypatch, cap, locked=True, storage=storage)
    assert result.overlapped and result.peak_inside == 1
    completed = [s for s in result.states if s.is_completed()]
    refused = [s for s in result.states if s.is_failed()]
    assert len(completed) == 1 and len(refused) == 1, result.states
    with pytest.raises(SpendCapExceededError, match="over the cap; nothing was sent"):
        asyncio.run(refused[0].result())
    assert evolink_env.request_counts["create"] == 1
    if where == "local":
        assert (assets_dir / spend_lock_key()).is_file()
        return

    async def limit() -> Any:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await client.read_global_concurrency_limit_by_name(SPEND_CAP_LIMIT)

    assert asyncio.run(limit()).limit == 1  # created when missing, one slot


@pytest.mark.usefixtures("prefect_harness", "simulator_as_billing_api")
def test_without_the_lock_the_same_race_lets_both_through(
    evolink_env: EvoLinkSimulator, assets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the lock prevents, so the test above would catch a missing lock."""
    cap = EvoLinkSpendCap(limit_usd=PRODUCT_ESTIMATE * 3 / 2)
    result = race(monkeypatch, cap, locked=False)
    assert result.peak_inside == 2
    assert all(s.is_completed() for s in result.states), result.states
    assert evolink_env.request_counts["create"] == 2


@dataclass
class ProcessRace:
    outcomes: list[dict[str, Any]]  # each racer's: passed, refusal, the most racers inside at once

    @property
    def passed(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome["passed"])

    @property
    def peak_inside(self) -> int:
        return max(outcome["peak_inside"] for outcome in self.outcomes)


def process_race(tmp_path: Path, *, locked: bool, racers: int = 3) -> ProcessRace:
    """`racers` separate Python processes (`tests/spend_race.py`) reserve against one local
    storage and one cap at once, each as a capped product does (`reserve_spend`); the cap fits
    one estimate and a half. The racers start together, and the first inside the check holds it
    until every other has asked for the lock, so their checks overlap for sure — unless the
    lock keeps them out. Generous deadlines: only events are waited for."""
    base, meeting = tmp_path / "shared-assets", tmp_path / "meeting"
    meeting.mkdir()
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    names = [f"r{index}" for index in range(racers)]
    cap_usd = str(PRODUCT_ESTIMATE * 3 / 2)
    mode = "locked" if locked else "unlocked"

    def racer(name: str) -> list[str]:
        return [sys.executable, "-m", "tests.spend_race", str(base), str(meeting), name]

    processes = [
        subprocess.Popen(
            [*racer(name), str(racers), cap_usd, str(PRODUCT_ESTIMATE), mode],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]
    try:
        deadline = time.monotonic() + 180
        while not all((meeting / f"ready-{name}").exists() for name in names):
            failed = [p for p in processes if p.poll() not in (None, 0)]
            assert not failed, failed[0].communicate()[0]
            assert time.monotonic() < deadline, "the racers did not start"
            time.sleep(0.05)
        (meeting / "go").touch()
        for process in processes:
            output = process.communicate(timeout=180)[0]
            assert process.returncode == 0, output
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return ProcessRace(
        [json.loads((meeting / f"result-{name}.json").read_text()) for name in names]
    )


def test_processes_sharing_a_local_storage_cannot_both_pass_a_cap_only_one_fits(
    tmp_path: Path,
) -> None:
    """The file lock across processes (task workers sharing a local storage): one passes, the
    others are refused, and no two were inside the check at once. No Prefect API is involved."""
    result = process_race(tmp_path, locked=True)
    assert result.passed == 1 and result.peak_inside == 1, result.outcomes
    refusals = [o["refusal"] for o in result.outcomes if not o["passed"]]
    assert len(refusals) == 2 and all("reserved by 1 running run(s)" in r for r in refusals)
    assert (tmp_path / "shared-assets" / spend_lock_key()).is_file()


def test_without_the_lock_processes_sharing_a_local_storage_all_pass(tmp_path: Path) -> None:
    """What the file lock prevents, so the test above would catch a lock that does not hold
    across processes."""
    result = process_race(tmp_path, locked=False)
    assert result.peak_inside == 3 and result.passed == 3, result.outcomes


# --- the block, the forms, the CLI ----------------------------------------------------------------


@pytest.fixture
def logos_from_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_blocks import _local_logo

    monkeypatch.setattr(
        standard_blocks, "urlopen", lambda url: io.BytesIO(_local_logo(str(url)).read_bytes())
    )


@pytest.mark.usefixtures("logos_from_repository")
class TestEvoLinkSpendCapStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return EvoLinkSpendCap


def test_the_cap_block_has_its_logo_example_and_described_fields() -> None:
    from PIL import Image

    from tests.test_blocks import _local_logo

    path = _local_logo(str(EvoLinkSpendCap._logo_url))
    assert path.name == "evolink-spend-cap.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (128, 128)
    example = EvoLinkSpendCap.get_code_example() or ""
    first = example.split("```python\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert first == [
        "from prefect_evolink.blocks import EvoLinkSpendCap",
        "",
        'spend_cap = EvoLinkSpendCap.load("BLOCK_NAME")',
    ]
    doc = inspect.getdoc(EvoLinkSpendCap) or ""
    for name in EvoLinkSpendCap.model_fields:
        assert f"\n    {name}: " in doc.split("Attributes:", 1)[1]
    with pytest.raises(ValueError, match="time zone"):
        EvoLinkSpendCap(limit_usd=1, timezone="Nowhere/Else")
    with pytest.raises(ValueError):
        EvoLinkSpendCap(limit_usd=0)


@pytest.mark.parametrize(
    "candidate", [generate_image, generate_product_asset, run_campaign], ids=lambda f: f.name
)
def test_capped_flows_offer_a_spend_cap_picker(candidate: Flow[Any, Any]) -> None:
    schema = parameter_schema(candidate.fn).model_dump()
    field = schema["properties"]["spend_cap"]
    refs = [item["$ref"] for item in field.get("anyOf", [field]) if "$ref" in item]
    slugs = {schema["definitions"][ref.rsplit("/", 1)[1]].get("block_type_slug") for ref in refs}
    assert slugs == {"evolink-spend-cap"}
    assert "spend_cap_block" not in schema["properties"]  # one way to pass a block: the picker
    assert inspect.signature(candidate.fn).parameters["spend_cap"].default is None


def test_the_monthly_report_is_deployed_on_the_first_in_berlin() -> None:
    config = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    [deployment] = [d for d in config["deployments"] if d["name"] == "monthly-spend-report"]
    assert deployment["entrypoint"] == "prefect_evolink.flows.spend:spend_report"
    assert deployment["schedules"] == [
        {"cron": "0 6 1 * *", "timezone": "Europe/Berlin", "active": True}
    ]
    assert deployment["parameters"]["timezone"] == "Europe/Berlin"
    assert "since" not in deployment["parameters"]  # → the previous month


def test_a_refused_cap_is_the_budget_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    error = SpendCapExceededError("spend cap 'monthly' of $1.000000 for 2026-11: …")
    assert cli._fail(error, cli.argparse.Namespace(debug=False)) == cli.EXIT_BUDGET
    assert capsys.readouterr().err.startswith("prefect-evolink: budget: spend cap 'monthly'")


@pytest.fixture
def records_dir(tmp_path: Path) -> Iterator[Path]:
    """Job records of an ad-hoc job and a product job, written as the flows write them."""
    root = tmp_path / "records"
    storage = LocalAssetStorage(base_dir=str(root))
    when = datetime(2026, 10, 5, 9, tzinfo=UTC)
    for key, namespace, billed in (("a1", "adhoc/hero", "0.02"), ("p1", "product/sku-9", None)):
        sub = submit(key, namespace, f"task-{key}", "0.02", when)
        storage.put_json(f"_jobs/{key}/submit.json", sub.model_dump(mode="json"))
        if billed:
            storage.put_json(
                f"_jobs/{key}/result.json", result(sub, billed).model_dump(mode="json")
            )
    yield root


def run_spend(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m prefect_evolink spend …` as a user runs it: no Prefect API, no key."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "EVOLINK_"))
    }
    environ.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return subprocess.run(
        [sys.executable, "-m", "prefect_evolink", "spend", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def test_the_spend_command_prints_and_stores_the_report(records_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    home.mkdir()
    done = run_spend(
        home, "--since", "2026-10", "--until", "2026-10", "--assets-dir", str(records_dir)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Spend 2026-10 (UTC): $0.040000 for 2 paid job(s)" in done.stdout
    assert "unknown bills: 1" in done.stdout
    assert "product/" not in done.stdout and "sku-9" in done.stdout
    stored = json.loads((records_dir / "_reports/spend/2026-10.json").read_text())
    assert stored["totals"]["unknown_bills"] == 1
    assert (records_dir / "_reports/spend/2026-10.csv").is_file()
    bad = run_spend(home, "--since", "someday", "--assets-dir", str(records_dir))
    assert bad.returncode == cli.EXIT_INVALID and "invalid input" in bad.stderr, bad
    assert "Traceback" not in bad.stderr
