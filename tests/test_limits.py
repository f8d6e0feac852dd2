"""Provider limits (tasks/limits.py) against the session's Prefect API: missing limits with and
without strict, idempotent creation, and a slot that really bounds concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from evolink.errors import ProviderLimitsError
from evolink.simulator import EvoLinkSimulator
from prefect_evolink.tasks import limits
from prefect_evolink.tasks.limits import (
    ACTIVE_JOBS_LIMIT,
    ENV_STRICT,
    LIMIT_NAMES,
    SUBMIT_RATE_LIMIT,
    ensure_limits,
    limit_specs,
    missing_limits,
    provider_capacity,
    strict_from_env,
)


async def _delete_limits() -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for name in LIMIT_NAMES:
            with contextlib.suppress(ObjectNotFound):
                await client.delete_global_concurrency_limit_by_name(name)


@pytest.fixture
def no_limits(prefect_harness: None) -> Iterator[None]:
    """A clean slate before and after: other tests on this API must not be throttled."""
    asyncio.run(_delete_limits())
    limits.forget_limit_lookups()
    try:
        yield
    finally:
        asyncio.run(_delete_limits())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", False), ("false", False), ("0", False), ("true", True), ("1", True), (" YES ", True)],
)
def test_strict_comes_from_the_environment(
    raw: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_STRICT, raw)
    assert strict_from_env() is expected


def test_an_unreadable_strict_setting_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_STRICT, "maybe")
    with pytest.raises(ValueError, match=ENV_STRICT):
        strict_from_env()


def test_a_zero_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="block every job forever"):
        limit_specs(active_jobs=0)
    assert limit_specs(submits_per_minute=120)[1].slot_decay_per_second == 2.0


def test_without_limits_the_body_runs_and_one_warning_says_why(
    no_limits: None, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []

    async def twice() -> None:
        for attempt in range(2):
            async with provider_capacity(strict=False):
                ran.append(attempt)

    with caplog.at_level(logging.WARNING, logger="prefect_evolink.tasks.limits"):
        asyncio.run(twice())
    assert ran == [0, 1]
    warnings = [r.getMessage() for r in caplog.records if r.name == "prefect_evolink.tasks.limits"]
    assert len(warnings) == 1
    assert ACTIVE_JOBS_LIMIT in warnings[0] and "prefect-evolink deploy" in warnings[0]
    # the calls were skipped, not made for Prefect to skip them (it would warn each time)
    assert not [r for r in caplog.records if "skipping acquisition" in r.getMessage()]


class Occupancy:
    """Runs jobs that each hold provider capacity for a moment; records the most at once."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.inside = self.peak = 0

    async def job(self) -> None:
        async with provider_capacity(strict=self.strict, timeout_seconds=30):
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            await asyncio.sleep(0.3)
            self.inside -= 1

    async def peak_of_two(self) -> int:
        self.peak = 0
        await asyncio.gather(self.job(), self.job())
        assert self.inside == 0
        return self.peak


def test_limits_created_by_this_process_apply_to_its_next_job(no_limits: None) -> None:
    jobs = Occupancy(strict=False)

    async def scenario() -> list[int]:
        before = await jobs.peak_of_two()  # no limits yet: both at once
        await ensure_limits(active_jobs=1, submits_per_minute=6000, submit_burst=10)
        return [before, await jobs.peak_of_two()]  # the same process sees the new limit at once

    assert asyncio.run(scenario()) == [2, 1]


def test_strict_and_missing_fails_before_the_body(
    no_limits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_STRICT, "true")
    ran: list[bool] = []

    async def job() -> None:
        async with provider_capacity():
            ran.append(True)

    with pytest.raises(ProviderLimitsError, match="nothing was submitted"):
        asyncio.run(job())
    assert ran == []


def test_ensure_limits_is_idempotent_and_keeps_tuned_values(no_limits: None) -> None:
    from prefect.client.orchestration import get_client

    assert asyncio.run(ensure_limits()) == {
        ACTIVE_JOBS_LIMIT: "created",
        SUBMIT_RATE_LIMIT: "created",
    }
    assert asyncio.run(ensure_limits()) == {
        ACTIVE_JOBS_LIMIT: "unchanged",
        SUBMIT_RATE_LIMIT: "unchanged",
    }
    assert asyncio.run(ensure_limits(active_jobs=3, submits_per_minute=6)) == {
        ACTIVE_JOBS_LIMIT: "updated",
        SUBMIT_RATE_LIMIT: "updated",
    }
    assert asyncio.run(missing_limits()) == []

    async def read() -> tuple[int, int, float]:
        async with get_client() as client:
            active = await client.read_global_concurrency_limit_by_name(ACTIVE_JOBS_LIMIT)
            submits = await client.read_global_concurrency_limit_by_name(SUBMIT_RATE_LIMIT)
            return active.limit, submits.limit, submits.slot_decay_per_second

    assert asyncio.run(read()) == (3, limits.DEFAULT_SUBMIT_BURST, 0.1)


def test_one_slot_means_one_job_at_a_time(no_limits: None) -> None:
    asyncio.run(ensure_limits(active_jobs=1, submits_per_minute=6000, submit_burst=10))
    assert asyncio.run(Occupancy(strict=True).peak_of_two()) == 1


def test_missing_limits_are_info_on_a_temporary_api_and_a_warning_on_a_real_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new user's first local run should not open with an orange WARNING about limits that
    only a production setup needs; a real server or a deployed run keeps the WARNING."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):
        assert limits._missing_limits_level() == logging.INFO
    with temporary_settings({PREFECT_API_URL: "http://prefect.internal:4200/api"}):
        assert limits._missing_limits_level() == logging.WARNING


