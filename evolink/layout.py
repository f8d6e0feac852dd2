"""Where every record lives in a storage: the one map of the storage layout.

Every key of a record is built here and nowhere else; the typed store (`evolink.records`) and
the few readers that list a folder take their keys from this module. The layout is the one
existing users' storages already hold (day-two reruns find yesterday's records by these very
keys), so a change here is a migration: keep the old key readable (upgrades keep
yesterday's records).

```
_jobs/<job key>/intent.json           the exact request, stored before the create call
_jobs/<job key>/submit.json           job key → EvoLink task id (+ the run's origin)
_jobs/<job key>/result.json           the finished job: images, estimate, bill
_jobs/<job key>/bill.json             the bill of a job that ended without a result record
_jobs/<unscoped key>/elsewhere.json   where a job was done (another endpoint's run says why not)
_tasks/<task id>.json                 task id → job (written at submit, for callbacks)
_tasks/_reported/<task id>.json       a callback of the task was reported (durable replay memory)
<campaign>/manifest.json              the campaign run's manifest
<campaign>/_journal/<asset>/<stage>/<first job key>.json   which attempt keys a stage used
<image key>.json                      an image's sidecar (what persist stored, beside the image)
_reports/spend/<period>.csv|json      the spend reports
_reports/spend/reservations/<period>/<reservation id>.json   a capped run's reservation
_reports/spend/running/totals.json       the spend cap's running total (evolink.records)
_reports/spend/running/campaigns.json    … the campaigns' manifest facts it counts by
_reports/spend/running/facts/<shard>.json   … the spend facts of each task
_reports/spend/running/pending/<when>-<id>.json   a booking not yet folded into it
_reports/spend/running/live/<period>.json   the ids of the period's reservations still held
_reports/spend/running/lock              the cap's lock on local storage (an empty file, `flock`ed)
_uploads/<files scope>/<sha256>.json   an image uploaded to the Files API: file id, URL, expiry,
                                      the jobs that used it (`evolink.uploads.UploadRecord`)
```

Prefect-free and model-free (keys only), so the job models (`evolink.jobs`) can re-export the
job keys they always exported without an import loop.
"""

from __future__ import annotations

import re
from typing import Final

from evolink.keys import safe_key

JOBS_PREFIX: Final = "_jobs"
TASKS_PREFIX: Final = "_tasks"
REPORTED_PREFIX: Final = f"{TASKS_PREFIX}/_reported"
"""`_tasks/_reported/<task id>.json`: the task was reported (no task id starts with "_")."""
JOURNAL_DIR: Final = "_journal"
MANIFEST_FILE: Final = "manifest.json"

INTENT_FILE: Final = "intent.json"
SUBMIT_FILE: Final = "submit.json"
RESULT_FILE: Final = "result.json"
BILL_FILE: Final = "bill.json"
ELSEWHERE_FILE: Final = "elsewhere.json"
JOB_FILES: Final = (INTENT_FILE, SUBMIT_FILE, RESULT_FILE, BILL_FILE)
"""The records of one job key that readers list (`elsewhere.json` is only a note)."""

UPLOADS_PREFIX: Final = "_uploads"
"""`_uploads/<files scope>/<sha256>.json`: the uploads this storage's runs made."""
REPORTS_PREFIX: Final = "_reports/spend"
"""Where the reports (`<period>.csv`, `<period>.json`) and the reservations are stored."""
RESERVATIONS_DIR: Final = "reservations"
RUNNING_DIR: Final = "running"
PENDING_DIR: Final = "pending"

# EvoLink task ids look like `task-unified-1757156493-imcg5zqt`; anything else is never one of
# ours (and never becomes a storage key: the callback receiver reads ids from untrusted bodies).
TASK_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# --- jobs -----------------------------------------------------------------------------------------


def job_dir(key: str) -> str:
    """`_jobs/<job key>`: the folder of one job key's records."""
    return f"{JOBS_PREFIX}/{key}"


def intent_record_key(key: str) -> str:
    """The exact request about to be sent, stored before the create call: a rerun after a crash
    resends these very bytes, so the Idempotency-Key replays instead of conflicting."""
    return f"{job_dir(key)}/{INTENT_FILE}"


def submit_record_key(key: str) -> str:
    return f"{job_dir(key)}/{SUBMIT_FILE}"


def job_record_key(key: str) -> str:
    return f"{job_dir(key)}/{RESULT_FILE}"


def bill_note_key(key: str) -> str:
    """`_jobs/<key>/bill.json`: the bill of a job that ended without a result record."""
    return f"{job_dir(key)}/{BILL_FILE}"


def elsewhere_key(family_key: str) -> str:
    """`_jobs/<unscoped job key>/elsewhere.json`: where every endpoint's run of one job notes
    where it was done, so another endpoint's run can say why it does not reuse it."""
    return f"{job_dir(family_key)}/{ELSEWHERE_FILE}"


