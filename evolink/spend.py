"""Spend across runs: what storage says EvoLink billed, summed per period, and the spend cap.

Storage holds the source of truth about money: what EvoLink billed each task, as the runs read
it. This module adds it up — by kind of job, campaign, product, deployment, month, stage and
quality — with the drift between estimate and bill and the count of bills nobody could read.
Prefect-free: reading storage, asking EvoLink and publishing are the caller's
(`prefect_evolink.tasks.spend`), and so is laying a report out as CSV, markdown or text
(`prefect_evolink.tasks.spend_report`).

**Where each paid job comes from, counted once per EvoLink task id** (a task is billed once,
however many runs reattached to it or reused its result):

1. The campaign manifests (`<campaign>/manifest.json`): every cost row, as the run (or
   `prefect-evolink report`) booked it — billed, or an unknown bill counted at its estimate. A
   campaign's totals here are therefore its manifest's totals.
2. The job records (`_jobs/<job_key>/`) of every task no manifest lists: ad-hoc jobs
   (`adhoc/<name>`), product jobs (`product/<id>`), and campaign jobs an older version of a brief
   paid for. `result.json` carries the bill; `bill.json` the bill of a job that ended without a
   result record (failed or cancelled at EvoLink — not charged unless its body says so — or
   completed but not all stored); `submit.json` alone means the bill is unknown and the job is
   counted at its estimate, unless EvoLink was asked (`TaskReading`). A submit-only job of a
   campaign whose finished manifest was written after it is the run's own business: the run
   booked every job it paid for, so one without a row was not charged.

Where a manifest row's bill is unknown and a record (or EvoLink) knows it, the known bill wins.
A job counts in the period in which it was submitted (`SubmitRecord.submitted_at`).

**Which deployment a job came from** is recorded, from now on, in its submit record
(`origin`: flow run id, flow, `<flow>/<deployment>` or null for a run not started from a
deployment). Records written before that say nothing and are reported as `unknown`.

**Simulator jobs are never real spend.** A job made at the bundled simulator (its records say
`simulator`, or — records older than endpoints — its images came from a loopback or private
host: `evolink.endpoint.made_on_simulator`; a manifest row carries the flag itself, and one
written before rows did takes its job record's verdict) cost nobody anything: its bill is
synthetic. Such jobs are still counted once each and listed (`SpendJob.simulator`), but summed
apart (`SpendReport.simulator_totals`, its own line and CSV row); the totals, every dimension and
the spend cap count the real jobs only.

**The spend cap** (`EvoLinkSpendCap`) is an estimate check with reservations, because EvoLink
holds no money server-side: before a run sends anything, the period's spend plus the
estimates other running runs reserved plus this run's estimate must fit the cap; then the run
records its own reservation, which counts until the run's job records replace it (the spend
its flow run's jobs recorded is taken off it) and is released when the run ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from evolink.campaign import CampaignManifest, JobRow, parse_campaign_namespace
from evolink.cost import usd
from evolink.endpoint import made_on_simulator
from evolink.jobs import JOBS_PREFIX, JobRecord, SubmitRecord, utcnow
from evolink.recovery import TaskReading
from evolink.timezones import zone as zone  # re-exported; its own module for the spend cap block

REPORTS_PREFIX: Final = "_reports/spend"
"""Where the reports (`<period>.csv`, `<period>.json`) and the reservations are stored."""
RESERVATIONS_DIR: Final = "reservations"
ORIGIN_FIELD: Final = "origin"
"""The key of the run's origin in `submit.json` (absent in records written before it)."""
UNKNOWN: Final = "unknown"
"""What a dimension says when the records do not tell (e.g. the deployment of an old job)."""
NO_DEPLOYMENT: Final = "(no deployment)"
NONE: Final = "-"
SINGLE_STAGE: Final = "single"
"""The stage of a job that is not part of a campaign (ad hoc or product)."""

