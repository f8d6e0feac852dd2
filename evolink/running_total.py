"""The spend cap's running total, as data: bookings, the facts they set, and the sums they move.

Pure (no storage, no Prefect): `evolink.records` reads and writes these objects and holds the
algorithm's I/O; its docstring says why the whole is safe across workers. Here:

- `Booking`: one pending entry, the spend facts of one record just written (submit, result,
  bill note, campaign manifest).
- `TaskFacts`: what the records of one EvoLink task say about its spend, and `counted`, what
  it adds to the sums right now. `CampaignFacts`: a campaign's latest manifest (its rows, its
  state) and its tasks.
- `Totals`: the sums, per UTC quarter of an hour (every time zone's midnight falls on one, so
  any calendar period of a cap is a whole number of quarters) and per flow run.
- `value_of`: what one task counts, by the rules of `evolink.spend.collect_jobs` (manifest rows
  first, the known bill wins, a failed job not charged drops out, a campaign's submit-only job
  its finished manifest has no row for is not charged, the simulator's jobs summed apart).
- `fold`: bookings → facts set (never amounts added: a booking applied twice changes nothing)
  → each affected task's value recomputed → its old value taken off the totals, the new one
  put on. What a fold touches is the tasks of its bookings (and, for a manifest, its
  campaign's tasks), never the whole period.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from evolink.campaign import CampaignManifest, parse_campaign_namespace
from evolink.jobs import JobRecord, SubmitRecord, utcnow
from evolink.periods import PeriodWindow
from evolink.spend_jobs import BillNote, JobFiles, RunOrigin

VERSION: Final = 2
"""The format of the stored totals and facts; another number is rebuilt from the records."""
RETAIN: Final = timedelta(days=62)
"""How far back the running total keeps jobs: longer than any cap period."""
QUARTER: Final = 900
"""Seconds per bucket of the totals."""
SHARDS: Final = 64
"""Files the task facts are spread over (by task id), so a fold reads a few small ones."""


def bucket_of(when: datetime) -> int:
    return int(when.timestamp()) // QUARTER


def shard_of(task_id: str) -> str:
    return f"{int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) % SHARDS:02d}"


def campaign_of(namespace: str | None) -> str | None:
    parsed = parse_campaign_namespace(namespace) if namespace else None
    return parsed[0] if parsed else None


# --- bookings -------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class RowFact(_Model):
    """What the spend sums need of one manifest row."""

    task_id: str
    estimated_usd: str
    billed_usd: str | None
    simulator: bool
    endpoint_known: bool
    earlier_run: bool = False


class Booking(_Model):
    """One pending entry: the spend facts of a record just written."""

    kind: Literal["submit", "result", "bill", "manifest"]
    written_at: datetime = Field(default_factory=utcnow)
    task_id: str | None = None
    submitted_at: datetime | None = None
    namespace: str | None = None
    flow_run_id: str | None = None
    estimated_usd: str | None = None
    billed_usd: str | None = None
    simulator: bool = False
    # a bill note
    status: str | None = None
    charged: bool = False
    # a manifest
    campaign: str | None = None
    run_state: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rows: list[RowFact] = Field(default_factory=list)


def _simulator(submit: SubmitRecord | None = None, result: JobRecord | None = None) -> bool:
    return JobFiles(job_key="", submit=submit, result=result).simulator


def submit_booking(record: SubmitRecord, origin: RunOrigin | None) -> Booking:
    return Booking(
        kind="submit",
        task_id=record.task_id,
        submitted_at=record.submitted_at,
        namespace=record.namespace,
        flow_run_id=origin.flow_run_id if origin is not None else None,
        estimated_usd=str(record.estimate.get("usd", "0")),
        simulator=_simulator(submit=record),
    )


def result_booking(record: JobRecord) -> Booking:
    return Booking(
        kind="result",
        task_id=record.task_id,
        submitted_at=record.submitted_at,
        namespace=record.namespace,
        estimated_usd=record.estimated_usd,
        billed_usd=record.billed_usd,
        simulator=_simulator(result=record),
    )


def bill_booking(note: BillNote) -> Booking:
    return Booking(
        kind="bill",
        task_id=note.task_id,
        billed_usd=note.billed_usd,
        status=note.status,
        charged=note.charged,
    )


def manifest_booking(manifest: CampaignManifest) -> Booking:
    return Booking(
        kind="manifest",
        campaign=manifest.campaign,
        run_state=manifest.run_state,
        started_at=manifest.started_at,
        finished_at=manifest.finished_at,
        rows=[
            RowFact(
                task_id=row.task_id,
                estimated_usd=row.estimated_usd,
                billed_usd=row.billed_usd,
                simulator=row.simulator,
                endpoint_known=row.endpoint is not None,
                earlier_run=row.earlier_run,
            )
            for row in manifest.jobs
        ],
    )


# --- facts ----------------------------------------------------------------------------------------

Counted = tuple[int, str, bool, str | None]
"""What a task adds to the totals: (bucket, USD, simulator, flow run id)."""


@dataclass
class TaskFacts:
    """What the records of one EvoLink task say about its spend, and what it counts now."""

    submitted_at: datetime | None = None
    campaign: str | None = None
    flow_run_id: str | None = None
    estimated_usd: str | None = None  # from its submit record; None: no submit record
    simulator: bool = False
    result: tuple[str | None, str] | None = None  # (billed, estimated) of its result record
    bill: tuple[str, bool, str | None] | None = None  # (status, charged, billed) of its note
    counted: Counted | None = None

    @property
    def has_records(self) -> bool:
        return self.submitted_at is not None or self.result is not None

    def dump(self) -> list[Any]:
        at = self.submitted_at.isoformat() if self.submitted_at else None
        return [at, self.campaign, self.flow_run_id, self.estimated_usd, self.simulator,
                list(self.result) if self.result else None,
                list(self.bill) if self.bill else None,
                list(self.counted) if self.counted else None]  # fmt: skip

    @classmethod
    def load(cls, data: list[Any]) -> TaskFacts:
        at, campaign, run, estimated, simulator, result, bill, counted = data
        return cls(
            submitted_at=datetime.fromisoformat(at) if at else None,
            campaign=campaign,
            flow_run_id=run,
            estimated_usd=estimated,
            simulator=bool(simulator),
            result=(result[0], result[1]) if result else None,
            bill=(bill[0], bool(bill[1]), bill[2]) if bill else None,
            counted=(int(counted[0]), counted[1], bool(counted[2]), counted[3])
            if counted
            else None,
        )

    def apply(self, booking: Booking) -> None:
        """Set the facts of a submit, result or bill booking."""
        if booking.kind == "bill":
            self.bill = (booking.status or "", booking.charged, booking.billed_usd)
            return
        if booking.kind == "submit" or self.submitted_at is None:
            self.submitted_at = booking.submitted_at
            self.campaign = campaign_of(booking.namespace)
        self.simulator = self.simulator or booking.simulator
        if booking.kind == "submit":
            self.estimated_usd = booking.estimated_usd
            self.flow_run_id = booking.flow_run_id
        else:
            self.result = (booking.billed_usd, booking.estimated_usd or "0")

    @classmethod
    def of(cls, files: JobFiles) -> TaskFacts:
        """The facts of a job's records, as a rebuild reads them."""
        submit, result, bill = files.submit, files.result, files.bill
        return cls(
            submitted_at=files.submitted_at,
            campaign=campaign_of(files.namespace),
            flow_run_id=files.origin.flow_run_id if files.origin else None,
            estimated_usd=str(submit.estimate.get("usd", "0")) if submit else None,
            simulator=files.simulator,
            result=(result.billed_usd, result.estimated_usd) if result else None,
            bill=(bill.status, bill.charged, bill.billed_usd) if bill and not result else None,
        )


