"""Benchmark 2 (issue #5): polls per job and completion-detection lag, ours vs. a fixed 3 s poll.

    python3 dev.py run python bench/polling.py                  # ~2 min, real time, 54 groups
    python3 dev.py run python bench/polling.py --durations 20 --jobs 3   # quick
    python3 dev.py run python bench/polling.py --factors 1 --curves linear stall   # a subset

Real time, no clock tricks: every job of every policy runs at once, so the whole benchmark takes
about as long as the longest job (100 s + 1.2 s + lag). For each nominal job time T (20, 60,
100 s) a policy gets `--jobs` jobs whose generation times are spread evenly over one 3 s period
around T (T-1.2, T-0.6, T, T+0.6, T+1.2 with 5 jobs), so a fixed 3 s poll meets completions at
every phase of its grid instead of one lucky or unlucky phase.

Each (policy, T) group has its own in-process `EvoLinkSimulator`, so its `request_counts["get"]`
divided by the number of jobs is exactly the GETs per job (the create is not counted). The
client is the project's `EvoLinkClient.wait_for_task`:

- ``ours``: `PollSchedule()` defaults, called as `tasks/poll.py` calls it right after submit:
  the create response is the first reading (no GET at t = 0); the next query goes at the
  earliest end still plausible, and just past the predicted end once two predictions from the
  progress agree (see `evolink/polling.py`);
- ``fixed-3s``: `PollSchedule(min_interval=3, max_interval=3)` — a query every 3 s, as
  EvoLink's own tools poll images (no create reading: it asks at t = 0 too);

Scenarios (issue #12): each (estimate factor, progress curve) pair — `--factors 0.5 1 1.5`,
`--curves linear ease-out ease-in` by default — runs both policies on simulators configured
with `estimate_factor` and `progress_curve`, in the same run, so the ratio to fixed-3s is
measured under the same load.

Lag = when `wait_for_task` returned (time.time()) − the task's `finished_at` in the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any

from common import load_average, machine_line, median, print_table

from evolink.client import EvoLinkClient
from evolink.polling import PollSchedule
from evolink.simulator import EvoLinkSimulator
from evolink.simulator.tasks import PROGRESS_CURVES

REQUEST = {"prompt": "polling benchmark", "size": "1:1", "quality": "low", "n": 1}


POLICIES: dict[str, Any] = {
    "ours": PollSchedule(),
    "fixed-3s": PollSchedule(min_interval=3.0, max_interval=3.0),
}
FACTORS = (0.5, 1.0, 1.5)
"""`estimated_time` = true time × factor: EvoLink's estimate half, exactly, 1.5× the truth."""
CURVES = ("linear", "ease-out", "ease-in")
"""Progress curves of `evolink/simulator/tasks.py` (also "stall", via --curves)."""


@dataclass
class JobResult:
    policy: str
    factor: float
    curve: str
    nominal: float
    gets_client: int
    lag: float
    job_seconds: float


Group = tuple[str, float, str, float]  # policy, estimate factor, progress curve, nominal time


async def run_group(group: Group, jobs: int, spread: float) -> tuple[list[JobResult], int]:
    """`jobs` jobs of about `nominal` seconds under one policy, on a simulator of their own."""
    policy, factor, curve, nominal = group
    schedule = POLICIES[policy]
    offsets = [(-spread / 2 + spread * (i + 0.5) / jobs) for i in range(jobs)]
    sim = EvoLinkSimulator(
        generation_seconds=nominal,
        seed=int(nominal),
        estimate_factor=factor,
        progress_curve=curve,
    ).start()
    try:
        async with EvoLinkClient(sim.api_key, base_url=sim.base_url) as client:
            gets: dict[str, int] = {}
            original_get = client.get_task

            async def counted_get(task_id: str) -> Any:
                gets[task_id] = gets.get(task_id, 0) + 1
                return await original_get(task_id)

            client.get_task = counted_get  # type: ignore[method-assign]
            created = []
            for offset in offsets:  # sequential creates: each task takes the time set before it
                sim.generation_seconds = nominal + offset
                created.append(await client.create_task(REQUEST))

            async def wait(result: Any) -> float:
                first = result.task if policy == "ours" else None
                await client.wait_for_task(result.task.id, schedule=schedule, first=first)
                return time.time()

            detected = await asyncio.gather(*(wait(result) for result in created))
        ledger = {entry.task_id: entry for entry in sim.ledger()}
        server_gets = sim.request_counts["get"]
    finally:
        sim.stop()
    results = []
    for result, seen in zip(created, detected, strict=True):
        entry = ledger[result.task.id]
        assert entry.finished_at is not None and entry.status == "completed"
        results.append(
            JobResult(
                policy=policy,
                factor=factor,
                curve=curve,
                nominal=nominal,
                gets_client=gets.get(result.task.id, 0),
                lag=seen - entry.finished_at,
                job_seconds=entry.finished_at - entry.created_at,
            )
        )
    return results, server_gets


