"""Fault soak (issue 10 item 4): a small campaign under random faults, for many seeds.

Shared by `tests/test_soak.py` (20 seeds, one test each) and `bench/soak.py` (more seeds, the
README's summary table), so the campaign, the faults and the checks exist once.

Each seed gets its own `EvoLinkSimulator(seed=seed, chaos=…)` — random 5xx, bursts of 5xx longer
than the client's retries, dropped connections, 429s, lost create responses, slow, failed and
cancelled tasks (`evolink.simulator.chaos`) — and its own `FlakyLocalAssetStorage`, whose image
uploads fail at random: mostly transient errors the retry rule retries, sometimes permanent
ones. It runs the example brief cut to `SOAK_ASSETS` with 2 drafts each, auto selection, and
then checks, only from evidence outside the code under test (the simulator's ledger, storage,
the manifest, the flow run's state), five invariants:

- **manifest**: this run wrote its manifest (its `flow_run_id` is the run's);
- **billed = reported**: every task the simulator billed is a manifest cost row with the same
  amount, every row's amount is what the simulator billed for that task id, and the totals
  agree (the ledger is read after the simulator's clock is moved on, so a task the run stopped
  waiting for is billed as it would be);
- **no duplicate payment**: no logical job (one asset's draft or final, by prompt and quality
  as the simulator saw them) billed twice, and a second task for a logical job only after a
  first one that failed unbilled with a code worth resubmitting (never after a policy failure
  or a cancellation), at most one resubmission;
- **images stored or listed lost**: every image of every completed task is in storage with the
  bytes the simulator served, or the manifest's cost row for its task says why not (`failed`);
- **final state**: Completed when every asset ended with a final (or a rejection) and every
  adaptation of a final was made, Failed with `CampaignIncompleteError` naming them when any
  asset or adaptation failed or was stopped by the budget (README "Run states"); an auto run
  leaves no asset or adaptation unreviewed.

A seed's result names each broken invariant with its evidence, and the flow's own exception
(with where it was raised) when the run did not end as documented.

Prefect must already be configured (a test harness or a server); see `bench/soak.py`.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import yaml
from botocore.exceptions import ClientError
from pydantic import Field, SecretStr

from bench.harness.fault_matrix import count_stored, logical_job, write_brief
from evolink.adaptations import KEEP_INSTRUCTION
from evolink.campaign import FAILING_STATUSES, AssetStatus, CampaignManifest
from evolink.errors import NOT_WORTH_RESUBMITTING
from evolink.simulator import EvoLinkSimulator, FaultRates, LedgerEntry
from prefect_evolink.blocks import LocalAssetStorage, StoredObject
from prefect_evolink.blocks.credentials import EvoLinkCredentials

ROOT = Path(__file__).resolve().parents[2]
SOAK_ASSETS = ("social-square", "story-vertical")
BENCH_ASSETS = ("launch-banner", "social-square", "story-vertical")
DRAFTS = 2
GENERATION_SECONDS = 0.05
POLL_DEADLINE_SECONDS = 30.0
RUN_TIMEOUT_SECONDS = 120.0
#: After the run, the simulator's clock moves this far so every task it left has finished.
SETTLE_SECONDS = 3600.0

#: The suite's and the bench's random faults: a few per run, a burst every few runs.
SOAK_RATES = FaultRates(
    create=0.06,
    get=0.12,
    download=0.05,
    burst_length=6,
    retry_after=0.2,
    lose_create_response=0.1,
    fail_task=0.08,
    cancel_task=0.05,
    cancel_charged=0.3,
    slow_task=0.1,
    slow_seconds=1.0,
)

INVARIANTS = (
    "manifest",
    "billed = reported",
    "no duplicate payment",
    "images stored or listed lost",
    "final state",
)
_OK_STATUSES = frozenset({AssetStatus.FINAL, AssetStatus.REJECTED, *FAILING_STATUSES})


# --------------------------------------------------------------------------------------------
# Storage that fails at random, seeded
# --------------------------------------------------------------------------------------------


@dataclass
class StorageBook:
    """What one flaky storage did: attempts per key and the faults it raised."""

    attempts: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)  # "transient" / "permanent"
    log: list[str] = field(default_factory=list)


_BOOKS: dict[str, StorageBook] = {}
_BOOKS_LOCK = threading.Lock()


def storage_book(name: str) -> StorageBook:
    with _BOOKS_LOCK:
        return _BOOKS.setdefault(name, StorageBook())


def _client_error(code: str, status: int, operation: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"injected {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


class FlakyLocalAssetStorage(LocalAssetStorage):
    """Local storage whose image uploads fail at random, seeded per (key, attempt).

    Test-only. An upload fails with chance `put_rate`; such a failure is permanent with chance
    `permanent_share` — `ClientError` AccessDenied or `PermissionError`, which the retry rule
    (`tasks/steps.py: is_retryable`) refuses — else transient — `ClientError` SlowDown or
    `TimeoutError`, which it retries. `json_rate` makes JSON writes (records, sidecars; never
    the manifest) fail transiently too; 0 by default. Draws are seeded by (seed, key, attempt
    number), so they do not depend on the order of concurrent uploads. What failed is kept in
    this process (`storage_book(book)`), so a block loaded again keeps counting.
    """

    _block_type_name: ClassVar[str | None] = "Soak Flaky Local Storage"
    _block_type_slug: ClassVar[str | None] = "soak-flaky-local-storage"

    book: str = Field(default="default", description="which StorageBook to use")
    seed: int = 0
    put_rate: float = Field(default=0.0, ge=0, le=1)
    permanent_share: float = Field(default=0.0, ge=0, le=1)
    json_rate: float = Field(default=0.0, ge=0, le=1)

    def _draw(self, kind: str, key: str) -> random.Random:
        ledger = storage_book(self.book)
        with _BOOKS_LOCK:
            n = ledger.attempts[f"{kind}:{key}"]
            ledger.attempts[f"{kind}:{key}"] = n + 1
        return random.Random(f"storage/{self.seed}/{kind}/{key}/{n}")  # nosec B311

    def _record(self, what: str, key: str) -> None:
        ledger = storage_book(self.book)
        with _BOOKS_LOCK:
            ledger.faults[what] += 1
            ledger.log.append(f"{what} {key}")

    def _put_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        rng = self._draw("file", key)
        if rng.random() < self.put_rate:
            permanent, flavour = rng.random() < self.permanent_share, rng.random() < 0.5
            self._record("permanent" if permanent else "transient", key)
            if permanent:
                if flavour:
                    raise _client_error("AccessDenied", 403, "PutObject")
                raise PermissionError(13, "injected: permission denied", key)
            if flavour:
                raise _client_error("SlowDown", 503, "PutObject")
            raise TimeoutError(f"injected: storage timed out writing {key}")
        return super()._put_file(key, path, content_type=content_type, metadata=metadata)

    def _put_bytes(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None
    ) -> StoredObject:
        if self.json_rate > 0 and not key.endswith("manifest.json"):
            rng = self._draw("bytes", key)
            if rng.random() < self.json_rate:
                self._record("transient", key)
                raise TimeoutError(f"injected: storage timed out writing {key}")
        return super()._put_bytes(key, data, content_type=content_type, metadata=metadata)


# --------------------------------------------------------------------------------------------
# One seed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    rates: FaultRates = SOAK_RATES
    storage_put_rate: float = 0.08
    storage_permanent_share: float = 0.25
    storage_json_rate: float = 0.0
    assets: tuple[str, ...] = SOAK_ASSETS
    drafts: int = DRAFTS
    generation_seconds: float = GENERATION_SECONDS
    poll_deadline_seconds: float = POLL_DEADLINE_SECONDS
    run_timeout_seconds: float = RUN_TIMEOUT_SECONDS


@dataclass
class SeedResult:
    seed: int
    seconds: float
    state_type: str
    state_message: str
    error: str | None  # the flow's exception, "Type: message (where)", if it ended Failed/Crashed
    manifest: CampaignManifest | None
    ledger: list[LedgerEntry]
    unfinished: list[str]  # task ids still generating when the run ended
    chaos_counts: dict[str, int]
    storage_faults: dict[str, int]
    request_counts: dict[str, int]
    images_expected: int = 0
    images_stored: int = 0
    images_lost_listed: int = 0
    assets: tuple[str, ...] = SOAK_ASSETS
    violations: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def billed_usd(self) -> Decimal:
        return sum((e.billed_usd for e in self.ledger if e.billed), Decimal(0))

    @property
    def reported_usd(self) -> Decimal | None:
        return None if self.manifest is None else Decimal(self.manifest.totals.billed_usd)

    @property
    def faults_fired(self) -> int:
        chaos = sum(n for k, n in self.chaos_counts.items() if not k.endswith(".burst"))
        return chaos + sum(self.storage_faults.values())

    def outcomes(self) -> str:
        if self.manifest is None:
            return "no manifest"
        return (
            ", ".join(
                f"{o.asset} {o.status.value}" + (f" ({_short(o.detail, 60)})" if o.detail else "")
                for o in self.manifest.assets
                if o.status is not AssetStatus.FINAL
            )
            or f"{len(self.manifest.assets)}/{len(self.manifest.assets)} finals"
        )

    def report(self) -> str:
        """Everything a failing seed needs to be understood, and how to replay it."""
        lines = [
            f"seed {self.seed}: run ended {self.state_type} in {self.seconds:.1f}s; "
            f"{self.outcomes()}",
            f"  faults fired: {_counts(self.chaos_counts)}"
            + (f"; storage {_counts(self.storage_faults)}" if self.storage_faults else ""),
        ]
        if self.error:
            lines.append(f"  flow raised: {self.error}")
        for name, problems in self.violations.items():
            lines.append(f"  BROKEN {name}:")
            lines.extend(f"    - {p}" for p in problems)
        quick = " --quick" if self.assets == SOAK_ASSETS else ""
        lines.append(
            f"  replay: python3 dev.py run python bench/soak.py --first-seed {self.seed} "
            f"--seeds 1{quick}"
        )
        return "\n".join(lines)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"


def _where(error: BaseException) -> str:
    """Where the project's own code raised it: the innermost frame of the flows/tasks layer and
    the innermost frame overall (e.g. the client call the flow made)."""
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    ours = [
        (f, Path(f.filename).resolve().relative_to(ROOT))
        for f in frames
        if Path(f.filename).resolve().is_relative_to(ROOT)
        and not {".venv", "tests", "bench"}
        & set(Path(f.filename).resolve().relative_to(ROOT).parts)
    ]
    if not ours:
        return ""
    picked = [
        next(
            (x for x in reversed(ours) if x[1].parts[0] in ("flows", "tasks", "prefect_evolink")),
            None,
        ),
        ours[-1],
    ]
    seen: list[str] = []
    for item in picked:
        if item is not None:
            frame, path = item
            text = f"{path}:{frame.lineno} in {frame.name}"
            if text not in seen:
                seen.append(text)
    return f" (at {' → '.join(seen)})"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {_short(str(error), 300)}{_where(error)}"


class SoakLab:
    """One seed's world: simulator with chaos, credentials, flaky storage, brief."""

    def __init__(self, seed: int, workdir: Path, config: SoakConfig) -> None:
        self.seed = seed
        self.config = config
        self.workdir = workdir / f"seed-{seed}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.brief = write_brief(self.workdir, drafts=config.drafts, assets=config.assets)
        data = yaml.safe_load(self.brief.read_text())
        self.campaign: str = data["campaign"]
        self.asset_of_prompt = {" ".join(a["prompt"].split()): a["id"] for a in data["assets"]}
        self.simulator = EvoLinkSimulator(
            api_key=f"sk-soak-{seed}-0123456789abcdef",
            generation_seconds=config.generation_seconds,
            seed=seed,
            chaos=config.rates,
        ).start()
        self.credentials = EvoLinkCredentials(
            api_key=SecretStr(self.simulator.api_key),
            base_url=self.simulator.base_url,
            poll_min_interval=0.05,
            poll_max_interval=0.2,
        )
        self.book = f"soak-{seed}-{time.time_ns()}"
        self.storage = FlakyLocalAssetStorage(
            base_dir=str(self.workdir / "assets"),
            book=self.book,
            seed=seed,
            put_rate=config.storage_put_rate,
            permanent_share=config.storage_permanent_share,
            json_rate=config.storage_json_rate,
        )

    def close(self) -> None:
        self.simulator.stop()

    def job_name(self, entry: LedgerEntry) -> str:
        prompt = " ".join(str(entry.request.get("prompt", "")).split())
        asset = next(  # a brand kit appends its lines to the asset's prompt
            (a for known, a in self.asset_of_prompt.items() if prompt.startswith(known)),
            prompt[:30] + "…",
        )
        if prompt.startswith(KEEP_INSTRUCTION):  # an adaptation of a final
            return f"adaptation: {prompt[len(KEEP_INSTRUCTION) :][:40]}…"
        stage = "draft" if entry.request.get("quality") == "low" else "final"
        return f"{asset} {stage}"


