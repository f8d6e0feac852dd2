"""How a `prefect-evolink` command ends: its exit codes, the one-line message of an expected
failure (no traceback unless --debug), and what a finished job or campaign prints.

The table of exit codes is in the docstring of `prefect_evolink/cli.py` and in the docs; the
errors each code stands for are `EXPECTED_FAILURES`, the first match winning.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Final

from evolink.campaign import AssetStatus, CampaignManifest
from evolink.cost import usd
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


SIMULATED = "\n          (by the bundled simulator: synthetic images, nothing billed by EvoLink)"


def print_job(record: JobRecord) -> None:
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


def print_campaign(manifest: CampaignManifest, manifest_uri: str) -> None:
    from prefect_evolink.tasks.campaign_artifacts import adaptation_words
    from prefect_evolink.tasks.campaign_cost import (
        adaptations_words,
        draft_first_words,
        stages_in_order,
    )

    print(f"\n=== Campaign {manifest.campaign} ===")
    for outcome in manifest.assets:
        where = outcome.final.images[0].uri if outcome.final else outcome.detail
        print(f"  {outcome.asset:<16} {outcome.status.value:<14} {where}")
        for adaptation in outcome.adaptations:  # the final's versions, under it
            record = adaptation.record
            shown = (
                record.images[0].uri
                if adaptation.status is AssetStatus.FINAL and record and record.images
                else adaptation.detail
            )
            print(f"    · {adaptation.id:<12} {adaptation_words(adaptation):<14} {shown}")
    totals = manifest.totals
    print("\n=== Cost ===")
    width = max([7, *(len(stage) + 1 for stage in totals.by_stage)])
    for stage, amount in stages_in_order(totals.by_stage):
        print(f"  {stage:<{width}} {usd(amount)}")
    simulated = bool(manifest.jobs) and all(row.simulator for row in manifest.jobs)
    print(
        f"  {'total':<{width}} {usd(totals.billed_usd)} billed ({totals.billed_credits} credits); "
        f"estimate was {usd(manifest.pre_flight_estimate_usd)}; "
        f"budget {usd(manifest.budget_usd)}, {usd(manifest.budget_left_usd)} left"
        + (SIMULATED if simulated else "")
    )
    words = draft_first_words(manifest)
    if words is not None:
        alternative, _ = words
        print(f"  the same finals as {alternative}: {usd(manifest.high_quality_variants_usd)}")
    adapted = adaptations_words(manifest)
    if adapted is not None:
        alternative, _ = adapted
        print(
            f"  the same adaptations as {alternative}: {usd(manifest.adaptations_from_scratch_usd)}"
        )
    print(f"\nManifest: {manifest_uri}")
    from prefect_evolink.tasks.reporting import artifact_key

    def key(*suffix: str) -> str:  # the keys the reports are published under, not the name
        return artifact_key(manifest.campaign, *suffix)

    print(
        f"Artifacts: {key('cost')} (table), {key('cost', 'details')}, {key('summary')}, "
        f"{key('finals')} (contact sheet), {key('progress')}, {key()}-<asset>-final"
    )


def fail(error: Exception, args: argparse.Namespace) -> int:
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
            print_campaign(manifest, uri or "(not stored)")
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


class NoTraceback(logging.Filter):
    """Strips the traceback from a record on its way to the console, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def quiet_prefect_tracebacks() -> None:
    """Prefect logs a failed task or flow run with its traceback; on the console the CLI's own
    message says it better. Only the console handler (the root logger's, reached last) loses
    them: the handlers sending run logs to the Prefect API format their records first."""
    import prefect.main  # noqa: F401 - Prefect's SDK entry point: it sets up those handlers
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(NoTraceback())
