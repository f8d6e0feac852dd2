"""Fault matrix (issue #5): the example campaign under one fault at a time, measured from outside.

Shared by `tests/test_fault_matrix.py` (one test per row, plus the table) and
`bench/fault_matrix.py` (prints the Markdown table for the README), so the rows, the way each is
provoked and the way it is measured exist once.

Every row runs `briefs/spring-launch.yaml` with 2 drafts per asset and without its adaptations
(4 assets: 8 paid jobs, 12 images when nothing goes wrong; the test suite keeps only
`QUICK_ASSETS`, 4 jobs and 6 images, for speed) against its own `EvoLinkSimulator`, and is
measured only from evidence outside the code under test:

- **injected**: how often the fault fired (the simulator's `fault_counts`, or our own counters
  for storage errors and the killed process);
- **images expected / stored**: expected = every image of every task the simulator *billed*
  (a finished image); stored = those the run's manifest lists whose bytes are in storage and hash
  to the manifest's sha256 *and* to the bytes the simulator served;
- **billed tasks / logical jobs (duplicates)**: a logical job is (asset prompt, quality) — a
  draft or a final of one asset — read from the simulator's ledger, not from our job keys;
  duplicates = billed tasks − logical jobs that billed;
- **billed vs reported**: the simulator ledger's sum against the manifest's `totals.billed_usd`.

Prefect must already be configured (a test harness or a server); see `bench/fault_matrix.py`.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError
from pydantic import Field, SecretStr

from evolink.campaign import AssetStatus, CampaignManifest
from evolink.jobs import JOBS_PREFIX
from evolink.simulator import EvoLinkSimulator, Fault, LedgerEntry
from evolink.simulator.png import render_png
from evolink.sizes import resolve_size
from prefect_evolink.blocks import (
    AssetStorage,
    LocalAssetStorage,
    S3AssetStorage,
    StoredObject,
    load_storage,
)
from prefect_evolink.blocks.credentials import EvoLinkCredentials

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_BRIEF = ROOT / "briefs" / "spring-launch.yaml"
CAMPAIGN = "aurora-spring-launch"
DRAFTS_PER_ASSET = 2
GENERATION_SECONDS = 0.3
POLL_DEADLINE_SECONDS = 60.0
S3_BUCKET = "fault-matrix"

# Prompt fragments that pick one asset of the example brief for a task fault.
SOCIAL = "jogging"  # social-square
STORY = "Vertical 9:16 story"  # story-vertical
#: The two assets the task faults aim at: the test suite's quick matrix runs only these.
QUICK_ASSETS = ("social-square", "story-vertical")


# --------------------------------------------------------------------------------------------
# Storage that fails for real
# --------------------------------------------------------------------------------------------

_PUT_FAILURES: dict[str, dict[str, int]] = {}
_PUT_LOCK = threading.Lock()


class FlakyS3AssetStorage(S3AssetStorage):
    """S3 storage whose `put_file` (the image upload) fails the first N times per key.

    Test-only. `error` picks what is raised:
    - "client": a botocore `ClientError` SlowDown / InternalError, as S3 answers a busy moment
      (what `put_object`, `head_object`, … raise; retryable per `tasks/steps.py`);
    - "upload": boto3's `S3UploadFailedError`, which is what `upload_file` — and so the real
      `S3AssetStorage.put_file` — raises once botocore's own retries of such an answer give up.
    Saved as a block like any storage, so the flow loads it by name; the failure counts live in
    this process (keyed by `counter`), so each retry of the persist task sees its key's history.
    """

    _block_type_name: ClassVar[str | None] = "Fault Matrix Flaky S3 Storage"
    _block_type_slug: ClassVar[str | None] = "fault-matrix-flaky-s3-storage"

    counter: str = Field(default="default", description="which failure book to use")
    failures_per_key: int = Field(default=1, ge=0)
    max_failures: int | None = Field(default=None, description="stop failing after this many")
    error: Literal["client", "upload"] = "client"

    def put_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        with _PUT_LOCK:
            book = _PUT_FAILURES.setdefault(self.counter, {})
            failed, total = book.get(key, 0), sum(book.values())
            if failed < self.failures_per_key and (
                self.max_failures is None or total < self.max_failures
            ):
                book[key] = failed + 1
                code = ("SlowDown", "InternalError")[total % 2]
                error = ClientError(
                    {
                        "Error": {"Code": code, "Message": f"injected {code} #{total + 1}"},
                        "ResponseMetadata": {"HTTPStatusCode": 503 if code == "SlowDown" else 500},
                    },
                    "PutObject",
                )
                if self.error == "client":
                    raise error
                try:  # as boto3/s3/transfer.py S3Transfer.upload_file does it
                    raise error
                except ClientError as cause:
                    raise S3UploadFailedError(  # noqa: B904 — implicit chaining, as boto3
                        f"Failed to upload {path} to {self.bucket}/{self._object_key(key)}: {cause}"
                    )
        return super().put_file(key, path, content_type=content_type, metadata=metadata)


def put_failures(counter: str) -> int:
    with _PUT_LOCK:
        return sum(_PUT_FAILURES.get(counter, {}).values())


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """One `run_campaign` call: the manifest found in storage afterwards and what it raised."""

    manifest: CampaignManifest | None
    error: BaseException | None
    seconds: float

    @property
    def statuses(self) -> dict[str, AssetStatus]:
        return {o.asset: o.status for o in self.manifest.assets} if self.manifest else {}

    def detail(self, asset: str) -> str:
        assert self.manifest is not None
        return next(o.detail for o in self.manifest.assets if o.asset == asset)


@dataclass
class Row:
    """One line of the table."""

    fault: str
    injected: int
    injected_detail: str
    images_expected: int
    images_stored: int
    billed_tasks: int
    logical_jobs: int
    billed_usd: Decimal
    reported_usd: Decimal
    notes: str = ""
    missing: list[str] = field(default_factory=list)  # "<task id>/<index>" not stored intact

    @property
    def duplicates(self) -> int:
        return self.billed_tasks - self.logical_jobs

    @property
    def images_lost(self) -> int:
        return self.images_expected - self.images_stored

    def markdown(self) -> str:
        relation = "=" if self.billed_usd == self.reported_usd else "≠"
        cells = [
            self.fault,
            f"{self.injected} ({self.injected_detail})"
            if self.injected_detail
            else str(self.injected),
            f"{self.images_expected} / {self.images_stored}",
            f"{self.billed_tasks} / {self.logical_jobs} ({self.duplicates})",
            f"${self.billed_usd} {relation} ${self.reported_usd}",
            self.notes,
        ]
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


TABLE_HEADER = (
    "| fault | injected | images expected / stored | billed tasks / logical jobs (duplicates) "
    "| billed vs reported | notes |\n|---|---|---|---|---|---|"
)


def markdown_table(rows: Iterable[Row]) -> str:
    return "\n".join([TABLE_HEADER, *(row.markdown() for row in rows)])


@dataclass(frozen=True)
class Shape:
    """How big the campaign is: what a clean run pays for and stores."""

    assets: int
    drafts: int

    @property
    def jobs(self) -> int:
        return 2 * self.assets  # one draft job (n = drafts) and one final per asset

    @property
    def images(self) -> int:
        return self.assets * (self.drafts + 1)


@dataclass
class Result:
    """A row plus the evidence its checks look at."""

    scenario: Scenario
    shape: Shape
    row: Row
    runs: list[RunOutcome]
    ledger: list[LedgerEntry]
    request_counts: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# One scenario's world: a simulator, a brief, blocks, storage
# --------------------------------------------------------------------------------------------


def write_brief(
    directory: Path, drafts: int = DRAFTS_PER_ASSET, assets: Iterable[str] | None = None
) -> Path:
    """The example brief with `drafts` drafts per asset, optionally only some of its assets.

    Without its adaptations (issue #21): the matrix measures drafts and finals, 2 paid jobs per
    asset; the adaptations' own faults are tests/test_adaptations.py's."""
    data = yaml.safe_load(EXAMPLE_BRIEF.read_text())
    data["defaults"]["drafts"] = drafts
    data["defaults"].pop("adaptations", None)
    for asset in data["assets"]:
        asset.pop("adaptations", None)
    if assets is not None:
        keep = list(assets)
        data["assets"] = [asset for asset in data["assets"] if asset["id"] in keep]
        missing = set(keep) - {asset["id"] for asset in data["assets"]}
        if missing:
            raise ValueError(f"the example brief has no asset(s) {sorted(missing)}")
    path = directory / "brief.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Lab:
    """Everything one row needs; `run()` runs the campaign once and reads back its manifest."""

    def __init__(
        self,
        scenario_id: str,
        workdir: Path,
        *,
        s3_endpoint: str | None = None,
        flaky_s3: Mapping[str, Any] | None = None,
        assets: Iterable[str] | None = None,
    ) -> None:
        self.id = scenario_id
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.brief = write_brief(workdir, assets=assets)
        brief = yaml.safe_load(self.brief.read_text())
        self.shape = Shape(len(brief["assets"]), brief["defaults"]["drafts"])
        self.simulator = EvoLinkSimulator(
            api_key=f"sk-fault-matrix-{scenario_id}-0123456789",
            generation_seconds=GENERATION_SECONDS,
            seed=7,
        ).start()
        block = f"fault-matrix-{scenario_id}"
        EvoLinkCredentials(
            api_key=SecretStr(self.simulator.api_key),
            base_url=self.simulator.base_url,
            poll_min_interval=0.05,
            poll_max_interval=0.2,
        ).save(block, overwrite=True)
        self.credentials_block = block
        self.storage: AssetStorage
        if flaky_s3 is not None:
            if not s3_endpoint:
                raise RuntimeError(f"row {scenario_id} needs an S3 endpoint")
            self.storage = FlakyS3AssetStorage(
                bucket=S3_BUCKET,
                prefix=f"{scenario_id}-{os.getpid()}-{time.time_ns()}",
                endpoint_url=s3_endpoint,
                region_name="us-east-1",
                addressing_style="path",
                aws_access_key_id=SecretStr("testing"),
                aws_secret_access_key=SecretStr("testing"),
                counter=block + str(time.time_ns()),
                **flaky_s3,
            )
            client = self.storage.get_client()
            try:
                client.create_bucket(Bucket=S3_BUCKET)
            except ClientError as error:
                if error.response["Error"]["Code"] not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    raise
        else:
            self.storage = LocalAssetStorage(base_dir=str(workdir / "assets"))
        self.storage.save(block, overwrite=True)
        self.storage_block = f"{self.storage.get_block_type_slug()}/{block}"

    def close(self) -> None:
        self.simulator.stop()

    def run(self, *, poll_deadline_seconds: float = POLL_DEADLINE_SECONDS) -> RunOutcome:
        from prefect_evolink.flows.campaign import manifest_key, run_campaign

        started, wall_start = time.monotonic(), datetime.now(UTC)
        error: BaseException | None = None
        try:
            asyncio.run(
                run_campaign.aio(
                    str(self.brief),
                    # the saved blocks, as a deployment's defaults would reference them
                    credentials=EvoLinkCredentials.load(self.credentials_block),
                    storage=load_storage(self.storage_block),
                    poll_deadline_seconds=poll_deadline_seconds,
                )
            )
        except Exception as caught:  # a row records what the flow raised
            error = caught
        data = self.storage.get_json(manifest_key(CAMPAIGN))
        manifest = None if data is None else CampaignManifest.model_validate(data)
        if manifest is not None and manifest.started_at < wall_start:
            manifest = None  # an earlier run's: this one wrote none
        return RunOutcome(manifest, error, time.monotonic() - started)

    def add_faults(self, faults: Iterable[Fault]) -> None:
        self.simulator.add_faults(list(faults))


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def logical_job(entry: LedgerEntry) -> tuple[str, str]:
    """(prompt, quality): one asset's draft job or its final job, whatever our keys say."""
    return entry.request["prompt"], entry.request["quality"]


def served_sha256(entry: LedgerEntry, index: int) -> str:
    """The sha256 of image `index` as the simulator serves it (its bytes are a pure function)."""
    width, height = resolve_size(entry.request["size"], entry.request.get("resolution"))
    return hashlib.sha256(render_png(width, height, f"{entry.task_id}/{index}")).hexdigest()


def count_stored(
    storage: AssetStorage, manifest: CampaignManifest | None, billed: list[LedgerEntry]
) -> tuple[int, list[str]]:
    """Images of billed tasks in storage whose sha256 matches the manifest and the served bytes."""
    records = {}
    if manifest is not None:
        for outcome in manifest.assets:
            adaptations = [a.record for a in outcome.adaptations]
            for record in (outcome.drafts, outcome.final, *adaptations):
                if record is not None:
                    records[record.task_id] = record
    stored = 0
    missing: list[str] = []
    for entry in billed:
        record = records.get(entry.task_id)
        images = {image.index: image for image in record.images} if record else {}
        for index in range(int(entry.request.get("n", 1))):
            image = images.get(index)
            data = storage.get_bytes(image.key) if image else None
            if (
                image is not None
                and data is not None
                and hashlib.sha256(data).hexdigest() == image.sha256 == served_sha256(entry, index)
            ):
                stored += 1
            else:
                missing.append(f"{entry.task_id}/{index}")
    return stored, missing


def measure(
    lab: Lab,
    fault: str,
    *,
    injected: int | None = None,
    injected_detail: str | None = None,
    manifest: CampaignManifest | None,
    notes: str = "",
) -> Row:
    ledger = lab.simulator.ledger()
    billed = [entry for entry in ledger if entry.billed]
    counts = lab.simulator.fault_counts
    if injected is None:
        injected = sum(counts.values())
    if injected_detail is None:
        injected_detail = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    stored, missing = count_stored(lab.storage, manifest, billed)
    return Row(
        fault=fault,
        injected=injected,
        injected_detail=injected_detail,
        images_expected=sum(int(entry.request.get("n", 1)) for entry in billed),
        images_stored=stored,
        billed_tasks=len(billed),
        logical_jobs=len({logical_job(entry) for entry in billed}),
        billed_usd=sum((entry.billed_usd for entry in billed), Decimal(0)),
        reported_usd=Decimal(manifest.totals.billed_usd) if manifest else Decimal(0),
        notes=notes,
        missing=missing,
    )


def failure_kind(detail: str) -> str:
    """'draft: PollDeadlineExceeded: task … still …' → 'draft: PollDeadlineExceeded'."""
    stage, _, rest = detail.partition(": ")
    return f"{stage}: {rest.split(':', 1)[0]}" if rest else detail


def outcome_note(run: RunOutcome) -> str:
    """'4/4 finals' or '3/4 finals, social-square failed (draft: content_policy_violation)'."""
    statuses = run.statuses
    finals = sum(1 for status in statuses.values() if status is AssetStatus.FINAL)
    parts = [f"{finals}/{len(statuses)} finals"]
    parts += [
        f"{asset} {status.value} ({failure_kind(run.detail(asset))})"
        for asset, status in statuses.items()
        if status is not AssetStatus.FINAL
    ]
    if run.manifest is None:
        parts.append("NO MANIFEST")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    id: str
    fault: str
    faults: tuple[Fault, ...] = ()
    note: str = ""
    run: Callable[[Scenario, Lab], Result] | None = None
    check: Callable[[Result], None] | None = None
    flaky_s3: Mapping[str, Any] | None = None  # FlakyS3AssetStorage fields: S3 storage that fails

    @property
    def injected_expected(self) -> int | None:
        if not self.faults or any(f.times is None for f in self.faults):
            return None
        return sum(f.times or 0 for f in self.faults)


def _result(scenario: Scenario, lab: Lab, runs: list[RunOutcome], row: Row, **extra: Any) -> Result:
    return Result(
        scenario, lab.shape, row, runs, lab.simulator.ledger(), lab.simulator.request_counts, extra
    )


def run_standard(scenario: Scenario, lab: Lab) -> Result:
    lab.add_faults(scenario.faults)
    run = lab.run()
    counts = lab.simulator.request_counts
    tasks = len(lab.simulator.ledger())
    notes = "; ".join(
        filter(
            None,
            [
                outcome_note(run),
                f"{counts['create']} create requests for {tasks} tasks",
                scenario.note,
            ],
        )
    )
    return _result(
        scenario, lab, [run], measure(lab, scenario.fault, manifest=run.manifest, notes=notes)
    )


def check_clean(result: Result) -> None:
    """The goal of every row: no duplicate payment, no finished image lost, billed = reported."""
    row, [run] = result.row, result.runs[-1:]
    assert run.error is None, f"{result.scenario.id}: the run raised {run.error!r}"
    assert set(run.statuses.values()) == {AssetStatus.FINAL}, run.statuses
    assert row.duplicates == 0, row
    assert row.images_expected == row.images_stored == result.shape.images, row
    assert row.billed_tasks == result.shape.jobs, row
    assert row.billed_usd == row.reported_usd, row
    expected = result.scenario.injected_expected
    assert expected is None or row.injected == expected, (
        f"fault fired {row.injected}×, armed {expected}×"
    )


def check_policy(result: Result) -> None:
    row, run = result.row, result.runs[0]
    assert run.error is not None and type(run.error).__name__ == "CampaignIncompleteError", (
        run.error
    )
    assert "social-square" in str(run.error)
    assert run.manifest is not None, "the manifest must be written even when the run fails"
    statuses = dict(run.statuses)
    assert statuses.pop("social-square") is AssetStatus.FAILED
    assert set(statuses.values()) == {AssetStatus.FINAL}
    assert "content_policy_violation" in run.detail("social-square")
    social = [e for e in result.ledger if SOCIAL in e.request["prompt"]]
    assert [e.status for e in social] == ["failed"], "a policy failure is never resubmitted"
    assert social[0].billed_usd == 0
    shape = result.shape
    assert row.duplicates == 0 and row.billed_tasks == shape.jobs - 2 and row.injected == 1, row
    assert row.images_expected == row.images_stored == shape.images - shape.drafts - 1, row
    assert row.billed_usd == row.reported_usd, row


def check_transient(result: Result) -> None:
    check_clean(result)
    social_drafts = [
        e for e in result.ledger if SOCIAL in e.request["prompt"] and e.request["quality"] == "low"
    ]
    assert [e.status for e in social_drafts] == ["failed", "completed"], social_drafts
    assert social_drafts[0].error_code == "generation_timeout" and social_drafts[0].billed_usd == 0
    assert social_drafts[0].idempotency_key != social_drafts[1].idempotency_key, (
        "a deliberately new job"
    )
    assert len(result.ledger) == result.shape.jobs + 1


def run_slow(scenario: Scenario, lab: Lab) -> Result:
    lab.add_faults(scenario.faults)
    first = lab.run(poll_deadline_seconds=1.5)
    after_first = {logical_job(e): e.task_id for e in lab.simulator.ledger()}
    second = lab.run()
    new = len(lab.simulator.ledger()) - len(after_first)
    notes = (
        f"run 1 (deadline 1.5 s): {outcome_note(first)}; run 2 (normal deadline) reattached to "
        f"the same task ids and paid only for the {new} job(s) run 1 never submitted: "
        f"{outcome_note(second)}"
    )
    row = measure(lab, scenario.fault, manifest=second.manifest, notes=notes)
    return _result(scenario, lab, [first, second], row, after_first=after_first)


def check_slow(result: Result) -> None:
    first, second = result.runs
    assert first.statuses["social-square"] is AssetStatus.FAILED
    assert "PollDeadlineExceeded" in first.detail("social-square"), first.detail("social-square")
    assert type(first.error).__name__ == "CampaignIncompleteError"
    after_first: dict[tuple[str, str], str] = result.extra["after_first"]
    now = {logical_job(e): e.task_id for e in result.ledger}
    for job, task_id in after_first.items():
        assert now[job] == task_id, f"job {job[1]} of {job[0][:30]}… was submitted again"
    assert len(result.ledger) == len(now), "one task per logical job"
    check_clean(
        Result(
            result.scenario,
            result.shape,
            result.row,
            [second],
            result.ledger,
            result.request_counts,
        )
    )


def run_expired(scenario: Scenario, lab: Lab) -> Result:
    lab.add_faults(scenario.faults)
    first = lab.run()
    tasks_after_first = len(lab.simulator.ledger())
    second = lab.run()
    [lost] = [e for e in lab.simulator.ledger() if "expire_links" in e.faults]
    row = measure(lab, scenario.fault, manifest=second.manifest)
    row.notes = (
        f"{outcome_note(first)}, the error names the task; "
        f"its {lost.request['n']} images are LOST, "
        f"at EvoLink too (the links are the only copy); no silent success, no second payment; "
        f"a rerun fails the same way ({len(lab.simulator.ledger()) - tasks_after_first} new tasks)"
    )
    if row.billed_usd == row.reported_usd:
        row.notes += (
            f"; its ${lost.billed_usd} is in the manifest's cost rows as a paid job with "
            "0 images stored"
        )
    return _result(
        scenario, lab, [first, second], row, lost=lost, tasks_after_first=tasks_after_first
    )


def check_expired(result: Result) -> None:
    row = result.row
    lost: LedgerEntry = result.extra["lost"]
    for run in result.runs:
        assert run.manifest is not None and type(run.error).__name__ == "CampaignIncompleteError"
        assert run.statuses["story-vertical"] is AssetStatus.FAILED
        detail = run.detail("story-vertical")
        assert "ResultExpiredError" in detail and lost.task_id in detail, detail
        assert "story-vertical" in str(run.error) and lost.task_id in str(run.error)
    assert len(result.ledger) == result.extra["tasks_after_first"], "the rerun paid for nothing new"
    assert row.duplicates == 0, row
    # exactly the expired task's images are missing, and they are reported as lost
    assert row.images_expected - row.images_stored == lost.request["n"], row
    assert row.billed_tasks == result.shape.jobs - 1, row
    # the lost task was paid for, so it is reported: a cost row with no images and the reason
    assert row.billed_usd == row.reported_usd, row
    for run in result.runs:
        assert run.manifest is not None
        [paid] = [job for job in run.manifest.jobs if job.task_id == lost.task_id]
        assert paid.images == 0 and paid.stored_at == [], paid
        assert Decimal(paid.billed_usd or "0") == lost.billed_usd, paid
        assert paid.failed is not None and "ResultExpiredError" in paid.failed, paid


def run_s3(scenario: Scenario, lab: Lab) -> Result:
    assert isinstance(lab.storage, FlakyS3AssetStorage)
    run = lab.run()
    failures = put_failures(lab.storage.counter)
    notes = (
        f"{outcome_note(run)}; each image stored by the persist task's own retry from the "
        "same link, nothing generated again"
    )
    row = measure(
        lab,
        scenario.fault,
        injected=failures,
        injected_detail="S3 ClientError",
        manifest=run.manifest,
        notes=notes,
    )
    return _result(scenario, lab, [run], row)


def check_s3(result: Result) -> None:
    check_clean(result)
    assert result.row.injected == result.shape.images, result.row  # one failure per image
    assert len(result.ledger) == result.shape.jobs == result.request_counts["create"]


def run_s3_upload_failed(scenario: Scenario, lab: Lab) -> Result:
    """What the real S3 storage raises when S3 keeps failing: is it retried, is anything lost?"""
    assert isinstance(lab.storage, FlakyS3AssetStorage)
    run = lab.run()
    row = measure(
        lab,
        scenario.fault,
        injected=put_failures(lab.storage.counter),
        injected_detail="S3UploadFailedError",
        manifest=run.manifest,
        notes=(
            f"{outcome_note(run)}; judged by the ClientError it wraps (SlowDown: retryable), so "
            "the persist task's retry stored the image from the same link, nothing generated again"
        ),
    )
    return _result(scenario, lab, [run], row)


def check_s3_upload_failed(result: Result) -> None:
    """Retried in the same run: nothing paid twice, nothing lost, billed = reported."""
    check_clean(result)
    assert result.row.injected == 1, result.row
    assert result.runs[0].error is None, result.runs[0].error
    assert len(result.ledger) == result.shape.jobs == result.request_counts["create"]


CHILD_CODE = (
    "import asyncio, sys\n"
    "from prefect_evolink.flows.campaign import run_campaign\n"
    "asyncio.run(run_campaign.aio(sys.argv[1], poll_deadline_seconds=120))\n"
)


def prefect_api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise RuntimeError("the killed-process row needs a Prefect API URL (a harness or server)")
    return str(url)


def run_killed(scenario: Scenario, lab: Lab) -> Result:
    """Start the campaign in a child process, SIGKILL it while drafts are polled, rerun here."""
    assert isinstance(lab.storage, LocalAssetStorage)
    sim = lab.simulator
    sim.generation_seconds = 5.0  # drafts take long enough to kill the child mid-poll
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api_url(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_ENABLED": "false",
        "EVOLINK_API_KEY": sim.api_key,
        "EVOLINK_BASE_URL": sim.base_url,
        "EVOLINK_ASSETS_DIR": lab.storage.base_dir,
        "EVOLINK_ALLOW_PRIVATE_URLS": "true",
        "EVOLINK_POLL_MIN_INTERVAL": "0.05",
        "EVOLINK_POLL_MAX_INTERVAL": "0.2",
    }
    log_path = lab.workdir / "child.log"
    jobs_dir = Path(lab.storage.base_dir) / JOBS_PREFIX
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE, str(lab.brief)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                ledger = sim.ledger()
                submitted = list(jobs_dir.glob("*/submit.json")) if jobs_dir.is_dir() else []
                if len(ledger) >= lab.shape.assets and len(submitted) >= lab.shape.assets:
                    break
                if child.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the child never had {lab.shape.assets} drafts in flight "
                        f"(exit {child.poll()}):\n" + log_path.read_text(errors="replace")[-3000:]
                    )
                time.sleep(0.05)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(30)
        finally:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait(30)
    at_kill = sim.ledger()
    in_flight = sum(1 for e in at_kill if e.status in ("pending", "processing"))
    creates_at_kill = sim.request_counts["create"]
    sim.generation_seconds = GENERATION_SECONDS  # the finals of the rerun may be quick
    rerun = lab.run()
    ledger = sim.ledger()
    new = ledger[len(at_kill) :]
    replays = sim.request_counts["create"] - creates_at_kill - len(new)
    repaid = sum(1 for e in new if logical_job(e) in {logical_job(k) for k in at_kill})
    notes = (
        f"child killed with {len(at_kill)} drafts submitted, {in_flight} still generating; the "
        f"rerun reattached to the same {len(at_kill)} task ids ({repaid} new paid tasks for them, "
        f"{replays} idempotent replays) and paid only for the {len(new)} finals: "
        f"{outcome_note(rerun)}"
    )
    row = measure(
        lab,
        scenario.fault,
        injected=1,
        injected_detail="SIGKILL mid-poll",
        manifest=rerun.manifest,
        notes=notes,
    )
    return _result(
        scenario,
        lab,
        [rerun],
        row,
        at_kill=at_kill,
        in_flight=in_flight,
        child_exit=child.returncode,
    )


