"""The `prefect-evolink` command (also `python -m prefect_evolink`, and `python3 dev.py …`).

    prefect-evolink demo                 the example campaign, auto selection
    prefect-evolink demo --single        one image job end to end
    prefect-evolink campaign BRIEF       any brief; `--selection approval` pauses for a reviewer
                                         (of the adaptations too: `--adaptation-selection approval`)
    prefect-evolink simulator            the bundled EvoLink simulator on 127.0.0.1:8787
    prefect-evolink deploy               work pool, provider limits and deployments (prefect.yaml)
    prefect-evolink brief put BRIEF      check a brief and put it into the storage block, where
                                         deployed runs read it (`storage:briefs/<name>.yaml`)
    prefect-evolink report CAMPAIGN      rebuild a campaign's manifest from its job records, print
                                         its cost (also after a killed run; sends no job)
    prefect-evolink spend                what storage says EvoLink billed across runs, by campaign,
                                         deployment, product, month, stage and quality
    prefect-evolink callbacks --port N   the callback receiver: EvoLink callbacks, confirmed
                                         with the API, become Prefect events

With `EVOLINK_API_KEY` set (or `--credentials-block NAME`), it calls the real EvoLink API and
spends real money. Without one it starts the bundled EvoLink simulator on 127.0.0.1 and says so
loudly: the images are synthetic and nothing is billed.

Before any Prefect server or API is involved, `demo` and `campaign` validate the brief (or the
request), check the estimate against the brief's budget, and — with credentials from the
environment — check that the EvoLink API answers at all. An expected failure ends with one short
message on stderr and its exit code, without a traceback (Prefect's console log lines of the
failed run lose theirs too; the run's logs in the Prefect API keep them); `--debug` prints the
traceback.

Exit codes:

    0  done: every asset got its final (or the single job stored its images)
    1  unexpected error (a bug, or an API error not listed here); --debug shows the traceback
    2  invalid input: the brief or request breaks a rule (BriefError, InvalidRequestError,
       HostError, an API 400), or a command-line usage error
    3  budget: the estimate is over the brief's budget (BudgetExceededError; nothing was sent),
       the period's spend + reservations + the estimate is over the spend cap
       (SpendCapExceededError; nothing was sent), or the account is out of credits (HTTP 402)
    4  credentials: none configured, the named credentials block does not exist
       (MissingCredentialsError), or the API refused the key (HTTP 401/403)
    5  EvoLink API unreachable: connection refused, DNS failure or timeout (APIConnectionError)
    6  partly failed: a campaign ended without every final (CampaignIncompleteError; the
       manifest, the bill and what was stored are printed), or the single job failed at EvoLink
       (TaskFailedError — failed or cancelled —, PaidJobNotStoredError, PollDeadlineExceeded)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import ExitStack
from importlib.resources import as_file
from pathlib import Path
from typing import Any, Literal

from prefect_evolink._cli_settings import missing_cli_defaults

# Prefect fixes its settings when it is first imported, so the command's defaults for them (the
# startup timeout of its temporary server, no telemetry: prefect_evolink/_cli_settings.py) go into
# the environment first. Nothing imported above imports Prefect; `--help` and the checks that
# run before any flow do not import it at all.
os.environ.update(missing_cli_defaults(os.environ))

from evolink.brief import load_brief
from evolink.campaign import CampaignManifest
from evolink.cost import estimate, usd
from evolink.endpoint import DEFAULT_BASE_URL
from evolink.errors import (
    APIConnectionError,
)
from evolink.jobs import JobRecord
from evolink.models import parse_request
from prefect_evolink.commands import brief as brief_command
from prefect_evolink.commands import callbacks as callbacks_command
from prefect_evolink.commands import files as files_command
from prefect_evolink.commands import report as report_command
from prefect_evolink.commands import serve_products as serve_products_command
from prefect_evolink.commands import spend as spend_command
from prefect_evolink.commands.brief import EXAMPLE_BRIEF, check_brief
from prefect_evolink.commands.outcome import (
    ENV_API_KEY,
    ENV_ASSETS_DIR,
    ENV_BASE_URL,
    ENV_FILES_BASE_URL,
    EXIT_BUDGET,
    EXIT_CREDENTIALS,
    EXIT_INCOMPLETE,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNEXPECTED,
    EXIT_UNREACHABLE,
    EXPECTED_FAILURES,
    PROG,
    fail,
    print_campaign,
    print_job,
    quiet_prefect_tracebacks,
)
from prefect_evolink.commands.stored import storage_arguments

# Names reached as `prefect_evolink.cli.<name>` before the commands got modules of their own.
__all__ = [
    "ENV_API_KEY",
    "ENV_ASSETS_DIR",
    "ENV_BASE_URL",
    "EXIT_BUDGET",
    "EXIT_CREDENTIALS",
    "EXIT_INCOMPLETE",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_UNEXPECTED",
    "EXIT_UNREACHABLE",
    "EXPECTED_FAILURES",
    "SIMULATOR_STATE_DIR",
    "load_brief",
    "main",
]
_fail = fail
_print_campaign = print_campaign

# The environment variables of prefect_evolink.blocks, which imports Prefect
# (tests/test_cold_start.py checks that both say the same).


# (errors, exit code, what the one-line message starts with); the first match wins.
API_CHECK_SECONDS = 10.0
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
    demo = commands.add_parser(
        "demo",
        help="the example campaign (or --single: one image)",
        description="Run the example campaign (briefs/spring-launch.yaml, shipped in the "
        "package): low-quality drafts, one chosen per asset, high-quality finals, the cost as "
        "Prefect artifacts. Without EVOLINK_API_KEY or --credentials-block it runs against the "
        "bundled simulator (synthetic images, nothing billed), which keeps its state in "
        "<assets-dir>/.evolink-simulator so a rerun pays nothing. --single: one image job.",
    )
    demo.add_argument("--single", action="store_true", help="one image job instead of a campaign")
    demo.add_argument(
        "--prompt", default=DEMO_PROMPT, help="with --single: the image prompt (default: a banner)"
    )
    demo.add_argument(
        "--size", default="16:9", help="with --single: a ratio or WxH (default %(default)s)"
    )
    demo.add_argument(
        "--resolution", default="1K", help="with --single: 1K, 2K or 4K (default %(default)s)"
    )
    demo.add_argument(
        "--quality",
        default="low",
        choices=["low", "medium", "high"],
        help="with --single (default %(default)s)",
    )
    demo.add_argument(
        "--n", type=int, default=1, help="with --single: images, 1-10 (default %(default)s)"
    )
    demo.add_argument(
        "--job-name",
        default="demo-banner",
        help="with --single: names the job; the same name and request reuse it "
        "(default %(default)s)",
    )
    campaign = commands.add_parser(
        "campaign",
        help="run a campaign brief",
        description="Run a campaign brief (YAML): the brief and its estimate are checked "
        "against its budget before anything is sent; drafts for every asset, one chosen per "
        "asset (auto, or by a reviewer in the Prefect UI with --selection approval), finals "
        "for those. A rerun of the same brief reuses every stored job and pays only for "
        "what is missing.",
    )
    campaign.add_argument("brief", type=Path, help="the campaign brief, a YAML file")
    campaign.add_argument(
        "--selection",
        choices=["auto", "approval"],
        default="auto",
        help="auto: a selector picks each asset's draft; approval: a reviewer picks in the "
        "Prefect UI (default %(default)s)",
    )
    campaign.add_argument(
        "--adaptation-selection",
        choices=["auto", "approval"],
        default="auto",
        help="auto: every adaptation made is kept; approval: after the adaptations a reviewer "
        "approves or rejects each in the Prefect UI (a rejected one stays stored, marked) "
        "(default %(default)s)",
    )
    campaign.add_argument(
        "--selector",
        default=None,
        help="package.module:function for auto (default: evolink.campaign:largest_file)",
    )
    campaign.add_argument(
        "--approval-timeout",
        type=int,
        default=20 * 3600,
        metavar="SECONDS",
        help="seconds an approval run waits for its reviewer's answer (each review: drafts, "
        "adaptations) before it ends with no final sent (default %(default)s = 20 h: inside "
        "the 24 h EvoLink keeps drafts' links; longer is warned about on local storage)",
    )
    commands.add_parser(
        "deploy", help="work pool, limits, deployments (prefect-evolink deploy --help)"
    )
    commands.add_parser(
        "simulator",
        help="the bundled EvoLink simulator (all options: prefect-evolink simulator --help)",
        add_help=False,
    )
    report = commands.add_parser(
        "report",
        help="rebuild a campaign's manifest from the job records in storage; print its cost",
        description="Rebuild CAMPAIGN's manifest from the job records in storage (its cost "
        "rows, what was stored, what is unknown), store it at <campaign>/manifest.json and "
        "print the cost. With EVOLINK_API_KEY or --credentials-block, EvoLink is asked for the "
        "bill of every task that has no result record; nothing is ever submitted.",
    )
    report.add_argument("campaign", help="the campaign name, as in its brief")
    storage_arguments(report)
    files_command.add_parser(commands)
    brief_command.add_parser(commands)
    spend_command.add_parser(commands)
    callbacks_command.add_parser(commands)
    serve_products_command.add_parser(commands)
    for sub in (demo, campaign):
        sub.add_argument(
            "--redo-drafts",
            action="append",
            default=[],
            metavar="ASSET",
            help="pay for fresh drafts of ASSET when EvoLink no longer has its drafts (a day "
            "later, on local storage); repeat for several assets (default: none)",
        )
        sub.add_argument(
            "--credentials-block",
            default=None,
            help=f"EvoLink credentials block (default: ${ENV_API_KEY}, else the simulator)",
        )
        sub.add_argument(
            "--storage-block",
            default=None,
            help="asset storage block (default: local storage in --assets-dir)",
        )
        sub.add_argument(
            "--assets-dir",
            default="assets",
            help="local storage when no block is named (default %(default)s)",
        )
        sub.add_argument(
            "--debug", action="store_true", help="print the traceback of a failure, too"
        )
        sub.add_argument(
            "--spend-cap-block",
            default=None,
            help="an EvoLink Spend Cap block: refuse (exit 3) when the period's spend + this "
            "run's estimate is over it (default: no cap)",
        )
    return parser.parse_args(argv)


SIMULATOR_STATE_DIR = ".evolink-simulator"
"""Under the assets directory: the bundled simulator's tasks, bills and port, kept across runs
like the assets they made, so a second `demo` finds the first one's jobs (and pays nothing)."""


