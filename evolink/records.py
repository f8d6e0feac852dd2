"""The record store: every record read and written through one typed object, and the spend
cap's running total kept as records are booked.

`RecordStore(storage)` wraps any object with the small async storage interface of
`RecordStorage` (the storage blocks of `prefect_evolink.blocks` have it) and knows where each
record lives (`evolink.layout`, the one map of the layout). Submit, persist, recovery, the
campaign, the callbacks, the spend report and the cap read and write records through it.
Prefect-free: the cap's lock is the caller's (`prefect_evolink.tasks.spend_cap`).

**The running total** (what the spend cap checks, in O(bookings since the last check) rather
than O(every record of the period)):

1. *Booking* — every write of a record that moves money (a submit record, a result record, a
   bill note, a campaign manifest) is followed by one small **pending entry**
   (`_reports/spend/running/pending/<UTC time>-<random>.json`, a `Booking`): the facts of that
   record that the spend sums need. Entries are append-only and never rewritten (the name is
   unique), so bookings on any number of workers never race with one another and need no lock.
2. *Folding* — the cap check (`spend_for_cap`), which already runs under the one-slot global
   concurrency lock `evolink-spend-cap`, lists the pending entries, applies them to the
   **checkpoint** (`_reports/spend/running/checkpoint.json`: per task the facts of its records,
   per campaign its manifest's rows and state), writes the checkpoint, then deletes the entries
   it applied. Only a holder of that lock writes the checkpoint, so folds never interleave.
   Applying an entry *sets* facts (never adds amounts): an entry applied twice — a fold that
   crashed after writing the checkpoint but before deleting — changes nothing the second time.
   A manifest entry older than the manifest facts already held is ignored, so an entry listed
   late cannot undo a newer one.
3. *Valuing* — `value_jobs` sums the checkpoint's facts by the very rules of
   `evolink.spend.collect_jobs` (manifest rows first, the known bill wins, a failed job not
   charged drops out, a campaign's submit-only job its finished manifest has no row for is not
   charged, the bundled simulator's jobs are summed apart, never against the cap). The test
   suite holds the two equal after a mix of bookings (tests/test_records.py).

**Why it stays right.** A booking made outside any capped run writes its entry all the same
(booking is the store's write, not the cap's). A run that crashes after writing a record but
before its entry leaves a record the total does not know until a rerun: the submit step of a
rerun finds the submit record and books it again (`book_submit`; booking is idempotent), and
the full spend report (`prefect-evolink spend`) still reads every record. A reservation of a
crashed run stops counting as before (expired or its flow run ended). **Rebuild**: when the
checkpoint is missing, unreadable, of another format (`CHECKPOINT_VERSION`), or does not reach
back to the start of the period checked (records written by a version without running totals,
or kept past `RETAIN`), it is rebuilt once from the records (`rebuild_facts`, the same reading
as the spend report), under the same lock; the pending entries listed before the rebuild are
applied first and deleted after, so nothing booked meanwhile is lost. Jobs submitted more than
`RETAIN` before the last fold are dropped from the checkpoint (no cap period is that long).

Known limits: a worker still running a version without running totals books nothing into it
until the next rebuild; the checkpoint holds one row of facts per task of the last `RETAIN`
days (about 150 bytes each).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evolink.campaign import CampaignManifest, parse_campaign_namespace
from evolink.jobs import JobRecord, SubmitRecord, TaskIndex, utcnow
from evolink.layout import (
    JOBS_PREFIX,
    bill_note_key,
    elsewhere_key,
    intent_record_key,
    job_file_of,
    job_record_key,
    journal_key,
    live_reservations_key,
    manifest_key,
    pending_key,
    pending_prefix,
    report_keys,
    reported_marker_key,
    reservation_key,
    reservations_prefix,
    running_checkpoint_key,
    submit_record_key,
    task_index_key,
)
from evolink.spend import (
    ORIGIN_FIELD,
    BillNote,
    JobFiles,
    PeriodWindow,
    Reservation,
    RunOrigin,
    origin_of,
)

logger = logging.getLogger(__name__)

READERS: Final = 16
"""Storage reads at once."""
CHECKPOINT_VERSION: Final = 1
"""The checkpoint's format; another number is rebuilt from the records."""
RETAIN: Final = timedelta(days=62)
"""How far back the checkpoint keeps the facts of a job: longer than any cap period."""

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class Stored(Protocol):
    """What a write returns (the storage blocks' `StoredObject`)."""

    @property
    def uri(self) -> str: ...