def check_killed(result: Result) -> None:
    at_kill: list[LedgerEntry] = result.extra["at_kill"]
    assert result.extra["child_exit"] == -signal.SIGKILL
    assets = result.shape.assets
    assert len(at_kill) == assets and all(e.request["quality"] == "low" for e in at_kill), at_kill
    assert result.extra["in_flight"] >= 1, "the child was not killed while a draft was generating"
    assert [e.task_id for e in result.ledger[:assets]] == [e.task_id for e in at_kill]
    new = result.ledger[assets:]
    assert len(new) == assets and all(e.request["quality"] == "high" for e in new), new
    check_clean(result)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "killed-mid-poll",
        "process killed mid-poll (SIGKILL), then rerun",
        run=run_killed,
        check=check_killed,
    ),
    Scenario(
        "429-retry-after",
        "429 storm with Retry-After 0.2 s (create ×6, get ×6)",
        faults=(
            Fault(kind="rate_limit", route="create", times=6, retry_after=0.2),
            Fault(kind="rate_limit", route="get", times=6, retry_after=0.2),
        ),
        check=check_clean,
    ),
    Scenario(
        "429-no-retry-after",
        "429 storm without Retry-After (create ×6, get ×6)",
        faults=(
            Fault(kind="rate_limit", route="create", times=6, fallback_seconds=0.2),
            Fault(kind="rate_limit", route="get", times=6, fallback_seconds=0.2),
        ),
        note="the only hint is the body's 'retry after 0.2 seconds'",
        check=check_clean,
    ),
    Scenario(
        "5xx",
        "5xx bursts on create (503 ×4) and poll (502 ×3, 500 ×3)",
        faults=(
            Fault(kind="server_error", route="create", status=503, times=4),
            Fault(kind="server_error", route="get", status=502, times=3),
            Fault(kind="server_error", route="get", status=500, times=3),
        ),
        check=check_clean,
    ),
    Scenario(
        "dropped-connections",
        "dropped connections (create ×3, get ×3, download ×3)",
        faults=(
            Fault(kind="drop_connection", route="create", times=3),
            Fault(kind="drop_connection", route="get", times=3),
            Fault(kind="drop_connection", route="download", times=3),
        ),
        check=check_clean,
    ),
    Scenario(
        "lost-create-responses",
        "create response lost after the task was created (×4)",
        faults=(Fault(kind="lose_create_response", times=4),),
        note="each retry carried the same Idempotency-Key and got the original task back",
        check=check_clean,
    ),
    Scenario(
        "failed-policy",
        "task fails: content_policy_violation (social-square draft)",
        faults=(
            Fault(kind="fail_task", error_code="content_policy_violation", match_prompt=SOCIAL),
        ),
        note="not resubmitted; the run ends Failed (CampaignIncompleteError) after writing "
        "the manifest",
        check=check_policy,
    ),
    Scenario(
        "failed-transient",
        "task fails: generation_timeout (social-square draft)",
        faults=(Fault(kind="fail_task", error_code="generation_timeout", match_prompt=SOCIAL),),
        note="resubmitted once as a new, separately keyed job; the failed task billed $0",
        check=check_transient,
    ),
    Scenario(
        "slow-past-deadline",
        "task slower than the poll deadline (social-square draft 5 s, deadline 1.5 s)",
        faults=(Fault(kind="slow_task", seconds=5, match_prompt=SOCIAL),),
        run=run_slow,
        check=check_slow,
    ),
    Scenario(
        "expired-links",
        "result links expired before download (story-vertical draft, ttl 0)",
        faults=(Fault(kind="expire_links", ttl_seconds=0, match_prompt=STORY),),
        run=run_expired,
        check=check_expired,
    ),
    Scenario(
        "s3-put-errors",
        "S3 errors while persisting (every image upload fails once)",
        run=run_s3,
        check=check_s3,
        flaky_s3={"failures_per_key": 1, "error": "client"},
    ),
    Scenario(
        "s3-upload-failed",
        "S3 upload fails past botocore's own retries (boto3 S3UploadFailedError, once)",
        run=run_s3_upload_failed,
        check=check_s3_upload_failed,
        flaky_s3={"failures_per_key": 1, "max_failures": 1, "error": "upload"},
    ),
)

