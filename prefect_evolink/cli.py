"""The `prefect-evolink` command (also `python -m prefect_evolink`, and `python3 dev.py …`).

    prefect-evolink demo                 the example campaign, auto selection
    prefect-evolink demo --single        one image job end to end
    prefect-evolink campaign BRIEF       any brief; `--selection approval` pauses for a reviewer
    prefect-evolink simulator            the bundled EvoLink simulator on 127.0.0.1:8787
    prefect-evolink deploy               work pool, provider limits and deployments (prefect.yaml)

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
from importlib.resources import as_file, files
from pathlib import Path
from typing import Literal

# A fresh machine's first run migrates Prefect's SQLite database before the temporary API
# answers, which takes longer than Prefect's default 20 s on two cores. No telemetry: the
# machine may have no internet.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from evolink.campaign import CampaignManifest
from evolink.cost import estimate, usd
from evolink.errors import InvalidRequestError
from evolink.jobs import JobRecord
from evolink.models import parse_request
from prefect_evolink.blocks import ENV_ASSETS_DIR
from prefect_evolink.blocks.credentials import ENV_API_KEY, ENV_BASE_URL

PROG = "prefect-evolink"
EXAMPLE_BRIEF = files("prefect_evolink.briefs") / "spring-launch.yaml"
"""The example brief ships inside the package, so `demo` works from any directory."""
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
        prog=PROG,
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
    commands.add_parser(
        "deploy", help="work pool, limits, deployments (prefect-evolink deploy --help)"
    )
    commands.add_parser(
        "simulator",
        help="the bundled EvoLink simulator (all options: prefect-evolink simulator --help)",
        add_help=False,
    )
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


def _print_job(record: JobRecord) -> None:
    print("\n=== Stored images ===")
    for image in record.images:
        print(
            f"  {image.uri}\n    {image.width}x{image.height} {image.content_type}, "
            f"{image.size_bytes:,} bytes, sha256 {image.sha256}"
        )
    print("\n=== Cost ===")
    print(f"  estimated before: {usd(record.estimated_usd)} ({record.estimated_credits} credits)")
    print(
        f"  billed after:     {usd(record.billed_usd)} ({record.billed_credits} credits)"
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
        print(f"  {stage:<7} {usd(amount)}")
    print(
        f"  total   {usd(totals.billed_usd)} billed ({totals.billed_credits} credits); "
        f"estimate was {usd(manifest.pre_flight_estimate_usd)}; "
        f"budget {usd(manifest.budget_usd)}, {usd(manifest.budget_left_usd)} left"
    )
    variants = usd(manifest.high_quality_variants_usd)
    print(f"  the same finals as k high-quality variants: {variants}")
    print(f"\nManifest: {manifest_uri}")
    key = manifest.campaign
    print(f"Artifacts: {key}-cost (table), {key}-summary, {key}-progress, {key}-<asset>-final")


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo" and args.single:
        from prefect_evolink.flows.generate import generate_image

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
            f"→ {cost.width}x{cost.height}, estimated {usd(cost.usd)} ({cost.credits} credits)"
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

    from prefect_evolink.blocks import load_storage
    from prefect_evolink.flows.campaign import DEFAULT_SELECTOR, manifest_key, run_campaign

    selection: Literal["auto", "approval"] = "auto" if args.command == "demo" else args.selection
    with ExitStack() as files_open:
        if args.command == "demo":
            brief = files_open.enter_context(as_file(EXAMPLE_BRIEF))
        else:
            brief = args.brief
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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulator"]:  # its own options, parsed by the simulator itself
        from evolink.simulator.__main__ import main as simulator_main

        return simulator_main(argv[1:])
    if argv[:1] == ["deploy"]:
        from prefect_evolink.deployments.setup import main as deploy_main

        return deploy_main(argv[1:])
    args = _arguments(argv)
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
    print(f"  {_ui_hint()}")
    return code


def _ui_hint() -> str:
    """Where this run's UI is: the configured API's server, or how to start a local one."""
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if api_url:
        return f"{str(api_url).removesuffix('/').removesuffix('/api')} (Runs, Artifacts)"
    return "prefect server start   → http://127.0.0.1:4200 (Runs, Artifacts)"


if __name__ == "__main__":
    sys.exit(main())
