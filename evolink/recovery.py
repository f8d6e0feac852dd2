"""Rebuild a campaign's manifest from the job records in storage, whatever became of its run.

A campaign run writes its manifest when it starts, after its drafts, and when it ends — completed,
failed or cancelled. A run the OS killed (SIGKILL, out of memory, a lost machine) writes nothing
more, but every job it sent left records under `_jobs/<job_key>/` (see `evolink.jobs`), each
written before the step whose effect it records could be lost:

- `intent.json`: the request, stored before the create call;
- `submit.json`: the task id, stored right after the create call, with the job's namespace
  `campaign/<campaign>/<asset>/<stage>`;
- `result.json`: the bill and the stored images, once every image is stored.

An intent carries no namespace, so the run also keeps a *journal*: before an asset's stage sends
anything, one entry names the job keys it may use (`JournalEntry`). From these `rebuild_manifest`
builds the manifest of everything the campaign's jobs ever cost:

- a job with a result record: its cost row, as billed;
- a job with a submit record and no result: what EvoLink says about the task when asked
  (`TaskReading`) — completed (billed, images not all stored), failed (charged or not), still
  running — or, unasked, a row with an unknown bill, counted at its estimate;
- a journal job with an intent and no submit record: listed under `submissions_unknown` (not
  billed; a rerun resends the same request with the same Idempotency-Key and reattaches to the
  task if EvoLink created one — nothing here ever creates a task);
- a journal job without an intent: never sent.

The last manifest the run wrote (`previous`) supplies what the records cannot: the budget, the
selection mode, the reviewer's decisions and the chosen drafts. Prefect-free: reading storage
and asking EvoLink are the caller's (`prefect_evolink.tasks.recovery`); the cost lines
`prefect-evolink report` prints are `prefect_evolink.tasks.campaign_cost.cost_summary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from evolink.adaptations import ADAPTATION_STAGE_PREFIX, adaptation_of_stage, stage_kind
from evolink.campaign import (
    AdaptationOutcome,
    AssetOutcome,
    AssetStatus,
    CampaignManifest,
    JobRow,
    RunState,
    UncertainSubmission,
    estimate_of,
    job_row,
    parse_campaign_namespace,
    submitted_job_record,
    totals,
)
from evolink.cost import UNKNOWN_COST, BilledCost, CostEstimate, usd
from evolink.jobs import JobRecord, SubmitRecord, idempotency_key, utcnow
from evolink.states import TaskSnapshot

FAILED_OR_CANCELLED = frozenset({AssetStatus.FAILED, AssetStatus.CANCELLED})


class JournalEntry(BaseModel):
    """What one asset's stage may send: its job keys, attempt 1 first (a resubmission after a
    failed task is attempt 2). Written by the run before the stage's first request."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    campaign: str
    asset: str
    stage: str
    namespace: str
    job_keys: list[str]
    estimated_usd: str
    written_at: datetime = Field(default_factory=utcnow)


@dataclass(frozen=True)
class StoredJob:
    """The records one job key has in storage."""

    job_key: str
    has_intent: bool = False
    submit: SubmitRecord | None = None
    result: JobRecord | None = None


@dataclass(frozen=True)
class TaskReading:
    """What EvoLink said about a task when asked for its bill; `problem` when it could not say."""

    status: str | None
    billed: BilledCost = UNKNOWN_COST
    error_code: str | None = None
    problem: str | None = None

    @classmethod
    def of(cls, snapshot: TaskSnapshot) -> TaskReading:
        code = snapshot.error.code if snapshot.error else None
        return cls(status=snapshot.status.value, billed=snapshot.billed, error_code=code)

    @classmethod
    def unreadable(cls, error: BaseException) -> TaskReading:
        return cls(status=None, problem=f"{type(error).__name__}: {error}")


LAST: Final = datetime.max.replace(tzinfo=UTC)

JobState = Literal["stored", "paid_not_stored", "failed", "unknown", "uncertain"]


@dataclass
class _Job:
    asset: str
    stage: str
    key: str
    when: datetime
    state: JobState
    note: str
    submit: SubmitRecord | None = None
    result: JobRecord | None = None
    row: JobRow | None = None
    uncertain: UncertainSubmission | None = None