async def _run_flow(lab: SoakLab) -> tuple[Any, BaseException | None]:
    from prefect_evolink.flows.campaign import run_campaign

    flow = run_campaign.with_options(timeout_seconds=lab.config.run_timeout_seconds)
    state = await flow(
        str(lab.brief),
        credentials=lab.credentials,
        storage=lab.storage,
        poll_deadline_seconds=lab.config.poll_deadline_seconds,
        return_state=True,
    )
    error: BaseException | None = None
    if not state.is_completed():
        try:
            result = await state.aresult(raise_on_failure=False)
        except Exception as caught:  # the result itself may be unreadable
            result = caught
        error = result if isinstance(result, BaseException) else None
    return state, error


def run_seed(seed: int, workdir: Path, config: SoakConfig | None = None) -> SeedResult:
    """Run the campaign once under `seed`'s faults and check every invariant."""
    from prefect_evolink.flows.campaign import manifest_key

    config = config or SoakConfig()
    lab = SoakLab(seed, workdir, config)
    started = time.monotonic()
    try:
        try:
            state, error = asyncio.run(_run_flow(lab))
            state_type, state_message = state.type.value, state.message or ""
            flow_run_id = str(state.state_details.flow_run_id)
        except Exception as caught:  # the harness records what escaped the flow call itself
            state_type, state_message, error, flow_run_id = "RAISED", "", caught, ""
        seconds = time.monotonic() - started
        sim = lab.simulator
        unfinished = [e.task_id for e in sim.ledger() if e.status in ("pending", "processing")]
        sim.advance_clock(SETTLE_SECONDS)
        ledger = sim.ledger()
        manifest: CampaignManifest | None = None
        manifest_problem: str | None = None
        data = lab.storage.get_json(manifest_key(lab.campaign))
        if data is None:
            manifest_problem = "no manifest in storage"
        else:
            try:
                manifest = CampaignManifest.model_validate(data)
            except ValueError as invalid:
                manifest_problem = f"the manifest does not parse: {_short(str(invalid))}"
            else:
                if manifest.flow_run_id != flow_run_id:
                    manifest_problem = (
                        f"the manifest is another run's ({manifest.flow_run_id}, this run is "
                        f"{flow_run_id})"
                    )
                    manifest = None
        result = SeedResult(
            seed=seed,
            seconds=seconds,
            state_type=state_type,
            state_message=state_message,
            error=None if error is None else _describe(error),
            manifest=manifest,
            ledger=ledger,
            unfinished=unfinished,
            chaos_counts=sim.chaos_counts,
            storage_faults=dict(storage_book(lab.book).faults),
            request_counts=sim.request_counts,
            assets=config.assets,
        )
        check(result, lab, error, manifest_problem)
        return result
    finally:
        lab.close()


