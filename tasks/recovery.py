"""A campaign's manifest and journal, and its rebuild from the records in storage.

Where they live is `evolink.layout`'s (the keys are re-exported here); they are read and
written through the record store (`evolink.records`).

The rebuild itself is Prefect-free (`evolink.recovery`); this is its glue: read the job records
and the journal from a storage block, ask EvoLink (through the client, with the account's key)
for the bill of every task that has a submit record but no result record, and store the result
where the run's own manifest goes. Nothing here creates a task: a job whose submission is
unknown is only listed (a rerun reattaches to it by its Idempotency-Key).

Plain async functions, not Prefect tasks: `prefect-evolink report` runs them with no flow and no
Prefect API (unless a block is named).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from evolink.campaign import CampaignManifest
from evolink.jobs import JobRecord, SubmitRecord
from evolink.layout import JOURNAL_DIR as JOURNAL_DIR
from evolink.layout import job_record_key, submit_record_key
from evolink.layout import journal_key as journal_key
from evolink.layout import journal_prefix as journal_prefix
from evolink.layout import manifest_key as manifest_key
from evolink.records import READERS as READERS
from evolink.records import RecordStore, bounded
from evolink.recovery import (
    JournalEntry,
    StoredJob,
    TaskReading,
    campaign_submit,
    rebuild_manifest,
    tasks_to_ask,
)
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
ASKERS: Final = 4  # EvoLink status queries at once


@dataclass
class Rebuilt:
    """A rebuilt manifest, where it was stored, and what could not be read."""

    manifest: CampaignManifest
    uri: str | None
    asked_evolink: bool
    problems: list[str] = field(default_factory=list)
    found: bool = True  # False: no manifest, journal or job record of the campaign at all


async def _bounded(calls: list[Any], limit: int) -> list[Any]:
    return await bounded(calls, limit)


async def read_manifest(storage: AssetStorage, campaign: str) -> CampaignManifest | None:
    return await RecordStore(storage).get_manifest(campaign)


async def read_models(
    storage: AssetStorage, prefix: str, model: type[M], what: str, problems: list[str]
) -> list[M]:
    """Every JSON record under `prefix` as a `model`; unreadable ones go to `problems`, named."""
    keys = [k for k in await storage.alist_keys(prefix) if k.endswith(".json")]
    raw = await _bounded([storage.aget_json(k) for k in keys], READERS)
    found: list[M] = []
    for key, data in zip(keys, raw, strict=True):
        try:
            found.append(model.model_validate(data))
        except ValidationError as error:
            problems.append(f"{key}: unreadable {what} ({error.error_count()} error(s))")
    return found


async def read_journal(
    storage: AssetStorage, campaign: str, problems: list[str]
) -> list[JournalEntry]:
    return await read_models(
        storage, journal_prefix(campaign), JournalEntry, "journal entry", problems
    )


async def read_job_records(
    storage: AssetStorage, campaign: str, journal: list[JournalEntry], problems: list[str]
) -> dict[str, StoredJob]:
    """The records of the campaign's jobs: every submit record is read to find them (its
    namespace names the campaign), plus the job keys of the journal."""
    files = await RecordStore(storage).job_files()
    with_submit = [k for k, names in files.items() if "submit.json" in names]
    raw = await _bounded([storage.aget_json(submit_record_key(k)) for k in with_submit], READERS)
    submits: dict[str, SubmitRecord] = {}
    for key, data in zip(with_submit, raw, strict=True):
        try:
            submits[key] = SubmitRecord.model_validate(data)
        except ValidationError as error:
            problems.append(f"{submit_record_key(key)}: unreadable ({error.error_count()} errors)")
    ours = {k for k, s in submits.items() if campaign_submit(campaign, s) is not None}
    ours |= {k for entry in journal for k in entry.job_keys if k in files}
    finished = [k for k in ours if "result.json" in files[k]]
    raw = await _bounded([storage.aget_json(job_record_key(k)) for k in finished], READERS)
    results: dict[str, JobRecord] = {}
    for key, data in zip(finished, raw, strict=True):
        try:
            results[key] = JobRecord.model_validate(data)
        except ValidationError as error:
            problems.append(f"{job_record_key(key)}: unreadable ({error.error_count()} errors)")
    return {
        key: StoredJob(
            job_key=key,
            has_intent="intent.json" in files[key],
            submit=submits.get(key),
            result=results.get(key),
        )
        for key in ours
    }


async def ask_evolink(
    task_ids: list[str], credentials: EvoLinkCredentials
) -> dict[str, TaskReading]:
    """What EvoLink says about each task now (status and bill); an error is a reading too."""
    async with credentials.get_client() as client:

        async def read(task_id: str) -> TaskReading:
            try:
                return TaskReading.of(await client.get_task(task_id))
            except Exception as error:  # noqa: BLE001 — reported per task, never fatal
                return TaskReading.unreadable(error)

        readings = await _bounded([read(task_id) for task_id in task_ids], ASKERS)
    return dict(zip(task_ids, readings, strict=True))


async def rebuild_campaign(
    campaign: str,
    storage: AssetStorage,
    credentials: EvoLinkCredentials | None = None,
    *,
    write: bool = True,
) -> Rebuilt:
    """Rebuild `campaign`'s manifest from storage (and EvoLink, given credentials); store it.

    Args:
        campaign: The campaign's name, as in its brief.
        storage: The storage block the campaign's runs used.
        credentials: When given, EvoLink is asked for the bill of every task that has a submit
            record but no result record; without, those bills stay unknown (counted at their
            estimates).
        write: Store the rebuilt manifest at `manifest_key(campaign)` (replacing the run's) —
            unless nothing at all of the campaign was found.

    Returns:
        The manifest, its storage URI (None when not written), the records that could not be
        read, and whether anything of the campaign was found.
    """
    problems: list[str] = []
    previous = await read_manifest(storage, campaign)
    journal = await read_journal(storage, campaign, problems)
    jobs = await read_job_records(storage, campaign, journal, problems)
    readings: dict[str, TaskReading] = {}
    if credentials is not None:
        readings = await ask_evolink(tasks_to_ask(campaign, jobs.values()), credentials)
    manifest = rebuild_manifest(campaign, jobs, journal, readings, previous)
    found = previous is not None or bool(journal) or bool(jobs)
    uri = None
    if write and found:
        uri = await RecordStore(storage).put_manifest(manifest)
    for problem in problems:
        logger.warning("%s", problem)
    return Rebuilt(manifest, uri, credentials is not None, problems, found)
