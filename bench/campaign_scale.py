"""Benchmark 7 (issue #12): a 1,000-asset campaign in ONE flow run vs. a bare asyncio script.

    python3 dev.py run python bench/campaign_scale.py                  # the full run, ~30 min
    python3 dev.py run python bench/campaign_scale.py --assets 100 --generation-seconds 2
    python3 dev.py run python bench/campaign_scale.py --assets 100,400,1000 --variants ours \\
        --generation-seconds 1 --concurrency 50                        # the RSS scan

Method. One temporary Prefect API (`prefect_test_harness`: SQLite, a uvicorn subprocess,
heartbeat off, run logs sent to the API as in production) and one simulator subprocess
(`python -m evolink.simulator`, generation time G, reset before every run) serve every run of
the invocation. For each asset count, in this order:

- ``ours``: `flows.campaign.run_campaign` on a brief of N assets (the example's four asset
  types in turn, k low drafts each, high finals, auto selection, local storage in a fresh temp
  dir), `max_concurrent_assets=C`, no provider limits created (strict off): one flow run in this
  process;
- ``bare-paced``: `campaign_walltime.bare_campaign`, one asyncio + httpx script without Prefect
  or project code on the hot path, the same requests, the same two phases, C jobs at a time and
  the same `PollSchedule` pacing from the create response.

C is the provider's concurrency (how many jobs generate at once), the same for both; the
simulator's `max_concurrent_processing` is printed to show it was reached and never passed.
Each run is a fresh child process (as a worker gives each flow run): it makes a 2-asset
warm-up run (not measured: imports, first flow run), then the measured one. The ratio is
wall(ours) / wall(bare-paced), timed inside the child around the run alone. Prefect API CPU is
the uvicorn process's user+system time during the run (`/proc/<pid>/stat`), divided by the
jobs (2 per asset) and by the task runs the flow run made (counted through the API
afterwards). Peak RSS is the flow process's VmRSS sampled every 50 ms during the run, shown
absolute and as growth over the run's start; a fresh process per run is what makes it one
run's peak (a process keeps the heap a bigger run grew).

Why k = 2 drafts by default: a campaign of 1,000 assets is a catalogue, not a hero shot: two
cheap variants give the selector a choice at half the draft cost of four, and the per-job
overhead this benchmark is about is the same per job whatever k is (one persist task per job
stores all its images). `--drafts 4` is the benchmark-1 setting.

Why G = 20 s and C = 50 by default: EvoLink's own `estimated_time` is about 100 s, and an
account runs tens of jobs at once; 20 s keeps the full run under half an hour (lower bound
2 phases × ⌈1000/50⌉ waves × 20 s = 800 s per variant) while staying pessimistic for us: our
overhead is per job, so a longer G only shrinks the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from campaign_walltime import EXAMPLE_BRIEF, bare_campaign, bare_payloads
from common import (
    PrefectRetryCounter,
    SimulatorProcess,
    load_average,
    machine_line,
    mib,
    prefect_api,
    prefect_server_pid,
    print_table,
    process_cpu_seconds,
    rss_bytes,
)

VARIANTS = ("ours", "bare-paced")


def make_brief(path: Path, *, campaign: str, assets: int, drafts: int) -> Path:
    """`assets` assets cycling through the example brief's four asset types (without the
    banner's adaptations); the budget is 1.5 × the estimate, so the budget guard is live but
    never the reason an asset stops."""
    from evolink.brief import parse_brief
    from evolink.campaign import campaign_estimate_usd
    from evolink.plans import check_plans

    example = yaml.safe_load(EXAMPLE_BRIEF.read_text(encoding="utf-8"))
    templates = example["assets"]
    items = []
    for index in range(assets):
        item = dict(templates[index % len(templates)])
        item.pop("adaptations", None)  # the phases measured are the drafts' and the finals'
        item["id"] = f"{item['id']}-{index:05d}"
        items.append(item)
    defaults = {k: v for k, v in example["defaults"].items() if k != "adaptations"}
    brief: dict[str, Any] = {
        "campaign": campaign,
        "budget_usd": "1000000",
        "defaults": {**defaults, "drafts": drafts},
        "assets": items,
    }
    parsed = parse_brief(brief)
    plans = check_plans(parsed, {a.id: (list(a.reference_images), None) for a in parsed.assets})
    total = campaign_estimate_usd(plans)
    brief["budget_usd"] = str((total * Decimal("1.5")).quantize(Decimal("0.01")))
    path.write_text(yaml.safe_dump(brief, sort_keys=False), encoding="utf-8")
    return path


class RssTrace:
    """VmRSS of this process every `interval` s in a thread: peak, and the value at the start."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssTrace:
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, name="rss-trace", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.peak = max(self.peak, rss_bytes())