# --------------------------------------------------------------------------------------------
# The invariants
# --------------------------------------------------------------------------------------------


def check(
    result: SeedResult, lab: SoakLab, error: BaseException | None, manifest_problem: str | None
) -> None:
    """Fill `result.violations`: invariant name → what broke, with the evidence."""
    problems: dict[str, list[str]] = {name: [] for name in INVARIANTS}
    if manifest_problem is not None:
        problems["manifest"].append(
            manifest_problem + (f"; the flow raised {result.error}" if result.error else "")
        )
    _check_billed(result, lab, problems["billed = reported"])
    _check_duplicates(result, lab, problems["no duplicate payment"])
    _check_images(result, lab, problems["images stored or listed lost"])
    _check_final_state(result, error, problems["final state"])
    result.violations = {name: found for name, found in problems.items() if found}


def _check_billed(result: SeedResult, lab: SoakLab, problems: list[str]) -> None:
    billed = {e.task_id: e for e in result.ledger if e.billed}
    rows = result.manifest.jobs if result.manifest else []
    by_task: dict[str, Decimal | None] = {}
    for row in rows:
        if row.task_id in by_task:
            problems.append(f"task {row.task_id} has more than one cost row")
        by_task[row.task_id] = None if row.billed_usd is None else Decimal(row.billed_usd)
    ledger_by_id = {e.task_id: e for e in result.ledger}
    for task_id, entry in billed.items():
        if task_id not in by_task:
            late = " (still generating when the run ended)" if task_id in result.unfinished else ""
            problems.append(
                f"task {task_id} ({lab.job_name(entry)}, {entry.status}) billed "
                f"${entry.billed_usd}, not in the manifest's cost rows{late}"
            )
    for task_id, amount in by_task.items():
        entry = ledger_by_id.get(task_id)
        actual = entry.billed_usd if entry is not None and entry.billed else Decimal(0)
        if amount is None:
            problems.append(f"task {task_id}: bill unknown in the manifest, billed ${actual}")
        elif amount != actual:
            problems.append(f"task {task_id}: manifest says ${amount}, simulator billed ${actual}")
    if result.manifest is not None:
        reported = Decimal(result.manifest.totals.billed_usd)
        row_sum = sum((a for a in by_task.values() if a is not None), Decimal(0))
        if reported != result.billed_usd:
            problems.append(f"totals: reported ${reported}, billed ${result.billed_usd}")
        if reported != row_sum and result.manifest.totals.unknown_bills == 0:
            problems.append(f"totals: ${reported} ≠ the sum of the cost rows ${row_sum}")
    elif billed:
        problems.append(f"${result.billed_usd} billed in {len(billed)} task(s), no manifest")