@dataclass
class _Asset:
    jobs: list[_Job] = field(default_factory=list)

    def stage(self, name: str) -> list[_Job]:
        return sorted((j for j in self.jobs if j.stage == name), key=lambda j: j.when)


def campaign_submit(campaign: str, submit: SubmitRecord) -> tuple[str, str] | None:
    """(asset, stage) when the submitted job belongs to `campaign`, else None."""
    parsed = parse_campaign_namespace(submit.namespace)
    if parsed is None or parsed[0] != campaign:
        return None
    return parsed[1], parsed[2]


def tasks_to_ask(campaign: str, jobs: Iterable[StoredJob]) -> list[str]:
    """Task ids of the campaign's jobs that were submitted but have no result record."""
    return [
        job.submit.task_id
        for job in jobs
        if job.submit is not None
        and job.result is None
        and campaign_submit(campaign, job.submit) is not None
    ]


def _charged(billed: BilledCost) -> bool:
    return bool((billed.usd or 0) > 0 or (billed.credits or 0) > 0)


def _row(asset: str, stage: str, record: JobRecord, submit: SubmitRecord | None) -> JobRow:
    if submit is not None:
        planned = estimate_of(submit)
    else:  # a result without its submit record: no token figures to show
        first = record.images[0] if record.images else None
        planned = CostEstimate(
            first.width or 0 if first else 0,
            first.height or 0 if first else 0,
            record.request.quality,
            record.request.n,
            0,
            0,
            0,
            Decimal(record.estimated_usd),
            Decimal(record.estimated_credits),
        )
    return job_row(asset, stage, record, planned)


def stored_row(asset: str, stage: str, record: JobRecord) -> JobRow:
    """The cost row of a stored job of `asset`'s `stage`, from its result record alone."""
    return _row(asset, stage, record, None)


def _submitted_job(
    asset: str, stage: str, job: StoredJob, submit: SubmitRecord, reading: TaskReading | None
) -> _Job:
    """A job with a submit record: stored, or what EvoLink said (or could not say) about it."""

    def made(
        state: JobState, note: str, row: JobRow | None, result: JobRecord | None = None
    ) -> _Job:
        return _Job(
            asset, stage, job.job_key, submit.submitted_at, state, note, submit, result, row
        )

    if job.result is not None:
        return made("stored", "", _row(asset, stage, job.result, submit), job.result)
    task = submit.task_id
    if reading is None or reading.status is None:
        why = reading.problem if reading and reading.problem else "EvoLink was not asked"
        note = f"task {task}: no result record, bill unknown ({why}); counted at its estimate"
        row = job_row(asset, stage, submitted_job_record(submit), estimate_of(submit), failed=note)
        return made("unknown", note, row)
    if reading.status == "completed":
        note = (
            f"task {task} completed and was billed {usd(reading.billed.usd)}, but has no result "
            "record: its images are not all stored; a rerun stores what is still behind its links "
            "without paying again"
        )
        record = submitted_job_record(submit, reading.billed)
        row = job_row(asset, stage, record, estimate_of(submit), failed=note)
        return made("paid_not_stored", note, row)
    if reading.status in ("failed", "cancelled"):
        code = reading.error_code or reading.status
        note = f"task {task} {reading.status} at EvoLink ({code})"
        if not _charged(reading.billed):
            return made("failed", note, None)
        note += f", charged {usd(reading.billed.usd)}"
        record = submitted_job_record(submit, reading.billed)
        return made("failed", note, job_row(asset, stage, record, estimate_of(submit), failed=note))
    note = (
        f"task {task} still {reading.status} at EvoLink: bill unknown until it finishes "
        "(counted at its estimate); a rerun polls it, it never submits again"
    )
    row = job_row(asset, stage, submitted_job_record(submit), estimate_of(submit), failed=note)
    return made("unknown", note, row)


