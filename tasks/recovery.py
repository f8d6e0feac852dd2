"""Where a campaign's manifest and journal live, and its rebuild from the records in storage.

The rebuild itself is Prefect-free (`evolink.recovery`); this is its glue: read the job records
and the journal from a storage block, ask EvoLink (through the client, with the account's key)
for the bill of every task that has a submit record but no result record, and store the result
where the run's own manifest goes. Nothing here creates a task: a job whose submission is
unknown is only listed (a rerun reattaches to it by its Idempotency-Key).

Plain async functions, not Prefect tasks: `prefect-evolink report` runs them with no flow and no
Prefect API (unless a block is named).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from evolink.campaign import CampaignManifest
from evolink.jobs import JOBS_PREFIX, JobRecord, SubmitRecord, job_record_key, submit_record_key
from evolink.recovery import (
    JournalEntry,
    StoredJob,
    TaskReading,
    campaign_submit,
    rebuild_manifest,
    tasks_to_ask,
)
from prefect_evolink.blocks import AssetStorage, safe_key
from prefect_evolink.blocks.credentials import EvoLinkCredentials

logger = logging.getLogger(__name__)

JOURNAL_DIR: Final = "_journal"
READERS: Final = 16  # storage reads at once
M = TypeVar("M", bound=BaseModel)
ASKERS: Final = 4  # EvoLink status queries at once

_RECORD_FILES: Final = ("intent.json", "submit.json", "result.json")


def manifest_key(campaign: str) -> str:
    """Storage key of a campaign's manifest: `<campaign>/manifest.json`."""
    return safe_key(campaign, "manifest.json")


def journal_prefix(campaign: str) -> str:
    return safe_key(campaign, JOURNAL_DIR) + "/"


def journal_key(campaign: str, asset: str, stage: str, first_job_key: str) -> str:
    """`<campaign>/_journal/<asset>/<stage>/<job key of attempt 1>.json` (asset ids start with
    a letter or digit, so no asset's folder is `_journal`)."""
    return safe_key(campaign, JOURNAL_DIR, asset, stage, f"{first_job_key}.json")


@dataclass
class Rebuilt:
    """A rebuilt manifest, where it was stored, and what could not be read."""

    manifest: CampaignManifest
    uri: str | None
    asked_evolink: bool
    problems: list[str] = field(default_factory=list)
    found: bool = True  # False: no manifest, journal or job record of the campaign at all


async def _bounded(calls: list[Any], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


async def read_manifest(storage: AssetStorage, campaign: str) -> CampaignManifest | None:
    data = await storage.aget_json(manifest_key(campaign))
    return None if data is None else CampaignManifest.model_validate(data)


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
    files: dict[str, set[str]] = defaultdict(set)
    for key in await storage.alist_keys(f"{JOBS_PREFIX}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] in _RECORD_FILES:
            files[parts[1]].add(parts[2])
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
        uri = (await storage.aput_json(manifest_key(campaign), manifest)).uri
    for problem in problems:
        logger.warning("%s", problem)
    return Rebuilt(manifest, uri, credentials is not None, problems, found)