@dataclass
class RunResult:
    variant: str
    assets: int
    seconds: float
    cpu_self: float
    cpu_prefect: float
    cpu_sim: float
    rss_start: int
    rss_peak: int
    task_runs: int
    jobs: int
    gets: int
    max_concurrent: int
    billed_usd: float
    prefect_retries: int
    load: str


async def count_task_runs(flow_run_id: str, expected: int | None = None) -> int:
    """Task runs of the flow run, as the API recorded them (`POST /task_runs/count`).

    Task runs reach the API as events, which its recorder writes in batches, behind the flow
    on a busy machine: wait until the count reaches `expected` (when given) or has not moved
    for three readings 2 s apart — so the API's CPU read after this includes that backlog."""
    from prefect.client.orchestration import get_client

    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    readings: list[int] = []
    async with get_client() as client:
        for _ in range(300):
            response = await client._client.post("/task_runs/count", json=body)
            response.raise_for_status()
            readings.append(int(response.json()))
            if expected is not None and readings[-1] >= expected:
                break
            if len(readings) >= 3 and len(set(readings[-3:])) == 1:
                break
            await asyncio.sleep(2.0)
    return readings[-1]


# --- the child: one variant, one campaign, in a fresh process ---------------------------------


def child_main(args: argparse.Namespace) -> int:
    """Run one variant in this fresh process and print its `RunResult` as JSON on stdout.

    A fresh process per run is what a worker gives each flow run, and the only way to read one
    run's peak RSS: a process that ran a smaller campaign before keeps its heap. A 2-asset
    warm-up (not measured) loads every import and makes the first flow run first."""
    os.environ["PREFECT_API_URL"] = args.api_url  # before Prefect reads its settings
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from evolink.polling import PollSchedule
    from prefect_evolink.flows.campaign import run_campaign

    work = Path(args.work)
    sim = SimulatorProcess(generation_seconds=args.generation_seconds)
    sim.base_url, sim.api_key = args.sim_url, args.sim_key
    os.environ["EVOLINK_API_KEY"] = sim.api_key
    os.environ["EVOLINK_BASE_URL"] = sim.base_url

    def one(assets: int, measured: bool) -> RunResult | None:
        campaign = f"scale-{args.child}-{assets}-{'run' if measured else 'warm'}"
        run_dir = Path(tempfile.mkdtemp(prefix=f"{args.child}-", dir=work))
        brief = make_brief(
            run_dir / "brief.yaml", campaign=campaign, assets=assets, drafts=args.drafts
        )
        jobs = bare_payloads(brief) if args.child != "ours" else []
        os.environ["EVOLINK_ASSETS_DIR"] = str(run_dir / "assets")
        sim.reset()
        cpu0 = (
            process_cpu_seconds(),
            process_cpu_seconds(args.api_pid),
            process_cpu_seconds(args.sim_pid),
        )
        with RssTrace() as rss, PrefectRetryCounter() as retries:
            started = time.perf_counter()
            if args.child == "ours":
                with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                    manifest = asyncio.run(
                        run_campaign.aio(str(brief), max_concurrent_assets=args.concurrency)
                    )
            else:
                asyncio.run(
                    bare_campaign(
                        sim.base_url,
                        sim.api_key,
                        jobs,
                        concurrency=args.concurrency,
                        next_delay=PollSchedule().next_delay,
                        out_dir=run_dir / "bare",
                    )
                )
            seconds = time.perf_counter() - started
        task_runs = 0
        if args.child == "ours" and measured and manifest.flow_run_id:
            # per job: submit, poll, persist; per final: + the draft-link look-up only when
            # the link is stale (never here); + 1 save-manifest task
            task_runs = asyncio.run(count_task_runs(manifest.flow_run_id, 6 * assets + 1))
        cpu1 = (
            process_cpu_seconds(),
            process_cpu_seconds(args.api_pid),
            process_cpu_seconds(args.sim_pid),
        )
        stats = sim.admin("GET", "stats")
        ledger = sim.ledger()
        if len(ledger) != 2 * assets or any(e["status"] != "completed" for e in ledger):
            raise RuntimeError(f"expected {2 * assets} completed tasks, got {len(ledger)}")
        billed = sum(float(e["billed_usd"]) for e in ledger)
        if args.child == "ours":
            not_final = [o.asset for o in manifest.assets if o.status.value != "final"]
            if not_final:
                raise RuntimeError(f"{len(not_final)} assets without a final: {not_final[:5]}")
            if abs(float(manifest.totals.billed_usd) - billed) > 1e-6:
                raise RuntimeError(f"billed {billed}, manifest {manifest.totals.billed_usd}")
        shutil.rmtree(run_dir, ignore_errors=True)
        if not measured:
            return None
        return RunResult(
            variant=args.child,
            assets=assets,
            seconds=seconds,
            cpu_self=cpu1[0] - cpu0[0],
            cpu_prefect=cpu1[1] - cpu0[1],
            cpu_sim=cpu1[2] - cpu0[2],
            rss_start=rss.start,
            rss_peak=rss.peak,
            task_runs=task_runs,
            jobs=2 * assets,
            gets=stats["request_counts"]["get"],
            max_concurrent=int(stats.get("max_concurrent_processing") or 0),
            billed_usd=billed,
            prefect_retries=retries.retries,
            load=load_average(),
        )

    one(2, measured=False)
    result = one(args.child_assets, measured=True)
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
    return 0