class RecordStorage(Protocol):
    """The storage a `RecordStore` needs: the storage blocks' async methods."""

    async def aget_json(self, key: str) -> Any | None: ...

    async def aget_bytes(self, key: str) -> bytes | None: ...

    async def aput_json(self, key: str, obj: Any) -> Stored: ...

    async def aput_bytes(self, key: str, data: bytes, *, content_type: str) -> Stored: ...

    async def aexists(self, key: str) -> bool: ...

    async def alist_keys(self, prefix: str = "") -> list[str]: ...

    async def adelete_key(self, key: str) -> None: ...


async def bounded(calls: Iterable[Awaitable[T]], limit: int = READERS) -> list[T]:
    """Await `calls` with at most `limit` of them at once, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))


# --- bookings: the pending entries ----------------------------------------------------------------


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
    """One pending entry: the spend facts of a record just written (see the module docstring)."""

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


# --- the checkpoint: facts, and their value -------------------------------------------------------


@dataclass
class TaskFacts:
    """What the records of one EvoLink task say about its spend."""

    submitted_at: datetime | None = None
    campaign: str | None = None
    flow_run_id: str | None = None
    estimated_usd: str | None = None  # from its submit record; None: no submit record
    simulator: bool = False
    result: tuple[str | None, str] | None = None  # (billed, estimated) of its result record
    bill: tuple[str, bool, str | None] | None = None  # (status, charged, billed) of its note

    def dump(self) -> list[Any]:
        at = self.submitted_at.isoformat() if self.submitted_at else None
        return [at, self.campaign, self.flow_run_id, self.estimated_usd, self.simulator,
                list(self.result) if self.result else None,
                list(self.bill) if self.bill else None]  # fmt: skip

    @classmethod
    def load(cls, data: list[Any]) -> TaskFacts:
        at, campaign, run, estimated, simulator, result, bill = data
        return cls(
            submitted_at=datetime.fromisoformat(at) if at else None,
            campaign=campaign,
            flow_run_id=run,
            estimated_usd=estimated,
            simulator=bool(simulator),
            result=(result[0], result[1]) if result else None,
            bill=(bill[0], bool(bill[1]), bill[2]) if bill else None,
        )


@dataclass
class CampaignFacts:
    """What a campaign's latest manifest says about its jobs' spend."""

    written_at: datetime
    run_state: str
    started_at: datetime
    finished_at: datetime
    rows: list[RowFact]


def _campaign_of(namespace: str | None) -> str | None:
    parsed = parse_campaign_namespace(namespace) if namespace else None
    return parsed[0] if parsed else None


@dataclass
class Checkpoint:
    """The folded running total: facts per task and per campaign (see the module docstring)."""

    covers_since: datetime
    folded_at: datetime = field(default_factory=utcnow)
    tasks: dict[str, TaskFacts] = field(default_factory=dict)
    campaigns: dict[str, CampaignFacts] = field(default_factory=dict)

    def apply(self, booking: Booking) -> None:
        """Set the facts `booking` carries (idempotent: applying it again changes nothing)."""
        if booking.kind == "manifest":
            held = self.campaigns.get(booking.campaign or "")
            if booking.campaign is None or booking.started_at is None:
                return
            if held is not None and held.written_at > booking.written_at:
                return  # listed late: a newer manifest is already held
            self.campaigns[booking.campaign] = CampaignFacts(
                written_at=booking.written_at,
                run_state=booking.run_state or "running",
                started_at=booking.started_at,
                finished_at=booking.finished_at or booking.started_at,
                rows=list(booking.rows),
            )
            return
        if booking.task_id is None:
            return
        facts = self.tasks.setdefault(booking.task_id, TaskFacts())
        if booking.kind == "bill":
            facts.bill = (booking.status or "", booking.charged, booking.billed_usd)
            return
        if booking.kind == "submit" or facts.submitted_at is None:
            facts.submitted_at = booking.submitted_at
            facts.campaign = _campaign_of(booking.namespace)
        facts.simulator = facts.simulator or booking.simulator
        if booking.kind == "submit":
            facts.estimated_usd = booking.estimated_usd
            facts.flow_run_id = booking.flow_run_id
        else:
            facts.result = (booking.billed_usd, booking.estimated_usd or "0")

    def prune(self, now: datetime) -> None:
        """Forget jobs submitted more than `RETAIN` ago (no cap period reaches them)."""
        horizon = now - RETAIN
        self.tasks = {
            task: facts
            for task, facts in self.tasks.items()
            if facts.submitted_at is None or facts.submitted_at >= horizon
        }
        self.covers_since = max(self.covers_since, horizon)

    def dump(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "covers_since": self.covers_since.isoformat(),
            "folded_at": self.folded_at.isoformat(),
            "tasks": {task: facts.dump() for task, facts in self.tasks.items()},
            "campaigns": {
                name: {
                    "written_at": c.written_at.isoformat(),
                    "run_state": c.run_state,
                    "started_at": c.started_at.isoformat(),
                    "finished_at": c.finished_at.isoformat(),
                    "rows": [row.model_dump() for row in c.rows],
                }
                for name, c in self.campaigns.items()
            },
        }

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> Checkpoint | None:
        """The stored checkpoint, or None when it must be rebuilt (another format, unreadable)."""
        try:
            if data.get("version") != CHECKPOINT_VERSION:
                return None
            return cls(
                covers_since=datetime.fromisoformat(data["covers_since"]),
                folded_at=datetime.fromisoformat(data["folded_at"]),
                tasks={task: TaskFacts.load(raw) for task, raw in data["tasks"].items()},
                campaigns={
                    name: CampaignFacts(
                        written_at=datetime.fromisoformat(c["written_at"]),
                        run_state=c["run_state"],
                        started_at=datetime.fromisoformat(c["started_at"]),
                        finished_at=datetime.fromisoformat(c["finished_at"]),
                        rows=[RowFact.model_validate(row) for row in c["rows"]],
                    )
                    for name, c in data["campaigns"].items()
                },
            )
        except (KeyError, TypeError, ValueError, ValidationError, AttributeError):
            return None


@dataclass(frozen=True)
class ValuedJob:
    """One counted job as the cap sees it: when it was submitted and what it counts."""

    task_id: str
    submitted_at: datetime
    counted_usd: Decimal
    simulator: bool
    flow_run_id: str | None


def _covered(facts: TaskFacts, campaigns: Mapping[str, CampaignFacts]) -> bool:
    """A submit-only campaign job its campaign's finished manifest has no row for: the run
    booked every job it paid for, so this one was not charged (as `evolink.spend`)."""
    held = campaigns.get(facts.campaign) if facts.campaign else None
    return (
        held is not None
        and held.run_state != "running"
        and facts.submitted_at is not None
        and facts.submitted_at <= held.finished_at
    )


def value_jobs(checkpoint: Checkpoint) -> Iterator[ValuedJob]:
    """Every paid job of the checkpoint once, counted by `evolink.spend.collect_jobs`'s rules
    (without asking EvoLink): manifest rows first, then the records of the other tasks."""
    tasks = checkpoint.tasks
    named = {facts.campaign for facts in tasks.values() if facts.campaign}
    campaigns = {name: c for name, c in checkpoint.campaigns.items() if name in named}
    found: set[str] = set()
    for name in sorted(campaigns):
        held = campaigns[name]
        for row in held.rows:
            if row.task_id in found:
                continue
            facts = tasks.get(row.task_id)
            if facts is None and row.earlier_run:
                continue  # an earlier run's job, older than the checkpoint reaches
            found.add(row.task_id)
            billed = row.billed_usd
            if billed is None and facts is not None and facts.result is not None:
                billed = facts.result[0]
            if billed is None and facts is not None and facts.bill is not None:
                billed = facts.bill[2]
            yield ValuedJob(
                task_id=row.task_id,
                submitted_at=(facts.submitted_at if facts else None) or held.started_at,
                counted_usd=Decimal(billed if billed is not None else row.estimated_usd),
                simulator=row.simulator
                or (not row.endpoint_known and facts is not None and facts.simulator),
                flow_run_id=facts.flow_run_id if facts else None,
            )
    for task_id, facts in tasks.items():
        if task_id in found or facts.submitted_at is None:
            continue
        counted: str | None
        if facts.result is not None:
            billed, estimated = facts.result
            counted = billed if billed is not None else estimated
        elif facts.estimated_usd is not None:
            if facts.bill is not None:
                status, charged, billed = facts.bill
                if not charged and status in ("failed", "cancelled"):
                    continue  # failed at EvoLink, not charged
                counted = billed if billed is not None else facts.estimated_usd
            elif _covered(facts, campaigns):
                continue
            else:
                counted = facts.estimated_usd
        else:
            continue  # a bill note alone: never sent by this store's reckoning
        yield ValuedJob(task_id, facts.submitted_at, Decimal(counted), facts.simulator,
                        facts.flow_run_id)  # fmt: skip


@dataclass(frozen=True)
class CapSpend:
    """The period's spend as the cap counts it, from the running total."""

    spent_usd: Decimal
    """Real jobs only: never the simulator's."""
    simulator_usd: Decimal
    simulator_jobs: int
    by_run: dict[str, Decimal]
    """What each flow run's jobs (real and simulator) recorded: taken off its reservation."""
    folded: int
    """Pending entries folded by this check."""
    rebuilt: bool
    """Whether the checkpoint was rebuilt from the records."""