def _start_simulator(stack: ExitStack, assets_dir: Path) -> None:
    from evolink.simulator import EvoLinkSimulator

    state_dir = assets_dir / SIMULATOR_STATE_DIR
    simulator = stack.enter_context(EvoLinkSimulator(generation_seconds=4.0, state_dir=state_dir))
    os.environ[ENV_API_KEY] = simulator.api_key
    os.environ[ENV_BASE_URL] = simulator.base_url
    os.environ[ENV_FILES_BASE_URL] = simulator.files_base_url  # uploads go to it, too
    os.environ["EVOLINK_ALLOW_PRIVATE_URLS"] = "true"  # its result links are http://127.0.0.1
    print(BANNER, flush=True)
    print(
        f"Simulator listening on {simulator.base_url} (its tasks are kept in {state_dir})\n",
        flush=True,
    )


async def _named_blocks(args: argparse.Namespace) -> dict[str, Any]:
    """The blocks named by --credentials-block, --storage-block and --spend-cap-block, loaded
    here (the flows take blocks, not names); what was not named is left to the flow's own
    fallbacks (`prefect_evolink.flows.run_blocks`)."""
    from prefect_evolink.flows.run_blocks import named_blocks

    return await named_blocks(
        credentials=args.credentials_block,
        storage=args.storage_block,
        spend_cap=args.spend_cap_block,
    )


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo" and args.single:
        from prefect_evolink.flows.generate import generate_image

        request = parse_request(  # InvalidRequestError: exit 2, before anything else
            {
                "prompt": args.prompt,
                "size": args.size,
                "quality": args.quality,
                "n": args.n,
                **({"resolution": args.resolution} if args.resolution else {}),
            }
        )
        _announce_api(args)
        cost = estimate(request)
        print(
            f"Request: {request.size} {request.resolution or ''} {request.quality}, n={request.n} "
            f"→ {cost.width}x{cost.height}, estimated {usd(cost.usd)} ({cost.credits} credits)"
        )

        async def single() -> JobRecord:
            blocks = await _named_blocks(args)
            done: JobRecord = await generate_image(request, job_name=args.job_name, **blocks)
            return done

        record = asyncio.run(single())
        print_job(record)
        return 0

    from prefect_evolink.blocks import load_storage
    from prefect_evolink.flows.campaign import (
        DEFAULT_APPROVAL_TIMEOUT_SECONDS,
        DEFAULT_SELECTOR,
        manifest_key,
        run_campaign,
    )

    selection: Literal["auto", "approval"] = "auto" if args.command == "demo" else args.selection
    with ExitStack() as files_open:
        if args.command == "demo":
            brief = files_open.enter_context(as_file(EXAMPLE_BRIEF))
        else:
            brief = args.brief
        adaptation_selection = getattr(args, "adaptation_selection", "auto")
        print(
            f"Campaign brief: {brief} (selection: {selection}"
            + (", adaptations: approval)" if adaptation_selection == "approval" else ")")
        )
        check_brief(Path(brief))  # before any Prefect server: exit 2 or 3, nothing started
        _announce_api(args)

        async def campaign() -> CampaignManifest:
            blocks = await _named_blocks(args)
            done: CampaignManifest = await run_campaign(
                str(brief),
                selection=selection,
                adaptation_selection=adaptation_selection,
                selector=getattr(args, "selector", None) or DEFAULT_SELECTOR,
                approval_timeout_seconds=getattr(
                    args, "approval_timeout", DEFAULT_APPROVAL_TIMEOUT_SECONDS
                ),
                redo_drafts=args.redo_drafts or None,
                **blocks,
            )
            return done

        manifest = asyncio.run(campaign())
    storage = load_storage(args.storage_block)
    print_campaign(manifest, storage.uri(manifest_key(manifest.campaign)))
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
    if args.command == "report":  # reads storage (and EvoLink): no simulator, no flow
        return report_command.run(args)
    if args.command == "spend":  # reads storage (and EvoLink): no simulator, no flow
        return spend_command.run(args)
    if args.command == "files":  # the uploads in storage (and the Files API): no flow
        return files_command.run(args)
    if args.command == "brief":  # checks a brief, writes storage: no simulator, no flow
        return brief_command.run(args)
    if args.command == "callbacks":  # a server until Ctrl-C: no simulator, no flow
        return callbacks_command.run(args)
    if args.command == "serve-products":  # a task worker until Ctrl-C: no simulator, no flow
        return serve_products_command.run(args)
    if not getattr(args, "debug", False):
        quiet_prefect_tracebacks()
    try:
        with ExitStack() as stack:
            args.simulated = args.credentials_block is None and not os.environ.get(ENV_API_KEY)
            if args.simulated:
                _start_simulator(stack, Path(args.assets_dir).resolve())
            elif args.credentials_block:
                print(f"Using the real EvoLink API of credentials block {args.credentials_block!r}")
            if args.storage_block is None:
                os.environ.setdefault(ENV_ASSETS_DIR, str(Path(args.assets_dir).resolve()))
            code = _run(args)
    except Exception as error:  # noqa: BLE001 — every failure ends in one message and a code
        return fail(error, args)
    print("\nSee runs, logs and artifacts in the Prefect UI:")
    print(f"  {_ui_hint()}")
    return code