def _check_duplicates(result: SeedResult, lab: SoakLab, problems: list[str]) -> None:
    jobs: dict[tuple[str, str], list[LedgerEntry]] = {}
    for entry in result.ledger:  # creation order
        jobs.setdefault(logical_job(entry), []).append(entry)
    for tasks in jobs.values():
        name = lab.job_name(tasks[0])
        paid = [e for e in tasks if e.billed]
        if len(paid) > 1:
            problems.append(
                f"{name} paid {len(paid)} times: "
                + ", ".join(f"{e.task_id} ${e.billed_usd}" for e in paid)
            )
        if len(tasks) > 2:
            problems.append(f"{name}: {len(tasks)} tasks, more than one resubmission")
        for first in tasks[:-1]:
            if first.billed or first.status not in ("failed", "cancelled"):
                why = f"{first.status}, billed ${first.billed_usd}"
            elif first.status == "cancelled":
                why = "cancelled (a cancelled task is never resubmitted)"
            elif first.error_code in NOT_WORTH_RESUBMITTING:
                why = f"failed with {first.error_code} (never resubmitted)"
            else:
                continue
            problems.append(f"{name}: task {first.task_id} was {why}, yet a new task was created")


def _check_images(result: SeedResult, lab: SoakLab, problems: list[str]) -> None:
    completed = [e for e in result.ledger if e.status == "completed"]
    result.images_expected = sum(int(e.request.get("n", 1)) for e in completed)
    stored, missing = count_stored(lab.storage, result.manifest, completed)
    result.images_stored = stored
    reasons = {row.task_id: row.failed for row in (result.manifest.jobs if result.manifest else [])}
    names = {e.task_id: lab.job_name(e) for e in completed}
    if result.manifest is None and missing:
        problems.append(
            f"no manifest: {len(missing)} billed image(s) are neither recorded as stored nor "
            "listed as lost"
        )
        return
    for image in missing:
        task_id, _, index = image.partition("/")
        if reasons.get(task_id):
            result.images_lost_listed += 1
        else:
            problems.append(
                f"image {index} of task {task_id} ({names.get(task_id, '?')}) was billed, is not "
                "stored, and no cost row lists it as lost"
            )