def _collect(
    campaign: str,
    jobs: Mapping[str, StoredJob],
    journal: Sequence[JournalEntry],
    readings: Mapping[str, TaskReading],
) -> dict[str, _Asset]:
    assets: dict[str, _Asset] = {}
    seen: set[str] = set()
    submitted = [(job, job.submit) for job in jobs.values() if job.submit is not None]
    for job, submit in sorted(submitted, key=lambda pair: pair[1].submitted_at):
        owner = campaign_submit(campaign, submit)
        if owner is None:
            continue
        asset, stage = owner
        made = _submitted_job(asset, stage, job, submit, readings.get(submit.task_id))
        assets.setdefault(asset, _Asset()).jobs.append(made)
        seen.add(job.job_key)
    for entry in sorted(journal, key=lambda e: e.written_at):
        if entry.campaign != campaign:
            continue
        assets.setdefault(entry.asset, _Asset())
        for key in entry.job_keys:
            stored = jobs.get(key)
            if key in seen or stored is None or not stored.has_intent:
                continue  # already counted, or never sent
            seen.add(key)
            uncertain = UncertainSubmission(
                asset=entry.asset,
                stage=entry.stage,
                job_key=key,
                idempotency_key=idempotency_key(key),
                estimated_usd=entry.estimated_usd,
            )
            assets[entry.asset].jobs.append(
                _Job(
                    asset=entry.asset,
                    stage=entry.stage,
                    key=key,
                    when=LAST,  # the attempt after every submitted one of its stage
                    state="uncertain",
                    note=f"{entry.stage}: {uncertain.note}",
                    uncertain=uncertain,
                )
            )
    return assets


def _outcome(asset: str, found: _Asset, before: AssetOutcome | None) -> AssetOutcome:
    """The asset's outcome: its master (drafts and final) and its adaptations."""
    master = _master_outcome(asset, found, before)
    return master.model_copy(update={"adaptations": _adaptations(found, before)})


def _adaptations(found: _Asset, before: AssetOutcome | None) -> list[AdaptationOutcome]:
    """Each adaptation of the asset the records or the last manifest know: stored (FINAL, or
    the reviewer's word on that very job when the manifest has it), failed, or not finished;
    one the records do not know keeps the manifest's account (stopped by the budget, …)."""
    earlier = {a.id: a for a in before.adaptations} if before else {}
    ids = list(earlier)
    for job in sorted(found.jobs, key=lambda j: j.when):
        adaptation = adaptation_of_stage(job.stage)
        if adaptation is not None and adaptation not in ids:
            ids.append(adaptation)
    outcomes = []
    for adaptation in ids:
        jobs = found.stage(f"{ADAPTATION_STAGE_PREFIX}{adaptation}")
        kept = earlier.get(adaptation)
        stored = [j for j in jobs if j.result is not None]
        record = stored[-1].result if stored else None
        if record is not None:
            if kept is not None and kept.record is not None:
                same_job = kept.record.task_id == record.task_id
            else:
                same_job = False
            if same_job and kept is not None:
                outcomes.append(kept)  # the reviewer's word on this very job stays
            else:
                outcomes.append(
                    AdaptationOutcome(id=adaptation, status=AssetStatus.FINAL, record=record)
                )
        elif not jobs:
            if kept is not None:
                outcomes.append(kept)
        elif jobs[-1].state == "failed":
            outcomes.append(
                AdaptationOutcome(id=adaptation, status=AssetStatus.FAILED, detail=jobs[-1].note)
            )
        elif kept is not None and kept.status in FAILED_OR_CANCELLED:
            outcomes.append(kept)
        else:
            outcomes.append(
                AdaptationOutcome(id=adaptation, status=AssetStatus.PENDING, detail=jobs[-1].note)
            )
    return outcomes