@dataclass
class CampaignFacts:
    """A campaign's latest manifest (rows and state), and the tasks its submit records name."""

    written_at: datetime
    run_state: str
    started_at: datetime
    finished_at: datetime
    rows: list[RowFact]
    tasks: set[str] = field(default_factory=set)

    def dump(self) -> dict[str, Any]:
        return {
            "written_at": self.written_at.isoformat(),
            "run_state": self.run_state,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "rows": [row.model_dump() for row in self.rows],
            "tasks": sorted(self.tasks),
        }

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> CampaignFacts:
        return cls(
            written_at=datetime.fromisoformat(data["written_at"]),
            run_state=data["run_state"],
            started_at=datetime.fromisoformat(data["started_at"]),
            finished_at=datetime.fromisoformat(data["finished_at"]),
            rows=[RowFact.model_validate(row) for row in data["rows"]],
            tasks=set(data.get("tasks", [])),
        )


def _never(name: str) -> CampaignFacts:
    """A campaign known from its tasks only (no manifest yet)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return CampaignFacts(written_at=epoch, run_state="none", started_at=epoch,
                         finished_at=epoch, rows=[])  # fmt: skip


# --- totals ---------------------------------------------------------------------------------------


@dataclass
class Totals:
    """The sums: per quarter of an hour [real USD, simulator USD, simulator jobs], and per flow
    run per quarter (what a reservation's own run recorded)."""

    covers_since: datetime
    folded_at: datetime = field(default_factory=utcnow)
    buckets: dict[int, list[Decimal]] = field(default_factory=dict)
    runs: dict[str, dict[int, Decimal]] = field(default_factory=dict)
    overlay: dict[str, Counted | None] = field(default_factory=dict)
    """The `counted` of the tasks of the last fold, written with the sums they moved: the
    totals are the commit point, and a fold that died before writing those tasks' facts leaves
    its bookings pending — the next fold reads the counted values from here (`settle`)."""

    def settle(self, facts: dict[str, TaskFacts]) -> None:
        """Give the facts read the `counted` the totals were committed with (a task whose
        facts were never written gets them too: its bookings are still pending)."""
        for task_id, counted in self.overlay.items():
            facts.setdefault(task_id, TaskFacts()).counted = counted

    def move(self, counted: Counted | None, sign: int) -> None:
        if counted is None:
            return
        bucket, usd, simulator, run = counted
        amount = Decimal(usd) * sign
        sums = self.buckets.setdefault(bucket, [Decimal(0), Decimal(0), Decimal(0)])
        if simulator:
            sums[1] += amount
            sums[2] += sign
        else:
            sums[0] += amount
        if run:
            per_run = self.runs.setdefault(run, {})
            per_run[bucket] = per_run.get(bucket, Decimal(0)) + amount

    def in_window(self, window: PeriodWindow) -> tuple[Decimal, Decimal, int, dict[str, Decimal]]:
        """(real spend, simulator spend, simulator jobs, spend by flow run) in `window`."""
        first, last = bucket_of(window.start), bucket_of(window.end)
        real, simulated, count = Decimal(0), Decimal(0), Decimal(0)
        for bucket, (r, s, c) in self.buckets.items():
            if first <= bucket < last:
                real, simulated, count = real + r, simulated + s, count + c
        by_run: dict[str, Decimal] = {}
        for run, sums in self.runs.items():
            total = sum((v for b, v in sums.items() if first <= b < last), Decimal(0))
            if total:
                by_run[run] = total
        return real, simulated, int(count), by_run

    def pruned(self, now: datetime) -> Totals:
        """These totals without the quarters older than `RETAIN` (no cap period reaches them),
        as they are stored."""
        horizon = bucket_of(now - RETAIN)
        runs = {run: {b: v for b, v in s.items() if b >= horizon} for run, s in self.runs.items()}
        return Totals(
            covers_since=max(self.covers_since, now - RETAIN),
            folded_at=self.folded_at,
            buckets={b: v for b, v in self.buckets.items() if b >= horizon},
            runs={run: sums for run, sums in runs.items() if sums},
            overlay=self.overlay,
        )

    def dump(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "covers_since": self.covers_since.isoformat(),
            "folded_at": self.folded_at.isoformat(),
            "buckets": {str(b): [str(x) for x in v] for b, v in self.buckets.items() if any(v)},
            "runs": {
                run: {str(b): str(v) for b, v in sums.items() if v}
                for run, sums in self.runs.items()
            },
            "overlay": {t: list(c) if c else None for t, c in self.overlay.items()},
        }

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> Totals | None:
        """The stored totals, or None when they must be rebuilt (another format, unreadable)."""
        try:
            if data.get("version") != VERSION:
                return None
            return cls(
                covers_since=datetime.fromisoformat(data["covers_since"]),
                folded_at=datetime.fromisoformat(data["folded_at"]),
                buckets={int(b): [Decimal(x) for x in v] for b, v in data["buckets"].items()},
                runs={
                    run: {int(b): Decimal(v) for b, v in sums.items()}
                    for run, sums in data["runs"].items()
                },
                overlay={
                    t: (int(c[0]), c[1], bool(c[2]), c[3]) if c else None
                    for t, c in data.get("overlay", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError):
            return None


# --- value ----------------------------------------------------------------------------------------


def rows_index(campaigns: Mapping[str, CampaignFacts]) -> dict[str, tuple[str, RowFact]]:
    """Task id → (campaign, row) of the first campaign (by name) whose manifest lists it, among
    the campaigns some job record names (as `collect_jobs` reads only those manifests)."""
    index: dict[str, tuple[str, RowFact]] = {}
    for name in sorted(campaigns):
        held = campaigns[name]
        if not held.tasks:
            continue
        for row in held.rows:
            index.setdefault(row.task_id, (name, row))
    return index


def _covered(facts: TaskFacts, campaigns: Mapping[str, CampaignFacts]) -> bool:
    """A submit-only campaign job its campaign's finished manifest has no row for: the run
    booked every job it paid for, so this one was not charged."""
    held = campaigns.get(facts.campaign) if facts.campaign else None
    return (
        held is not None
        and held.run_state not in ("running", "none")
        and facts.submitted_at is not None
        and facts.submitted_at <= held.finished_at
    )


def value_of(
    facts: TaskFacts,
    campaigns: Mapping[str, CampaignFacts],
    rows: Mapping[str, tuple[str, RowFact]],
    task_id: str,
) -> Counted | None:
    """What the task counts now (`collect_jobs`'s rules, without asking EvoLink); None: not a
    paid job."""
    hit = rows.get(task_id)
    if hit is not None:
        name, row = hit
        if not facts.has_records and row.earlier_run:
            return None  # an earlier run's job, older than the running total reaches
        billed = row.billed_usd
        if billed is None and facts.result is not None:
            billed = facts.result[0]
        if billed is None and facts.bill is not None:
            billed = facts.bill[2]
        when = facts.submitted_at or campaigns[name].started_at
        simulator = row.simulator or (not row.endpoint_known and facts.simulator)
        counted = billed if billed is not None else row.estimated_usd
        return bucket_of(when), counted, simulator, facts.flow_run_id
    if facts.submitted_at is None:
        return None
    amount: str | None
    if facts.result is not None:
        billed, estimated = facts.result
        amount = billed if billed is not None else estimated
    elif facts.estimated_usd is not None:
        if facts.bill is not None:
            status, charged, billed = facts.bill
            if not charged and status in ("failed", "cancelled"):
                return None  # failed at EvoLink, not charged
            amount = billed if billed is not None else facts.estimated_usd
        elif _covered(facts, campaigns):
            return None
        else:
            amount = facts.estimated_usd
    else:
        return None  # a bill note alone: no submit record
    return bucket_of(facts.submitted_at), amount, facts.simulator, facts.flow_run_id


# --- folding --------------------------------------------------------------------------------------


def affected(bookings: Iterable[Booking], campaigns: Mapping[str, CampaignFacts]) -> set[str]:
    """The tasks whose value these bookings may change: their own, and every task of a
    campaign whose manifest (or first task) they bring."""
    found: set[str] = set()
    for booking in bookings:
        if booking.task_id is not None:
            found.add(booking.task_id)
            name = campaign_of(booking.namespace)
            held = campaigns.get(name) if name else None
            if held is not None and not held.tasks:  # its manifest's rows start to count
                found |= {row.task_id for row in held.rows}
        if booking.kind == "manifest" and booking.campaign is not None:
            held = campaigns.get(booking.campaign)
            found |= {row.task_id for row in booking.rows}
            if held is not None:
                found |= {row.task_id for row in held.rows} | held.tasks
    return found


def fold(
    bookings: Iterable[Booking],
    facts: dict[str, TaskFacts],
    campaigns: dict[str, CampaignFacts],
    totals: Totals,
    tasks: set[str],
) -> set[str]:
    """Apply `bookings` (oldest first) to `facts` (holding at least `tasks`, the `affected`
    ones) and `campaigns`, and move `totals` by each affected task's change of value. Returns
    the task ids whose facts changed (to be stored)."""
    for booking in bookings:
        if booking.kind == "manifest":
            name = booking.campaign
            if name is None or booking.started_at is None:
                continue
            held = campaigns.get(name)
            if held is not None and held.written_at > booking.written_at:
                continue  # listed late: a newer manifest is already held
            campaigns[name] = CampaignFacts(
                written_at=booking.written_at,
                run_state=booking.run_state or "running",
                started_at=booking.started_at,
                finished_at=booking.finished_at or booking.started_at,
                rows=list(booking.rows),
                tasks=held.tasks if held is not None else set(),
            )
        elif booking.task_id is not None:
            task = facts.setdefault(booking.task_id, TaskFacts())
            task.apply(booking)
            if task.campaign is not None:
                campaigns.setdefault(task.campaign, _never(task.campaign)).tasks.add(
                    booking.task_id
                )
    rows = rows_index(campaigns)
    for task_id in tasks:
        task = facts.setdefault(task_id, TaskFacts())
        new = value_of(task, campaigns, rows, task_id)
        if new != task.counted:
            totals.move(task.counted, -1)
            totals.move(new, +1)
            task.counted = new
    totals.overlay = {task_id: facts[task_id].counted for task_id in tasks}
    return tasks
