"""Campaign scale (issue #12): thousands of assets per brief, a run whose memory does not grow
with its assets, every asset stored and every bill reported.

The 1,000-asset measurement is `bench/campaign_scale.py`; this file proves the properties that
make it possible, cheaply, on the in-process simulator:

- the brief takes 10,000 assets and names the ceiling past it;
- a campaign of `ASSETS` assets finishes with every asset stored and billed = reported, while
  the flow process holds work for `WORKERS` assets at a time: the asyncio tasks alive and
  Prefect's per-result bookkeeping (`FlowRunContext.run_results`) stay under bounds that do not
  depend on the number of assets (both bounds fail with one coroutine per asset, or with every
  task result kept).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.context import FlowRunContext

from evolink.brief import MAX_ASSETS, parse_brief
from evolink.campaign import AssetStatus
from evolink.errors import BriefError
from evolink.simulator import EvoLinkSimulator
from prefect_evolink.flows import campaign as campaign_flow
from prefect_evolink.tasks import campaign_progress, campaign_report

ASSETS = 200
WORKERS = 8
LIVE_TASKS_BOUND = 3 * WORKERS + 20
"""asyncio tasks alive at any asset's end: the workers, their jobs' own and Prefect's
background services (17 were seen with 8 workers) — never one per asset (> `ASSETS`)."""
TRACKED_RESULTS_BOUND = 20 * WORKERS + 100
"""Entries in Prefect's result bookkeeping: a few per job in flight (a result and each of its
fields), dropped when the job ends (`tasks/job.py`, `forget_results`); 113 were seen with 8
workers. Kept, they would pass 50 × `ASSETS` = 10,000."""


def brief_data(assets: int, **defaults: Any) -> dict[str, Any]:
    return {
        "campaign": "scale",
        "budget_usd": 1000,
        "defaults": {"drafts": 1, **defaults},
        "assets": [{"id": f"a-{i:05d}", "prompt": f"item {i}"} for i in range(assets)],
    }


def test_a_brief_takes_ten_thousand_assets_and_names_the_ceiling_past_it() -> None:
    assert len(parse_brief(brief_data(1_000)).assets) == 1_000
    assert len(parse_brief(brief_data(MAX_ASSETS)).assets) == MAX_ASSETS
    with pytest.raises(BriefError, match=r"10,001 assets; a brief holds at most 10,000"):
        parse_brief(brief_data(MAX_ASSETS + 1))


@pytest.mark.usefixtures("prefect_harness")
def test_a_large_campaign_stores_every_asset_with_flat_bookkeeping(
    simulator: EvoLinkSimulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("EVOLINK_API_KEY", simulator.api_key)
    monkeypatch.setenv("EVOLINK_BASE_URL", simulator.base_url)
    monkeypatch.setenv("EVOLINK_POLL_MIN_INTERVAL", "0.02")
    monkeypatch.setenv("EVOLINK_POLL_MAX_INTERVAL", "0.05")
    monkeypatch.setenv("EVOLINK_ASSETS_DIR", str(tmp_path / "assets"))
    simulator.generation_seconds = 0.02
    brief = tmp_path / "brief.yaml"
    brief.write_text(yaml.safe_dump(brief_data(ASSETS)))

    # Sample the process at every asset's end (the progress step), where the most is alive.
    samples: list[tuple[int, int]] = []
    updates: list[float] = []
    advance = campaign_report.Progress.advance

    async def sampling_advance(self: campaign_report.Progress, steps: int = 1) -> None:
        context = FlowRunContext.get()
        tracked = len(context.run_results) if context is not None else 0
        samples.append((len(asyncio.all_tasks()), tracked))
        await advance(self, steps)

    async def counting_update(artifact_id: Any, progress: float) -> None:
        updates.append(progress)

    monkeypatch.setattr(campaign_report.Progress, "advance", sampling_advance)
    monkeypatch.setattr(campaign_progress, "aupdate_progress_artifact", counting_update)

    manifest = asyncio.run(
        campaign_flow.run_campaign.aio(
            str(brief), max_concurrent_assets=WORKERS, poll_deadline_seconds=60
        )
    )

    # every asset has its final, and every image is in storage
    assert [o.status for o in manifest.assets] == [AssetStatus.FINAL] * ASSETS
    stored = sorted((tmp_path / "assets").rglob("image-*.png"))
    assert len(stored) == 2 * ASSETS, len(stored)
    # billed = reported, nothing paid twice
    ledger = simulator.ledger()
    assert len(ledger) == 2 * ASSETS and all(e.status == "completed" for e in ledger)
    assert len({e.task_id for e in ledger}) == len(manifest.jobs) == 2 * ASSETS
    billed = sum((Decimal(str(e.billed_usd)) for e in ledger), Decimal(0))
    assert Decimal(manifest.totals.billed_usd) == billed
    # bounded: what is alive does not grow with the number of assets
    assert len(samples) == 2 * ASSETS
    most_tasks = max(tasks for tasks, _ in samples)
    most_tracked = max(tracked for _, tracked in samples)
    assert most_tasks <= LIVE_TASKS_BOUND, most_tasks
    assert most_tracked <= TRACKED_RESULTS_BOUND, most_tracked
    late = [tracked for _, tracked in samples[-ASSETS // 4 :]]
    assert max(late) <= TRACKED_RESULTS_BOUND, late
    # the progress artifact is written per percent, not per job
    assert len(updates) <= 101 and updates[-1] == 100.0, updates