async def run_all(args: argparse.Namespace) -> list[tuple[Group, list[JobResult], int]]:
    groups: list[Group] = [
        (policy, factor, curve, float(t))
        for t in args.durations
        for factor in args.factors
        for curve in args.curves
        for policy in args.policies
    ]
    outcomes = await asyncio.gather(*(run_group(group, args.jobs, args.spread) for group in groups))
    return [
        (group, results, server_gets)
        for group, (results, server_gets) in zip(groups, outcomes, strict=True)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--durations", type=float, nargs="+", default=[20.0, 60.0, 100.0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs per (policy, duration)")
    parser.add_argument("--spread", type=float, default=3.0, help="seconds the job times span")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument(
        "--factors", type=float, nargs="+", default=list(FACTORS), help="estimate = truth x this"
    )
    parser.add_argument(
        "--curves", nargs="+", default=list(CURVES), choices=sorted(PROGRESS_CURVES)
    )
    args = parser.parse_args()
    if max(args.durations) > 600 or not 1 <= args.jobs <= 50:
        parser.error("durations up to 600 s, 1..50 jobs")

    print(machine_line())
    print(
        f"{args.jobs} jobs per (policy, nominal time), generation times spread over "
        f"{args.spread} s around each nominal time; all {len(args.policies)} policies x "
        f"{len(args.durations)} durations x {len(args.factors)} estimate factors x "
        f"{len(args.curves)} progress curves run concurrently in real time"
    )
    started = time.perf_counter()
    groups = asyncio.run(run_all(args))
    wall = time.perf_counter() - started
    print(f"ran in {wall:.1f} s; load average {load_average()}\n")

    rows = []
    fixed = {g[1:]: gets / len(res) for g, res, gets in groups if g[0] == "fixed-3s"}
    for (policy, factor, curve, nominal), results, server_gets in sorted(
        groups, key=lambda g: (g[0][3], g[0][1], g[0][2], g[0][0])
    ):
        per_job = server_gets / len(results)
        lags = [r.lag for r in results]
        lag_pct = [100 * r.lag / r.job_seconds for r in results]
        client_gets = sorted(r.gets_client for r in results)
        assert sum(client_gets) == server_gets, (policy, nominal, client_gets, server_gets)
        baseline = fixed.get((factor, curve, nominal))
        ratio = per_job / baseline if baseline else float("nan")
        rows.append(
            [
                f"{nominal:.0f}",
                f"{factor:g}",
                curve,
                policy,
                f"{per_job:.1f}",
                f"{min(client_gets)}-{max(client_gets)}",
                f"{ratio:.2f}",
                f"{median(lags):.2f}",
                f"{max(lags):.2f}",
                f"{median(lag_pct):.1f} / {max(lag_pct):.1f}",
                "(baseline)"
                if policy == "fixed-3s"
                else ("yes" if ratio <= 0.5 and max(lag_pct) <= 10 else "no"),
            ]
        )
    print_table(
        [
            "job s",
            "estimate x",
            "progress",
            "policy",
            "GETs/job",
            "GETs range",
            "GETs vs fixed-3s",
            "median lag s",
            "max lag s",
            "lag % of job (median / max)",
            "both goals",
        ],
        rows,
    )
    print(
        "\ngoals: GETs/job <= 0.5 x fixed-3s, and lag <= 10 % of the job time "
        "('both goals' is judged on the max lag)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
