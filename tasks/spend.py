"""Spend across runs in storage, and the spend cap's check with reservations.

The sums themselves are Prefect-free (`evolink.spend`); this is their glue:

- read the campaign manifests and the job records of a storage block (and, given credentials,
  ask EvoLink for the bills the records do not know) → a `SpendReport`; store it as CSV and
  JSON under `_reports/spend/<period>.csv|json` and publish it as the artifacts `evolink-spend`
  (table) and `evolink-spend-summary` (markdown);
- `reserve_spend`: the cap check a campaign, product or ad-hoc run makes before it sends
  anything. Under the global concurrency limit `evolink-spend-cap` (one slot, created when
  missing, acquired strictly) it sums the period's spend and the reservations of other running
  runs, refuses with `SpendCapExceededError` when this run's estimate does not fit, and else
  stores this run's reservation (`_reports/spend/reservations/<period>/<flow run id>.json`)
  before the slot is released. The run releases it when it ends (`SpendReservation.release`,
  in a `finally`); until then it counts less what the run's own jobs already recorded. A
  reservation whose flow run ended (any final state) or that is older than the cap's
  `reservation_hours` no longer counts, so a killed run cannot hold the cap forever. The
  period's spend is the real spend only: jobs made at the bundled simulator are synthetic
  bills nobody paid, so they never count against a cap (`SpendReport.simulator_totals`).
- what a job records for the report: its run's origin in the submit record (`run_origin`) and
  the bill of a job that ended without a result record (`record_bill`).

Plain async functions, not Prefect tasks: `prefect-evolink spend` runs them without a flow.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound
from prefect.logging.loggers import get_run_logger
from pydantic import ValidationError

from evolink.campaign import CampaignManifest
from evolink.cost import BilledCost, usd
from evolink.errors import ProviderLimitsError, SpendCapExceededError
from evolink.jobs import (
    JOBS_PREFIX,
    JobRecord,
    SubmitRecord,
    job_record_key,
    submit_record_key,
    utcnow,
)
from evolink.recovery import TaskReading
from evolink.spend import (
    NO_DEPLOYMENT,
    ORIGIN_FIELD,
    REPORTS_PREFIX,
    RESERVATIONS_DIR,
    UNKNOWN,
    BillNote,
    HeldReservation,
    JobFiles,
    PeriodWindow,
    Reservation,
    RunOrigin,
    SpendReport,
    bill_note_key,
    build_report,
    cap_refusal,
    classify,
    collect_jobs,
    held_reservations,
    origin_of,
    period_window,
    unknown_bills,
)
from evolink.timezones import zone
from prefect_evolink.blocks import AssetStorage, safe_key
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.blocks.spend_cap import EvoLinkSpendCap
from prefect_evolink.tasks.recovery import (
    READERS,
    _bounded,
    ask_evolink,
    manifest_key,
    read_models,
)
from prefect_evolink.tasks.reporting import artifact_key
from prefect_evolink.tasks.spend_report import report_csv, report_markdown, table_rows

logger = logging.getLogger(__name__)

SPEND_CAP_LIMIT: Final = "evolink-spend-cap"
"""Global concurrency limit (1 slot) held while a run checks the cap and stores its reservation."""
LOCK_LEASE_SECONDS: Final = 60.0
LOCK_TIMEOUT_SECONDS: Final = 600.0
TABLE_ARTIFACT: Final = "evolink-spend"
SUMMARY_ARTIFACT: Final = "evolink-spend-summary"
MAX_ASKED: Final = 500
"""Most tasks one report asks EvoLink about (the rest stay unknown, counted at estimate)."""

_RECORD_FILES: Final = ("submit.json", "result.json", "bill.json")


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logger


# --- storage keys ---------------------------------------------------------------------------------


def report_keys(period: str) -> tuple[str, str]:
    """(`_reports/spend/<period>.csv`, `….json`)."""
    prefix = REPORTS_PREFIX.split("/")
    return safe_key(*prefix, f"{period}.csv"), safe_key(*prefix, f"{period}.json")


def reservations_prefix(period: str) -> str:
    return safe_key(*REPORTS_PREFIX.split("/"), RESERVATIONS_DIR, period) + "/"


def reservation_key(period: str, reservation_id: str) -> str:
    """`_reports/spend/reservations/<period>/<reservation id>.json`."""
    return safe_key(*REPORTS_PREFIX.split("/"), RESERVATIONS_DIR, period, f"{reservation_id}.json")


# --- reading storage ------------------------------------------------------------------------------


async def read_job_files(
    storage: AssetStorage,
    problems: list[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, JobFiles]:
    """The records of every job in storage; result and bill records only of jobs submitted in
    [since, until) (the others are not counted, so not read)."""
    files: dict[str, set[str]] = defaultdict(set)
    for key in await storage.alist_keys(f"{JOBS_PREFIX}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] in _RECORD_FILES:
            files[parts[1]].add(parts[2])
    with_submit = sorted(k for k, names in files.items() if "submit.json" in names)
    raw = await _bounded([storage.aget_json(submit_record_key(k)) for k in with_submit], READERS)
    submits: dict[str, tuple[SubmitRecord, RunOrigin | None]] = {}
    for key, data in zip(with_submit, raw, strict=True):
        try:
            submits[key] = (SubmitRecord.model_validate(data), origin_of(data))
        except (ValidationError, TypeError, AttributeError) as error:
            problems.append(f"{submit_record_key(key)}: unreadable ({error})")

    def wanted(key: str) -> bool:
        if key not in submits:
            return True  # a result without its submit record: read it to know when it was sent
        when = submits[key][0].submitted_at
        return (since is None or when >= since) and (until is None or when < until)

    chosen = [k for k in files if wanted(k)]
    results_to_read = [k for k in chosen if "result.json" in files[k]]
    bills_to_read = [k for k in chosen if "bill.json" in files[k] and "result.json" not in files[k]]
    raw_results = await _bounded(
        [storage.aget_json(job_record_key(k)) for k in results_to_read], READERS
    )
    raw_bills = await _bounded(
        [storage.aget_json(bill_note_key(k)) for k in bills_to_read], READERS
    )
    results: dict[str, JobRecord] = {}
    for key, data in zip(results_to_read, raw_results, strict=True):
        try:
            results[key] = JobRecord.model_validate(data)
        except ValidationError as error:
            problems.append(f"{job_record_key(key)}: unreadable ({error.error_count()} errors)")
    bills: dict[str, BillNote] = {}
    for key, data in zip(bills_to_read, raw_bills, strict=True):
        try:
            bills[key] = BillNote.model_validate(data)
        except ValidationError as error:
            problems.append(f"{bill_note_key(key)}: unreadable ({error.error_count()} errors)")
    found: dict[str, JobFiles] = {}
    for key in files:
        submit, origin = submits.get(key, (None, None))
        if submit is None and key not in results:
            continue  # an intent only: never sent, or its submission is unknown (not billed)
        found[key] = JobFiles(
            job_key=key, submit=submit, origin=origin, result=results.get(key), bill=bills.get(key)
        )
    return found


async def read_manifests(
    storage: AssetStorage, campaigns: set[str], problems: list[str]
) -> dict[str, CampaignManifest]:
    """The manifest of every campaign named (those the job records name)."""
    names = sorted(campaigns)
    raw = await _bounded([storage.aget_json(manifest_key(name)) for name in names], READERS)
    manifests: dict[str, CampaignManifest] = {}
    for name, data in zip(names, raw, strict=True):
        if data is None:
            continue
        try:
            manifests[name] = CampaignManifest.model_validate(data)
        except ValidationError as error:
            problems.append(f"{manifest_key(name)}: unreadable ({error.error_count()} errors)")
    return manifests


async def read_reservations(
    storage: AssetStorage, period: str, problems: list[str]
) -> list[Reservation]:
    return await read_models(
        storage, reservations_prefix(period), Reservation, "reservation", problems
    )


async def ended_flow_runs(ids: list[str]) -> set[str]:
    """Which of these flow runs are in a final state (their records are the whole story).
    A run the API does not know, or an API that does not answer, leaves the reservation held."""
    wanted: list[UUID] = []
    for value in ids:
        try:
            wanted.append(UUID(value))
        except ValueError:
            continue
    if not wanted:
        return set()
    try:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=wanted))
            )
    except Exception as error:  # noqa: BLE001 — unknown: the reservations stay held
        _logger().warning("Could not read the flow runs of the spend reservations: %s", error)
        return set()
    return {str(run.id) for run in runs if run.state is not None and run.state.is_final()}


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
    csv_key, json_key = report_keys(report.period)
    stored_csv = await storage.aput_bytes(
        csv_key, report_csv(report).encode("utf-8"), content_type="text/csv"
    )
    stored_json = await storage.aput_json(json_key, report)
    return stored_csv.uri, stored_json.uri


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


# --- the cap --------------------------------------------------------------------------------------


async def ensure_spend_cap_limit() -> str:
    """Create `evolink-spend-cap` with one slot when missing; make it one active slot when it
    is not (more slots would not be a lock). Returns created / updated / unchanged."""
    async with get_client() as client:
        try:
            current = await client.read_global_concurrency_limit_by_name(SPEND_CAP_LIMIT)
        except ObjectNotFound:
            try:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=SPEND_CAP_LIMIT, limit=1)
                )
            except ObjectAlreadyExists:  # another run created it meanwhile
                return "unchanged"
            return "created"
        if current.limit == 1 and current.active:
            return "unchanged"
        await client.update_global_concurrency_limit(
            SPEND_CAP_LIMIT, GlobalConcurrencyLimitUpdate(limit=1, active=True)
        )
        return "updated"


@asynccontextmanager
async def spend_cap_lock(timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> AsyncIterator[None]:
    """Hold the one slot of `evolink-spend-cap` for the body (strict: never skipped)."""
    await ensure_spend_cap_limit()
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(
                concurrency(
                    SPEND_CAP_LIMIT,
                    occupy=1,
                    timeout_seconds=timeout_seconds,
                    lease_duration=LOCK_LEASE_SECONDS,
                    strict=True,
                    raise_on_lease_renewal_failure=False,
                )
            )
        except (ConcurrencySlotAcquisitionError, TimeoutError) as error:
            raise ProviderLimitsError(
                f"could not hold the spend cap lock {SPEND_CAP_LIMIT!r}: {error} (nothing was sent)"
            ) from error
        yield


@dataclass
class SpendReservation:
    """A run's reservation against a spend cap; `release()` when the run ends (never raises)."""

    storage: AssetStorage | None = None
    key: str | None = None
    reservation: Reservation | None = None

    async def release(self) -> None:
        if self.storage is None or self.key is None or self.reservation is None:
            return
        released = self.reservation.model_copy(update={"released_at": utcnow()})
        try:
            await self.storage.aput_json(self.key, released)
        except Exception as error:  # noqa: BLE001 — it expires, and ends with its flow run
            _logger().warning("Spend reservation %s not released: %s", self.key, error)
        else:
            self.reservation = None