RESULT_PREFIX = "RESULT "


def run_child(
    variant: str, assets: int, sim: SimulatorProcess, api_url: str, args: argparse.Namespace
) -> RunResult:
    """One variant in a fresh child process (see `child_main`), against our API and simulator."""
    api_pid = args.server_pid or prefect_server_pid()
    if api_pid is None or sim.process is None:
        raise RuntimeError("the Prefect API and the simulator must be running")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        variant,
        "--child-assets",
        str(assets),
        "--api-url",
        api_url,
        "--api-pid",
        str(api_pid),
        "--sim-url",
        sim.base_url,
        "--sim-key",
        sim.api_key,
        "--sim-pid",
        str(sim.process.pid),
        "--work",
        args.work,
        "--drafts",
        str(args.drafts),
        "--concurrency",
        str(args.concurrency),
        "--generation-seconds",
        str(args.generation_seconds),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} ({assets} assets) failed:\n{done.stderr[-4000:]}")
    return RunResult(**json.loads(lines[-1].removeprefix(RESULT_PREFIX)))


@contextlib.contextmanager
def _api(args: argparse.Namespace, work: Path) -> Iterator[str]:
    """The SQLite harness, or `prefect server` on PostgreSQL (bench/catalogue.py's stack); the
    API's CPU is its server process's either way (PostgreSQL's own is not counted)."""
    args.server_pid = None
    if not args.postgres:
        with prefect_api() as api_url:
            yield api_url
        return
    from catalogue import prefect_on_postgres
    from prefect.settings import PREFECT_API_URL, temporary_settings

    work.chmod(0o755)  # the postgres user must reach its directory
    (work / "stack").mkdir()
    with prefect_on_postgres(work / "stack") as stack:
        args.server_pid = stack.server_pid
        with temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}):
            yield stack.env["PREFECT_API_URL"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        epilog="See the module docstring for the method.",
    )
    parser.add_argument(
        "--assets", default="1000", help="assets per campaign; a comma list runs each size"
    )
    parser.add_argument("--drafts", type=int, default=2, help="k low drafts per asset (n=k)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="C: jobs at once (max_concurrent_assets)"
    )
    parser.add_argument("--generation-seconds", type=float, default=20.0, help="G per job")
    parser.add_argument(
        "--variants", default="ours,bare-paced", help="comma list of: " + ", ".join(VARIANTS)
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="a real `prefect server` on a throwaway PostgreSQL instead of the SQLite harness",
    )
    # internal: the child process of one run (see `child_main`)
    for name, kind in (
        ("--child", str),
        ("--child-assets", int),
        ("--api-url", str),
        ("--api-pid", int),
        ("--sim-url", str),
        ("--sim-key", str),
        ("--sim-pid", int),
        ("--work", str),
    ):
        parser.add_argument(name, type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)
    sizes = [int(part) for part in args.assets.split(",") if part.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(variants) - set(VARIANTS) or not sizes or min(sizes) < 1 or args.concurrency < 1:
        parser.error(f"variants among {list(VARIANTS)}; assets and concurrency >= 1")

    print(machine_line())
    print(
        f"campaign sizes {sizes}: per asset 1 draft job (n={args.drafts}, low) + 1 final (high), "
        f"C={args.concurrency}, G={args.generation_seconds} s, variants {variants}"
    )
    results: list[RunResult] = []
    work = Path(tempfile.mkdtemp(prefix="evolink-bench-scale-"))
    try:
        with (
            _api(args, work) as api_url,
            SimulatorProcess(generation_seconds=args.generation_seconds) as sim,
        ):
            kind = "PostgreSQL" if args.postgres else "SQLite"
            print(f"Prefect API {api_url} ({kind}); simulator {sim.base_url}", flush=True)
            args.work = str(work)
            for assets in sizes:
                waves = -(-assets // args.concurrency)
                print(
                    f"{assets} assets: lower bound 2 phases x {waves} waves x "
                    f"{args.generation_seconds} s = {2 * waves * args.generation_seconds:.0f} s",
                    flush=True,
                )
                for variant in variants:
                    r = run_child(variant, assets, sim, api_url, args)
                    results.append(r)
                    print(
                        f"  {variant:<10} {r.seconds:8.1f} s; CPU self {r.cpu_self:6.1f} s, "
                        f"Prefect API {r.cpu_prefect:6.1f} s, simulator {r.cpu_sim:5.1f} s; "
                        f"RSS {mib(r.rss_start)} -> peak {mib(r.rss_peak)} MiB; task runs "
                        f"{r.task_runs}; GETs {r.gets}; provider concurrency {r.max_concurrent}; "
                        f"client retries {r.prefect_retries}; load {r.load}",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    rows = []
    for r in results:
        bare = next(
            (b for b in results if b.variant == "bare-paced" and b.assets == r.assets), None
        )
        ratio = f"{r.seconds / bare.seconds:.3f}" if bare is not None else "—"
        per_job = f"{1000 * r.cpu_prefect / r.jobs:.0f}"
        per_task = f"{1000 * r.cpu_prefect / r.task_runs:.0f}" if r.task_runs else "—"
        rows.append(
            [
                r.variant,
                r.assets,
                f"{r.seconds:.1f}",
                ratio,
                f"{r.cpu_prefect:.1f}",
                per_job,
                per_task,
                r.task_runs or "—",
                f"{r.cpu_self:.1f}",
                f"{mib(r.rss_peak)} (+{mib(r.rss_peak - r.rss_start)})",
                r.gets,
            ]
        )
    print_table(
        [
            "variant",
            "assets",
            "wall s",
            "ratio to bare",
            "Prefect API CPU s",
            "API CPU ms/job",
            "API CPU ms/task run",
            "task runs",
            "CPU s (flow process)",
            "peak RSS MiB (growth)",
            "GETs",
        ],
        rows,
    )
    for r in results:
        bare = next(
            (b for b in results if b.variant == "bare-paced" and b.assets == r.assets), None
        )
        if r.variant == "ours" and bare is not None:
            ratio = r.seconds / bare.seconds
            verdict = "met" if ratio <= 1.15 else "MISSED"
            print(f"{r.assets} assets: ours / bare-paced = {ratio:.3f} (goal <= 1.15: {verdict})")
    print(f"load average now {load_average()}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