def configured_base_url() -> str:
    return os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL


def _announce_api(args: argparse.Namespace) -> None:
    """With credentials from the environment, one unauthenticated HEAD to the API's base URL
    (any answer will do; the key is not sent) so an unreachable API fails before Prefect starts
    and before any job; then say which API this is — the real one, or a simulator (it marks
    its replies, `evolink.endpoint.SIMULATOR_HEADER`). A credentials block's URL is only known
    inside the flow."""
    if getattr(args, "simulated", False) or getattr(args, "credentials_block", None):
        return
    import httpx

    from evolink.endpoint import SIMULATOR_HEADER

    base_url = configured_base_url()
    try:
        response = httpx.head(base_url, timeout=API_CHECK_SECONDS)
    except httpx.TransportError as error:
        raise APIConnectionError(
            f"no answer from {base_url} ({type(error).__name__}: {error}); "
            f"check the network or {ENV_BASE_URL}"
        ) from error
    if response.headers.get(SIMULATOR_HEADER):
        print(f"Using an EvoLink SIMULATOR at {base_url}: synthetic images, nothing billed")
    else:
        print(f"Using the real EvoLink API at {base_url}")


def _ui_hint() -> str:
    """Where this run's UI is: the configured API's server, or how to start a local one."""
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if api_url:
        return f"{str(api_url).removesuffix('/').removesuffix('/api')} (Runs, Artifacts)"
    return "prefect server start   → http://127.0.0.1:4200 (Runs, Artifacts)"


if __name__ == "__main__":
    sys.exit(main())
