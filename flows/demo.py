"""`python3 dev.py demo`: one GPT Image 2 job end to end, on this machine.

With `EVOLINK_API_KEY` set (or `--credentials-block NAME`), it calls the real EvoLink API and
spends real (small) money. Without one it starts the bundled EvoLink simulator on 127.0.0.1 and
says so loudly: the images are synthetic and nothing is billed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import ExitStack
from pathlib import Path

# A fresh machine's first run migrates Prefect's SQLite database before the temporary API
# answers, which takes longer than Prefect's default 20 s on two cores. No telemetry: the
# machine may have no internet.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from blocks.credentials import ENV_API_KEY, ENV_BASE_URL  # noqa: E402
from evolink.cost import estimate  # noqa: E402
from evolink.jobs import JobRecord  # noqa: E402
from evolink.models import InvalidRequestError, parse_request  # noqa: E402

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
    parser = argparse.ArgumentParser(prog="python3 dev.py demo", description=__doc__)
    parser.add_argument("--prompt", default=DEMO_PROMPT)
    parser.add_argument("--size", default="16:9")
    parser.add_argument("--resolution", default="1K")
    parser.add_argument("--quality", default="low", choices=["low", "medium", "high"])
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--job-name", default="demo-banner")
    parser.add_argument("--credentials-block", default=None)
    parser.add_argument("--storage-block", default=None)
    parser.add_argument("--assets-dir", default="assets", help="local storage when no block is named")
    return parser.parse_args(argv)


def _start_simulator(stack: ExitStack) -> None:
    from evolink.simulator import EvoLinkSimulator

    simulator = stack.enter_context(EvoLinkSimulator(generation_seconds=4.0))
    os.environ[ENV_API_KEY] = simulator.api_key
    os.environ[ENV_BASE_URL] = simulator.base_url
    os.environ["EVOLINK_ALLOW_PRIVATE_URLS"] = "true"  # its links are http://127.0.0.1
    print(BANNER, flush=True)
    print(f"Simulator listening on {simulator.base_url}\n", flush=True)


def _print_result(record: JobRecord) -> None:
    print("\n=== Stored images ===")
    for image in record.images:
        print(f"  {image.uri}\n    {image.width}x{image.height} {image.content_type}, "
              f"{image.size_bytes:,} bytes, sha256 {image.sha256}")
    billed = "unknown" if record.billed_usd is None else f"${record.billed_usd} ({record.billed_credits} credits)"
    print("\n=== Cost ===")
    print(f"  estimated before: ${record.estimated_usd} ({record.estimated_credits} credits)")
    print(f"  billed after:     {billed}   [task {record.task_id}]")
    print("\nSee the run, its cost table and summary artifacts in the Prefect UI:")
    print("  python3 dev.py run prefect server start   → http://127.0.0.1:4200 (Runs, Artifacts)")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        request = parse_request(
            {"prompt": args.prompt, "size": args.size, "quality": args.quality, "n": args.n,
             **({"resolution": args.resolution} if args.resolution else {})}
        )
    except InvalidRequestError as error:
        print(error, file=sys.stderr)
        return 2
    cost = estimate(request)
    print(f"Request: {request.size} {request.resolution or ''} {request.quality}, n={request.n} "
          f"→ {cost.width}x{cost.height}, estimated ${cost.usd} ({cost.credits} credits)")

    with ExitStack() as stack:
        if args.credentials_block is None and not os.environ.get(ENV_API_KEY):
            _start_simulator(stack)
        else:
            print(f"Using the real EvoLink API at {os.environ.get(ENV_BASE_URL) or 'https://api.evolink.ai'}")
        if args.storage_block is None:
            os.environ.setdefault("EVOLINK_ASSETS_DIR", str(Path(args.assets_dir).resolve()))
        from flows.generate import generate_image

        record = asyncio.run(
            generate_image(
                request,
                job_name=args.job_name,
                credentials_block=args.credentials_block,
                storage_block=args.storage_block,
            )
        )
    _print_result(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