def test_a_job_already_at_evolink_reattaches_without_waiting_for_a_slot(no_limits: None) -> None:
    """The rerun of a crashed run: its predecessor's lease still holds the only slot (for up to
    LEASE_SECONDS), and the job generates at EvoLink either way, so the rerun polls on at once;
    a new job still waits for the slot.

    The dead run holds the slot until the scenario ends, so a reattach that waited for it would
    never get in: it is inside while the slot is still held (one slot in use, the dead run's),
    and the 20 s deadline ends the wait that would otherwise never end."""
    asyncio.run(ensure_limits(active_jobs=1, submits_per_minute=6000, submit_burst=10))

    async def scenario() -> tuple[int, bool]:
        async with dead_run_holding_the_slot():
            async with asyncio.timeout(20), provider_capacity(strict=True, reattach=True):
                held_meanwhile = await _slots_in_use()
            with pytest.raises(TimeoutError):  # a new job: no slot within 2 s
                async with provider_capacity(strict=True, timeout_seconds=2):
                    pass
        async with provider_capacity(strict=True, reattach=True):  # a free slot is taken
            inside = await _slots_in_use()
        return held_meanwhile, inside == 1

    held_meanwhile, took_free_slot = asyncio.run(scenario())
    assert held_meanwhile == 1  # the dead run's: the reattached job took none, and waited for none
    assert took_free_slot


@contextlib.asynccontextmanager
async def dead_run_holding_the_slot() -> AsyncIterator[None]:
    """A provider slot held for the body, as a crashed run's lease holds it until it expires."""
    held, release = asyncio.Event(), asyncio.Event()

    async def dead_run() -> None:
        async with provider_capacity(strict=True):
            held.set()
            await release.wait()

    holder = asyncio.create_task(dead_run())
    await held.wait()
    try:
        yield
    finally:
        release.set()
        await holder


async def _slots_in_use() -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(ACTIVE_JOBS_LIMIT)
    return int(limit.active_slots)


def test_the_rerun_of_a_job_sent_before_polls_on_while_a_dead_run_holds_the_slot(
    no_limits: None, simulator: EvoLinkSimulator, tmp_path: Path
) -> None:
    """`run_image_job` takes the reattach path when the job's submit record exists: the rerun
    finishes the paid job while the only slot is still held, and nothing is created twice."""
    from prefect import flow

    from evolink.models import parse_request
    from prefect_evolink.blocks import EvoLinkCredentials, LocalAssetStorage
    from prefect_evolink.tasks.job import run_image_job
    from prefect_evolink.tasks.submit import submit_job

    asyncio.run(ensure_limits(active_jobs=1, submits_per_minute=6000, submit_burst=10))
    credentials = EvoLinkCredentials(api_key=simulator.api_key, base_url=simulator.base_url)
    storage = LocalAssetStorage(base_dir=str(tmp_path))
    request = parse_request({"prompt": "a desk lamp", "size": "1:1", "quality": "low", "n": 1})

    @flow(name="evolink-test-rerun-under-a-held-slot")
    async def crashed_then_rerun() -> tuple[int, str]:
        await submit_job("rerun/lamp", request, credentials, storage)  # sent, then the run died
        async with dead_run_holding_the_slot():
            # The slot is held until this block ends: a rerun that waited for it would never
            # finish, and this deadline would end the test instead.
            async with asyncio.timeout(60):
                record = await run_image_job(
                    request,
                    namespace="rerun/lamp",
                    dest_prefix="rerun",
                    credentials=credentials,
                    storage=storage,
                    schedule=credentials.poll_schedule(30),
                )
            return await _slots_in_use(), record.task_id

    held_throughout, task_id = asyncio.run(crashed_then_rerun())
    assert [entry.task_id for entry in simulator.ledger()] == [task_id]
    assert held_throughout == 1  # finished while the dead run still held the only slot


def test_a_storage_that_cannot_say_whether_the_job_was_sent_costs_only_the_wait(
    no_limits: None, simulator: EvoLinkSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look-up that picks the reattach path is not a retried step: when it fails, the job
    takes the new-job path (waits for a slot) instead of failing."""
    from prefect import flow

    from evolink.models import parse_request
    from prefect_evolink.blocks import EvoLinkCredentials, LocalAssetStorage
    from prefect_evolink.tasks.job import run_image_job

    async def unavailable(self: LocalAssetStorage, key: str) -> bool:
        raise OSError("storage unavailable")

    monkeypatch.setattr(LocalAssetStorage, "aexists", unavailable)  # no block subclass: registry
    asyncio.run(ensure_limits(active_jobs=1, submits_per_minute=6000, submit_burst=10))
    credentials = EvoLinkCredentials(api_key=simulator.api_key, base_url=simulator.base_url)
    request = parse_request({"prompt": "a floor lamp", "size": "1:1", "quality": "low", "n": 1})

    @flow(name="evolink-test-unknown-if-sent")
    async def one_job() -> str:
        record = await run_image_job(
            request,
            namespace="unknown/lamp",
            dest_prefix="unknown",
            credentials=credentials,
            storage=LocalAssetStorage(base_dir=str(tmp_path)),
            schedule=credentials.poll_schedule(30),
        )
        return record.task_id

    task_id = asyncio.run(one_job())
    assert [entry.task_id for entry in simulator.ledger()] == [task_id]