def _check_final_state(
    result: SeedResult, error: BaseException | None, problems: list[str]
) -> None:
    manifest = result.manifest
    incomplete = type(error).__name__ == "CampaignIncompleteError"
    if error is not None and not incomplete:
        problems.append(
            f"the run ended {result.state_type} with {result.error}, not with the documented "
            "CampaignIncompleteError after writing the manifest"
        )
    if manifest is None:
        return
    for outcome in manifest.assets:
        if outcome.status not in _OK_STATUSES:
            problems.append(
                f"asset {outcome.asset} ended {outcome.status.value} in an auto-selection run"
            )
        for adaptation in outcome.adaptations:
            if adaptation.status not in _OK_STATUSES or adaptation.status is AssetStatus.REJECTED:
                problems.append(
                    f"adaptation {outcome.asset}/{adaptation.id} ended "
                    f"{adaptation.status.value} in an auto-selection run"
                )
    failing = [o.asset for o in manifest.assets if o.status in FAILING_STATUSES] + [
        f"{asset}/{adaptation.id}" for asset, adaptation in manifest.failed_adaptations
    ]
    expected = "FAILED" if failing else "COMPLETED"
    if result.state_type != expected:
        problems.append(
            f"the run ended {result.state_type}, the rule says {expected} "
            f"({', '.join(failing) or 'no asset'} failed or budget-stopped)"
        )
    elif failing and incomplete:
        unnamed = [asset for asset in failing if asset not in str(error)]
        if unnamed:
            problems.append(f"CampaignIncompleteError does not name {', '.join(unnamed)}")


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

