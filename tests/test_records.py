"""The record store (`evolink.records`): the spend cap's running total against the full report.

The running total is what the cap checks instead of reading every record of the period; these
tests hold it equal to `gather_spend` (which does read everything) after bookings of every kind
— real and simulator, campaign and ad hoc, a charged failure and an uncharged one, a campaign's
running and finished manifests — folded a few at a time; rebuilt from records an older version
wrote; and unchanged when a fold is replayed after a crash. Storage is real (local disk); no
Prefect API is needed (the lock is the caller's, tested in test_spend.py).
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from evolink.campaign import campaign_namespace
from evolink.jobs import SubmitRecord
from evolink.layout import pending_prefix, running_totals_key, submit_record_key
from evolink.periods import PeriodWindow, period_window
from evolink.records import CapSpend, RecordStore
from evolink.spend import BillNote
from evolink.timezones import zone
from prefect_evolink.blocks import LocalAssetStorage
from prefect_evolink.tasks.spend import gather_spend
from tests.test_spend import manifest, result, row, submit

SIMULATOR_URL = "http://127.0.0.1:8787"


@pytest.fixture
def storage(tmp_path: Path) -> LocalAssetStorage:
    return LocalAssetStorage(base_dir=str(tmp_path / "assets"))


@pytest.fixture
def window() -> PeriodWindow:
    return period_window(datetime.now(UTC), "month", zone("UTC"))


def at(window: PeriodWindow, minutes: int) -> datetime:
    """An instant inside the window (its first day; the window is the current month)."""
    return window.start + timedelta(minutes=minutes)


def sim(record: SubmitRecord) -> SubmitRecord:
    return record.model_copy(update={"endpoint": SIMULATOR_URL, "simulator": True})


def bill(record: SubmitRecord, status: str, billed: str | None) -> BillNote:
    return BillNote(
        job_key=record.job_key,
        task_id=record.task_id,
        status=status,
        billed_usd=billed,
        billed_credits=None,
    )


def check(storage: LocalAssetStorage, window: PeriodWindow) -> CapSpend:
    return asyncio.run(RecordStore(storage).spend_for_cap(window))


def full_report(storage: LocalAssetStorage, window: PeriodWindow) -> Any:
    return asyncio.run(gather_spend(storage, since=window.start, until=window.end))


def assert_same_as_the_report(spend: CapSpend, storage: LocalAssetStorage, w: PeriodWindow) -> None:
    report = full_report(storage, w)
    assert spend.spent_usd == Decimal(report.totals.total_usd)
    assert spend.simulator_usd == Decimal(report.simulator_totals.total_usd)
    assert spend.simulator_jobs == report.simulator_totals.jobs


def pending(storage: LocalAssetStorage) -> list[str]:
    return storage.list_keys(pending_prefix(), _sync=True)


def test_the_running_total_equals_the_full_report_after_a_mix_of_bookings(
    storage: LocalAssetStorage, window: PeriodWindow
) -> None:
    store = RecordStore(storage)

    async def book_ad_hoc() -> None:
        real = submit("k-real", "adhoc/hero", "t-real", "0.01", at(window, 1))
        await store.put_submit(real, {"flow_run_id": "run-1", "flow": "f", "deployment": None})
        await store.put_result(result(real, "0.012"))
        simulated = sim(submit("k-sim", "product/sku", "t-sim", "0.03", at(window, 2)))
        await store.put_submit(simulated, None)
        made_there = {"endpoint": SIMULATOR_URL, "simulator": True}
        await store.put_result(result(simulated, "0.03").model_copy(update=made_there))
        await store.put_submit(
            submit("k-open", "product/sku", "t-open", "0.02", at(window, 3)), None
        )
        charged = submit("k-charged", "adhoc/fail", "t-charged", "0.04", at(window, 4))
        await store.put_submit(charged, None)
        await store.put_bill(bill(charged, "failed", "0.035"))
        free = submit("k-free", "adhoc/fail2", "t-free", "0.05", at(window, 5))
        await store.put_submit(free, None)
        await store.put_bill(bill(free, "failed", None))
        before = submit("k-old", "adhoc/old", "t-old", "0.5", window.start - timedelta(days=3))
        await store.put_submit(before, None)  # last period: never in this one
        await store.put_result(result(before, "0.5"))

    asyncio.run(book_ad_hoc())
    first = check(storage, window)
    assert first.rebuilt and first.folded > 0 and pending(storage) == []
    assert first.spent_usd == Decimal("0.012") + Decimal("0.02") + Decimal("0.035")
    assert first.simulator_usd == Decimal("0.03") and first.simulator_jobs == 1
    assert first.by_run == {"run-1": Decimal("0.012")}
    assert_same_as_the_report(first, storage, window)

    failed = submit(
        "k-c4", campaign_namespace("spring", "mug", "final"), "t-c4", "0.05", at(window, 13)
    )

    refused = submit(
        "k-c5", campaign_namespace("spring", "cup", "final"), "t-c5", "0.03", at(window, 14)
    )

    async def book_campaign(state: str) -> None:
        space = "spring"
        kept = submit(
            "k-c1", campaign_namespace(space, "mug", "draft"), "t-c1", "0.1", at(window, 10)
        )
        late = submit(
            "k-c3", campaign_namespace(space, "cup", "draft"), "t-c3", "0.06", at(window, 11)
        )
        dropped = submit(
            "k-c2", campaign_namespace(space, "cup", "final"), "t-c2", "0.2", at(window, 12)
        )
        for record in (kept, late, dropped, failed, refused):
            await store.put_submit(record, None)
        await store.put_result(result(kept, "0.1"))
        await store.put_result(result(late, "0.07"))
        rows = [
            row("mug", "draft", "t-c1", "0.1", "0.1"),
            row("cup", "draft", "t-c3", "0.06", None),
            row("mug", "final", "t-c4", "0.05", None),  # bill unknown: at its estimate
            row("cup", "final", "t-c5", "0.03", None),
        ]
        written = manifest(space, rows, at(window, 9)).model_copy(
            update={"run_state": state, "finished_at": at(window, 30)}
        )
        await store.put_manifest(written)

    asyncio.run(book_campaign("running"))
    running = check(storage, window)
    assert not running.rebuilt
    # running: the submit-only final (t-c2) still counts at its estimate
    campaign = Decimal("0.1") + Decimal("0.07") + Decimal("0.05") + Decimal("0.03")
    assert running.spent_usd == first.spent_usd + campaign + Decimal("0.2")
    assert_same_as_the_report(running, storage, window)

    asyncio.run(book_campaign("completed"))
    finished = check(storage, window)
    # finished without a row for it: the run booked all it paid, so t-c2 was not charged
    assert finished.spent_usd == first.spent_usd + campaign
    assert_same_as_the_report(finished, storage, window)
    # the campaign's final failed after EvoLink charged it: its bill note is booked later
    asyncio.run(store.put_bill(bill(failed, "failed", "0.045")))
    # and one the run booked at its estimate has a note saying not charged: the row still wins
    asyncio.run(store.put_bill(bill(refused, "failed", None)))
    charged = check(storage, window)
    assert charged.spent_usd == finished.spent_usd - Decimal("0.05") + Decimal("0.045")
    assert_same_as_the_report(charged, storage, window)
    assert check(storage, window).folded == 0  # nothing new: nothing folded, same total


def test_a_fold_replayed_after_a_crash_counts_nothing_twice(
    storage: LocalAssetStorage, window: PeriodWindow, tmp_path: Path
) -> None:
    store = RecordStore(storage)
    check(storage, window)  # the checkpoint exists from here on
    job = submit("k-1", "adhoc/x", "t-1", "0.01", at(window, 1))

    async def book() -> None:
        await store.put_submit(job, None)
        await store.put_result(result(job, "0.011"))

    asyncio.run(book())
    running = Path(storage.base_dir) / "_reports" / "spend" / "running"
    saved = tmp_path / "saved"
    shutil.copytree(running, saved)  # the bookings pending, the facts as before them
    once = check(storage, window)
    assert once.folded == 2 and once.spent_usd == Decimal("0.011")

    def died_after(*kept: str) -> None:
        """A fold that wrote `kept` (relative to running/) and died: the rest as before it."""
        for part in ("pending", "facts", "campaigns.json"):
            if part in kept:
                continue
            target = running / part
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if (saved / part).is_dir():
                shutil.copytree(saved / part, target)
            elif (saved / part).exists():
                shutil.copy(saved / part, target)

    died_after("facts", "campaigns.json")  # everything written, the bookings not yet deleted
    again = check(storage, window)
    assert again.folded == 2 and again.spent_usd == once.spent_usd
    died_after()  # only the totals were written (the commit point), not the facts
    third = check(storage, window)
    assert third.folded == 2 and third.spent_usd == once.spent_usd
    assert_same_as_the_report(third, storage, window)


def test_rebuilt_once_from_records_an_older_version_wrote_then_incremental(
    storage: LocalAssetStorage, window: PeriodWindow
) -> None:
    """Records written straight to storage (as before running totals: no bookings) are found
    by one rebuild; later bookings are folded without reading the records again."""
    old = submit("k-old", "adhoc/old", "t-old", "0.2", at(window, 1))
    storage.put_json(submit_record_key(old.job_key), old, _sync=True)
    storage.put_json(f"_jobs/{old.job_key}/result.json", result(old, "0.25"), _sync=True)
    never_billed = submit("k-open", "product/sku", "t-open", "0.03", at(window, 2))
    storage.put_json(submit_record_key(never_billed.job_key), never_billed, _sync=True)
    assert pending(storage) == []

    rebuilt = check(storage, window)
    assert rebuilt.rebuilt and rebuilt.folded == 0
    assert rebuilt.spent_usd == Decimal("0.25") + Decimal("0.03")
    assert_same_as_the_report(rebuilt, storage, window)

    new = submit("k-new", "adhoc/new", "t-new", "0.04", at(window, 3))

    async def book() -> None:
        await RecordStore(storage).put_submit(new, None)
        await RecordStore(storage).put_result(result(new, "0.05"))

    asyncio.run(book())
    # the records of the rebuild are never read again: hide one, and the total still has it
    storage.put_json(f"_jobs/{old.job_key}/result.json", {"unreadable": True}, _sync=True)
    later = check(storage, window)
    assert not later.rebuilt and later.folded == 2
    assert later.spent_usd == rebuilt.spent_usd + Decimal("0.05")

    # a checkpoint of another format, or none, is rebuilt again from the records
    storage.put_json(running_totals_key(), {"version": 0}, _sync=True)
    storage.put_json(f"_jobs/{old.job_key}/result.json", result(old, "0.25"), _sync=True)
    again = check(storage, window)
    assert again.rebuilt and again.spent_usd == later.spent_usd
    assert_same_as_the_report(again, storage, window)


def test_a_checkpoint_that_does_not_reach_back_to_the_period_is_rebuilt(
    storage: LocalAssetStorage,
) -> None:
    """A period longer ago than the checkpoint reaches (e.g. a cap checked for a past day) is
    read from the records, not taken as empty."""
    today = period_window(datetime.now(UTC), "day", zone("UTC"))
    long_ago = period_window(datetime.now(UTC) - timedelta(days=90), "day", zone("UTC"))
    check(storage, today)
    job = submit("k-past", "adhoc/past", "t-past", "0.3", long_ago.start + timedelta(hours=1))
    storage.put_json(submit_record_key(job.job_key), job, _sync=True)
    past = check(storage, long_ago)
    assert past.rebuilt and past.spent_usd == Decimal("0.3")
