"""Benchmark 9 (issue #19): the spend cap's reservation with 10,000 job records in the period.

    python3 dev.py run python bench/spend_cap.py                 # 10,000 records (~2 min)
    python3 dev.py run python bench/spend_cap.py --records 1000  # quick

A local storage gets `--records` jobs submitted this month (a submit and a result record each,
written straight to disk as a version without running totals left them: no bookings). Then:

- ``rebuild``: the first capped check finds no running total and rebuilds it from the records
  (once per storage; `evolink.records`).
- ``check, 1 new job``: `--rounds` times, one more job is booked through the record store (as a
  run books it) and a capped run reserves: the fold of that booking, the sum of the period, the
  live reservations, the reservation written — everything `reserve_spend` does under its lock.
- ``check, nothing new``: the same without a booking in between.
- ``reserve_spend (with the lock)``: `--lock-rounds` full `reserve_spend` calls, the lock
  included: on this local storage an OS file lock (`fcntl.flock` on
  `_reports/spend/running/lock`, `tasks.spend_cap.spend_cap_lock`). Then the file lock alone
  (take, release), and the lock a storage that is not local takes (S3): the Prefect global
  concurrency limit `evolink-spend-cap`, alone, on a temporary Prefect API (SQLite,
  `prefect_test_harness`).
- ``before: gather_spend``: what each check cost before running totals (the full report's
  reading of every record), `--old-rounds` times.

Reported: the median and the slowest of each, in milliseconds, and whether the running total
equals the full report's total at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from common import load_average, machine_line, prefect_api, print_table

from evolink.jobs import JobRecord, SentRequest, SubmitRecord
from evolink.layout import job_record_key, submit_record_key
from evolink.periods import PeriodWindow, period_window
from evolink.records import RecordStore
from evolink.timezones import zone


def job(index: int, when: datetime, tag: str) -> tuple[SubmitRecord, JobRecord]:
    key = f"{tag}{index:08d}".ljust(32, "0")
    submit = SubmitRecord(
        job_key=key,
        namespace=f"product/sku-{tag}-{index}",
        idempotency_key=f"evl-{key}",
        task_id=f"task-bench-{tag}-{index}",
        request=SentRequest(model="gpt-image-2", prompt="p", size="1:1", quality="low", n=1),
        estimate={"usd": "0.005342"},
        submitted_at=when,
        endpoint="https://api.evolink.ai",
    )
    result = JobRecord(
        job_key=key,
        namespace=submit.namespace,
        task_id=submit.task_id,
        request=submit.request,
        estimated_usd="0.005342",
        estimated_credits="0.36",
        billed_usd="0.005342",
        billed_credits="0.36",
        billed_source="bench",
        images=[],
        submitted_at=when,
        completed_at=when,
        endpoint=submit.endpoint,
    )
    return submit, result


def write_old_records(base: Path, count: int, window: PeriodWindow) -> None:
    """`count` jobs as plain files (no bookings), the fastest way to fill a storage."""
    for index in range(count):
        submit, result = job(index, window.start + timedelta(seconds=index), "old")
        for key, record in ((submit_record_key(submit.job_key), submit),
                            (job_record_key(result.job_key), result)):  # fmt: skip
            path = base / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record.model_dump(mode="json"), sort_keys=True))


def ms(values: list[float]) -> tuple[str, str]:
    return f"{statistics.median(values) * 1000:.1f}", f"{max(values) * 1000:.1f}"


async def check(store: RecordStore, window: PeriodWindow, run: int) -> float:
    """Everything `reserve_spend` does under its lock, timed (see `tasks.spend_cap`)."""
    from evolink.spend_cap import Reservation, held_against

    started = time.perf_counter()
    spend = await store.spend_for_cap(window)
    now = datetime.now(UTC)
    problems: list[str] = []
    live = await store.live_reservations(window.label, problems, now=now)
    held_against(live, spend.by_run, now=now)
    reservation = Reservation(
        reservation_id=f"bench-{run}",
        flow_run_id=None,
        label="bench",
        period=window.label,
        estimated_usd="0.005342",
        reserved_at=now,
        expires_at=now + timedelta(hours=1),
    )
    await store.put_reservation(reservation, live=True)
    elapsed = time.perf_counter() - started
    await store.put_reservation(reservation.model_copy(update={"released_at": now}))
    return elapsed


async def measure(args: argparse.Namespace, base: Path) -> tuple[list[list[Any]], bool]:
    from prefect_evolink.blocks import LocalAssetStorage
    from prefect_evolink.tasks.spend import gather_spend

    window = period_window(datetime.now(UTC), "month", zone("UTC"))
    write_old_records(base, args.records, window)
    storage = LocalAssetStorage(base_dir=str(base))
    store = RecordStore(storage)
    rows: list[list[Any]] = []

    started = time.perf_counter()
    first = await store.spend_for_cap(window)
    rows.append(["rebuild (first check)", 1, f"{(time.perf_counter() - started) * 1000:.1f}", ""])
    assert first.rebuilt

    booked: list[float] = []
    for run in range(args.rounds):
        submit, result = job(run, datetime.now(UTC), "new")
        await store.put_submit(submit, None)
        await store.put_result(result)
        booked.append(await check(store, window, run))
    rows.append(["check, 1 new job booked since the last", args.rounds, *ms(booked)])

    quiet = [await check(store, window, args.rounds + run) for run in range(args.rounds)]
    rows.append(["check, nothing new", args.rounds, *ms(quiet)])

    old: list[float] = []
    for _ in range(args.old_rounds):
        started = time.perf_counter()
        report = await gather_spend(storage, since=window.start, until=window.end)
        old.append(time.perf_counter() - started)
    rows.append(["before: gather_spend over the period", args.old_rounds, *ms(old)])
    total = (await store.spend_for_cap(window)).spent_usd
    return rows, total == Decimal(report.totals.total_usd)


def measure_locked(args: argparse.Namespace, base: Path) -> list[list[Any]]:
    """`--lock-rounds` full `reserve_spend` calls (the file lock of a local storage included),
    each after one booking, on the storage `measure` filled; then each lock alone."""
    from prefect_evolink.blocks import EvoLinkSpendCap, LocalAssetStorage
    from prefect_evolink.tasks.spend_cap import file_locked, reserve_spend, spend_cap_lock

    storage = LocalAssetStorage(base_dir=str(base))
    assert file_locked(storage)
    store = RecordStore(storage)
    cap = EvoLinkSpendCap(limit_usd=Decimal(1_000_000))

    async def lock_only(of: LocalAssetStorage | None) -> list[float]:
        times: list[float] = []
        for _ in range(args.lock_rounds):
            started = time.perf_counter()
            async with spend_cap_lock(of):
                pass
            times.append(time.perf_counter() - started)
        return times

    async def rounds() -> list[float]:
        await (await reserve_spend(cap, storage, Decimal("0.005342"), "warm-up")).release()
        times: list[float] = []
        for run in range(args.lock_rounds):
            submit, result = job(run, datetime.now(UTC), "lock")
            await store.put_submit(submit, None)
            await store.put_result(result)
            started = time.perf_counter()
            reservation = await reserve_spend(cap, storage, Decimal("0.005342"), "bench")
            times.append(time.perf_counter() - started)
            await reservation.release()
        return times

    with prefect_api():
        times = asyncio.run(rounds())
        file_lock = asyncio.run(lock_only(storage))
        prefect_lock = asyncio.run(lock_only(None))
    return [
        ["reserve_spend, 1 new job (local: the file lock)", args.lock_rounds, *ms(times)],
        ["  of which: the file lock alone (take, release)", args.lock_rounds, *ms(file_lock)],
        [
            "the Prefect lock alone (S3 storage's; take, release)",
            args.lock_rounds,
            *ms(prefect_lock),
        ],
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--old-rounds", type=int, default=3)
    parser.add_argument("--lock-rounds", type=int, default=30)
    args = parser.parse_args()
    print(machine_line())
    print(f"load average before: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="evolink-bench-cap-") as tmp:
        base = Path(tmp) / "assets"
        rows, same = asyncio.run(measure(args, base))
        if args.lock_rounds:
            rows.extend(measure_locked(args, base))
    print_table(["what", "rounds", "median ms", "slowest ms"], rows)
    print(f"{args.records} job records in the period; running total = full report: {same}")
    print(f"load average after: {load_average()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
