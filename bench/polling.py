"""Benchmark 2 (issue #5): polls per job and completion-detection lag, ours vs. a fixed 3 s poll.

    python3 dev.py run python bench/polling.py                  # ~2 min, real time
    python3 dev.py run python bench/polling.py --durations 20 --jobs 3   # quick

Real time, no clock tricks: every job of every policy runs at once, so the whole benchmark takes
about as long as the longest job (100 s + 1.2 s + lag). For each nominal job time T (20, 60,
100 s) a policy gets `--jobs` jobs whose generation times are spread evenly over one 3 s period
around T (T-1.2, T-0.6, T, T+0.6, T+1.2 with 5 jobs), so a fixed 3 s poll meets completions at
every phase of its grid instead of one lucky or unlucky phase.

Each (policy, T) group has its own in-process `EvoLinkSimulator`, so its `request_counts["get"]`
divided by the number of jobs is exactly the GETs per job (the create is not counted). The
client is the project's `EvoLinkClient.wait_for_task`:

- ``ours``: `PollSchedule()` defaults, called as `tasks/poll.py` calls it right after submit:
  the create response is the first reading (no GET at t = 0); the next query goes at half the
  predicted remaining time, or just past the predicted end once the progress rate and the
  `estimated_time` agree (see `evolink/polling.py`);
- ``fixed-3s``: `PollSchedule(min_interval=3, max_interval=3)` — a query every 3 s, as
  EvoLink's own tools poll images (no create reading: it asks at t = 0 too);
- ``previous``: the pacing shipped before the aim existed, for comparison — halving only
  (`agreement=-1` never agrees) and a GET at t = 0.

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

REQUEST = {"prompt": "polling benchmark", "size": "1:1", "quality": "low", "n": 1}


POLICIES: dict[str, Any] = {
    "ours": PollSchedule(),
    "fixed-3s": PollSchedule(min_interval=3.0, max_interval=3.0),
    "previous": PollSchedule(agreement=-1.0),
}


@dataclass
class JobResult:
    policy: str
    nominal: float
    gets_client: int
    lag: float
    job_seconds: float


async def run_group(
    policy: str, nominal: float, jobs: int, spread: float
) -> tuple[list[JobResult], int]:
    """`jobs` jobs of about `nominal` seconds under one policy, on a simulator of their own."""
    schedule = POLICIES[policy]
    offsets = [(-spread / 2 + spread * (i + 0.5) / jobs) for i in range(jobs)]
    sim = EvoLinkSimulator(generation_seconds=nominal, seed=int(nominal)).start()
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
                nominal=nominal,
                gets_client=gets.get(result.task.id, 0),
                lag=seen - entry.finished_at,
                job_seconds=entry.finished_at - entry.created_at,
            )
        )
    return results, server_gets


async def run_all(args: argparse.Namespace) -> list[tuple[str, float, list[JobResult], int]]:
    groups = [(policy, float(t)) for t in args.durations for policy in args.policies]
    outcomes = await asyncio.gather(
        *(run_group(policy, t, args.jobs, args.spread) for policy, t in groups)
    )
    return [
        (policy, t, results, server_gets)
        for (policy, t), (results, server_gets) in zip(groups, outcomes, strict=True)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--durations", type=float, nargs="+", default=[20.0, 60.0, 100.0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs per (policy, duration)")
    parser.add_argument("--spread", type=float, default=3.0, help="seconds the job times span")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    args = parser.parse_args()
    if max(args.durations) > 600 or not 1 <= args.jobs <= 50:
        parser.error("durations up to 600 s, 1..50 jobs")

    print(machine_line())
    print(
        f"{args.jobs} jobs per (policy, nominal time), generation times spread over "
        f"{args.spread} s around each nominal time; all {len(args.policies)} policies x "
        f"{len(args.durations)} durations run concurrently in real time"
    )
    started = time.perf_counter()
    groups = asyncio.run(run_all(args))
    wall = time.perf_counter() - started
    print(f"ran in {wall:.1f} s; load average {load_average()}\n")

    rows = []
    fixed = {t: gets / len(res) for p, t, res, gets in groups if p == "fixed-3s"}
    for policy, nominal, results, server_gets in sorted(groups, key=lambda g: (g[1], g[0])):
        per_job = server_gets / len(results)
        lags = [r.lag for r in results]
        lag_pct = [100 * r.lag / r.job_seconds for r in results]
        client_gets = sorted(r.gets_client for r in results)
        assert sum(client_gets) == server_gets, (policy, nominal, client_gets, server_gets)
        ratio = per_job / fixed[nominal] if nominal in fixed else float("nan")
        rows.append(
            [
                f"{nominal:.0f}",
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
