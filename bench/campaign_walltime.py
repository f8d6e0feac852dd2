"""Benchmark 1 (issue #5): wall time of a 20-asset draft→final campaign, ours vs. a bare script.

    python3 dev.py run python bench/campaign_walltime.py            # ~15 min: 3 reps x 4 variants
    python3 dev.py run python bench/campaign_walltime.py --reps 1 --generation-seconds 2  # quick

Variants, run in this process, alternating within every repetition (order rotates per rep):

- ``ours``: `flows.campaign.run_campaign` (auto selection, local storage in a fresh temp dir,
  `max_concurrent_assets=N`) on a temporary Prefect API (`prefect_test_harness`, heartbeat off,
  logging to the API on — Prefect's default), credentials from the environment;
- ``ours-nolog`` (with ``--variants``): the same with `PREFECT_LOGGING_TO_API_ENABLED=false`;
- ``bare-paced``: one asyncio + httpx script, no Prefect, no project code on the hot path, that
  makes the same requests with the same concurrency and the same two phases (every asset's
  drafts, then selection, then every asset's final) and polls with the same `PollSchedule`
  pacing as ours, starting from the create response as ours does: the fair "practical limit";
- ``bare-ideal``: the same script polling every 50 ms (completion seen almost at once).

Per asset: POST drafts (n=k) → GETs paced from the create response → download every draft →
(after all drafts) pick the largest draft → POST the final with that draft's result URL as the
first reference → poll → download. The simulator (`python -m evolink.simulator`) runs in its own
process with a fixed generation time and is reset before every run; the ledger and request counts
of each run are read back from it. The ratio is median(ours) / median(bare-paced).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import os
import pstats
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from common import (
    PrefectApiCounter,
    PrefectRetryCounter,
    SimulatorProcess,
    load_average,
    machine_line,
    median,
    prefect_api,
    prefect_server_pid,
    print_table,
    process_cpu_seconds,
    thread_cpu_seconds,
)

EXAMPLE_BRIEF = Path(__file__).resolve().parents[1] / "briefs" / "spring-launch.yaml"
IDEAL_POLL_SECONDS = 0.05
VARIANTS = ("ours", "ours-nolog", "bare-paced", "bare-ideal")
PHASES = ("start", "drafts_spread", "drafts_tail", "finals_spread", "finals_tail")


def make_brief(path: Path, *, campaign: str, assets: int, drafts: int) -> Path:
    """`assets` assets cycling through the example brief's four asset types (banner 16:9 1K,
    square 1K, story 9:16 1K, product shot 4:3 2K with an https reference image), without the
    banner's adaptations: the phases measured are the drafts' and the finals'."""
    example = yaml.safe_load(EXAMPLE_BRIEF.read_text(encoding="utf-8"))
    templates = example["assets"]
    items = []
    for index in range(assets):
        item = dict(templates[index % len(templates)])
        item.pop("adaptations", None)
        item["id"] = f"{item['id']}-{index:02d}"
        items.append(item)
    defaults = {k: v for k, v in example["defaults"].items() if k != "adaptations"}
    brief = {
        "campaign": campaign,
        "budget_usd": 100,
        "defaults": {**defaults, "drafts": drafts},
        "assets": items,
    }
    path.write_text(yaml.safe_dump(brief, sort_keys=False), encoding="utf-8")
    return path


# --- the bare script ------------------------------------------------------------------------


@dataclass
class BareJob:
    draft_payload: dict[str, Any]
    final_template: dict[str, Any]
    drafts: list[tuple[str, int]] = field(default_factory=list)  # (result url, bytes)


def bare_payloads(brief_path: Path) -> list[BareJob]:
    """The request bodies ours sends, computed before the clock starts (plain dicts after)."""
    from evolink.brief import load_brief
    from evolink.plans import PLACEHOLDER_DRAFT_URL, check_plans

    brief = load_brief(brief_path)
    references = {a.id: (list(a.reference_images), None) for a in brief.assets}
    return [
        BareJob(p.draft.to_payload(), p.final_request(PLACEHOLDER_DRAFT_URL).to_payload())
        for p in check_plans(brief, references)
    ]


