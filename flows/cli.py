"""Command line: `python3 dev.py demo` and `python3 dev.py campaign BRIEF`.

    demo                 the example campaign (briefs/spring-launch.yaml), auto selection
    demo --single        one image job end to end
    campaign BRIEF       any brief; `--selection approval` pauses for a reviewer in the UI

With `EVOLINK_API_KEY` set (or `--credentials-block NAME`), it calls the real EvoLink API and
spends real money. Without one it starts the bundled EvoLink simulator on 127.0.0.1 and says so
loudly: the images are synthetic and nothing is billed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

# A fresh machine's first run migrates Prefect's SQLite database before the temporary API
# answers, which takes longer than Prefect's default 20 s on two cores. No telemetry: the
# machine may have no internet.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from blocks.credentials import ENV_API_KEY, ENV_BASE_URL
from blocks.storage import ENV_ASSETS_DIR
from evolink.campaign import CampaignManifest
from evolink.cost import estimate
from evolink.jobs import JobRecord
from evolink.models import InvalidRequestError, parse_request

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_BRIEF = ROOT / "briefs" / "spring-launch.yaml"
DEMO_PROMPT = (
    "Launch banner for 'Aurora' wireless earbuds: the charging case floating over a calm "
    "aurora-lit lake at dusk, generous empty space on the left for a headline, premium, minimal"
)

BANNER = """
################################################################################
#  NO EVOLINK API KEY CONFIGURED — USING THE BUNDLED LOCAL EVOLINK SIMULATOR     #
#  Images are synthetic test patterns and nothing is billed. To use the real     #
#  API:  export EVOLINK_API_KEY=sk-...   (or --credentials-block NAME)           #
################################################################################
"""


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 dev.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the example campaign (or --single: one image)")
    demo.add_argument("--single", action="store_true", help="one image job instead of a campaign")
    demo.add_argument("--prompt", default=DEMO_PROMPT)
    demo.add_argument("--size", default="16:9")
    demo.add_argument("--resolution", default="1K")
    demo.add_argument("--quality", default="low", choices=["low", "medium", "high"])
    demo.add_argument("--n", type=int, default=1)
    demo.add_argument("--job-name", default="demo-banner")
    campaign = commands.add_parser("campaign", help="run a campaign brief")
    campaign.add_argument("brief", type=Path)
    campaign.add_argument("--selection", choices=["auto", "approval"], default="auto")
    campaign.add_argument("--selector", default=None, help="package.module:function for auto")
    campaign.add_argument("--approval-timeout", type=int, default=24 * 3600, help="seconds")
    for sub in (demo, campaign):
        sub.add_argument("--credentials-block", default=None)
        sub.add_argument("--storage-block", default=None)
        sub.add_argument(
            "--assets-dir", default="assets", help="local storage when no block is named"
        )
    return parser.parse_args(argv)


def _start_simulator(stack: ExitStack) -> None:
    from evolink.simulator import EvoLinkSimulator

    simulator = stack.enter_context(EvoLinkSimulator(generation_seconds=4.0))
    os.environ[ENV_API_KEY] = simulator.api_key
    os.environ[ENV_BASE_URL] = simulator.base_url
    os.environ["EVOLINK_ALLOW_PRIVATE_URLS"] = "true"  # its result links are http://127.0.0.1
    print(BANNER, flush=True)
    print(f"Simulator listening on {simulator.base_url}\n", flush=True)


def _money(value: str | None) -> str:
    return "unknown" if value is None else f"${value}"


def _print_job(record: JobRecord) -> None:
    print("\n=== Stored images ===")
    for image in record.images:
        print(
            f"  {image.uri}\n    {image.width}x{image.height} {image.content_type}, "
            f"{image.size_bytes:,} bytes, sha256 {image.sha256}"
        )
    print("\n=== Cost ===")
    print(f"  estimated before: ${record.estimated_usd} ({record.estimated_credits} credits)")
    print(
        f"  billed after:     {_money(record.billed_usd)} ({record.billed_credits} credits)"
        f"   [task {record.task_id}]"
    )


def _print_campaign(manifest: CampaignManifest, manifest_uri: str) -> None:
    print(f"\n=== Campaign {manifest.campaign} ===")
    for outcome in manifest.assets:
        where = outcome.final.images[0].uri if outcome.final else outcome.detail
        print(f"  {outcome.asset:<16} {outcome.status.value:<14} {where}")
    totals = manifest.totals
    print("\n=== Cost ===")
    for stage, amount in sorted(totals.by_stage.items()):
        print(f"  {stage:<7} ${amount}")
    print(
        f"  total   ${totals.billed_usd} billed ({totals.billed_credits} credits); estimate was "
        f"${manifest.pre_flight_estimate_usd}; budget ${manifest.budget_usd}, "
        f"${manifest.budget_left_usd} left"
    )
    print(f"  the same finals as k high-quality variants: ${manifest.high_quality_variants_usd}")
    print(f"\nManifest: {manifest_uri}")
    key = manifest.campaign
    print(f"Artifacts: {key}-cost (table), {key}-summary, {key}-progress, {key}-<asset>-final")


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo" and args.single:
        from flows.generate import generate_image

        try:
            request = parse_request(
                {
                    "prompt": args.prompt,
                    "size": args.size,
                    "quality": args.quality,
                    "n": args.n,
                    **({"resolution": args.resolution} if args.resolution else {}),
                }
            )
        except InvalidRequestError as error:
            print(error, file=sys.stderr)
            return 2
        cost = estimate(request)
        print(
            f"Request: {request.size} {request.resolution or ''} {request.quality}, n={request.n} "
            f"→ {cost.width}x{cost.height}, estimated ${cost.usd} ({cost.credits} credits)"
        )
        record = asyncio.run(
            generate_image(
                request,
                job_name=args.job_name,
                credentials_block=args.credentials_block,
                storage_block=args.storage_block,
            )
        )
        _print_job(record)
        return 0

    from blocks.storage import load_storage
    from flows.campaign import DEFAULT_SELECTOR, manifest_key, run_campaign

    brief = EXAMPLE_BRIEF if args.command == "demo" else args.brief
    selection: Literal["auto", "approval"] = "auto" if args.command == "demo" else args.selection
    print(f"Campaign brief: {brief} (selection: {selection})")
    manifest = asyncio.run(
        run_campaign(
            str(brief),
            selection=selection,
            selector=getattr(args, "selector", None) or DEFAULT_SELECTOR,
            credentials_block=args.credentials_block,
            storage_block=args.storage_block,
            approval_timeout_seconds=getattr(args, "approval_timeout", 24 * 3600),
        )
    )
    storage = load_storage(args.storage_block)
    _print_campaign(manifest, storage.uri(manifest_key(manifest.campaign)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    with ExitStack() as stack:
        if args.credentials_block is None and not os.environ.get(ENV_API_KEY):
            _start_simulator(stack)
        else:
            print(
                f"Using the real EvoLink API at {os.environ.get(ENV_BASE_URL) or 'https://api.evolink.ai'}"
            )
        if args.storage_block is None:
            os.environ.setdefault(ENV_ASSETS_DIR, str(Path(args.assets_dir).resolve()))
        code = _run(args)
    print("\nSee runs, logs and artifacts in the Prefect UI:")
    print("  python3 dev.py run prefect server start   → http://127.0.0.1:4200 (Runs, Artifacts)")
    return code


if __name__ == "__main__":
    sys.exit(main())
