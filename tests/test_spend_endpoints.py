"""Simulator spend is never real spend: `prefect-evolink spend`, the spend cap and
`prefect-evolink report` keep the bundled simulator's synthetic bills apart from real ones.

Records say which API a job was made at (`SubmitRecord.endpoint`, `.simulator`, copied into the
job record and the manifest's cost rows); records older than that are the simulator's when their
images came from a loopback host (`evolink.endpoint.made_on_simulator`). The spend report adds
up the real jobs in its totals and every breakdown, sums the simulator's apart (a labelled line,
its own JSON fields and CSV row), and the cap checks the real total only.

Storage is real (`LocalAssetStorage` on disk); the lock and the flows use the session's Prefect
test API and the simulator.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from evolink.campaign import CampaignManifest, JobRow, totals
from evolink.cost import BilledCost, estimate
from evolink.endpoint import DEFAULT_ENDPOINT
from evolink.errors import SpendCapExceededError
from evolink.jobs import (
    JobRecord,
    SentRequest,
    StoredImage,
    SubmitRecord,
    job_record_key,
    submit_record_key,
)
from evolink.models import parse_request
from evolink.simulator import EvoLinkSimulator
from evolink.spend import SIMULATOR
from prefect_evolink.blocks import EvoLinkSpendCap, LocalAssetStorage
from prefect_evolink.flows.asset_requested import generate_product_asset
from prefect_evolink.flows.campaign import run_campaign
from prefect_evolink.tasks.campaign_cost import cost_summary
from prefect_evolink.tasks.recovery import manifest_key
from prefect_evolink.tasks.spend import gather_spend, reserve_spend, store_spend_report
from prefect_evolink.tasks.spend_report import CSV_COLUMNS, report_csv, summary_lines
from tests.test_spend import row

SIMULATOR_URL = "http://127.0.0.1:8787"
OCT = datetime(2026, 10, 10, 12, tzinfo=UTC)
PRODUCT_ESTIMATE = estimate(
    parse_request({"prompt": "a ceramic mug", "size": "1:1", "quality": "low"})
).usd


# --- records on disk, as the flows write them -----------------------------------------------------

Where = str | None  # the endpoint a record names; None: an old record, written without one


def image(source_url: str) -> StoredImage:
    return StoredImage(
        index=0,
        key="products/x/0.png",
        uri="file:///assets/products/x/0.png",
        sha256="0" * 64,
        size_bytes=1,
        content_type="image/png",
        width=1,
        height=1,
        source_url=source_url,
    )


def write_job(
    storage: LocalAssetStorage,
    key: str,
    namespace: str,
    *,
    billed: str,
    credits: str,
    endpoint: Where,
    simulator: bool = False,
    source_host: str = "https://files.evolink.ai",
    when: datetime = OCT,
) -> None:
    """`_jobs/<key>/submit.json` and `result.json`. With `endpoint=None` the records are written
    as before endpoints were recorded: no `endpoint` and no `simulator` field at all."""
    submit = SubmitRecord(
        job_key=key,
        namespace=namespace,
        idempotency_key=f"evl-{key}",
        task_id=f"task-{key}",
        request=SentRequest(model="gpt-image-2", prompt="p", size="1:1", quality="low", n=1),
        estimate={"usd": billed},
        submitted_at=when,
        endpoint=endpoint,
        simulator=simulator,
    )
    result = JobRecord.build(
        submit,
        estimate(parse_request({"prompt": "p", "size": "1:1", "quality": "low"})),
        BilledCost(usd=Decimal(billed), credits=Decimal(credits), source="usage.cost"),
        [image(f"{source_host}/results/{key}.png")],
        completed_at=when,
    )
    submit_data = submit.model_dump(mode="json")
    result_data = result.model_dump(mode="json")
    if endpoint is None:
        for data in (submit_data, result_data):
            del data["endpoint"], data["simulator"]
    storage.put_json(submit_record_key(key), submit_data)
    storage.put_json(job_record_key(key), result_data)


def cost_row(
    asset: str,
    stage: str,
    task: str,
    billed: str,
    *,
    endpoint: Where = DEFAULT_ENDPOINT,
    simulator: bool = False,
    earlier_run: bool = False,
) -> JobRow:
    """`tests.test_spend.row`, billed at its estimate, made at `endpoint`."""
    return row(asset, stage, task, billed, billed).model_copy(
        update={"endpoint": endpoint, "simulator": simulator, "earlier_run": earlier_run}
    )


def campaign_manifest(campaign: str, rows: list[JobRow]) -> CampaignManifest:
    return CampaignManifest(
        campaign=campaign,
        flow_run_id=None,
        started_at=OCT - timedelta(hours=1),
        finished_at=OCT + timedelta(hours=1),
        selection="auto",
        budget_usd="0",
        budget_left_usd="0",
        pre_flight_estimate_usd="1",
        high_quality_variants_usd="1",
        totals=totals(rows),
        assets=[],
        jobs=rows,
    )


def mixed_store(root: Path) -> LocalAssetStorage:
    """One real job, one the simulator marked, one old record whose image came from loopback."""
    storage = LocalAssetStorage(base_dir=str(root))
    write_job(
        storage, "real", "adhoc/hero", billed="0.02", credits="1.5", endpoint=DEFAULT_ENDPOINT
    )
    write_job(
        storage,
        "sim",
        "product/sku-sim",
        billed="0.03",
        credits="2",
        endpoint=SIMULATOR_URL,
        simulator=True,
        source_host=SIMULATOR_URL,
    )
    write_job(
        storage,
        "old",
        "adhoc/old-sim",
        billed="0.05",
        credits="4",
        endpoint=None,
        source_host="http://127.0.0.1:41234",
    )
    return storage


def gathered(storage: LocalAssetStorage, **kwargs: Any) -> Any:
    return asyncio.run(gather_spend(storage, since=None, until=None, **kwargs))


# --- the spend report -----------------------------------------------------------------------------


def test_simulator_jobs_are_summed_apart_and_labelled(tmp_path: Path) -> None:
    storage = mixed_store(tmp_path / "assets")
    raw_old = json.loads((tmp_path / "assets/_jobs/old/result.json").read_text())
    assert "endpoint" not in raw_old and "simulator" not in raw_old  # really an old record

    report = gathered(storage)

    assert report.totals.jobs == 1
    assert Decimal(report.totals.total_usd) == Decimal("0.02")
    assert Decimal(report.totals.billed_credits) == Decimal("1.5")
    assert report.simulator_totals.jobs == 2
    assert Decimal(report.simulator_totals.total_usd) == Decimal("0.08")
    assert Decimal(report.simulator_totals.billed_credits) == Decimal("6")
    # every breakdown is real spend only
    assert report.group("kind").keys() == {"adhoc"}
    assert Decimal(report.group("kind")["adhoc"].total_usd) == Decimal("0.02")
    assert report.group("product").keys() == {"-"}
    # every job is still listed, each marked
    assert {job.task_id: job.simulator for job in report.jobs} == {
        "task-real": False,
        "task-sim": True,
        "task-old": True,
    }

    lines = summary_lines(report)
    assert lines[0] == "Spend all (UTC): $0.020000 for 1 paid job(s)"
    [simulated] = [line for line in lines if line.startswith("Simulator")]
    assert simulated == (
        "Simulator (bundled simulator: synthetic, not billed by EvoLink): $0.080000 (6 credits) "
        "over 2 job(s) — not in the totals above or the tables below"
    )
    assert not any("sku-sim" in line for line in lines)


def test_the_stored_json_and_csv_keep_the_simulator_apart(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    report = gathered(mixed_store(root))
    asyncio.run(store_spend_report(report, LocalAssetStorage(base_dir=str(root))))

    stored = json.loads((root / "_reports/spend/all.json").read_text())
    assert Decimal(stored["totals"]["total_usd"]) == Decimal("0.02")
    assert stored["totals"]["jobs"] == 1
    assert Decimal(stored["simulator_totals"]["total_usd"]) == Decimal("0.08")
    assert stored["simulator_totals"]["jobs"] == 2
    assert sorted(j["task_id"] for j in stored["jobs"] if j["simulator"]) == [
        "task-old",
        "task-sim",
    ]

    text = (root / "_reports/spend/all.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)  # the columns are what they were
    assert rows[0]["dimension"] == "total" and Decimal(rows[0]["total_usd"]) == Decimal("0.02")
    [simulated] = [row for row in rows if row["dimension"] == SIMULATOR]
    assert Decimal(simulated["total_usd"]) == Decimal("0.08") and simulated["jobs"] == "2"
    assert rows[-1] == simulated  # last, after every real group
    real_groups = [row for row in rows[1:] if row["dimension"] != SIMULATOR]
    assert all(row["value"] != "sku-sim" for row in real_groups)
    assert sum(Decimal(r["total_usd"]) for r in real_groups if r["dimension"] == "kind") == (
        Decimal("0.02")
    )


def test_without_simulator_jobs_nothing_extra_is_shown(tmp_path: Path) -> None:
    storage = LocalAssetStorage(base_dir=str(tmp_path / "assets"))
    write_job(storage, "real", "adhoc/hero", billed="0.02", credits="1", endpoint=DEFAULT_ENDPOINT)
    # an old record of EvoLink's own API (its image came from a public host): real spend
    write_job(storage, "old", "adhoc/old-real", billed="0.03", credits="1", endpoint=None)

    report = gathered(storage)

    assert report.totals.jobs == 2 and Decimal(report.totals.total_usd) == Decimal("0.05")
    assert report.simulator_totals.jobs == 0
    assert not any("imulator" in line for line in summary_lines(report))
    assert all(row["dimension"] != SIMULATOR for row in _csv_rows(report))


def _csv_rows(report: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(report_csv(report))))


def test_manifest_rows_say_simulator_or_take_their_records_verdict(tmp_path: Path) -> None:
    """A row carries the flag; a row written before rows did (no endpoint) is the simulator's
    when its job record is, and real when its record is real."""
    storage = LocalAssetStorage(base_dir=str(tmp_path / "assets"))
    rows = [
        cost_row("mug", "draft", "task-c-real", "0.04"),
        cost_row("mug", "final", "task-c-sim", "0.5", endpoint=SIMULATOR_URL, simulator=True),
        cost_row("cup", "draft", "task-c-old-sim", "0.7", endpoint=None),
        cost_row("cup", "final", "task-c-old-real", "0.06", endpoint=None),
    ]
    storage.put_json(manifest_key("spring"), campaign_manifest("spring", rows))
    for key, stage, billed, host in (
        ("c-real", "mug/draft", "0.04", "https://files.evolink.ai"),
        ("c-old-sim", "cup/draft", "0.7", "http://127.0.0.1:41234"),
        ("c-old-real", "cup/final", "0.06", "https://files.evolink.ai"),
    ):
        write_job(
            storage,
            key,
            f"campaign/spring/{stage}",
            billed=billed,
            credits="1",
            endpoint=DEFAULT_ENDPOINT if key == "c-real" else None,
            source_host=host,
        )

    report = gathered(storage)

    assert {job.task_id: job.simulator for job in report.jobs} == {
        "task-c-real": False,
        "task-c-sim": True,
        "task-c-old-sim": True,
        "task-c-old-real": False,
    }
    assert {job.source for job in report.jobs} == {"manifest"}  # booked as the manifest says
    assert Decimal(report.totals.total_usd) == Decimal("0.10")
    assert Decimal(report.group("campaign")["spring"].total_usd) == Decimal("0.10")
    assert Decimal(report.group("stage")["final"].total_usd) == Decimal("0.06")
    assert Decimal(report.simulator_totals.total_usd) == Decimal("1.2")


# --- the spend cap --------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_the_cap_counts_real_spend_only(tmp_path: Path) -> None:
    """The simulator "billed" $5 this month, far over a $0.10 cap: not counted. The real
    $0.02 is, with the reservation the first run holds."""
    now = datetime.now(UTC)
    storage = LocalAssetStorage(base_dir=str(tmp_path / "assets"))
    write_job(
        storage,
        "real",
        "adhoc/hero",
        billed="0.02",
        credits="1",
        endpoint=DEFAULT_ENDPOINT,
        when=now,
    )
    write_job(
        storage,
        "sim",
        "adhoc/sim",
        billed="3",
        credits="300",
        endpoint=SIMULATOR_URL,
        simulator=True,
        source_host=SIMULATOR_URL,
        when=now,
    )
    write_job(
        storage,
        "old",
        "adhoc/old-sim",
        billed="2",
        credits="200",
        endpoint=None,
        source_host="http://127.0.0.1:41234",
        when=now,
    )
    cap = EvoLinkSpendCap(limit_usd=Decimal("0.10"))

    first = asyncio.run(reserve_spend(cap, storage, Decimal("0.05"), "product first"))

    assert first.reservation is not None
    with pytest.raises(SpendCapExceededError) as refused:
        asyncio.run(reserve_spend(cap, storage, Decimal("0.04"), "product second"))
    text = str(refused.value)
    assert "spent so far $0.020000 + $0.050000 reserved by 1 running run(s)" in text, text
    asyncio.run(first.release())
    second = asyncio.run(reserve_spend(cap, storage, Decimal("0.08"), "product second"))
    assert second.reservation is not None  # 0.02 real + 0.08 fits; the $5 never counted
    asyncio.run(second.release())


@pytest.mark.usefixtures("prefect_harness")
def test_jobs_run_on_the_simulator_never_fill_a_real_cap(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    """The same two runs that a cap of 1.5 estimates refuses the second of when the spend is
    real (test_spend.py) both pass on the simulator, and the report keeps their bills apart."""
    cap = EvoLinkSpendCap(limit_usd=PRODUCT_ESTIMATE * 3 / 2)
    for product_id in ("sim-first", "sim-second"):
        asyncio.run(
            generate_product_asset.aio(
                product_id=product_id,
                prompt="a ceramic mug",
                quality="low",
                poll_deadline_seconds=30,
                spend_cap=cap,
            )
        )
    assert evolink_env.request_counts["create"] == 2
    submits = [json.loads(p.read_text()) for p in assets_dir.glob("_jobs/*/submit.json")]
    assert [s["simulator"] for s in submits] == [True, True]

    report = gathered(LocalAssetStorage(base_dir=str(assets_dir)))

    assert report.totals.jobs == 0 and Decimal(report.totals.total_usd) == 0
    billed = sum((entry.billed_usd for entry in evolink_env.billed_tasks()), Decimal(0))
    assert report.simulator_totals.jobs == 2
    assert Decimal(report.simulator_totals.total_usd) == billed > 0


# --- `prefect-evolink report CAMPAIGN` ------------------------------------------------------------


def test_the_campaign_report_shows_simulator_and_real_totals_apart() -> None:
    rows = [
        cost_row("mug", "draft", "t1", "0.01", earlier_run=True),
        cost_row("mug", "final", "t2", "0.20"),
        cost_row("cup", "draft", "t3", "0.5", endpoint=SIMULATOR_URL, simulator=True),
    ]
    lines = cost_summary(campaign_manifest("mixed", rows))

    assert (
        "  total   $0.210000 billed (2 credits) for 2 paid job(s), 1 of them paid in earlier runs"
        in (lines)
    )
    assert (
        "  simulator $0.500000 billed (1 credits) for 1 paid job(s) (bundled simulator: "
        "synthetic, nothing billed by EvoLink) — not in the total above"
    ) in lines
    assert "  final   $0.200000" in lines and "  draft   $0.010000" in lines  # real by stage
    assert any(line.endswith("; simulator") and "task t3" in line for line in lines)


def test_a_campaign_made_on_the_simulator_says_so_on_its_total() -> None:
    rows = [cost_row("mug", "draft", "t1", "0.01", endpoint=SIMULATOR_URL, simulator=True)]
    lines = cost_summary(campaign_manifest("simulated", rows))
    [total] = [line for line in lines if line.startswith("  total")]
    assert total == (
        "  total   $0.010000 billed (1 credits) for 1 paid job(s) (bundled simulator: synthetic, "
        "nothing billed by EvoLink)"
    )
    real = cost_summary(campaign_manifest("real", [cost_row("mug", "draft", "t1", "0.01")]))
    assert "  total   $0.010000 billed (1 credits) for 1 paid job(s)" in real
    assert not any("simulator" in line for line in real)


@pytest.mark.usefixtures("prefect_harness")
def test_a_campaign_run_on_the_simulator_is_booked_and_reported_as_such(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    brief = tmp_path / "sim-campaign.yaml"
    brief.write_text(
        yaml.safe_dump(
            {
                "campaign": "sim-campaign",
                "budget_usd": 1.0,
                "defaults": {"drafts": 1},
                "assets": [{"id": "mug", "prompt": "a ceramic mug of cocoa on a wooden table"}],
            }
        )
    )
    manifest = asyncio.run(run_campaign.aio(str(brief), poll_deadline_seconds=30))

    assert manifest.jobs and all(row.simulator for row in manifest.jobs)
    [total] = [line for line in cost_summary(manifest) if line.startswith("  total")]
    assert total.endswith("(bundled simulator: synthetic, nothing billed by EvoLink)"), total
    report = gathered(LocalAssetStorage(base_dir=str(assets_dir)))
    assert report.totals.jobs == 0 and report.group("campaign") == {}
    assert report.simulator_totals.jobs == len(manifest.jobs)
    assert Decimal(report.simulator_totals.total_usd) == Decimal(manifest.totals.billed_usd)