async def bare_campaign(
    base_url: str,
    api_key: str,
    jobs: list[BareJob],
    *,
    concurrency: int,
    next_delay: Callable[[float, int, float | None], float],
    out_dir: Path,
) -> None:
    """What ours does, minus Prefect and the project: one httpx client, two phases."""
    headers = {"Authorization": f"Bearer {api_key}"}
    timeout = httpx.Timeout(60.0)
    async with (
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout) as api,
        httpx.AsyncClient(timeout=timeout) as files,
    ):
        slots = asyncio.Semaphore(concurrency)

        async def download(url: str, dest: Path) -> int:
            size = 0
            async with files.stream("GET", url) as response:
                response.raise_for_status()
                with dest.open("wb") as sink:
                    async for chunk in response.aiter_bytes(256 * 1024):
                        sink.write(chunk)
                        size += len(chunk)
            return size

        async def job(payload: dict[str, Any], dest: Path) -> list[tuple[str, int]]:
            created = await api.post("/v1/images/generations", json=payload)
            created.raise_for_status()
            task = created.json()  # the first reading, as ours uses it
            started = time.monotonic()
            while True:
                if task["status"] == "completed":
                    break
                if task["status"] in ("failed", "cancelled"):
                    raise RuntimeError(f"task {task['id']} {task['status']}")
                estimated = (task.get("task_info") or {}).get("estimated_time")
                await asyncio.sleep(
                    next_delay(time.monotonic() - started, task["progress"], estimated)
                )
                reply = await api.get(f"/v1/tasks/{task['id']}")
                reply.raise_for_status()
                task = reply.json()
            dest.mkdir(parents=True, exist_ok=True)
            urls: list[str] = task["results"]
            sizes = await asyncio.gather(
                *(download(url, dest / f"image-{i}.png") for i, url in enumerate(urls))
            )
            return list(zip(urls, sizes, strict=True))

        async def drafts(index: int, item: BareJob) -> None:
            async with slots:
                item.drafts = await job(item.draft_payload, out_dir / f"{index}" / "draft")

        async def final(index: int, item: BareJob) -> None:
            async with slots:
                # largest draft wins, ties → lowest index (the default selector's rule)
                chosen = max(range(len(item.drafts)), key=lambda i: (item.drafts[i][1], -i))
                payload = dict(item.final_template)
                payload["image_urls"] = [item.drafts[chosen][0], *payload["image_urls"][1:]]
                await job(payload, out_dir / f"{index}" / "final")

        await asyncio.gather(*(drafts(i, item) for i, item in enumerate(jobs)))
        await asyncio.gather(*(final(i, item) for i, item in enumerate(jobs)))


# --- one measured run -----------------------------------------------------------------------


@dataclass
class RunResult:
    variant: str
    rep: int
    seconds: float
    cpu_self: float
    cpu_prefect: float
    cpu_sim: float
    creates: int
    gets: int
    downloads: int
    tasks: int
    billed_usd: float
    load: str
    threads: dict[str, float]
    prefect_retries: int
    prefect_retry_sleep: float
    prefect_requests: dict[str, int] = field(default_factory=dict)
    prefect_clients: int = 0
    log_lines: int = 0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def jobs(self) -> int:
        return self.tasks

    @property
    def cpu_ms_per_job(self) -> float:
        """CPU of this process (the flow process for `ours`: the flow runs in it, the Prefect
        API and the simulator are child processes) per EvoLink job, in ms."""
        return 1000.0 * self.cpu_self / max(1, self.jobs)

    @property
    def prefect_requests_per_job(self) -> float:
        return sum(self.prefect_requests.values()) / max(1, self.jobs)