TABLE_HEADER = (
    "| seed | run | outcome | faults fired | tasks / billed | billed vs reported "
    "| images stored / lost (listed) / expected | s | broken invariants |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def table_row(result: SeedResult) -> str:
    reported = result.reported_usd
    relation = "=" if reported == result.billed_usd else "≠"
    lost = result.images_expected - result.images_stored
    cells = [
        str(result.seed),
        result.state_type.lower(),
        result.outcomes(),
        _counts(
            {k: n for k, n in result.chaos_counts.items() if not k.endswith(".burst_5xx")}
            | {f"storage.{k}": n for k, n in result.storage_faults.items()}
        ),
        f"{len(result.ledger)} / {sum(1 for e in result.ledger if e.billed)}",
        f"${result.billed_usd} {relation} "
        + ("(no manifest)" if reported is None else f"${reported}"),
        f"{result.images_stored} / {lost} ({result.images_lost_listed}) / {result.images_expected}",
        f"{result.seconds:.1f}",
        "; ".join(result.violations) or "—",
    ]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown_table(results: Iterable[SeedResult]) -> str:
    return "\n".join([TABLE_HEADER, *(table_row(r) for r in results)])


def summary(results: list[SeedResult]) -> str:
    """The figures for the README paragraph."""
    if not results:
        return "no seeds ran"
    seconds = sorted(r.seconds for r in results)
    broken = Counter(name for r in results for name in r.violations)
    states = Counter(r.state_type for r in results)
    fired: Counter[str] = Counter()
    for r in results:
        fired.update({k: n for k, n in r.chaos_counts.items()})
        fired.update({f"storage.{k}": n for k, n in r.storage_faults.items()})
    ok = [r.seed for r in results if r.ok]
    lines = [
        f"{len(results)} seeds ({results[0].seed}–{results[-1].seed}): {len(ok)} kept every "
        f"invariant, {len(results) - len(ok)} broke at least one.",
        "Run states: " + ", ".join(f"{k.lower()} {n}" for k, n in sorted(states.items())) + ".",
        "Broken, by invariant: "
        + (
            ", ".join(
                f"{name} {broken[name]} "
                f"(seeds {', '.join(str(r.seed) for r in results if name in r.violations)})"
                for name in INVARIANTS
                if broken[name]
            )
            or "none"
        )
        + ".",
        f"Faults fired: {sum(r.faults_fired for r in results)} in all — {_counts(fired)}.",
        f"Tasks {sum(len(r.ledger) for r in results)}, billed "
        f"{sum(1 for r in results for e in r.ledger if e.billed)} "
        f"(${sum((r.billed_usd for r in results), Decimal(0))}); images "
        f"{sum(r.images_stored for r in results)} stored, "
        f"{sum(r.images_lost_listed for r in results)} lost and listed, of "
        f"{sum(r.images_expected for r in results)} billed.",
        f"Seconds per seed: median {seconds[len(seconds) // 2]:.1f}, max {seconds[-1]:.1f}, "
        f"total {sum(seconds):.0f}.",
    ]
    return "\n".join(lines)