def _cap_name(cap: EvoLinkSpendCap) -> str:
    name = getattr(cap, "_block_document_name", None)
    return repr(name) if name else "(unsaved block)"


def _flow_run_id() -> str | None:
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return str(run.id) if run is not None else None


async def reserve_spend(
    cap: EvoLinkSpendCap | None,
    storage: AssetStorage,
    estimate_usd: Decimal,
    label: str,
) -> SpendReservation:
    """Check the cap and reserve this run's estimate, or raise `SpendCapExceededError`.

    Under the `evolink-spend-cap` lock: the period's spend (manifests and job records in
    `storage`) + what other running runs reserved + `estimate_usd` must fit `cap.limit_usd`;
    then the reservation is stored. Without a cap nothing is checked or stored. The spend is
    the real spend only (`SpendReport.totals`): what the bundled simulator "billed" is
    synthetic, and a cap that counted it would refuse real work over money never spent.

    Args:
        cap: The spend cap block, or None.
        storage: The run's storage: where the spend is summed and the reservation kept.
        estimate_usd: The most this run is estimated to spend.
        label: What the run is, for messages and the reservation ('campaign X', 'product Y').

    Returns:
        The reservation; release it when the run ends.

    Raises:
        SpendCapExceededError: The estimate does not fit; the message names the cap, the
            spend so far, the reservations and the estimate. Nothing was sent.
        ProviderLimitsError: The lock could not be held.
    """
    if cap is None:
        return SpendReservation()
    where = zone(cap.timezone)
    now = datetime.now(where)
    window: PeriodWindow = period_window(now, cap.period, where)
    run_id = _flow_run_id()
    reservation_id = run_id or uuid.uuid4().hex
    async with spend_cap_lock():
        report = await gather_spend(
            storage,
            since=window.start,
            until=window.end,
            timezone=cap.timezone,
            reservations=window.label,
            exclude_reservation=reservation_id,
            check_runs=True,
        )
        spent = Decimal(report.totals.total_usd)  # real jobs only, never the simulator's
        refusal = cap_refusal(
            cap=_cap_name(cap),
            limit_usd=Decimal(cap.limit_usd),
            window=window,
            spent_usd=spent,
            reserved=report.reserved,
            estimate_usd=estimate_usd,
            label=label,
        )
        if refusal:
            raise SpendCapExceededError(refusal)
        reservation = Reservation(
            reservation_id=reservation_id,
            flow_run_id=run_id,
            label=label,
            period=window.label,
            estimated_usd=str(estimate_usd),
            reserved_at=now,
            expires_at=now + timedelta(hours=cap.reservation_hours),
        )
        key = reservation_key(window.label, reservation_id)
        await storage.aput_json(key, reservation)
    left = Decimal(cap.limit_usd) - spent - report.reserved_usd - estimate_usd
    _logger().info(
        "Spend cap %s (%s per %s, %s): spent so far %s, reserved by other runs %s, this run "
        "reserves %s; %s left (an estimate check with reservations)",
        _cap_name(cap),
        usd(cap.limit_usd),
        cap.period,
        window.label,
        usd(spent),
        usd(report.reserved_usd),
        usd(estimate_usd),
        usd(left),
    )
    if report.simulator_totals.jobs:
        _logger().info(
            "Not counted against the cap: %s over %d job(s) of the bundled simulator "
            "(synthetic, not billed by EvoLink)",
            usd(report.simulator_totals.total_usd),
            report.simulator_totals.jobs,
        )
    return SpendReservation(storage, key, reservation)


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
        await storage.aput_json(bill_note_key(submit.job_key), bill)
    except Exception as error:  # noqa: BLE001 — the spend report counts it at its estimate
        _logger().warning("Bill of task %s not recorded: %s", submit.task_id, error)


__all__ = [
    "NO_DEPLOYMENT",
    "SPEND_CAP_LIMIT",
    "SpendReservation",
    "ensure_spend_cap_limit",
    "gather_spend",
    "publish_spend_report",
    "record_bill",
    "reserve_spend",
    "run_origin",
    "spend_cap_lock",
    "store_spend_report",
    "with_origin",
]
