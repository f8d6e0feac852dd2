"""Spend across runs in storage: the report's glue (the spend cap's is `tasks.spend_cap`).

The sums themselves are Prefect-free (`evolink.spend`), and every record is read and written
through the record store (`evolink.records`); this is their glue:

- read the campaign manifests and the job records of a storage block (and, given credentials,
  ask EvoLink for the bills the records do not know) → a `SpendReport`; store it as CSV and
  JSON under `_reports/spend/<period>.csv|json` and publish it as the artifacts `evolink-spend`
  (table) and `evolink-spend-summary` (markdown). The report reads every record of the period:
  it is a report, not the hot path (the cap reads the running total instead);
- what a job records for the report: its run's origin in the submit record (`run_origin`) and
  the bill of a job that ended without a result record (`record_bill`).

`reserve_spend`, `spend_cap_lock` and the rest of the cap live in `tasks.spend_cap` and are
re-exported here, where callers have always imported them.

Plain async functions, not Prefect tasks: `prefect-evolink spend` runs them without a flow.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Final

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.logging.loggers import get_run_logger

from evolink.campaign import CampaignManifest
from evolink.cost import BilledCost
from evolink.jobs import SubmitRecord, utcnow
from evolink.layout import report_keys as report_keys
from evolink.layout import reservation_key, reservations_prefix
from evolink.records import RecordStore
from evolink.recovery import TaskReading
from evolink.spend import (
    NO_DEPLOYMENT,
    ORIGIN_FIELD,
    UNKNOWN,
    BillNote,
    HeldReservation,
    JobFiles,
    Reservation,
    RunOrigin,
    SpendReport,
    build_report,
    classify,
    collect_jobs,
    held_reservations,
    unknown_bills,
)
from evolink.timezones import zone
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.recovery import ask_evolink
from prefect_evolink.tasks.reporting import artifact_key
from prefect_evolink.tasks.spend_cap import (
    LOCK_LEASE_SECONDS,
    LOCK_TIMEOUT_SECONDS,
    SPEND_CAP_LIMIT,
    SpendReservation,
    ended_flow_runs,
    ensure_spend_cap_limit,
    reserve_spend,
    spend_cap_lock,
)
from prefect_evolink.tasks.spend_report import report_csv, report_markdown, table_rows

logger = logging.getLogger(__name__)

TABLE_ARTIFACT: Final = "evolink-spend"
SUMMARY_ARTIFACT: Final = "evolink-spend-summary"
MAX_ASKED: Final = 500
"""Most tasks one report asks EvoLink about (the rest stay unknown, counted at estimate)."""


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logger


# --- reading storage (through the record store) --------------------------------------------------


async def read_job_files(
    storage: AssetStorage,
    problems: list[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, JobFiles]:
    """The records of every job in storage; result and bill records only of jobs submitted in
    [since, until) (the others are not counted, so not read). `RecordStore.read_job_files`."""
    return await RecordStore(storage).read_job_files(problems, since=since, until=until)


async def read_manifests(
    storage: AssetStorage, campaigns: set[str], problems: list[str]
) -> dict[str, CampaignManifest]:
    """The manifest of every campaign named (those the job records name)."""
    return await RecordStore(storage).read_manifests(campaigns, problems)


async def read_reservations(
    storage: AssetStorage, period: str, problems: list[str]
) -> list[Reservation]:
    return await RecordStore(storage).read_reservations(period, problems)


async def gather_spend(
    storage: AssetStorage,
    *,
    since: datetime | None,
    until: datetime | None,
    timezone: str = "UTC",
    credentials: EvoLinkCredentials | None = None,
    reservations: str | None = None,
    exclude_reservation: str | None = None,
    check_runs: bool = False,
) -> SpendReport:
    """What storage says the jobs submitted in [since, until) cost (`evolink.spend`): real
    spend in the totals, the bundled simulator's jobs summed apart (`simulator_totals`).

    Args:
        storage: The storage block the runs used.
        since: First instant counted (None: from the start).
        until: First instant not counted (None: up to now).
        timezone: IANA time zone of the month dimension and the period's name.
        credentials: When given, EvoLink is asked for the bill of every task the records do
            not know (at most `MAX_ASKED`); a task that failed uncharged then drops out.
        reservations: The period whose reservations (of running runs) are listed.
        exclude_reservation: A reservation id left out (the checking run's own).
        check_runs: Ask the Prefect API which reserving flow runs have ended.
    """
    zone(timezone)
    problems: list[str] = []
    jobs = await read_job_files(storage, problems, since=since, until=until)
    campaigns = {
        classify(f.namespace)[1] for f in jobs.values() if classify(f.namespace)[0] == "campaign"
    }
    manifests = await read_manifests(storage, campaigns, problems)
    readings: dict[str, TaskReading] = {}
    if credentials is not None:
        asked = unknown_bills(manifests, jobs)
        if len(asked) > MAX_ASKED:
            problems.append(f"{len(asked) - MAX_ASKED} unknown bill(s) not asked (limit)")
        readings = await ask_evolink(asked[:MAX_ASKED], credentials)
    every = collect_jobs(manifests, jobs, readings)
    chosen = [
        job
        for job in every
        if (since is None or job.submitted_at >= since)
        and (until is None or job.submitted_at < until)
    ]
    held: list[HeldReservation] = []
    if reservations is not None:
        stored = await read_reservations(storage, reservations, problems)
        live = [r for r in stored if r.released_at is None and r.flow_run_id]
        ended = await ended_flow_runs([r.flow_run_id or "" for r in live]) if check_runs else set()
        held = held_reservations(
            stored, chosen, now=utcnow(), ended_runs=ended, exclude=exclude_reservation
        )
    for problem in problems:
        _logger().warning("%s", problem)
    return build_report(
        chosen,
        since=since,
        until=until,
        timezone=timezone,
        campaigns=sorted(manifests),
        reserved=held,
        evolink_asked=credentials is not None,
        problems=problems,
    )


# --- storing and publishing -----------------------------------------------------------------------


async def store_spend_report(report: SpendReport, storage: AssetStorage) -> tuple[str, str]:
    """`_reports/spend/<period>.csv` (the totals and every group) and `.json` (everything,
    each job included); returns their URIs."""
    return await RecordStore(storage).put_spend_report(report.period, report_csv(report), report)


async def publish_spend_report(report: SpendReport, *, csv_uri: str, json_uri: str) -> None:
    """The table artifact `evolink-spend` and the markdown artifact `evolink-spend-summary`
    (stable keys: the Artifacts page shows every period's report in one history)."""
    await acreate_table_artifact(
        key=artifact_key(TABLE_ARTIFACT),
        table=table_rows(report),
        description=f"EvoLink spend {report.period}: totals by dimension ({csv_uri})",
    )
    await acreate_markdown_artifact(
        key=artifact_key(SUMMARY_ARTIFACT),
        markdown=report_markdown(report) + f"\nStored: `{csv_uri}`, `{json_uri}`\n",
        description=f"EvoLink spend {report.period}",
    )


# --- what a job records for the report ------------------------------------------------------------

_DEPLOYMENT_NAMES: dict[str, str] = {}


async def run_origin() -> dict[str, Any]:
    """The current run as a submit record stores it (`origin`): flow run id, flow, and
    '<flow>/<deployment>' — or None for a run not started from a deployment, 'unknown' when it
    could not be read. Never raises: a submit must not fail over its bookkeeping."""
    try:
        context = FlowRunContext.get()
        run = context.flow_run if context else None
        if context is None or run is None:
            return RunOrigin(deployment=UNKNOWN).model_dump(mode="json")
        flow = context.flow.name if context.flow else None
        deployment = None
        if run.deployment_id is not None:
            cached = _DEPLOYMENT_NAMES.get(str(run.deployment_id))
            if cached is None:
                async with get_client() as client:
                    found = await client.read_deployment(run.deployment_id)
                cached = f"{flow or found.flow_id}/{found.name}"
                _DEPLOYMENT_NAMES[str(run.deployment_id)] = cached
            deployment = cached
        return RunOrigin(flow_run_id=str(run.id), flow=flow, deployment=deployment).model_dump(
            mode="json"
        )
    except Exception as error:  # noqa: BLE001 — bookkeeping only
        _logger().debug("Origin of the run not read: %s", error)
        return RunOrigin(deployment=UNKNOWN).model_dump(mode="json")


def with_origin(record: dict[str, Any], origin: dict[str, Any]) -> dict[str, Any]:
    """A submit record's JSON with the run's origin (read back by `evolink.spend.origin_of`)."""
    return {**record, ORIGIN_FIELD: origin}


async def record_bill(
    storage: AssetStorage,
    submit: SubmitRecord,
    *,
    status: str,
    billed: BilledCost | None,
    note: str = "",
) -> None:
    """Store `_jobs/<key>/bill.json`: the bill of a job that ended without a result record
    (failed or cancelled at EvoLink, or paid but not all stored). Best effort, never raises."""
    bill = BillNote(
        job_key=submit.job_key,
        task_id=submit.task_id,
        status=status,
        billed_usd=None if billed is None or billed.usd is None else str(billed.usd),
        billed_credits=None if billed is None or billed.credits is None else str(billed.credits),
        note=note[:500],
    )
    try:
        await RecordStore(storage).put_bill(bill)
    except Exception as error:  # noqa: BLE001 — the spend report counts it at its estimate
        _logger().warning("Bill of task %s not recorded: %s", submit.task_id, error)


__all__ = [
    "LOCK_LEASE_SECONDS",
    "LOCK_TIMEOUT_SECONDS",
    "NO_DEPLOYMENT",
    "SPEND_CAP_LIMIT",
    "SpendReservation",
    "ended_flow_runs",
    "ensure_spend_cap_limit",
    "gather_spend",
    "publish_spend_report",
    "read_job_files",
    "read_manifests",
    "read_reservations",
    "record_bill",
    "report_keys",
    "reservation_key",
    "reservations_prefix",
    "reserve_spend",
    "run_origin",
    "spend_cap_lock",
    "store_spend_report",
    "with_origin",
]
