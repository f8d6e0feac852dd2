"""The paid jobs of a storage, once per EvoLink task: from the campaign manifests and the job
records (the rules are in `evolink.spend`'s docstring; this module applies them).

One concept of the spend package: which jobs were paid and what each counts. The sums of a
period are `evolink.spend_report`'s, the calendar periods `evolink.periods`', the cap's check
with reservations `evolink.spend_cap`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from evolink.adaptations import stage_kind
from evolink.campaign import CampaignManifest, JobRow, parse_campaign_namespace
from evolink.endpoint import made_on_simulator
from evolink.jobs import JobRecord, SubmitRecord, utcnow
from evolink.recovery import TaskReading

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

Kind = Literal["campaign", "product", "adhoc", "other"]
Source = Literal["manifest", "result", "bill", "submit", "evolink"]


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
    return stage_kind(parsed[2]) if parsed else SINGLE_STAGE


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
        stage=stage_kind(row.stage),  # every adaptation under "adaptation"
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