def _master_outcome(asset: str, found: _Asset, before: AssetOutcome | None) -> AssetOutcome:
    drafts = [j for j in found.stage("draft") if j.result is not None]
    finals = [j for j in found.stage("final") if j.result is not None]
    draft_record = drafts[-1].result if drafts else None
    chosen = before.chosen_draft if before else None
    if finals:
        return AssetOutcome(
            asset=asset,
            status=AssetStatus.FINAL,
            chosen_draft=chosen,
            drafts=draft_record,
            final=finals[-1].result,
        )
    stage = "final" if found.stage("final") else "draft"
    jobs = found.stage(stage)

    def pending(status: AssetStatus, detail: str) -> AssetOutcome:
        return AssetOutcome(
            asset=asset, status=status, detail=detail, chosen_draft=chosen, drafts=draft_record
        )

    last = jobs[-1] if jobs else None
    if before is not None and before.status is not AssetStatus.PENDING:
        kept = before.model_copy(update={"drafts": draft_record or before.drafts})
        same_drafts = (
            before.drafts is None
            or draft_record is None
            or before.drafts.task_id == draft_record.task_id
        )
        if (last is None or last.state == "stored") and same_drafts:
            # the run's own word where the records stop: a reviewer's or the budget's decision,
            # or a failure after the drafts (the selector, the draft's link, …)
            return kept
        if before.status in FAILED_OR_CANCELLED and before.detail.startswith(f"{stage}:"):
            return kept  # the run saw how this stage ended: its error is the better account
    if last is None or last.state == "stored":
        detail = "drafts stored; no final job in the records" if last else "nothing submitted"
        return pending(AssetStatus.PENDING, detail)
    status = AssetStatus.FAILED if last.state == "failed" else AssetStatus.PENDING
    detail = last.note if last.note.startswith(f"{stage}:") else f"{stage}: {last.note}"
    return pending(status, detail)


def rebuild_manifest(
    campaign: str,
    jobs: Mapping[str, StoredJob],
    journal: Sequence[JournalEntry] = (),
    readings: Mapping[str, TaskReading] | None = None,
    previous: CampaignManifest | None = None,
    now: datetime | None = None,
) -> CampaignManifest:
    """The manifest of every job `campaign` has records of (see the module docstring).

    Args:
        campaign: The campaign's name, as in its brief.
        jobs: The records in storage by job key (every job of the store may be passed: those
            of other campaigns are skipped).
        journal: The campaign's journal entries: the job keys each asset's stage may send.
        readings: What EvoLink said about the tasks without a result record, by task id
            (`tasks_to_ask` lists them); without one, their bills are unknown.
        previous: The last manifest the run wrote, for what the records cannot tell.
        now: The rebuild's time (default: now).
    """
    now = now or utcnow()
    found = _collect(campaign, jobs, journal, readings or {})
    order = [o.asset for o in previous.assets] if previous else []
    order += [asset for asset in found if asset not in order]
    before = {o.asset: o for o in previous.assets} if previous else {}
    outcomes = [_outcome(a, found.get(a, _Asset()), before.get(a)) for a in order]
    position = {asset: i for i, asset in enumerate(order)}
    every = [job for asset in found.values() for job in asset.jobs]
    rank = {"draft": 0, "final": 1, "adaptation": 2}
    every.sort(key=lambda j: (position[j.asset], rank.get(stage_kind(j.stage), 3), j.when))
    rows = [job.row for job in every if job.row is not None]
    summed = totals(rows)
    budget = previous.budget_usd if previous else "0"
    left = Decimal(budget) - Decimal(summed.billed_usd) if previous else Decimal(0)
    started = min((j.when for j in every if j.when != LAST), default=now)
    state: RunState = "unfinished"
    if previous is not None and previous.run_state != "running":
        state = previous.run_state
    return CampaignManifest(
        campaign=campaign,
        flow_run_id=previous.flow_run_id if previous else None,
        started_at=previous.started_at if previous else started,
        finished_at=previous.finished_at if previous and state != "unfinished" else now,
        selection=previous.selection if previous else "unknown",
        budget_usd=budget,
        budget_left_usd=str(left),
        pre_flight_estimate_usd=previous.pre_flight_estimate_usd if previous else "0",
        high_quality_variants_usd=previous.high_quality_variants_usd if previous else "0",
        adaptations_from_scratch_usd=previous.adaptations_from_scratch_usd if previous else None,
        totals=summed,
        assets=outcomes,
        jobs=rows,
        run_state=state,
        submissions_unknown=[job.uncertain for job in every if job.uncertain is not None],
        rebuilt_at=now,
    )
