"""Flow: what EvoLink jobs cost across runs in a period, from the manifests and job records in
storage — by campaign, deployment, product, month, stage and quality (`evolink.spend`)."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger

from evolink.cost import usd
from evolink.jobs import utcnow
from evolink.spend import SpendReport, parse_bound, previous_period
from evolink.timezones import zone
from prefect_evolink.blocks import (
    EvoLinkCredentials,
    LocalAssetStorage,
    S3AssetStorage,
    default_storage,
)
from prefect_evolink.tasks.dispatch import sync_or_async_flow
from prefect_evolink.tasks.spend import gather_spend, publish_spend_report, store_spend_report
from prefect_evolink.tasks.spend_report import summary_lines


def report_window(
    since: str | None, until: str | None, timezone: str, now: datetime | None = None
) -> tuple[datetime | None, datetime | None]:
    """[since, until) of a report: the bounds given (`parse_bound`), or, with neither, the
    previous calendar month in `timezone`."""
    where = zone(timezone)
    if since is None and until is None:
        window = previous_period(now or utcnow(), "month", where)
        return window.start, window.end
    return (
        parse_bound(since, where, end=False) if since else None,
        parse_bound(until, where, end=True) if until else None,
    )


@sync_or_async_flow(name="evolink-spend-report", log_prints=True)
async def spend_report(
    since: str | None = None,
    until: str | None = None,
    timezone: str = "UTC",
    storage: LocalAssetStorage | S3AssetStorage | None = None,
    credentials: EvoLinkCredentials | None = None,
) -> SpendReport:
    """Add up what EvoLink billed for the jobs submitted in a period, as storage records it.

    Every paid job is counted once (by its EvoLink task id): a campaign job as its manifest
    `<campaign>/manifest.json` books it, any other job — ad hoc `adhoc/<name>`, product
    `product/<id>`, or a campaign job no manifest lists any more — from its records under
    `_jobs/`. A bill nobody could read is counted at its estimate and reported as unknown.
    Jobs made at the bundled simulator are never added to the real spend: their synthetic bills
    are summed apart (`simulator_totals`, a labelled line, a `simulator` CSV row). The
    report is stored as `_reports/spend/<period>.csv` and `.json` and published as the
    artifacts `evolink-spend` (table) and `evolink-spend-summary` (markdown). Nothing is sent
    to EvoLink but, with credentials, status queries for the bills the records do not know.

    Args:
        since: First day counted: 'YYYY-MM', 'YYYY-MM-DD' or an ISO date-time. With neither
            `since` nor `until`, the previous calendar month is reported.
        until: Last day counted, included ('2026-10' includes all of October); an ISO
            date-time is the first instant not counted. Empty: up to now.
        timezone: IANA time zone in which days and months begin, e.g. 'Europe/Berlin'.
        storage: The Local or S3 asset storage block the runs used (the form offers the saved
            ones); without it, the local `assets/` directory.
        credentials: An EvoLink Credentials block (the form offers the saved ones), used to ask
            EvoLink for the bills the records do not know; without it, `EVOLINK_API_KEY` if
            set, else EvoLink is not asked.

    Returns:
        The spend report: totals of the real spend (billed, estimated, drift, unknown bills),
        one group per campaign, deployment, product, month, stage and quality, the simulator's
        jobs summed apart, and every job counted (each marked real or simulator).

    Raises:
        ValueError: A bound or the time zone cannot be read.

    Example:
        ```python
        import asyncio
        from prefect_evolink import S3AssetStorage, spend_report

        assets = S3AssetStorage.load("evolink-assets")
        report = asyncio.run(spend_report(since="2026-10", until="2026-10", storage=assets))
        print(report.totals.total_usd, report.totals.unknown_bills)
        ```
    """
    logger = get_run_logger()
    start, end = report_window(since, until, timezone)
    # Not `RunBlocks.resolve`: a report needs no credentials (EvoLink is then not asked).
    chosen_storage = storage if storage is not None else default_storage()
    chosen_credentials = credentials if credentials is not None else EvoLinkCredentials.from_env()
    report = await gather_spend(
        chosen_storage,
        since=start,
        until=end,
        timezone=timezone,
        credentials=chosen_credentials,
    )
    csv_uri, json_uri = await store_spend_report(report, chosen_storage)
    await publish_spend_report(report, csv_uri=csv_uri, json_uri=json_uri)
    for line in summary_lines(report):
        logger.info("%s", line)
    logger.info(
        "Spend %s: %s (%d unknown bill(s)); stored %s and %s",
        report.period,
        usd(report.totals.total_usd),
        report.totals.unknown_bills,
        csv_uri,
        json_uri,
    )
    return report