def spend_in(
    checkpoint: Checkpoint, window: PeriodWindow
) -> tuple[Decimal, Decimal, int, dict[str, Decimal]]:
    """(real spend, simulator spend, simulator jobs, spend by flow run) of the jobs submitted
    in `window`."""
    real, simulated, count = Decimal(0), Decimal(0), 0
    by_run: dict[str, Decimal] = defaultdict(Decimal)
    for job in value_jobs(checkpoint):
        if not window.contains(job.submitted_at):
            continue
        if job.simulator:
            simulated += job.counted_usd
            count += 1
        else:
            real += job.counted_usd
        if job.flow_run_id:
            by_run[job.flow_run_id] += job.counted_usd
    return real, simulated, count, dict(by_run)


# --- the store --------------------------------------------------------------------------------


def _problem(key: str, error: Exception) -> str:
    count = error.error_count() if isinstance(error, ValidationError) else None
    return f"{key}: unreadable ({f'{count} errors' if count is not None else error})"


class RecordStore:
    """Every record of one storage, typed: where it lives (`evolink.layout`), how it is read
    and written, and the spend cap's running total kept as jobs are booked.

    Args:
        storage: Anything with the `RecordStorage` methods (a storage block).
    """

    def __init__(self, storage: RecordStorage) -> None:
        self.storage = storage

    # -- jobs ----------------------------------------------------------------------------------

    async def get_intent(self, key: str) -> dict[str, Any] | None:
        data = await self.storage.aget_json(intent_record_key(key))
        return data if isinstance(data, dict) else None

    async def put_intent(self, key: str, payload: dict[str, Any]) -> None:
        await self.storage.aput_json(intent_record_key(key), payload)

    async def has_intent(self, key: str) -> bool:
        return bool(await self.storage.aexists(intent_record_key(key)))

    async def get_submit_data(self, key: str) -> dict[str, Any] | None:
        """The raw submit record (with its run's `origin`), or None."""
        data = await self.storage.aget_json(submit_record_key(key))
        return data if isinstance(data, dict) else None

    async def get_submit(self, key: str) -> SubmitRecord | None:
        data = await self.get_submit_data(key)
        return None if data is None else SubmitRecord.model_validate(data)

    async def has_submit(self, key: str) -> bool:
        return bool(await self.storage.aexists(submit_record_key(key)))

    async def put_submit(self, record: SubmitRecord, origin: dict[str, Any] | None) -> None:
        """Store the submit record (with the run's origin) and book it for the running total.
        A failure to book never fails the submit (the next rebuild or rerun books it)."""
        data = record.model_dump(mode="json")
        if origin is not None:
            data[ORIGIN_FIELD] = origin
        await self.storage.aput_json(submit_record_key(record.job_key), data)
        await self.book_submit(record, data)

    async def book_submit(self, record: SubmitRecord, data: Mapping[str, Any]) -> None:
        """Book a stored submit record (again): a rerun that finds one books it, so a run that
        died between the record and its booking is counted once a rerun comes by."""
        await self._book(submit_booking(record, origin_of(data)))

    async def get_result_data(self, key: str) -> dict[str, Any] | None:
        """The raw result record (callers decide whether it is reusable here), or None."""
        data = await self.storage.aget_json(job_record_key(key))
        return data if isinstance(data, dict) else None

    async def get_result(self, key: str) -> JobRecord | None:
        data = await self.get_result_data(key)
        return None if data is None else JobRecord.model_validate(data)

    async def put_result(self, record: JobRecord) -> None:
        """Store the finished job's record and book its bill."""
        await self.storage.aput_json(job_record_key(record.job_key), record.model_dump(mode="json"))
        await self._book(result_booking(record))

    async def put_bill(self, note: BillNote) -> None:
        """Store the bill of a job that ended without a result record, and book it."""
        await self.storage.aput_json(bill_note_key(note.job_key), note)
        await self._book(bill_booking(note))

    async def get_elsewhere(self, family_key: str) -> dict[str, Any] | None:
        data = await self.storage.aget_json(elsewhere_key(family_key))
        return data if isinstance(data, dict) else None

    async def put_elsewhere(self, family_key: str, note: Mapping[str, Any]) -> None:
        await self.storage.aput_json(elsewhere_key(family_key), dict(note))

    async def put_task_index(self, index: TaskIndex) -> None:
        await self.storage.aput_json(task_index_key(index.task_id), index.model_dump(mode="json"))

    async def has_task_index(self, task_id: str) -> bool:
        return bool(await self.storage.aexists(task_index_key(task_id)))

    async def get_task_index(self, task_id: str) -> Any | None:
        """The raw task index (the callback receiver validates it), or None."""
        return await self.storage.aget_json(task_index_key(task_id))

    async def get_reported_marker(self, task_id: str) -> bytes | None:
        """The raw "reported" marker of a task's callback (the receiver parses it), or None."""
        return await self.storage.aget_bytes(reported_marker_key(task_id))

    async def put_reported_marker(self, task_id: str, marker: Mapping[str, Any]) -> None:
        await self.storage.aput_json(reported_marker_key(task_id), dict(marker))

    async def job_files(self) -> dict[str, set[str]]:
        """Job key → the record files (`evolink.layout.JOB_FILES`) stored for it."""
        files: dict[str, set[str]] = defaultdict(set)
        for key in await self.storage.alist_keys(f"{JOBS_PREFIX}/"):
            found = job_file_of(key)
            if found is not None:
                files[found[0]].add(found[1])
        return files

    async def read_job_files(
        self,
        problems: list[str],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, JobFiles]:
        """The records of every job that matter for spend; result and bill records only of
        jobs submitted in [since, until) (the others are not counted, so not read)."""
        files = await self.job_files()
        with_submit = sorted(k for k, names in files.items() if "submit.json" in names)
        raw: list[Any] = await bounded(
            self.storage.aget_json(submit_record_key(k)) for k in with_submit
        )
        submits: dict[str, tuple[SubmitRecord, RunOrigin | None]] = {}
        for key, data in zip(with_submit, raw, strict=True):
            try:
                submits[key] = (SubmitRecord.model_validate(data), origin_of(data))
            except (ValidationError, TypeError, AttributeError) as error:
                problems.append(f"{submit_record_key(key)}: unreadable ({error})")

        def wanted(key: str) -> bool:
            if key not in submits:
                return True  # a result without its submit record: read it for its time
            when = submits[key][0].submitted_at
            return (since is None or when >= since) and (until is None or when < until)

        chosen = [k for k in files if wanted(k)]
        results_to_read = [k for k in chosen if "result.json" in files[k]]
        bills_to_read = [
            k for k in chosen if "bill.json" in files[k] and "result.json" not in files[k]
        ]
        raw_results = await bounded(
            self.storage.aget_json(job_record_key(k)) for k in results_to_read
        )
        raw_bills = await bounded(self.storage.aget_json(bill_note_key(k)) for k in bills_to_read)
        results = _validated(results_to_read, raw_results, JobRecord, job_record_key, problems)
        bills = _validated(bills_to_read, raw_bills, BillNote, bill_note_key, problems)
        found: dict[str, JobFiles] = {}
        for key in files:
            submit, origin = submits.get(key, (None, None))
            if submit is None and key not in results:
                continue  # an intent only: never sent, or its submission is unknown
            found[key] = JobFiles(
                job_key=key,
                submit=submit,
                origin=origin,
                result=results.get(key),
                bill=bills.get(key),
            )
        return found

    # -- campaigns -----------------------------------------------------------------------------

    async def get_manifest(self, campaign: str) -> CampaignManifest | None:
        data = await self.storage.aget_json(manifest_key(campaign))
        return None if data is None else CampaignManifest.model_validate(data)

    async def put_manifest(self, manifest: CampaignManifest) -> str:
        """Store the campaign's manifest and book its rows; returns its URI."""
        stored = await self.storage.aput_json(manifest_key(manifest.campaign), manifest)
        await self._book(manifest_booking(manifest))
        return stored.uri

    async def read_manifests(
        self, campaigns: Iterable[str], problems: list[str]
    ) -> dict[str, CampaignManifest]:
        """The manifest of every campaign named that has one."""
        names = sorted(set(campaigns))
        raw = await bounded(self.storage.aget_json(manifest_key(name)) for name in names)
        present = [(name, data) for name, data in zip(names, raw, strict=True) if data is not None]
        return _validated(
            [name for name, _ in present],
            [data for _, data in present],
            CampaignManifest,
            manifest_key,
            problems,
        )

    async def put_journal(
        self, campaign: str, asset: str, stage: str, first_job_key: str, entry: Any
    ) -> None:
        await self.storage.aput_json(journal_key(campaign, asset, stage, first_job_key), entry)

    # -- spend reports and reservations ----------------------------------------------------------

    async def put_spend_report(self, period: str, csv_text: str, report: Any) -> tuple[str, str]:
        """`_reports/spend/<period>.csv` and `.json`; their URIs."""
        csv_key, json_key = report_keys(period)
        stored_csv = await self.storage.aput_bytes(
            csv_key, csv_text.encode("utf-8"), content_type="text/csv"
        )
        stored_json = await self.storage.aput_json(json_key, report)
        return stored_csv.uri, stored_json.uri

    async def put_reservation(self, reservation: Reservation, *, live: bool = False) -> str:
        """Store (or update: its release) a reservation; returns its key. `live`: a new one,
        added to the period's live set (`live_reservations`) — only under the cap's lock."""
        key = reservation_key(reservation.period, reservation.reservation_id)
        await self.storage.aput_json(key, reservation)
        if live:
            data = await self.storage.aget_json(live_reservations_key(reservation.period))
            ids = set(data.get("ids", [])) if isinstance(data, dict) else set()
            ids.add(reservation.reservation_id)
            await self.storage.aput_json(
                live_reservations_key(reservation.period), {"ids": sorted(ids)}
            )
        return key

    async def live_reservations(
        self, period: str, problems: list[str], *, now: datetime
    ) -> list[Reservation]:
        """The period's reservations that may still hold, for the cap (under its lock): those
        of the live set, which is then trimmed of the released and the expired. Without a live
        set (reservations written before it existed), every reservation of the period is read
        once and the set made from them."""
        data = await self.storage.aget_json(live_reservations_key(period))
        found: list[Reservation]
        if isinstance(data, dict) and isinstance(data.get("ids"), list):
            ids = [str(i) for i in data["ids"]]
            raw = await bounded(self.storage.aget_json(reservation_key(period, i)) for i in ids)
            found = list(
                _validated(
                    ids, raw, Reservation, lambda i: reservation_key(period, i), problems
                ).values()
            )
        else:
            ids, found = [], await self.read_reservations(period, problems)
        held = [r for r in found if r.released_at is None and r.expires_at > now]
        if sorted(r.reservation_id for r in held) != sorted(ids):
            await self.storage.aput_json(
                live_reservations_key(period), {"ids": sorted(r.reservation_id for r in held)}
            )
        return held

    async def read_reservations(self, period: str, problems: list[str]) -> list[Reservation]:
        keys = [
            k for k in await self.storage.alist_keys(reservations_prefix(period))
            if k.endswith(".json")
        ]  # fmt: skip
        raw = await bounded(self.storage.aget_json(k) for k in keys)
        found: list[Reservation] = []
        for key, data in zip(keys, raw, strict=True):
            try:
                found.append(Reservation.model_validate(data))
            except ValidationError as error:
                problems.append(f"{key}: unreadable reservation ({error.error_count()} error(s))")
        return found

    # -- the running total -----------------------------------------------------------------------

    async def _book(self, booking: Booking) -> None:
        """Append one pending entry. Never raises: a lost entry is found by a rerun's booking
        or the next rebuild, and money already moved must not fail over bookkeeping."""
        name = f"{booking.written_at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"
        try:
            await self.storage.aput_json(pending_key(name), booking)
        except Exception as error:  # noqa: BLE001 — see the docstring
            logger.warning("Booking of %s not recorded for the spend cap: %s", booking.kind, error)

    async def pending(self) -> list[tuple[str, Booking]]:
        """The bookings not folded yet, oldest first (unreadable ones are skipped and kept)."""
        keys = [k for k in await self.storage.alist_keys(pending_prefix()) if k.endswith(".json")]
        raw = await bounded(self.storage.aget_json(k) for k in keys)
        found: list[tuple[str, Booking]] = []
        for key, data in zip(keys, raw, strict=True):
            if data is None:
                continue
            try:
                found.append((key, Booking.model_validate(data)))
            except ValidationError:
                continue
        return sorted(found, key=lambda item: (item[1].written_at, item[0]))

    async def get_checkpoint(self) -> Checkpoint | None:
        try:
            data = await self.storage.aget_json(running_checkpoint_key())
        except ValueError:
            return None
        return Checkpoint.load(data) if isinstance(data, Mapping) else None

    async def rebuild_facts(self, since: datetime, problems: list[str]) -> Checkpoint:
        """A checkpoint of the jobs submitted since `since`, from the records themselves (the
        spend report's reading), for a storage whose running total is missing or too short."""
        jobs = await self.read_job_files(problems, since=since)
        by_task: dict[str, JobFiles] = {}
        for files in jobs.values():  # one job key per task, the one with a result first
            task_id = files.task_id
            if task_id is not None and (task_id not in by_task or files.result is not None):
                by_task[task_id] = files
        checkpoint = Checkpoint(covers_since=since)
        for task_id, files in by_task.items():
            checkpoint.tasks[task_id] = TaskFacts(
                submitted_at=files.submitted_at,
                campaign=_campaign_of(files.namespace),
                flow_run_id=files.origin.flow_run_id if files.origin else None,
                estimated_usd=(
                    str(files.submit.estimate.get("usd", "0")) if files.submit else None
                ),
                simulator=files.simulator,
                result=(files.result.billed_usd, files.result.estimated_usd)
                if files.result
                else None,
                bill=(files.bill.status, files.bill.charged, files.bill.billed_usd)
                if files.bill and files.result is None
                else None,
            )
        named = {f.campaign for f in checkpoint.tasks.values() if f.campaign}
        now = utcnow()
        for manifest in (await self.read_manifests(named, problems)).values():
            booking = manifest_booking(manifest).model_copy(update={"written_at": now})
            checkpoint.apply(booking)
        return checkpoint

    async def spend_for_cap(self, window: PeriodWindow, *, now: datetime | None = None) -> CapSpend:
        """The period's spend from the running total: fold the pending bookings into the
        checkpoint (rebuilding it from the records when it is missing or does not reach back
        to `window.start`), store it, and sum the window.

        Call it only while holding the spend cap's lock: it is the checkpoint's one writer.
        """
        now = now or utcnow()
        pending = await self.pending()  # listed first: a rebuild reads every record after this
        checkpoint = await self.get_checkpoint()
        rebuilt = checkpoint is None or checkpoint.covers_since > window.start
        if checkpoint is None or rebuilt:
            since = min(window.start, now - RETAIN)
            fresh = Checkpoint(covers_since=since)
            for _, booking in pending:  # older than what the records now say: applied first
                fresh.apply(booking)
            problems: list[str] = []
            rebuilt_facts = await self.rebuild_facts(since, problems)
            for problem in problems:
                logger.warning("Spend cap running total rebuilt without %s", problem)
            fresh.tasks.update(rebuilt_facts.tasks)
            for name, held in rebuilt_facts.campaigns.items():
                fresh.campaigns[name] = held
            checkpoint = fresh
        else:
            for _, booking in pending:
                checkpoint.apply(booking)
        real, simulated, count, by_run = spend_in(checkpoint, window)  # before pruning
        if pending or rebuilt:
            checkpoint.folded_at = now
            checkpoint.prune(now)
            await self.storage.aput_json(running_checkpoint_key(), checkpoint.dump())
            await bounded(self.storage.adelete_key(key) for key, _ in pending)
        return CapSpend(
            spent_usd=real,
            simulator_usd=simulated,
            simulator_jobs=count,
            by_run=by_run,
            folded=len(pending),
            rebuilt=rebuilt,
        )


def _validated(
    names: list[str],
    raw: list[Any],
    model: type[M],
    key_of: Any,
    problems: list[str],
) -> dict[str, M]:
    """`raw[i]` as a `model`, by `names[i]`; the unreadable ones named in `problems`."""
    found: dict[str, M] = {}
    for name, data in zip(names, raw, strict=True):
        try:
            found[name] = model.model_validate(data)
        except ValidationError as error:
            problems.append(_problem(key_of(name), error))
    return found