SIMULATOR: Final = "simulator"
"""The CSV/table row (`dimension`) of the simulator's jobs, summed apart from the real spend."""
SIMULATOR_LABEL: Final = "bundled simulator: synthetic, not billed by EvoLink"
"""How reports name the simulator's jobs wherever they show them."""

DIMENSIONS: Final = ("kind", "campaign", "product", "deployment", "month", "stage", "quality")
"""The totals of a report, one table per dimension."""

Period = Literal["month", "week", "day"]
Kind = Literal["campaign", "product", "adhoc", "other"]
Source = Literal["manifest", "result", "bill", "submit", "evolink"]


def bill_note_key(key: str) -> str:
    """`_jobs/<key>/bill.json`: the bill of a job that ended without a result record."""
    return f"{JOBS_PREFIX}/{key}/bill.json"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class RunOrigin(_Model):
    """Which run sent a job: stored in its submit record under `origin`."""

    flow_run_id: str | None = None
    flow: str | None = None
    deployment: str | None = Field(
        default=None, description="'<flow>/<deployment>'; None: not started from a deployment"
    )

    @property
    def deployment_label(self) -> str:
        return self.deployment or NO_DEPLOYMENT


class BillNote(_Model):
    """The bill of a job that ended without a result record (`bill.json` beside its submit)."""

    job_key: str
    task_id: str
    status: str = Field(description="failed, cancelled or completed (paid, not all stored)")
    billed_usd: str | None
    billed_credits: str | None
    note: str = ""
    written_at: datetime = Field(default_factory=utcnow)

    @property
    def charged(self) -> bool:
        return bool(Decimal(self.billed_usd or 0) > 0 or Decimal(self.billed_credits or 0) > 0)


@dataclass(frozen=True)
class JobFiles:
    """The records of one job key that matter for spend."""

    job_key: str
    submit: SubmitRecord | None = None
    origin: RunOrigin | None = None  # None: the submit record predates origins
    result: JobRecord | None = None
    bill: BillNote | None = None

    @property
    def task_id(self) -> str | None:
        if self.submit is not None:
            return self.submit.task_id
        return self.result.task_id if self.result is not None else None

    @property
    def namespace(self) -> str | None:
        if self.submit is not None:
            return self.submit.namespace
        return self.result.namespace if self.result is not None else None

    @property
    def submitted_at(self) -> datetime | None:
        if self.submit is not None:
            return self.submit.submitted_at
        return self.result.submitted_at if self.result is not None else None

    @property
    def simulator(self) -> bool:
        """Whether the job was made at the bundled simulator (its bill is not real money).

        The records say so (`simulator`). Records written before endpoints were recorded carry
        no `endpoint` (None once parsed): `made_on_simulator` then looks at where the images
        came from, which only a result record tells — a submit-only old job counts as real,
        the safe side for a spend cap.
        """
        records = [r for r in (self.submit, self.result) if r is not None]
        if any(record.simulator for record in records):
            return True
        if any(record.endpoint for record in records):
            return False
        # exclude_none: a missing `endpoint` is absent again, as in the stored JSON
        return any(made_on_simulator(r.model_dump(mode="json", exclude_none=True)) for r in records)


def origin_of(submit_data: Mapping[str, Any]) -> RunOrigin | None:
    """The origin stored in a raw submit record, or None for a record written before origins."""
    raw = submit_data.get(ORIGIN_FIELD)
    return RunOrigin.model_validate(raw) if isinstance(raw, Mapping) else None


