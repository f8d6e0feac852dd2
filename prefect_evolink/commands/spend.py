"""`prefect-evolink spend`: what storage says EvoLink billed across runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from prefect_evolink.commands.outcome import (
    EXIT_INVALID,
    EXIT_OK,
    PROG,
    fail,
)
from prefect_evolink.commands.stored import storage_arguments, stored_runs


def add_parser(commands: Any) -> None:
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
    storage_arguments(spend)
    spend.add_argument("--no-store", action="store_true", help="print only; store no report")


def run(args: argparse.Namespace) -> int:
    """`spend`: the spend across runs in storage, printed and stored as CSV and JSON."""
    from evolink.spend import parse_bound
    from evolink.timezones import zone
    from prefect_evolink.tasks.spend import gather_spend, store_spend_report
    from prefect_evolink.tasks.spend_report import summary_lines

    async def add_up() -> int:
        where = zone(args.timezone)
        since = parse_bound(args.since, where, end=False) if args.since else None
        until = parse_bound(args.until, where, end=True) if args.until else None
        storage, credentials = await stored_runs(args)
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
        return fail(error, args)