def job_file_of(key: str) -> tuple[str, str] | None:
    """A listed key under `_jobs/` → (job key, record file name) for the records of
    `JOB_FILES`; None for anything else (images never live there, notes are skipped)."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == JOBS_PREFIX and parts[2] in JOB_FILES:
        return parts[1], parts[2]
    return None


# --- tasks (callbacks) ----------------------------------------------------------------------------


def is_task_id(value: object) -> bool:
    """Whether `value` can be an EvoLink task id (and so a storage key segment)."""
    return isinstance(value, str) and TASK_ID_RE.fullmatch(value) is not None


def task_index_key(task_id: str) -> str:
    """`_tasks/<task_id>.json`: the one object that says a task id is ours (`TaskIndex`), so
    a callback for it is looked up in one read. ValueError for anything that is no task id."""
    if not is_task_id(task_id):
        raise ValueError(f"not an EvoLink task id: {task_id[:40]!r}")
    return f"{TASKS_PREFIX}/{task_id}.json"


def reported_marker_key(task_id: str) -> str:
    """`_tasks/_reported/<task id>.json`, beside the task's index: written before its event is
    emitted, so a replayed callback is answered `duplicate`. ValueError for no task id."""
    if not is_task_id(task_id):
        raise ValueError(f"not an EvoLink task id: {task_id[:40]!r}")
    return f"{REPORTED_PREFIX}/{task_id}.json"


# --- campaigns ------------------------------------------------------------------------------------


def manifest_key(campaign: str) -> str:
    """Storage key of a campaign's manifest: `<campaign>/manifest.json`."""
    return safe_key(campaign, MANIFEST_FILE)


def journal_prefix(campaign: str) -> str:
    return safe_key(campaign, JOURNAL_DIR) + "/"


def journal_key(campaign: str, asset: str, stage: str, first_job_key: str) -> str:
    """`<campaign>/_journal/<asset>/<stage>/<job key of attempt 1>.json` (asset ids start with
    a letter or digit, so no asset's folder is `_journal`)."""
    return safe_key(campaign, JOURNAL_DIR, asset, stage, f"{first_job_key}.json")


# --- images ---------------------------------------------------------------------------------------


def sidecar_key(image_key: str) -> str:
    """`<image key>.json`: what persist stored for an image, beside it."""
    return f"{image_key}.json"


# --- spend ----------------------------------------------------------------------------------------


def _reports(*parts: str) -> str:
    return safe_key(*REPORTS_PREFIX.split("/"), *parts)


def report_keys(period: str) -> tuple[str, str]:
    """(`_reports/spend/<period>.csv`, `….json`)."""
    return _reports(f"{period}.csv"), _reports(f"{period}.json")


def reservations_prefix(period: str) -> str:
    return _reports(RESERVATIONS_DIR, period) + "/"


def reservation_key(period: str, reservation_id: str) -> str:
    """`_reports/spend/reservations/<period>/<reservation id>.json`."""
    return _reports(RESERVATIONS_DIR, period, f"{reservation_id}.json")


def running_totals_key() -> str:
    """`_reports/spend/running/totals.json`: the spend cap's running total, per quarter hour."""
    return _reports(RUNNING_DIR, "totals.json")


def running_campaigns_key() -> str:
    """`_reports/spend/running/campaigns.json`: the campaigns' manifest facts it counts by."""
    return _reports(RUNNING_DIR, "campaigns.json")


def running_facts_key(shard: str) -> str:
    """`_reports/spend/running/facts/<shard>.json`: the spend facts of the tasks of a shard."""
    return _reports(RUNNING_DIR, "facts", f"{shard}.json")


def live_reservations_key(period: str) -> str:
    """`_reports/spend/running/live/<period>.json`: which reservations of the period may still
    hold, so the cap reads those, not every reservation the period ever had."""
    return _reports(RUNNING_DIR, "live", f"{period}.json")


def spend_lock_key() -> str:
    """`_reports/spend/running/lock`: the file a local storage's spend cap check holds an OS
    lock on (`fcntl.flock`) while it folds the running total and writes its reservation, so
    every process sharing the directory takes turns (`prefect_evolink.tasks.spend_cap`). It
    stays empty and is never deleted; storages that are not local use a Prefect limit."""
    return _reports(RUNNING_DIR, "lock")


def pending_prefix() -> str:
    """`_reports/spend/running/pending/`: bookings not yet folded into the checkpoint."""
    return _reports(RUNNING_DIR, PENDING_DIR) + "/"


def pending_key(name: str) -> str:
    """`_reports/spend/running/pending/<name>.json` (name: `<UTC time>-<random id>`)."""
    return _reports(RUNNING_DIR, PENDING_DIR, f"{name}.json")


# --- uploads (the Files API) ----------------------------------------------------------------------

_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_SCOPE_RE: Final = re.compile(r"[0-9a-z]{1,32}")


def uploads_prefix() -> str:
    """`_uploads/`: every upload record of a storage."""
    return f"{UPLOADS_PREFIX}/"


def upload_record_key(scope: str, sha256: str) -> str:
    """`_uploads/<files scope>/<sha256>.json`: one image uploaded to one Files API endpoint
    (`evolink.uploads.files_scope`). ValueError for a scope or digest of another shape."""
    if not _SCOPE_RE.fullmatch(scope) or not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"not an upload record key: {scope[:40]!r}/{sha256[:80]!r}")
    return f"{UPLOADS_PREFIX}/{scope}/{sha256}.json"


def upload_file_of(key: str) -> tuple[str, str] | None:
    """A listed key under `_uploads/` → (files scope, sha256); None for anything else."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == UPLOADS_PREFIX and parts[2].endswith(".json"):
        scope, digest = parts[1], parts[2].removesuffix(".json")
        if _SCOPE_RE.fullmatch(scope) and _SHA256_RE.fullmatch(digest):
            return scope, digest
    return None
