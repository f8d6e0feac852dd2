"""The record store: every record read and written through one typed object, and the spend
cap's running total kept as records are booked.

`RecordStore(storage)` wraps any object with the small async storage interface of
`RecordStorage` (the storage blocks of `prefect_evolink.blocks` have it) and knows where each
record lives (`evolink.layout`, the one map of the layout). Submit, persist, recovery, the
campaign, the callbacks, the spend report and the cap read and write records through it.
Prefect-free: the cap's lock is the caller's (`prefect_evolink.tasks.spend_cap`).

**The running total** (what the spend cap checks, in O(bookings since the last check) rather
than O(every record of the period); its data and rules are `evolink.running_total`'s):

1. *Booking* — every write of a record that moves money (a submit record, a result record, a
   bill note, a campaign manifest) is followed by one small **pending entry**
   (`_reports/spend/running/pending/<UTC time>-<random>.json`, a `Booking`): the facts of that
   record the spend sums need. Entries are append-only and never rewritten (each name is
   unique), so bookings on any number of workers never race and need no lock — and a booking
   made outside any capped run is booked all the same (booking is the store's write).
2. *Folding* — the cap check (`spend_for_cap`), which already runs under the storage's spend
   cap lock (`prefect_evolink.tasks.spend_cap`: an OS file lock on `running/lock` for a local
   storage, the one-slot global concurrency limit `evolink-spend-cap` for S3), lists the pending
   entries, reads the facts of the tasks they touch (`running/facts/<shard>.json`, 64 shards
   by task id; `running/campaigns.json` when a campaign is concerned), sets those facts,
   recomputes those tasks' values and moves the sums (`running/totals.json`: per UTC quarter
   hour, per flow run) by the difference; then deletes the entries. Only a holder of that lock
   writes these files, so folds never interleave. The totals are written first and carry the
   values they were moved by (`Totals.overlay`); facts and campaigns after; the entries are
   deleted last. A fold that dies anywhere leaves its entries pending, and the next one sets
   the same facts again and moves nothing twice (facts are *set*, never amounts added; a
   manifest entry older than the manifest facts held is ignored).
3. *Summing* — a period is a whole number of UTC quarter hours in every time zone, so the cap
   sums the quarters of its window: real spend only, the simulator's apart, by the rules of
   `evolink.spend.collect_jobs` (tests/test_records.py holds the two equal).

**Why it stays right.** A run that crashes after writing a record but before its entry leaves a
record the total does not know until a rerun: the submit step of a rerun finds the submit
record and books it again (`book_submit`; idempotent), and the full spend report
(`prefect-evolink spend`) still reads every record. A reservation of a crashed run stops
counting as before (expired, or its flow run ended). **Rebuild**: when the totals are missing,
unreadable, of another format (`running_total.VERSION`), or do not reach back to the start of
the period checked (records written by a version without running totals, or older than
`RETAIN`), the total is rebuilt once from the records (`rebuild_running`, the spend report's
reading), under the same lock, and incremental from then on. The entries listed before the
rebuild are deleted after it: each follows its record, so the rebuild read that record.

**Reservations**: a period's live set (`running/live/<period>.json`, written under the lock)
names the reservations that may still hold, so the cap reads those, not every reservation the
period had; without one (reservations of an older version) all are read once.

Known limits: a worker still running a version without running totals books nothing into it
until the next rebuild (delete `_reports/spend/running/totals.json` after an upgrade of every
worker, or let the period roll over); facts of jobs older than `RETAIN` are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from evolink.campaign import CampaignManifest
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
    running_campaigns_key,
    running_facts_key,
    running_totals_key,
    submit_record_key,
    task_index_key,
    upload_file_of,
    upload_record_key,
    uploads_prefix,
)
from evolink.periods import PeriodWindow
from evolink.running_total import (
    RETAIN,
    SHARDS,
    Booking,
    CampaignFacts,
    TaskFacts,
    Totals,
    affected,
    bill_booking,
    campaign_of,
    fold,
    manifest_booking,
    result_booking,
    shard_of,
    submit_booking,
)
from evolink.spend_cap import Reservation
from evolink.spend_jobs import ORIGIN_FIELD, BillNote, JobFiles, RunOrigin, origin_of
from evolink.uploads import UploadRecord

logger = logging.getLogger(__name__)

READERS: Final = 16
"""Storage reads at once."""

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
    """Pending bookings folded by this check."""
    rebuilt: bool
    """Whether the running total was rebuilt from the records."""


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
        self._live: dict[str, set[str]] = {}  # period → held ids, as `live_reservations` saw

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

    async def job_ended(self, key: str) -> bool:
        """Whether the job key's work at EvoLink is over: its result record, or the bill note
        of a job that ended without one, is stored."""
        return bool(
            await self.storage.aexists(job_record_key(key))
            or await self.storage.aexists(bill_note_key(key))
        )

    async def job_started(self, key: str) -> bool:
        """Whether a create may have been sent for the job key (an intent or submit record)."""
        return bool(
            await self.storage.aexists(intent_record_key(key))
            or await self.storage.aexists(submit_record_key(key))
        )

    # -- uploads (the Files API) -----------------------------------------------------------------

    async def get_upload(self, scope: str, sha256: str) -> UploadRecord | None:
        """The upload of an image to a Files API endpoint, or None (also when unreadable: a
        new upload replaces it)."""
        data = await self.storage.aget_json(upload_record_key(scope, sha256))
        if not isinstance(data, dict):
            return None
        try:
            return UploadRecord.model_validate(data)
        except ValidationError as error:
            logger.warning("%s", _problem(upload_record_key(scope, sha256), error))
            return None

    async def put_upload(self, record: UploadRecord) -> None:
        await self.storage.aput_json(upload_record_key(record.scope, record.sha256), record)

    async def forget_upload(self, record: UploadRecord) -> None:
        """Delete the record of an upload that is gone (deleted or expired at EvoLink)."""
        await self.storage.adelete_key(upload_record_key(record.scope, record.sha256))

    async def uploads(self, problems: list[str] | None = None) -> list[UploadRecord]:
        """Every upload record of the storage, oldest first; unreadable ones go to `problems`."""
        keys = [k for k in await self.storage.alist_keys(uploads_prefix()) if upload_file_of(k)]
        found: list[UploadRecord] = []
        read = await bounded(self.storage.aget_json(k) for k in keys)
        for key, data in zip(keys, read, strict=True):
            try:
                found.append(UploadRecord.model_validate(data))
            except ValidationError as error:
                if problems is not None:
                    problems.append(_problem(key, error))
        return sorted(found, key=lambda record: record.uploaded_at)

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
            ids = self._live.get(reservation.period)
            if ids is None:
                data = await self.storage.aget_json(live_reservations_key(reservation.period))
                ids = set(data.get("ids", [])) if isinstance(data, dict) else set()
            ids = ids | {reservation.reservation_id}
            self._live[reservation.period] = ids
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
        # Trimmed when the next reservation is written (`put_reservation`), in the same write.
        self._live[period] = {r.reservation_id for r in held}
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

    async def get_totals(self) -> Totals | None:
        try:
            data = await self.storage.aget_json(running_totals_key())
        except ValueError:
            return None
        return Totals.load(data) if isinstance(data, Mapping) else None

    async def _get_campaigns(self) -> dict[str, CampaignFacts]:
        data = await self.storage.aget_json(running_campaigns_key())
        if not isinstance(data, Mapping):
            return {}
        return {name: CampaignFacts.load(held) for name, held in data.items()}

    async def _get_facts(self, shards: Iterable[str]) -> dict[str, dict[str, TaskFacts]]:
        names = sorted(set(shards))
        raw = await bounded(self.storage.aget_json(running_facts_key(n)) for n in names)
        return {
            name: {task: TaskFacts.load(f) for task, f in (data or {}).items()}
            for name, data in zip(names, raw, strict=True)
        }

    async def _put_facts(
        self,
        campaigns: Mapping[str, CampaignFacts] | None,
        shards: Mapping[str, Mapping[str, TaskFacts]],
        now: datetime,
    ) -> None:
        horizon = now - RETAIN  # facts of jobs no cap period reaches are dropped on the way
        await bounded(
            self.storage.aput_json(
                running_facts_key(name),
                {
                    task: facts.dump()
                    for task, facts in shard.items()
                    if facts.submitted_at is None or facts.submitted_at >= horizon
                },
            )
            for name, shard in shards.items()
        )
        if campaigns is not None:
            await self.storage.aput_json(
                running_campaigns_key(), {name: c.dump() for name, c in campaigns.items()}
            )

    async def _put_totals(self, totals: Totals, now: datetime) -> None:
        totals.folded_at = now
        await self.storage.aput_json(running_totals_key(), totals.pruned(now).dump())

    async def rebuild_running(
        self, since: datetime, problems: list[str], *, now: datetime
    ) -> Totals:
        """The running total of the jobs submitted since `since`, from the records themselves
        (the spend report's reading), for a storage whose total is missing or too short."""
        jobs = await self.read_job_files(problems, since=since)
        by_task: dict[str, JobFiles] = {}
        for files in jobs.values():  # one job key per task, the one with a result first
            task_id = files.task_id
            if task_id is not None and (task_id not in by_task or files.result is not None):
                by_task[task_id] = files
        facts = {task_id: TaskFacts.of(files) for task_id, files in by_task.items()}
        campaigns: dict[str, CampaignFacts] = {}
        named = {f.campaign for f in facts.values() if f.campaign}
        bookings = [
            manifest_booking(manifest).model_copy(update={"written_at": now})
            for manifest in (await self.read_manifests(named, problems)).values()
        ]
        for task_id, task in facts.items():
            if task.campaign is not None:
                campaigns.setdefault(
                    task.campaign, CampaignFacts(now, "none", now, now, [])
                ).tasks.add(task_id)
        totals = Totals(covers_since=since)
        tasks = set(facts) | {row.task_id for b in bookings for row in b.rows}
        fold(bookings, facts, campaigns, totals, tasks)
        totals.overlay = {}
        shards: dict[str, dict[str, TaskFacts]] = {f"{n:02d}": {} for n in range(SHARDS)}
        for task_id, task in facts.items():
            shards[shard_of(task_id)][task_id] = task
        # The facts first, the totals last: without totals the next check rebuilds again.
        await self._put_facts(campaigns, shards, now)
        await self._put_totals(totals, now)
        return totals

    async def spend_for_cap(self, window: PeriodWindow, *, now: datetime | None = None) -> CapSpend:
        """The period's spend from the running total: fold the pending bookings in (reading
        only the facts of the tasks they touch), store it, and sum the window; rebuild it from
        the records when it is missing, of another format or does not reach back to
        `window.start`.

        Call it only while holding the spend cap's lock: it is the running total's one writer.
        """
        now = now or utcnow()
        pending = await self.pending()  # listed first: a rebuild reads every record after this
        totals = await self.get_totals()
        rebuilt = totals is None or totals.covers_since > window.start
        if totals is None or rebuilt:
            # The records the listed bookings were written for are all there by now (a
            # booking follows its record), so the rebuild reads them: the bookings are done.
            problems: list[str] = []
            totals = await self.rebuild_running(min(window.start, now - RETAIN), problems, now=now)
            for problem in problems:
                logger.warning("Spend cap running total rebuilt without %s", problem)
        elif pending:
            bookings = [booking for _, booking in pending]
            tasks = affected(bookings, {})
            shards = await self._get_facts(shard_of(task) for task in tasks)
            # The campaigns' facts are read only when a booking may concern a campaign.
            touches_campaigns = any(
                b.kind == "manifest" or campaign_of(b.namespace) for b in bookings
            ) or any(shards[shard_of(t)].get(t, TaskFacts()).campaign is not None for t in tasks)
            campaigns: dict[str, CampaignFacts] = {}
            if touches_campaigns:
                campaigns = await self._get_campaigns()
                tasks = affected(bookings, campaigns)
                missing = {shard_of(t) for t in tasks} - set(shards)
                shards.update(await self._get_facts(missing))
            facts = {task: f for shard in shards.values() for task, f in shard.items()}
            totals.settle(facts)
            fold(bookings, facts, campaigns, totals, tasks)
            for task in tasks:
                shards[shard_of(task)][task] = facts[task]
            # The totals are the commit point (with the counted values they moved, `settle`):
            # facts and campaigns written after them are set again from the bookings, which
            # stay pending until all is written.
            await self._put_totals(totals, now)
            await self._put_facts(campaigns if touches_campaigns else None, shards, now)
        await bounded(self.storage.adelete_key(key) for key, _ in pending)
        real, simulated, count, by_run = totals.in_window(window)
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
