"""Benchmark 4 (issue #5): cost of draft-first (k = 4) vs. k high-quality variants.

    python3 dev.py run python bench/draft_first_cost.py            # ~30 s (a Prefect API starts)
    python3 dev.py run python bench/draft_first_cost.py --no-run   # the cost model only, instant

1. The cost model, from the plans `evolink.plans` builds for `briefs/spring-launch.yaml`:
   per asset (one of each asset type: 16:9 banner, 1:1 square, 9:16 story, 4:3 2K product shot
   with a reference image), draft-first = `draft_estimate` (k low drafts at the draft tier) +
   `final_estimate` (one final at final quality, the chosen draft as an extra reference) vs.
   `high_variants_estimate` (k variants straight at final quality). Also the whole brief for
   k = 1…10.
2. Confirmation on the simulator (billed = what its ledger charged): `run_campaign` on the
   example brief (auto selection, local storage in a temp dir, temporary Prefect API), and the
   k-high-variant requests of every asset sent to the same simulator with the bare client.
   The simulator bills by the same token formula as the estimate, so this confirms the
   plumbing (what is planned is what is sent and billed), not EvoLink's real prices.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from common import machine_line, prefect_api, print_table

from evolink.brief import CampaignBrief, load_brief
from evolink.campaign import draft_first_saving, draft_first_usd
from evolink.cost import estimate, usd
from evolink.models import ImageRequest, parse_request
from evolink.plans import AssetPlan, check_plans

EXAMPLE = Path(__file__).resolve().parents[1] / "briefs" / "spring-launch.yaml"
GOAL = Decimal("0.30")


def plans_for(brief: CampaignBrief, drafts: int | None = None) -> list[AssetPlan]:
    if drafts is not None:
        brief = brief.model_copy(
            update={"defaults": brief.defaults.model_copy(update={"drafts": drafts})}
        )
    references = {a.id: (list(a.reference_images), None) for a in brief.assets}
    return check_plans(brief, references)


def variants_request(plan: AssetPlan) -> ImageRequest:
    """The k-high-variants alternative as a request (what `high_variants_estimate` prices)."""
    fields: dict[str, Any] = {
        "prompt": plan.prompt,  # with the brand kit's lines, as every job of the asset
        "size": plan.final_size,
        "quality": plan.final_quality,
        "n": plan.draft.n,
    }
    if plan.final_resolution is not None:
        fields["resolution"] = plan.final_resolution
    if plan.reference_urls:
        fields["image_urls"] = plan.reference_urls
    request = parse_request(fields)
    assert estimate(request) == plan.high_variants_estimate, plan.asset.id
    return request


def model_tables(brief: CampaignBrief) -> None:
    plans = plans_for(brief)
    rows = []
    for p in plans:
        ours = draft_first_usd(p)
        alt = p.high_variants_estimate.usd
        rows.append(
            [
                p.asset.id,
                f"{p.draft.n} x {p.draft.quality} {p.draft_estimate.width}x"
                f"{p.draft_estimate.height}",
                usd(p.draft_estimate.usd),
                f"1 x {p.final_quality} {p.final_estimate.width}x{p.final_estimate.height}"
                f" (+{len(p.reference_urls) + 1} ref)",
                usd(p.final_estimate.usd),
                usd(ours),
                usd(alt),
                f"{ours / alt:.3f}",
                "yes" if ours / alt <= GOAL else "no",
            ]
        )
    ours_total, alt_total = draft_first_saving(plans)
    rows.append(
        [
            "**whole brief**",
            "",
            usd(sum((p.draft_estimate.usd for p in plans), Decimal(0))),
            "",
            usd(sum((p.final_estimate.usd for p in plans), Decimal(0))),
            usd(ours_total),
            usd(alt_total),
            f"**{ours_total / alt_total:.3f}**",
            "yes" if ours_total / alt_total <= GOAL else "no",
        ]
    )
    print(f"cost model, {brief.campaign} (k = {plans[0].draft.n}):")
    print_table(
        [
            "asset",
            "drafts",
            "drafts $",
            "final",
            "final $",
            "draft-first $",
            "k high variants $",
            "ratio",
            f"<= {GOAL}",
        ],
        rows,
    )

    print("\nwhole example brief for other draft counts k (drafts low 1K, finals as briefed):")
    krows = []
    for k in (1, 2, 3, 4, 6, 8, 10):
        ours, alt = draft_first_saving(plans_for(brief, k))
        krows.append([k, usd(ours), usd(alt), f"{ours / alt:.3f}"])
    print_table(["k", "draft-first $", "k high variants $", "ratio"], krows)


def simulator_run(brief_path: Path) -> None:
    """The example campaign on the simulator, then the k-high-variant requests, both billed.

    The brief runs without its adaptations (issue #21): draft-first is about drafts and finals,
    and an adaptation is a high-quality job the "finals (high)" row would count."""
    import yaml

    from evolink.client import EvoLinkClient
    from evolink.polling import PollSchedule
    from evolink.simulator import EvoLinkSimulator
    from prefect_evolink.flows.campaign import run_campaign

    work = Path(tempfile.mkdtemp(prefix="evolink-bench-cost-"))
    data = yaml.safe_load(brief_path.read_text(encoding="utf-8"))
    data.get("defaults", {}).pop("adaptations", None)
    for asset in data["assets"]:
        asset.pop("adaptations", None)
    brief_path = work / brief_path.name
    brief_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    brief = load_brief(brief_path)
    plans = plans_for(brief)
    try:
        with EvoLinkSimulator(generation_seconds=0.5, seed=5) as sim, prefect_api():
            os.environ.update(
                EVOLINK_API_KEY=sim.api_key,
                EVOLINK_BASE_URL=sim.base_url,
                EVOLINK_ASSETS_DIR=str(work / "assets"),
                EVOLINK_POLL_MIN_INTERVAL="0.1",
                EVOLINK_POLL_MAX_INTERVAL="0.5",
            )
            manifest = asyncio.run(run_campaign.aio(str(brief_path)))
            campaign_ledger = sim.ledger()

            async def variants() -> None:
                async with EvoLinkClient(sim.api_key, base_url=sim.base_url) as client:
                    fast = PollSchedule(min_interval=0.1, max_interval=0.5)
                    created = [await client.create_task(variants_request(p)) for p in plans]
                    for result in created:
                        await client.wait_for_task(result.task.id, schedule=fast)

            asyncio.run(variants())
            variant_ledger = sim.ledger()[len(campaign_ledger) :]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def billed(entries: list[Any], quality: str | None = None) -> Decimal:
        return sum(
            (e.billed_usd for e in entries if quality is None or e.request["quality"] == quality),
            Decimal(0),
        )

    drafts = billed(campaign_ledger, "low")
    finals = billed(campaign_ledger, "high")
    alt = billed(variant_ledger)
    statuses = {o.asset: o.status.value for o in manifest.assets}
    print(
        f"\nsimulator run of {brief_path.name}: {len(campaign_ledger)} campaign tasks "
        f"({sum(e.billed for e in campaign_ledger)} billed), outcomes {statuses}; "
        f"{len(variant_ledger)} k-high-variant tasks"
    )
    planned_drafts = sum((p.draft_estimate.usd for p in plans), Decimal(0))
    planned_finals = sum((p.final_estimate.usd for p in plans), Decimal(0))
    planned_alt = sum((p.high_variants_estimate.usd for p in plans), Decimal(0))
    print_table(
        ["", "planned (estimate)", "simulator billed", "manifest billed"],
        [
            [
                "drafts (low)",
                usd(planned_drafts),
                usd(drafts),
                "$" + manifest.totals.by_stage["draft"],
            ],
            [
                "finals (high)",
                usd(planned_finals),
                usd(finals),
                "$" + manifest.totals.by_stage["final"],
            ],
            [
                "draft-first total",
                usd(planned_drafts + planned_finals),
                usd(drafts + finals),
                "$" + manifest.totals.billed_usd,
            ],
            [
                "k high variants",
                usd(planned_alt),
                usd(alt),
                "$" + manifest.high_quality_variants_usd,
            ],
            [
                "ratio",
                f"{(planned_drafts + planned_finals) / planned_alt:.3f}",
                f"{(drafts + finals) / alt:.3f}",
                "",
            ],
        ],
    )
    print("(manifest 'k high variants' is the pre-flight figure the flow reports, not a bill)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brief", type=Path, default=EXAMPLE)
    parser.add_argument("--no-run", action="store_true", help="the cost model only")
    args = parser.parse_args()
    print(machine_line())
    model_tables(load_brief(args.brief))
    if not args.no_run:
        simulator_run(args.brief)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