def phase_times(ledger: list[dict[str, Any]], started_wall: float, ended_wall: float) -> dict:
    """Where the wall time went, from the simulator's ledger (Unix times of every create and
    finish): the drafts are the first half of the tasks created, the finals the second.

    - `start`: run start → first draft created (flow run creation, brief, blocks, reads);
    - `drafts_spread`: first → last draft created;
    - `drafts_tail`: last draft finished at the simulator → first final created (completion
      handling: last poll, downloads, storage, booking, progress, selection);
    - `finals_spread`, `finals_tail`: the same for the finals, the tail up to the run's end
      (last poll, downloads, storage, the manifest, the reports).
    """
    created = sorted(ledger, key=lambda e: float(e["created_at"]))
    half = len(created) // 2
    drafts, finals = created[:half], created[half:]
    if not drafts or not finals:
        return {}

    def times(entries: list[dict[str, Any]], name: str) -> list[float]:
        return [float(e[name]) for e in entries if e.get(name) is not None]

    d_created, d_done = times(drafts, "created_at"), times(drafts, "finished_at")
    f_created, f_done = times(finals, "created_at"), times(finals, "finished_at")
    return {
        "start": d_created[0] - started_wall,
        "drafts_spread": d_created[-1] - d_created[0],
        "drafts_tail": f_created[0] - max(d_done),
        "finals_spread": f_created[-1] - f_created[0],
        "finals_tail": ended_wall - max(f_done),
    }


