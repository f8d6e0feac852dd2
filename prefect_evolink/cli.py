"""The `prefect-evolink` command (also `python -m prefect_evolink`, and `python3 dev.py …`).

    prefect-evolink demo                 the example campaign, auto selection
    prefect-evolink demo --single        one image job end to end
    prefect-evolink campaign BRIEF       any brief; `--selection approval` pauses for a reviewer
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
import logging
import os
import sys
import traceback
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from prefect_evolink._cli_settings import missing_cli_defaults

# Prefect fixes its settings when it is first imported, so the command's defaults for them (the
# startup timeout of its temporary server, no telemetry: prefect_evolink/_cli_settings.py) go into
# the environment first. Nothing imported above imports Prefect; `--help` and the checks that
# run before any flow do not import it at all.
os.environ.update(missing_cli_defaults(os.environ))

from evolink.brief import check_plans, load_brief
from evolink.campaign import CampaignManifest, budget_refusal
from evolink.cost import estimate, usd
from evolink.endpoint import DEFAULT_BASE_URL
from evolink.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    BriefError,
    BudgetExceededError,
    CampaignIncompleteError,
    EvoLinkError,
    FilesQuotaExceededError,
    HostError,
    InsufficientCreditsError,
    InvalidRequestError,
    MissingCredentialsError,
    PaidJobNotStoredError,
    PermissionDeniedError,
    PollDeadlineExceeded,
    SpendCapExceededError,
    TaskFailedError,
)
from evolink.jobs import JobRecord
from evolink.models import MASK_EXTENSIONS, REFERENCE_EXTENSIONS, parse_request

# The environment variables of prefect_evolink.blocks, which imports Prefect
# (tests/test_cold_start.py checks that both say the same).
ENV_API_KEY: Final = "EVOLINK_API_KEY"
ENV_BASE_URL: Final = "EVOLINK_BASE_URL"
ENV_FILES_BASE_URL: Final = "EVOLINK_FILES_BASE_URL"
ENV_ASSETS_DIR: Final = "EVOLINK_ASSETS_DIR"

PROG = "prefect-evolink"

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INVALID = 2
EXIT_BUDGET = 3
EXIT_CREDENTIALS = 4
EXIT_UNREACHABLE = 5
EXIT_INCOMPLETE = 6
# (errors, exit code, what the one-line message starts with); the first match wins.
EXPECTED_FAILURES: tuple[tuple[tuple[type[BaseException], ...], int, str], ...] = (
    ((BriefError, InvalidRequestError, HostError, BadRequestError), EXIT_INVALID, "invalid input"),
    (
        (BudgetExceededError, SpendCapExceededError, InsufficientCreditsError),
        EXIT_BUDGET,
        "budget",
    ),
    ((FilesQuotaExceededError,), EXIT_BUDGET, "Files API quota full"),
    (
        (MissingCredentialsError, AuthenticationError, PermissionDeniedError),
        EXIT_CREDENTIALS,
        "credentials",
    ),
    ((APIConnectionError,), EXIT_UNREACHABLE, "EvoLink API unreachable"),
    ((CampaignIncompleteError,), EXIT_INCOMPLETE, "campaign incomplete"),
    ((TaskFailedError, PaidJobNotStoredError, PollDeadlineExceeded), EXIT_INCOMPLETE, "job failed"),
)
API_CHECK_SECONDS = 10.0
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
        "--selector",
        default=None,
        help="package.module:function for auto (default: evolink.campaign:largest_file)",
    )
    campaign.add_argument(
        "--approval-timeout",
        type=int,
        default=20 * 3600,
        metavar="SECONDS",
        help="seconds an approval run waits for its reviewer's answer before it ends with no "
        "final sent (default %(default)s = 20 h: inside the 24 h EvoLink keeps drafts' links; "
        "longer is warned about on local storage)",
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
    _storage_arguments(report)
    _files_arguments(commands)
    _brief_arguments(commands)
    _spend_arguments(commands)
    _callbacks_arguments(commands)
    _serve_products_arguments(commands)
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


async def _stored_runs(args: argparse.Namespace, quiet: bool = False) -> tuple[Any, Any]:
    """The storage earlier runs wrote to (--assets-dir or --storage-block) and, when a key is
    configured, the credentials to ask EvoLink for bills the records do not know (never to
    submit): what `report` and `spend` read."""
    from prefect_evolink.blocks import AssetStorage, LocalAssetStorage, load_storage
    from prefect_evolink.blocks.credentials import EvoLinkCredentials, resolve_credentials

    storage: AssetStorage
    if args.assets_dir is not None:
        storage = LocalAssetStorage(base_dir=str(Path(args.assets_dir).resolve()))
    else:
        storage = load_storage(args.storage_block)
    credentials: EvoLinkCredentials | None = None
    if args.credentials_block or os.environ.get(ENV_API_KEY):
        credentials = await resolve_credentials(args.credentials_block)
        if not quiet:
            print(f"Asking EvoLink at {credentials.base_url} for the bills not yet recorded")
    return storage, credentials


def _storage_arguments(parser: Any, runs: str = "used") -> None:
    """--storage-block | --assets-dir, --credentials-block and --debug: the options of every
    command that reads what earlier runs stored."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--storage-block",
        default=None,
        help=f"the storage block the runs {runs} (default: local storage, --assets-dir)",
    )
    where.add_argument(
        "--assets-dir",
        default=None,
        help=f"local storage directory (default: ${ENV_ASSETS_DIR} or ./assets)",
    )
    parser.add_argument(
        "--credentials-block",
        default=None,
        help=f"EvoLink credentials block (default: the key in ${ENV_API_KEY})",
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")


def deployments_storage_block() -> str:
    """The storage block the deployments use by default (`definitions.blocks.storage` of the
    packaged prefect.yaml), read without importing Prefect."""
    config = yaml.safe_load((files("prefect_evolink.deployments") / "prefect.yaml").read_text())
    return str(((config.get("definitions") or {}).get("blocks") or {}).get("storage") or "")


def _brief_arguments(commands: Any) -> None:
    brief = commands.add_parser(
        "brief",
        help="campaign briefs for deployed runs: put one into the storage block",
        description="Deployed campaign runs read their brief from the storage block "
        "(`brief: storage:briefs/<name>.yaml` in prefect.yaml), so a worker on any machine "
        "finds it. `brief put` checks a brief and puts it there; `brief example` prints the "
        "example brief.",
    )
    actions = brief.add_subparsers(dest="brief_command", required=True)
    put = actions.add_parser(
        "put",
        help="check a brief and put it into the storage block",
        description="Check the brief as `campaign` does (its rules, reference formats, the "
        "estimate against its budget; exit 2 or 3 when it fails, nothing is written), then "
        "store the file as it is under KEY in the storage block and print its `storage:` "
        "location, which a deployment's `brief` parameter takes. A brief read from storage has "
        "no folder: its reference images must be storage:, s3:// or https:// references.",
    )
    put.add_argument("path", type=Path, help="the brief file (YAML, or JSON)")
    put.add_argument(
        "--key", default=None, help="where in the storage (default briefs/<the file's name>)"
    )
    where = put.add_mutually_exclusive_group()
    default_block = deployments_storage_block()
    where.add_argument(
        "--storage-block",
        default=None,
        help=f"the storage block (default {default_block or 'none'}: the deployments' own, "
        "definitions.blocks in prefect.yaml)",
    )
    where.add_argument(
        "--assets-dir",
        default=None,
        help="a local storage directory instead of a block (default: none, the block)",
    )
    put.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    actions.add_parser(
        "example",
        help="print the example brief (briefs/spring-launch.yaml), e.g. to start your own",
        description="Print the example campaign brief that ships with the package: "
        "`prefect-evolink brief example > briefs/spring-launch.yaml`.",
    )


def _brief(args: argparse.Namespace) -> int:
    """`brief put` (check, then store in the storage block) and `brief example`."""
    if args.brief_command == "example":
        sys.stdout.write(EXAMPLE_BRIEF.read_text())
        return EXIT_OK
    key = args.key or f"briefs/{args.path.name}"
    block = None if args.assets_dir else (args.storage_block or deployments_storage_block())
    try:
        _check_brief(args.path)  # BriefError: exit 2, BudgetExceededError: exit 3
        _check_storable(load_brief(args.path))
        if block:
            from prefect.settings import get_current_settings

            if not get_current_settings().api.url:
                print(
                    f"{PROG}: invalid input: PREFECT_API_URL is not set; the storage block "
                    f"{block!r} is saved in your Prefect server: point PREFECT_API_URL at it",
                    file=sys.stderr,
                )
                return EXIT_INVALID
        from prefect_evolink.blocks import AssetStorage, LocalAssetStorage, load_storage

        storage: AssetStorage
        if block:
            try:
                storage = load_storage(block)
            except (ValueError, TypeError) as error:
                print(
                    f"{PROG}: invalid input: {error}; save it first, e.g. "
                    f"S3AssetStorage(bucket=..., prefix=...).save({block!r})",
                    file=sys.stderr,
                )
                return EXIT_INVALID
        else:
            storage = LocalAssetStorage(base_dir=str(Path(args.assets_dir).resolve()))
        content_type = "application/json" if key.endswith(".json") else "application/yaml"
        try:
            stored = storage.put_bytes(key, args.path.read_bytes(), content_type=content_type)
        except ValueError as error:  # a key storage refuses
            print(f"{PROG}: invalid input: --key {key!r}: {error}", file=sys.stderr)
            return EXIT_INVALID
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return _fail(error, args)
    print(f"Stored {args.path} at {stored.uri}")
    print(f"brief: storage:{key}")
    return EXIT_OK


def _check_storable(brief: Any) -> None:
    """A brief read from storage has no folder, so its local reference paths could never be
    found: refuse them here, naming asset and field, rather than in every run."""
    problems = [
        f"asset {asset.id!r}: {field}: {spec!r} is a local path; a brief in storage refers to "
        "images by storage:<key>, s3:// or https://"
        for asset in brief.assets
        for field, spec in [
            *((f"reference_images.{i}", ref) for i, ref in enumerate(asset.reference_images)),
            *([("mask", asset.mask)] if asset.mask else []),
        ]
        if not spec.startswith(("https://", "http://", "s3://", "storage:"))
    ]
    if problems:
        raise BriefError(problems)


def _spend_arguments(commands: Any) -> None:
    spend = commands.add_parser(
        "spend",
        help="what storage says EvoLink billed across runs, by campaign, deployment, product, "
        "month, stage and quality",
        description="Add up the campaign manifests and the job records in storage (each "
        "EvoLink task once), print the totals and the estimate-vs-bill drift, and store them "
        "as _reports/spend/<period>.csv and .json. With EVOLINK_API_KEY or --credentials-block, "
        "EvoLink is asked for the bills the records do not know; nothing is ever submitted. "
        "Without --since/--until: every job ever.",
    )
    spend.add_argument(
        "--since",
        default=None,
        help="first day counted: YYYY-MM or YYYY-MM-DD (default: no start)",
    )
    spend.add_argument(
        "--until",
        default=None,
        help="last day counted, included: YYYY-MM or YYYY-MM-DD (default: no end)",
    )
    spend.add_argument("--timezone", default="UTC", help="IANA zone days begin in (default UTC)")
    _storage_arguments(spend)
    spend.add_argument("--no-store", action="store_true", help="print only; store no report")


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


SIMULATED = "\n          (by the bundled simulator: synthetic images, nothing billed by EvoLink)"


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
        f"   [task {record.task_id}]{SIMULATED if record.simulator else ''}"
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
    simulated = bool(manifest.jobs) and all(row.simulator for row in manifest.jobs)
    print(
        f"  total   {usd(totals.billed_usd)} billed ({totals.billed_credits} credits); "
        f"estimate was {usd(manifest.pre_flight_estimate_usd)}; "
        f"budget {usd(manifest.budget_usd)}, {usd(manifest.budget_left_usd)} left"
        + (SIMULATED if simulated else "")
    )
    from prefect_evolink.tasks.campaign_cost import draft_first_words

    words = draft_first_words(manifest)
    if words is not None:
        alternative, _ = words
        print(f"  the same finals as {alternative}: {usd(manifest.high_quality_variants_usd)}")
    print(f"\nManifest: {manifest_uri}")
    from prefect_evolink.tasks.reporting import artifact_key

    def key(*suffix: str) -> str:  # the keys the reports are published under, not the name
        return artifact_key(manifest.campaign, *suffix)

    print(
        f"Artifacts: {key('cost')} (table), {key('cost', 'details')}, {key('summary')}, "
        f"{key('finals')} (contact sheet), {key('progress')}, {key()}-<asset>-final"
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
        _print_job(record)
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
        print(f"Campaign brief: {brief} (selection: {selection})")
        _check_brief(Path(brief))  # before any Prefect server: exit 2 or 3, nothing started
        _announce_api(args)

        async def campaign() -> CampaignManifest:
            blocks = await _named_blocks(args)
            done: CampaignManifest = await run_campaign(
                str(brief),
                selection=selection,
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
    if args.command == "report":  # reads storage (and EvoLink): no simulator, no flow
        return _report(args)
    if args.command == "spend":  # reads storage (and EvoLink): no simulator, no flow
        return _spend(args)
    if args.command == "files":  # the uploads in storage (and the Files API): no flow
        return _files(args)
    if args.command == "brief":  # checks a brief, writes storage: no simulator, no flow
        return _brief(args)
    if args.command == "callbacks":  # a server until Ctrl-C: no simulator, no flow
        return _callbacks(args)
    if args.command == "serve-products":  # a task worker until Ctrl-C: no simulator, no flow
        return _serve_products(args)
    if not getattr(args, "debug", False):
        _quiet_prefect_tracebacks()
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
        return _fail(error, args)
    print("\nSee runs, logs and artifacts in the Prefect UI:")
    print(f"  {_ui_hint()}")
    return code


def _report(args: argparse.Namespace) -> int:
    """`report CAMPAIGN`: the manifest rebuilt from the job records, stored, and its cost."""
    from prefect_evolink.tasks.campaign_cost import cost_summary
    from prefect_evolink.tasks.recovery import manifest_key, rebuild_campaign

    async def rebuild() -> int:
        storage, credentials = await _stored_runs(args)
        if credentials is None:
            print(
                f"No {ENV_API_KEY} and no --credentials-block: EvoLink is not asked; the bills "
                "of tasks without a result record stay unknown (counted at their estimates)"
            )
        rebuilt = await rebuild_campaign(args.campaign, storage, credentials)
        if not rebuilt.found:
            where = storage.uri(manifest_key(args.campaign)).rsplit("/", 2)[0]
            print(
                f"{PROG}: no manifest and no job records of campaign {args.campaign!r} in "
                f"{where}; nothing written",
                file=sys.stderr,
            )
            return EXIT_INVALID
        print("\n".join(cost_summary(rebuilt.manifest)))
        for problem in rebuilt.problems:
            print(f"  unreadable record: {problem}")
        print(f"\nManifest rebuilt from the job records: {rebuilt.uri}")
        return EXIT_OK

    try:
        return asyncio.run(rebuild())
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return _fail(error, args)


def _files_arguments(commands: Any) -> None:
    files_parser = commands.add_parser(
        "files",
        help="this project's uploads to EvoLink's Files API: list, prune",
        description="The images this project uploaded to EvoLink's Files API (local reference "
        "files and stored drafts on local storage), from their records in storage "
        "(_uploads/). Uploads count against EvoLink's quota of 100 files until deleted or "
        "expired (72 h).",
    )
    actions = files_parser.add_subparsers(dest="files_command", required=True)
    listing = actions.add_parser(
        "list", help="every recorded upload: file id, expiry, source, the jobs that used it"
    )
    _storage_arguments(listing)
    prune = actions.add_parser(
        "prune",
        help="delete the uploads no job needs (their jobs are stored, or they expired)",
        description="Delete, at the Files API, the recorded uploads whose jobs are all stored "
        "or ended, or that expired, and forget their records. An upload whose job may still "
        "be running at EvoLink is kept unless --all.",
    )
    prune.add_argument(
        "--all",
        action="store_true",
        dest="everything",
        help="delete every recorded upload of this Files API endpoint, needed or not "
        "(default: off)",
    )
    _storage_arguments(prune)


def _files(args: argparse.Namespace) -> int:
    """`files list | prune`: this project's uploads, from their records (and the Files API)."""
    from evolink.records import RecordStore
    from prefect_evolink.blocks.credentials import resolve_credentials
    from prefect_evolink.tasks.image_delivery import prune_uploads, upload_verdict

    async def act() -> int:
        storage, _ = await _stored_runs(args, quiet=True)
        store = RecordStore(storage)
        if args.files_command == "list":
            problems: list[str] = []
            records = await store.uploads(problems)
            print(f"{len(records)} upload(s) recorded")
            for record in records:
                why = await upload_verdict(store, record)
                expires = record.expires_at.isoformat() if record.expires_at else "72 h after"
                state = "expired" if record.expired() else f"expires {expires}"
                print(
                    f"  {record.file_id}  {state}  {record.source}  "
                    f"campaign={record.campaign or '-'}  jobs={len(record.used_by)}  "
                    f"{'needed: ' + why if why else 'prunable'}  {record.files_base_url}"
                )
            for problem in problems:
                print(f"  unreadable record: {problem}")
            return EXIT_OK
        credentials = await resolve_credentials(args.credentials_block)
        deleted, kept = await prune_uploads(storage, credentials, everything=args.everything)
        for record in deleted:
            print(f"  deleted {record.file_id}  {record.source}")
        for record, why in kept:
            print(f"  kept {record.file_id}  {record.source}: {why}")
        print(f"{len(deleted)} upload(s) deleted, {len(kept)} kept")
        return EXIT_OK

    try:
        return asyncio.run(act())
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return _fail(error, args)


def _spend(args: argparse.Namespace) -> int:
    """`spend`: the spend across runs in storage, printed and stored as CSV and JSON."""
    from evolink.spend import parse_bound
    from evolink.timezones import zone
    from prefect_evolink.tasks.spend import gather_spend, store_spend_report
    from prefect_evolink.tasks.spend_report import summary_lines

    async def add_up() -> int:
        where = zone(args.timezone)
        since = parse_bound(args.since, where, end=False) if args.since else None
        until = parse_bound(args.until, where, end=True) if args.until else None
        storage, credentials = await _stored_runs(args)
        report = await gather_spend(
            storage,
            since=since,
            until=until,
            timezone=args.timezone,
            credentials=credentials,
            reservations=None if since is None else report_period(since, until),
        )
        print("\n".join(summary_lines(report)))
        for problem in report.problems:
            print(f"  unreadable record: {problem}")
        if not args.no_store:
            csv_uri, json_uri = await store_spend_report(report, storage)
            print(f"\nStored: {csv_uri}\n        {json_uri}")
        return EXIT_OK

    def report_period(since: Any, until: Any) -> str:
        from evolink.spend import window_label

        return window_label(since, until, zone(args.timezone))

    try:
        return asyncio.run(add_up())
    except ValueError as error:  # a bound or a time zone that cannot be read
        print(f"{PROG}: invalid input: {error}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return _fail(error, args)


def _callbacks_arguments(commands: Any) -> None:
    from evolink.callbacks import (
        DEFAULT_BURST,
        DEFAULT_RATE,
        DEFAULT_SOURCE_BURST,
        DEFAULT_SOURCE_RATE,
        MAX_CALLBACK_BYTES,
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_SOURCE,
        READ_TIMEOUT_SECONDS,
    )

    callbacks = commands.add_parser(
        "callbacks",
        help="the callback receiver: EvoLink callbacks, confirmed with the API, become "
        "Prefect events (evolink.task.completed / evolink.task.failed)",
        description="Serve the EvoLink callback receiver (ASGI, uvicorn) until Ctrl-C. Each "
        "callback's task id is looked up in storage (_tasks/<id>.json, written at submit; "
        "others are ignored), the task is asked for at EvoLink with the key, and an event is "
        "emitted to the Prefect API (PREFECT_API_URL) from the API's answer — never from the "
        "body. Point EvoLinkCredentials.callback_url (or EVOLINK_CALLBACK_URL) at its public "
        "https URL. The first line printed is the URL it listens on; then one line per request "
        "on stderr (outcome, source address, task id; --debug adds more).",
    )
    callbacks.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    callbacks.add_argument(
        "--port", type=int, default=8788, help="0 picks a free port (default %(default)s)"
    )
    callbacks.add_argument(
        "--path", default="/evolink/callback", help="the callback path (default %(default)s)"
    )
    _storage_arguments(callbacks, runs="use")
    callbacks.add_argument(
        "--ssl-certfile", default=None, help="TLS certificate (PEM) (default: none, plain http)"
    )
    callbacks.add_argument(
        "--ssl-keyfile", default=None, help="TLS private key (PEM) (default: none)"
    )
    callbacks.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="proxies trusted for X-Forwarded-Proto/-For, comma-separated addresses or "
        "networks (default: none with --ssl-certfile, else 127.0.0.1): behind a TLS proxy, "
        "plain http from it counts as https, and X-Forwarded-For is the source address",
    )
    callbacks.add_argument(
        "--rate-limit",
        type=float,
        default=DEFAULT_RATE,
        help="EvoLink task reads/s on average, for all senders (default %(default)s)",
    )
    callbacks.add_argument(
        "--burst", type=int, default=DEFAULT_BURST, help="task reads at once (default %(default)s)"
    )
    callbacks.add_argument(
        "--source-rate-limit",
        type=float,
        default=DEFAULT_SOURCE_RATE,
        help="storage lookups/s on average per source address (default %(default)s)",
    )
    callbacks.add_argument(
        "--source-burst",
        type=int,
        default=DEFAULT_SOURCE_BURST,
        help="storage lookups at once per source address (default %(default)s)",
    )
    callbacks.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_CALLBACK_BYTES,
        help="larger bodies get 413 (default %(default)s)",
    )
    callbacks.add_argument(
        "--read-timeout",
        type=float,
        default=READ_TIMEOUT_SECONDS,
        help="seconds for a request's headers and body, in all (default %(default)s)",
    )
    callbacks.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help="open connections in all (default %(default)s)",
    )
    callbacks.add_argument(
        "--max-connections-per-source",
        type=int,
        default=MAX_CONNECTIONS_PER_SOURCE,
        help="open connections per source address; trusted proxies are exempt "
        "(default %(default)s)",
    )


def _callbacks(args: argparse.Namespace) -> int:
    """`callbacks`: the receiver under uvicorn until SIGINT/SIGTERM (tasks/callbacks.py)."""
    import prefect.main  # noqa: F401 - Prefect's logging setup: the audit lines reach stderr
    from prefect.settings import get_current_settings

    from evolink.urls import ENV_ALLOW_PRIVATE_URLS, private_urls_allowed
    from prefect_evolink.blocks import AssetStorage, LocalAssetStorage, load_storage
    from prefect_evolink.blocks.credentials import resolve_credentials
    from prefect_evolink.tasks.callbacks import CallbackReceiver, ReceiverSettings, bind, serve

    if not get_current_settings().api.url:
        print(
            f"{PROG}: invalid input: PREFECT_API_URL is not set; the receiver's events would go "
            "to a temporary API that ends with it. Point it at your Prefect server.",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        print(
            f"{PROG}: invalid input: give --ssl-certfile and --ssl-keyfile together",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        storage: AssetStorage
        if args.storage_block is None:
            assets = args.assets_dir or os.environ.get(ENV_ASSETS_DIR) or "assets"
            storage = LocalAssetStorage(base_dir=str(Path(assets).resolve()))
        else:
            storage = load_storage(args.storage_block)
        credentials = asyncio.run(resolve_credentials(args.credentials_block))
        settings = ReceiverSettings(
            path=args.path,
            max_body_bytes=args.max_body_bytes,
            rate=args.rate_limit,
            burst=args.burst,
            source_rate=args.source_rate_limit,
            source_burst=args.source_burst,
            read_timeout=args.read_timeout,
            max_connections=args.max_connections,
            max_connections_per_source=args.max_connections_per_source,
        )
        receiver = CallbackReceiver(storage, credentials, settings)
        sock = bind(args.host, args.port)
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return _fail(error, args)
    scheme = "https" if args.ssl_certfile else "http"
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"{scheme}://{host}:{sock.getsockname()[1]}{args.path}"

    def ready() -> None:
        print(url, flush=True)  # the first line: where it listens (useful with --port 0)
        print(
            f"EvoLink callback receiver on {url}: tasks from {storage.uri('_tasks')}, checked "
            f"with {credentials.base_url}, events to {get_current_settings().api.url}",
            file=sys.stderr,
            flush=True,
        )
        if scheme == "http" and not private_urls_allowed():
            print(
                "Plain http: only requests a trusted proxy marks as https (X-Forwarded-Proto) "
                f"are accepted (others get 403; {ENV_ALLOW_PRIVATE_URLS}=true is for testing).",
                file=sys.stderr,
                flush=True,
            )

    try:
        serve(
            receiver,
            sock,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            forwarded_allow_ips=args.forwarded_allow_ips,
            on_ready=ready,
            log_level="debug" if args.debug else "info",
        )
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down gracefully, then re-raised it
        pass
    except Exception as error:  # noqa: BLE001 — e.g. an unreadable certificate
        return _fail(error, args)
    finally:
        sock.close()
    return EXIT_OK


def _serve_products_arguments(commands: Any) -> None:
    from prefect_evolink.deployments._defaults import DEFAULT_LIMIT  # not Prefect's task worker

    serve = commands.add_parser(
        "serve-products",
        help="a task worker making product images as background tasks (catalogue scale)",
        description="Serve the product_image background task until Ctrl-C: a long-lived "
        "worker that runs many products at once, instead of one flow-run process per product. "
        "Run as many as you need, against the Prefect API in PREFECT_API_URL; the provider "
        "limits are global, so they hold across all of them. With --listen (on exactly one "
        "process) every marketing.asset.requested event becomes a product_image task run.",
    )
    serve.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help="products this worker runs at once (default %(default)s)",
    )
    serve.add_argument(
        "--listen",
        action="store_true",
        help="also turn marketing.asset.requested events into product task runs",
    )
    serve.add_argument("--debug", action="store_true", help="print the traceback of a failure")


def _serve_products(args: argparse.Namespace) -> int:
    """`serve-products`: the product task worker (deployments/task_workers.py) until Ctrl-C."""
    from prefect.settings import (
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        get_current_settings,
        temporary_settings,
    )

    from prefect_evolink.deployments.task_workers import serve_products

    if not get_current_settings().api.url:
        print(
            f"{PROG}: invalid input: PREFECT_API_URL is not set; a task worker needs the "
            "Prefect server the product runs are scheduled on.",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if args.limit < 1:
        print(f"{PROG}: invalid input: --limit must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    print(
        f"Serving product_image (up to {args.limit} at once) for {get_current_settings().api.url}",
        file=sys.stderr,
        flush=True,
    )

    def listening() -> None:
        print(
            "Listening: every marketing.asset.requested event becomes a product_image task run",
            file=sys.stderr,
            flush=True,
        )

    # The task engine logs a line or two outside any run context (after a run ends); with no
    # flow run to file them under, the API handler would warn for each. They stay on stderr.
    quiet = temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"})
    try:
        with quiet:
            asyncio.run(serve_products(args.limit, listen=args.listen, on_listening=listening))
    except KeyboardInterrupt:
        pass
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return _fail(error, args)
    return EXIT_OK


def _base_url() -> str:
    return os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL


def _check_brief(path: Path) -> None:
    """Validate the brief and its estimate against its budget without Prefect: BriefError (or
    InvalidRequestError inside it) and BudgetExceededError surface here, before any server.

    References other than URLs (files, `s3://`, `storage:`) are resolved only in the flow (they
    need the storage block); here their extensions are checked and they stand in as placeholder
    URLs, so the estimate (1,536 input tokens per reference) is the flow's.
    """
    from prefect_evolink.tasks.references import reference_format_problems

    try:
        brief = load_brief(path)
    except OSError as error:
        raise BriefError([f"{path}: cannot read the brief ({error.strerror or error})"]) from None
    problems = reference_format_problems(brief)
    references: dict[str, tuple[list[str], str | None]] = {}
    for asset in brief.assets:
        urls = [
            _stand_in(spec, f"{asset.id}/{index}", REFERENCE_EXTENSIONS)
            for index, spec in enumerate(asset.reference_images)
        ]
        mask = asset.mask and _stand_in(asset.mask, f"{asset.id}/mask", MASK_EXTENSIONS)
        references[asset.id] = (urls, mask)
    try:
        plans = check_plans(brief, references)
    except BriefError as error:
        raise BriefError(problems + error.problems) from None
    if problems:
        raise BriefError(problems)
    refusal = budget_refusal(brief, plans)
    if refusal:
        raise BudgetExceededError(refusal)


def _stand_in(spec: str, name: str, extensions: tuple[str, ...]) -> str:
    """A URL reference as it is; anything else, or a URL whose extension was already refused
    (reported once, under `reference_images` or `mask`), as a placeholder PNG URL."""
    from prefect_evolink.tasks.references import format_problem

    if spec.startswith(("https://", "http://")) and not format_problem(spec, extensions):
        return spec
    return f"https://references.invalid/{name}.png"


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

    base_url = _base_url()
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


def _fail(error: Exception, args: argparse.Namespace) -> int:
    """One short message on stderr and the documented exit code; the traceback with --debug."""
    sys.stdout.flush()
    code, label = EXIT_UNEXPECTED, "unexpected error"
    for kinds, exit_code, what in EXPECTED_FAILURES:
        if isinstance(error, kinds):
            code, label = exit_code, what
            break
    if isinstance(error, CampaignIncompleteError):
        manifest = getattr(error, "manifest", None)
        uri = getattr(error, "manifest_uri", None)
        if isinstance(manifest, CampaignManifest):
            _print_campaign(manifest, uri or "(not stored)")
            sys.stdout.flush()
            if any(
                o.error_type == FilesQuotaExceededError.__name__ for o in manifest.failed_assets
            ):  # a quota, like a budget, is freed by the user: exit 3, the command named
                code, label = EXIT_BUDGET, "Files API quota full"
                print(
                    f"{PROG}: the Files API quota is full: run `{PROG} files prune` "
                    "(it deletes this project's uploads no job needs), then rerun",
                    file=sys.stderr,
                )
    debug = getattr(args, "debug", False)
    if debug:
        traceback.print_exception(error)
    text = str(error) if isinstance(error, EvoLinkError) else f"{type(error).__name__}: {error}"
    hint = "" if debug or code != EXIT_UNEXPECTED else " (--debug shows the traceback)"
    print(f"{PROG}: {label}: {text}{hint}", file=sys.stderr)
    return code


class _NoTraceback(logging.Filter):
    """Strips the traceback from a record on its way to the console, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def _quiet_prefect_tracebacks() -> None:
    """Prefect logs a failed task or flow run with its traceback; on the console the CLI's own
    message says it better. Only the console handler (the root logger's, reached last) loses
    them: the handlers sending run logs to the Prefect API format their records first."""
    import prefect.main  # noqa: F401 - Prefect's SDK entry point: it sets up those handlers
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_NoTraceback())


def _ui_hint() -> str:
    """Where this run's UI is: the configured API's server, or how to start a local one."""
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if api_url:
        return f"{str(api_url).removesuffix('/').removesuffix('/api')} (Runs, Artifacts)"
    return "prefect server start   → http://127.0.0.1:4200 (Runs, Artifacts)"


if __name__ == "__main__":
    sys.exit(main())