class SpendJob(_Model):
    """One paid job (one EvoLink task) as the spend report counts it."""

    task_id: str
    job_key: str | None
    namespace: str | None
    kind: Kind
    campaign: str = NONE
    product: str = NONE
    asset: str = NONE
    deployment: str = UNKNOWN
    flow_run_id: str | None = None
    stage: str
    quality: str
    submitted_at: datetime
    estimated_usd: str
    billed_usd: str | None = Field(description="None: the bill is unknown (counted at estimate)")
    billed_credits: str | None = Field(default=None, description="None: not known")
    source: Source
    note: str = ""
    simulator: bool = Field(
        default=False,
        description="made at the bundled simulator: listed, summed apart, never real spend",
    )

    @property
    def counted_usd(self) -> Decimal:
        """What the job adds to a total: its bill, or its estimate while the bill is unknown."""
        return Decimal(self.billed_usd if self.billed_usd is not None else self.estimated_usd)

    def value(self, dimension: str, zone: tzinfo) -> str:
        if dimension == "month":
            return self.submitted_at.astimezone(zone).strftime("%Y-%m")
        return str(getattr(self, dimension))


def classify(namespace: str | None) -> tuple[Kind, str, str, str]:
    """A job namespace → (kind, campaign, product, asset)."""
    if namespace is None:
        return "other", NONE, NONE, NONE
    parsed = parse_campaign_namespace(namespace)
    if parsed is not None:
        return "campaign", parsed[0], NONE, parsed[1]
    head, _, rest = namespace.partition("/")
    if head == "product" and rest:
        return "product", NONE, rest, NONE
    if head == "adhoc" and rest:
        return "adhoc", NONE, NONE, NONE
    return "other", NONE, NONE, NONE


def _deployment(files: JobFiles | None) -> tuple[str, str | None]:
    if files is None or files.origin is None:
        return UNKNOWN, None
    return files.origin.deployment_label, files.origin.flow_run_id


def _stage(namespace: str | None) -> str:
    parsed = parse_campaign_namespace(namespace) if namespace else None
    return parsed[2] if parsed else SINGLE_STAGE


def _reading_bill(reading: TaskReading | None) -> tuple[bool, str | None]:
    """(EvoLink answered with a final word, the bill it gave: None = not charged)."""
    if reading is None or reading.status is None:
        return False, None
    billed = reading.billed
    charged = bool((billed.usd or 0) > 0 or (billed.credits or 0) > 0)
    if reading.status == "completed" and billed.usd is not None:
        return True, str(billed.usd)
    if reading.status in ("failed", "cancelled"):
        return True, str(billed.usd) if charged and billed.usd is not None else None
    return False, None


def _reading_credits(reading: TaskReading | None) -> str | None:
    credits = reading.billed.credits if reading is not None else None
    return None if credits is None else str(credits)


def _from_row(
    campaign: str,
    manifest: CampaignManifest,
    row: JobRow,
    files: JobFiles | None,
    reading: TaskReading | None,
) -> SpendJob:
    deployment, run_id = _deployment(files)
    source: Source = "manifest"
    billed, note = row.billed_usd, row.failed or ""
    credits = row.billed_credits if billed is not None else None
    result = files.result if files is not None else None
    bill = files.bill if files is not None else None
    if billed is None and result is not None and result.billed_usd is not None:
        billed, credits, source = result.billed_usd, result.billed_credits, "result"
    if billed is None and bill is not None and bill.billed_usd is not None:
        billed, credits, source = bill.billed_usd, bill.billed_credits, "bill"
    if billed is None:
        final, amount = _reading_bill(reading)
        if final:
            billed, credits, source = amount or "0", _reading_credits(reading), "evolink"
    # A row written before rows carried the flag (no `endpoint`) takes its records' verdict.
    simulator = row.simulator or (row.endpoint is None and files is not None and files.simulator)
    submitted = files.submitted_at if files is not None else None
    return SpendJob(
        task_id=row.task_id,
        job_key=files.job_key if files is not None else None,
        namespace=files.namespace if files is not None else None,
        kind="campaign",
        campaign=campaign,
        asset=row.asset,
        deployment=deployment,
        flow_run_id=run_id,
        stage=row.stage,
        quality=row.quality,
        submitted_at=submitted or manifest.started_at,
        estimated_usd=row.estimated_usd,
        billed_usd=billed,
        billed_credits=credits,
        source=source,
        note=note,
        simulator=simulator,
    )