def run_once(
    variant: str,
    rep: int,
    sim: SimulatorProcess,
    args: argparse.Namespace,
    work: Path,
    profile: cProfile.Profile | None = None,
) -> RunResult:
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    from prefect_evolink.flows.campaign import run_campaign

    campaign = f"bench-r{rep}-{variant}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=work))
    brief = make_brief(
        run_dir / "brief.yaml", campaign=campaign, assets=args.assets, drafts=args.drafts
    )
    jobs = bare_payloads(brief) if variant.startswith("bare") else []
    sim.reset()
    os.environ["EVOLINK_API_KEY"] = sim.api_key
    os.environ["EVOLINK_BASE_URL"] = sim.base_url
    os.environ["EVOLINK_ASSETS_DIR"] = str(run_dir / "assets")
    server_pid = prefect_server_pid()
    sim_pid = sim.process.pid if sim.process else None
    cpu0 = (
        process_cpu_seconds(),
        process_cpu_seconds(server_pid) if server_pid else 0.0,
        process_cpu_seconds(sim_pid),
    )
    # Every variant starts from a collected heap: a full collection of what earlier runs in
    # this process left (a few hundred ms of a stopped event loop on a busy machine) would
    # otherwise land in whichever run happens to cross Python's threshold.
    gc.collect()
    threads0 = thread_cpu_seconds()
    api_calls = PrefectApiCounter()
    started_wall = time.time()
    started = time.perf_counter()
    if variant.startswith("ours"):
        settings = {PREFECT_LOGGING_TO_API_ENABLED: variant != "ours-nolog"}
        with (
            temporary_settings(settings),
            PrefectRetryCounter() as prefect_retries,
            api_calls,
        ):
            if profile is not None:
                profile.enable()
            try:
                manifest = asyncio.run(
                    run_campaign.aio(str(brief), max_concurrent_assets=args.concurrency)
                )
            finally:
                if profile is not None:
                    profile.disable()
        not_final = [o.asset for o in manifest.assets if o.status.value != "final"]
        if not_final:
            raise RuntimeError(f"assets without a final: {not_final}")
    else:
        prefect_retries = PrefectRetryCounter()
        from evolink.polling import PollSchedule

        schedule = PollSchedule()
        pace = (
            schedule.next_delay
            if variant == "bare-paced"
            else (lambda elapsed, progress, estimated: IDEAL_POLL_SECONDS)
        )
        asyncio.run(
            bare_campaign(
                sim.base_url,
                sim.api_key,
                jobs,
                concurrency=args.concurrency,
                next_delay=pace,
                out_dir=run_dir / "bare",
            )
        )
    seconds = time.perf_counter() - started
    ended_wall = time.time()
    threads1 = thread_cpu_seconds()
    cpu1 = (
        process_cpu_seconds(),
        process_cpu_seconds(server_pid) if server_pid else 0.0,
        process_cpu_seconds(sim_pid),
    )
    counts = sim.request_counts()
    ledger = sim.ledger()
    expected_tasks = 2 * args.assets
    if len(ledger) != expected_tasks or any(e["status"] != "completed" for e in ledger):
        raise RuntimeError(f"{variant}: expected {expected_tasks} completed tasks, got {ledger}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return RunResult(
        variant=variant,
        rep=rep,
        seconds=seconds,
        cpu_self=cpu1[0] - cpu0[0],
        cpu_prefect=cpu1[1] - cpu0[1],
        cpu_sim=cpu1[2] - cpu0[2],
        creates=counts["create"],
        gets=counts["get"],
        downloads=counts["download"],
        tasks=len(ledger),
        billed_usd=sum(float(e["billed_usd"]) for e in ledger),
        load=load_average(),
        threads={k: v - threads0.get(k, 0.0) for k, v in threads1.items()},
        prefect_retries=prefect_retries.retries,
        prefect_retry_sleep=prefect_retries.sleep_seconds,
        prefect_requests=dict(api_calls.requests),
        prefect_clients=api_calls.clients,
        log_lines=api_calls.log_lines,
        phases=phase_times(ledger, started_wall, ended_wall),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=int, default=20)
    parser.add_argument("--drafts", type=int, default=4, help="k drafts per asset")
    parser.add_argument("--concurrency", type=int, default=4, help="max_concurrent_assets")
    parser.add_argument("--generation-seconds", type=float, default=None, help="default 5")
    parser.add_argument(
        "--one-wave",
        action="store_true",
        help="every asset in one wave: max_concurrent_assets = --assets, and 3 s jobs unless "
        "--generation-seconds says otherwise (the flow process's per-completion cost shows "
        "undiluted: every job of a phase completes at once)",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--variants",
        default="ours,bare-paced,bare-ideal",
        help="comma list of: " + ", ".join(VARIANTS),
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="ours",
        default=None,
        metavar="VARIANT",
        help="one more run of VARIANT (default ours) under cProfile (main thread)",
    )
    args = parser.parse_args()
    if args.one_wave:
        args.concurrency = args.assets
    if args.generation_seconds is None:
        args.generation_seconds = 3.0 if args.one_wave else 5.0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = set(VARIANTS)
    if set(variants) - known or args.profile not in (None, *known) or not 1 <= args.reps <= 20:
        parser.error(f"variants must be among {sorted(known)}; reps 1..20")

    print(machine_line())
    print(
        f"campaign: {args.assets} assets x (1 draft job n={args.drafts} + 1 final job), "
        f"max_concurrent_assets={args.concurrency}, simulator generation_seconds="
        f"{args.generation_seconds}, {args.reps} rep(s), variants {variants}"
    )
    waves = -(-args.assets // args.concurrency)
    floor = 2 * waves * args.generation_seconds
    print(f"lower bound (2 phases x {waves} waves x generation time): {floor:.1f} s")

    results: list[RunResult] = []
    work = Path(tempfile.mkdtemp(prefix="evolink-bench-campaign-"))
    try:
        with (
            prefect_api() as api_url,
            SimulatorProcess(generation_seconds=args.generation_seconds) as sim,
        ):
            print(f"Prefect API {api_url}; simulator {sim.base_url} (pid {sim.process.pid})")
            # Warm-up (not measured): imports, first flow run, block registration, DB pages.
            warm = argparse.Namespace(**{**vars(args), "assets": 2})
            for variant in ("ours", "bare-paced"):
                run_once(variant, 0, sim, warm, work)
            for rep in range(1, args.reps + 1):
                shift = (rep - 1) % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    result = run_once(variant, rep, sim, args, work)
                    results.append(result)
                    print(
                        f"  rep {rep} {variant:<11} {result.seconds:7.2f} s  cpu self "
                        f"{result.cpu_self:5.1f} s, prefect server {result.cpu_prefect:5.1f} s, "
                        f"simulator {result.cpu_sim:4.1f} s; requests create/get/download "
                        f"{result.creates}/{result.gets}/{result.downloads}; Prefect client "
                        f"retries {result.prefect_retries} ({result.prefect_retry_sleep:.1f} s "
                        f"asleep); load {result.load}",
                        flush=True,
                    )
                    print(
                        f"      CPU {result.cpu_ms_per_job:.0f} ms/job; Prefect API "
                        f"{result.prefect_requests_per_job:.1f} requests/job, "
                        f"{result.log_lines / max(1, result.jobs):.1f} run log lines/job, "
                        f"{result.prefect_clients} clients opened; phases (s): "
                        + ", ".join(f"{k} {v:.2f}" for k, v in result.phases.items()),
                        flush=True,
                    )
            if args.profile:
                profile = cProfile.Profile()
                result = run_once(args.profile, 99, sim, args, work, profile)
                print(
                    f"\nprofiled `{args.profile}` run: {result.seconds:.2f} s (cProfile adds "
                    f"overhead); Prefect client retries {result.prefect_retries} "
                    f"({result.prefect_retry_sleep:.1f} s asleep)"
                )
                report(profile, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    rows = []
    by_variant = {v: [r for r in results if r.variant == v] for v in variants}
    base = median([r.seconds for r in by_variant.get("bare-paced", [])] or [float("nan")])
    for variant, runs in by_variant.items():
        wall = median([r.seconds for r in runs])
        rows.append(
            [
                variant,
                f"{wall:.2f}",
                " / ".join(f"{r.seconds:.2f}" for r in runs),
                f"{wall / base:.3f}",
                f"{median([r.cpu_self for r in runs]):.1f}",
                f"{median([r.cpu_prefect for r in runs]):.1f}",
                f"{median([r.cpu_sim for r in runs]):.1f}",
                f"{runs[0].creates}/{median([r.gets for r in runs]):.0f}/{runs[0].downloads}",
                f"{median([r.prefect_retries for r in runs]):.0f}",
                f"{median([r.cpu_ms_per_job for r in runs]):.0f}",
                f"{median([r.prefect_requests_per_job for r in runs]):.1f}",
                f"{median([r.log_lines / max(1, r.jobs) for r in runs]):.1f}",
                f"{median([1000 * r.cpu_prefect / max(1, r.jobs) for r in runs]):.0f}",
                " / ".join(
                    f"{median([r.phases.get(k, float('nan')) for r in runs]):.2f}" for k in PHASES
                ),
            ]
        )
    print_table(
        [
            "variant",
            "median wall s",
            "runs (s)",
            "ratio to bare-paced",
            "CPU s (this process)",
            "CPU s (Prefect API)",
            "CPU s (simulator)",
            "create/get/download",
            "Prefect client retries",
            "CPU ms per job (this process)",
            "Prefect API requests per job",
            "run log lines per job",
            "Prefect API CPU ms per job",
            "phases s (" + " / ".join(PHASES) + ")",
        ],
        rows,
    )
    for variant in variants:
        if not variant.startswith("ours") or not by_variant[variant]:
            continue
        last = by_variant[variant][-1]
        print(f"\nPrefect API requests of the last `{variant}` run, per job (most first):")
        for name, count in sorted(last.prefect_requests.items(), key=lambda kv: -kv[1])[:15]:
            print(f"  {count / max(1, last.jobs):6.2f}  {name}")
    ours = by_variant.get("ours")
    if ours and "bare-paced" in by_variant:
        ratio = median([r.seconds for r in ours]) / base
        goal = 1.20 if args.one_wave else 1.15  # one wave: issue #19's goal; else benchmark 1's
        verdict = "met" if ratio <= goal else "MISSED"
        print(f"\nours / bare-paced = {ratio:.3f} (goal <= {goal:.2f}: {verdict})")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"process peak RSS {ru.ru_maxrss / 1024:.0f} MiB; load average now {load_average()}")
    return 0


def report(profile: cProfile.Profile, result: RunResult) -> None:
    """Top functions of the main thread, and CPU per thread (threads cProfile does not see)."""
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(order).print_stats(25)
        text = out.getvalue()
        print(f"\n--- cProfile, main thread, top 25 by {order} ---")
        print(text[text.find("   ncalls") :].rstrip())
    print("\n--- CPU seconds per thread during that run (threads alive at its end) ---")
    for name, seconds in sorted(result.threads.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {seconds:6.2f}  {name}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