SCENARIO_IDS = tuple(s.id for s in SCENARIOS)


def by_id(scenario_id: str) -> Scenario:
    return next(s for s in SCENARIOS if s.id == scenario_id)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def open_lab(
    scenario: Scenario,
    workdir: Path,
    *,
    s3_endpoint: str | None = None,
    assets: Iterable[str] | None = None,
) -> Lab:
    return Lab(
        scenario.id,
        workdir / scenario.id,
        s3_endpoint=s3_endpoint,
        assets=assets,
        flaky_s3=scenario.flaky_s3,
    )


def run_in_lab(scenario: Scenario, lab: Lab) -> Result:
    started = time.monotonic()
    try:
        result = (scenario.run or run_standard)(scenario, lab)
    finally:
        lab.close()
    result.seconds = time.monotonic() - started
    return result


def check(result: Result) -> None:
    if result.scenario.check is not None:
        result.scenario.check(result)


def run_matrix(
    scenarios: Iterable[Scenario],
    workdir: Path,
    *,
    s3_endpoint: str | None = None,
    assets: Iterable[str] | None = None,
    workers: int | None = None,
    on_done: Callable[[Scenario, Result | BaseException], None] | None = None,
) -> dict[str, Result | BaseException]:
    """Run rows side by side (each has its own simulator, blocks and storage); most of a row's
    time is spent waiting, so a few at once finish much sooner on two cores.

    The labs are set up one after another first: saving the first block of a type registers
    the type, and two threads doing that at once collide (409 from the API).
    """
    scenarios = list(scenarios)
    workers = workers or int(os.environ.get("FAULT_MATRIX_WORKERS", "3"))
    results: dict[str, Result | BaseException] = {}
    labs: dict[str, Lab] = {}
    for scenario in scenarios:
        try:
            labs[scenario.id] = open_lab(scenario, workdir, s3_endpoint=s3_endpoint, assets=assets)
        except BaseException as error:  # reported per row
            results[scenario.id] = error

    def one(scenario: Scenario) -> None:
        try:
            outcome: Result | BaseException = run_in_lab(scenario, labs[scenario.id])
        except BaseException as error:  # reported per row
            error.add_note("".join(traceback.format_exception(error))[-4000:])
            outcome = error
        results[scenario.id] = outcome
        if on_done is not None:
            on_done(scenario, outcome)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fault-row") as pool:
        # each row runs in a copy of the caller's context (Prefect's settings live in contextvars)
        futures = [
            pool.submit(contextvars.copy_context().run, one, s) for s in scenarios if s.id in labs
        ]
        for future in futures:
            future.result()
    return {s.id: results[s.id] for s in scenarios}


@contextmanager
def temporary_workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fault-matrix-") as directory:
        yield Path(directory)