def _covered_by_manifest(files: JobFiles, manifests: Mapping[str, CampaignManifest]) -> bool:
    """A submitted campaign job the campaign's finished manifest has no row for: not charged."""
    kind, campaign, _, _ = classify(files.namespace)
    manifest = manifests.get(campaign) if kind == "campaign" else None
    submitted = files.submitted_at
    return (
        manifest is not None
        and manifest.run_state != "running"
        and submitted is not None
        and submitted <= manifest.finished_at
    )


def _from_files(
    files: JobFiles,
    manifests: Mapping[str, CampaignManifest],
    reading: TaskReading | None,
) -> SpendJob | None:
    """A job no manifest lists, from its records; None when it was not a paid job."""
    task_id, submitted = files.task_id, files.submitted_at
    if task_id is None or submitted is None:
        return None
    kind, campaign, product, asset = classify(files.namespace)
    deployment, run_id = _deployment(files)
    note = ""
    source: Source
    billed: str | None
    credits: str | None = None
    if files.result is not None:
        estimated = files.result.estimated_usd
        quality = files.result.request.quality
        billed, source = files.result.billed_usd, "result"
        credits = files.result.billed_credits
    elif files.submit is not None:
        estimated = str(files.submit.estimate.get("usd", "0"))
        quality = files.submit.request.quality
        if files.bill is not None:
            if not files.bill.charged and files.bill.status in ("failed", "cancelled"):
                return None  # failed at EvoLink, not charged
            billed, source, note = files.bill.billed_usd, "bill", files.bill.note
            credits = files.bill.billed_credits
        else:
            final, amount = _reading_bill(reading)
            if final:
                if amount is None:
                    return None  # EvoLink says: failed, not charged
                billed, source = amount, "evolink"
                credits = _reading_credits(reading)
            elif _covered_by_manifest(files, manifests):
                return None
            else:
                billed, source = None, "submit"
                note = "no result record: bill unknown, counted at its estimate"
    else:
        return None
    return SpendJob(
        task_id=task_id,
        job_key=files.job_key,
        namespace=files.namespace,
        kind=kind,
        campaign=campaign,
        product=product,
        asset=asset,
        deployment=deployment,
        flow_run_id=run_id,
        stage=_stage(files.namespace),
        quality=quality,
        submitted_at=submitted,
        estimated_usd=estimated,
        billed_usd=billed,
        billed_credits=credits,
        source=source,
        note=note,
        simulator=files.simulator,
    )


def collect_jobs(
    manifests: Mapping[str, CampaignManifest],
    jobs: Mapping[str, JobFiles],
    readings: Mapping[str, TaskReading] | None = None,
) -> list[SpendJob]:
    """Every paid job, once per task id: manifest rows first, then the records of the rest.

    Args:
        manifests: The campaign manifests by campaign name.
        jobs: The job records by job key.
        readings: What EvoLink said about tasks whose bill the records do not know, by task id.
    """
    readings = readings or {}
    by_task: dict[str, JobFiles] = {}
    for files in jobs.values():
        task_id = files.task_id
        if task_id is not None and (task_id not in by_task or files.result is not None):
            by_task[task_id] = files
    found: dict[str, SpendJob] = {}
    for campaign in sorted(manifests):
        manifest = manifests[campaign]
        for row in manifest.jobs:
            if row.task_id not in found:
                records = by_task.get(row.task_id)
                reading = readings.get(row.task_id)
                found[row.task_id] = _from_row(campaign, manifest, row, records, reading)
    for task_id, files in by_task.items():
        if task_id in found:
            continue
        made = _from_files(files, manifests, readings.get(task_id))
        if made is not None:
            found[task_id] = made
    return sorted(found.values(), key=lambda job: (job.submitted_at, job.task_id))


def unknown_bills(
    manifests: Mapping[str, CampaignManifest], jobs: Mapping[str, JobFiles]
) -> list[str]:
    """Task ids whose bill EvoLink could tell: counted jobs with an unknown bill, and submitted
    jobs without a result or bill record (which may have failed uncharged)."""
    counted = collect_jobs(manifests, jobs)
    asked = {job.task_id for job in counted if job.billed_usd is None}
    for files in jobs.values():
        unsettled = files.submit is not None and files.result is None and files.bill is None
        if unsettled and files.submit and not _covered_by_manifest(files, manifests):
            asked.add(files.submit.task_id)
    return sorted(asked)


# --- periods --------------------------------------------------------------------------------------


def _midnight(day: date, where: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=where)


def _next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


@dataclass(frozen=True)
class PeriodWindow:
    """[start, end) of a period, and its label (`2026-10`, `2026-W41`, `2026-10-05`)."""

    start: datetime
    end: datetime
    label: str

    def contains(self, when: datetime) -> bool:
        return self.start <= when < self.end


def period_window(when: datetime, period: Period, where: tzinfo) -> PeriodWindow:
    """The calendar period (in time zone `where`) that contains `when`."""
    local = when.astimezone(where).date()
    if period == "month":
        first = local.replace(day=1)
        return PeriodWindow(
            _midnight(first, where), _midnight(_next_month(first), where), f"{first:%Y-%m}"
        )
    if period == "week":
        monday = local - timedelta(days=local.weekday())
        year, week, _ = monday.isocalendar()
        return PeriodWindow(
            _midnight(monday, where),
            _midnight(monday + timedelta(days=7), where),
            f"{year}-W{week:02d}",
        )
    if period == "day":
        return PeriodWindow(
            _midnight(local, where), _midnight(local + timedelta(days=1), where), f"{local}"
        )
    raise ValueError(f"period must be month, week or day, got {period!r}")


def previous_period(now: datetime, period: Period, where: tzinfo) -> PeriodWindow:
    """The period before the one `now` is in (what the monthly report reports)."""
    current = period_window(now, period, where)
    return period_window(current.start - timedelta(microseconds=1), period, where)


def parse_bound(text: str, where: tzinfo, *, end: bool) -> datetime:
    """`YYYY-MM`, `YYYY-MM-DD` or an ISO date-time → an instant.

    As a start (`end=False`) a month or a day means its first moment; as an end it means the
    moment after its last one, so `--until 2026-10` includes all of October. A date-time is
    taken as it is (a naive one in `where`).
    """
    text = text.strip()
    try:
        if len(text) == 7 and text[4] == "-":
            first = date(int(text[:4]), int(text[5:]), 1)
            return _midnight(_next_month(first) if end else first, where)
        if len(text) == 10:
            day = date.fromisoformat(text)
            return _midnight(day + timedelta(days=1) if end else day, where)
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise ValueError(
            f"not a month (YYYY-MM), a date (YYYY-MM-DD) or an ISO date-time: {text!r}"
        ) from error
    return moment if moment.tzinfo else moment.replace(tzinfo=where)


def window_label(since: datetime | None, until: datetime | None, where: tzinfo) -> str:
    """A period's name for keys and titles: `2026-10` for a calendar month, else the range."""
    if since is None and until is None:
        return "all"
    if since is not None and until is not None:
        month = period_window(since, "month", where)
        if month.start == since and month.end == until:
            return month.label

    def text(moment: datetime | None, *, last: bool) -> str:
        if moment is None:
            return "start" if not last else "now"
        local = moment.astimezone(where)
        if local.time() == time(0):
            return f"{(local - timedelta(days=1)).date() if last else local.date()}"
        return local.strftime("%Y-%m-%dT%H%M%S")

    return f"{text(since, last=False)}_{text(until, last=True)}"


# --- the report -----------------------------------------------------------------------------------


class SpendTotals(_Model):
    jobs: int
    estimated_usd: str = Field(description="sum of the estimates of every job")
    billed_usd: str = Field(description="sum of the bills that are known")
    billed_credits: str = Field(default="0", description="sum of the credits that are known")
    unknown_bills: int = Field(description="jobs whose bill is unknown (counted at estimate)")
    unknown_estimated_usd: str = Field(description="what those jobs are counted at")
    total_usd: str = Field(description="known bills + unknown ones at their estimates")
    drift_usd: str = Field(description="known bills − their estimates (> 0: billed more)")
    drift_ratio: str | None = Field(description="known bills / their estimates; None: no bill")


class SpendGroup(SpendTotals):
    dimension: str
    value: str


class Reservation(_Model):
    """A running run's estimate, held against a spend cap's period until its records replace it."""

    reservation_id: str
    flow_run_id: str | None
    label: str
    period: str
    estimated_usd: str
    reserved_at: datetime
    expires_at: datetime
    released_at: datetime | None = None


class HeldReservation(_Model):
    reservation: Reservation
    held_usd: str = Field(description="its estimate less what its run's jobs already recorded")


class SpendReport(_Model):
    """What storage says was spent in a period (see the module docstring).

    `totals` and `groups` are real spend only; the simulator's jobs are summed apart in
    `simulator_totals` (synthetic bills nobody paid), and `jobs` lists both, each marked.
    """

    period: str
    since: datetime | None
    until: datetime | None
    timezone: str
    generated_at: datetime = Field(default_factory=utcnow)
    totals: SpendTotals = Field(description="the real jobs (not the simulator's)")
    groups: list[SpendGroup] = Field(description="the real jobs, by every dimension")
    simulator_totals: SpendTotals = Field(
        default_factory=lambda: totals_of(()),
        description=f"the jobs of the {SIMULATOR_LABEL}; never in `totals`",
    )
    jobs: list[SpendJob] = Field(description="every job counted, real and simulator, each marked")
    campaigns: list[str] = Field(description="the campaigns whose manifests were read")
    reserved: list[HeldReservation] = Field(default_factory=list)
    evolink_asked: bool = False
    problems: list[str] = Field(default_factory=list, description="records that were unreadable")

    @property
    def reserved_usd(self) -> Decimal:
        return sum((Decimal(r.held_usd) for r in self.reserved), Decimal(0))

    @property
    def real_jobs(self) -> list[SpendJob]:
        return [job for job in self.jobs if not job.simulator]

    @property
    def simulator_jobs(self) -> list[SpendJob]:
        return [job for job in self.jobs if job.simulator]

    def group(self, dimension: str) -> dict[str, SpendGroup]:
        return {g.value: g for g in self.groups if g.dimension == dimension}


def totals_of(jobs: Iterable[SpendJob]) -> SpendTotals:
    every = list(jobs)
    known = [job for job in every if job.billed_usd is not None]
    unknown = [job for job in every if job.billed_usd is None]
    billed = sum((Decimal(job.billed_usd or 0) for job in known), Decimal(0))
    credits = sum((Decimal(job.billed_credits or 0) for job in known), Decimal(0))
    known_estimate = sum((Decimal(job.estimated_usd) for job in known), Decimal(0))
    at_estimate = sum((Decimal(job.estimated_usd) for job in unknown), Decimal(0))
    return SpendTotals(
        jobs=len(every),
        estimated_usd=str(sum((Decimal(job.estimated_usd) for job in every), Decimal(0))),
        billed_usd=str(billed),
        billed_credits=str(credits),
        unknown_bills=len(unknown),
        unknown_estimated_usd=str(at_estimate),
        total_usd=str(billed + at_estimate),
        drift_usd=str(billed - known_estimate),
        drift_ratio=f"{billed / known_estimate:.4f}" if known_estimate else None,
    )


def in_window(
    jobs: Iterable[SpendJob], since: datetime | None, until: datetime | None
) -> list[SpendJob]:
    return [
        job
        for job in jobs
        if (since is None or job.submitted_at >= since)
        and (until is None or job.submitted_at < until)
    ]


def held_reservations(
    reservations: Iterable[Reservation],
    jobs: Sequence[SpendJob],
    *,
    now: datetime,
    ended_runs: Iterable[str] = (),
    exclude: str | None = None,
) -> list[HeldReservation]:
    """The reservations that still count, each less the spend its own run already recorded.

    A reservation stops counting when it was released, when it expired, or when its flow run
    ended (`ended_runs`): then its run's records are the whole story.
    """
    ended = set(ended_runs)
    held: list[HeldReservation] = []
    for reservation in reservations:
        if reservation.reservation_id == exclude or reservation.released_at is not None:
            continue
        if reservation.expires_at <= now or reservation.flow_run_id in ended:
            continue
        recorded = sum(
            (
                job.counted_usd
                for job in jobs
                if reservation.flow_run_id and job.flow_run_id == reservation.flow_run_id
            ),
            Decimal(0),
        )
        left = max(Decimal(0), Decimal(reservation.estimated_usd) - recorded)
        if left > 0:
            held.append(HeldReservation(reservation=reservation, held_usd=str(left)))
    return held


def build_report(
    jobs: Sequence[SpendJob],
    *,
    since: datetime | None,
    until: datetime | None,
    timezone: str = "UTC",
    campaigns: Sequence[str] = (),
    reserved: Sequence[HeldReservation] = (),
    evolink_asked: bool = False,
    problems: Sequence[str] = (),
) -> SpendReport:
    """The report of the jobs submitted in [since, until): totals and one group per value of
    every dimension (`DIMENSIONS`) of the real jobs, and the simulator's jobs summed apart."""
    where = zone(timezone)
    chosen = in_window(jobs, since, until)
    real = [job for job in chosen if not job.simulator]
    groups: list[SpendGroup] = []
    for dimension in DIMENSIONS:
        values: dict[str, list[SpendJob]] = {}
        for job in real:
            values.setdefault(job.value(dimension, where), []).append(job)
        for value in sorted(values):
            summed = totals_of(values[value])
            groups.append(
                SpendGroup(dimension=dimension, value=value, **summed.model_dump(mode="json"))
            )
    return SpendReport(
        period=window_label(since, until, where),
        since=since,
        until=until,
        timezone=timezone,
        totals=totals_of(real),
        groups=groups,
        simulator_totals=totals_of(job for job in chosen if job.simulator),
        jobs=chosen,
        campaigns=sorted(campaigns),
        reserved=list(reserved),
        evolink_asked=evolink_asked,
        problems=list(problems),
    )


# --- the cap --------------------------------------------------------------------------------------


def cap_refusal(
    *,
    cap: str,
    limit_usd: Decimal,
    window: PeriodWindow,
    spent_usd: Decimal,
    reserved: Sequence[HeldReservation],
    estimate_usd: Decimal,
    label: str,
) -> str | None:
    """The refusal message when the period's spend, the reservations and this estimate do not
    fit the cap; None when they do."""
    held = sum((Decimal(r.held_usd) for r in reserved), Decimal(0))
    if spent_usd + held + estimate_usd <= limit_usd:
        return None
    others = (
        f" + {usd(held)} reserved by {len(reserved)} running run(s) "
        f"({', '.join(r.reservation.label for r in reserved)})"
        if reserved
        else ""
    )
    return (
        f"spend cap {cap} of {usd(limit_usd)} for {window.label}: spent so far "
        f"{usd(spent_usd)}{others} + the estimate of {label} {usd(estimate_usd)} = "
        f"{usd(spent_usd + held + estimate_usd)}, over the cap; nothing was sent. "
        "(An estimate check with reservations: EvoLink holds no money server-side.)"
    )
