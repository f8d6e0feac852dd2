"""The async client against the real simulator on 127.0.0.1: happy path, faults, secrets."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from evolink.client import USER_AGENT, EvoLinkClient, request_id_of
from evolink.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    EvoLinkError,
    InvalidImageError,
    InvalidRequestError,
    PollDeadlineExceeded,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    TaskFailedError,
)
from evolink.polling import PollSchedule
from evolink.retry import RetryPolicy
from evolink.simulator import EvoLinkSimulator, Fault
from evolink.states import TaskStatus
from tests.conftest import TEST_API_KEY

T = TypeVar("T")
FAST_POLL = PollSchedule(min_interval=0.05, max_interval=0.2, deadline_seconds=10)
REQUEST = {"prompt": "a lighthouse at dawn", "size": "16:9", "resolution": "1K", "quality": "low"}
KEY = "evl-test-idempotency-key-0001"


class RecordingSleep:
    """Records every requested delay; really sleeps only a little so tests stay fast."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(min(seconds, 0.05))


def client_for(
    sim: EvoLinkSimulator, sleep: Callable[[float], Awaitable[None]] | None = None, **kwargs: Any
) -> EvoLinkClient:
    return EvoLinkClient(
        sim.api_key,
        base_url=sim.base_url,
        retry=kwargs.pop("retry", RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)),
        sleep=sleep or RecordingSleep(),
        seed=1,
        **kwargs,
    )


def run(sim: EvoLinkSimulator, body: Callable[[EvoLinkClient], Awaitable[T]], **kwargs: Any) -> T:
    async def main() -> T:
        async with client_for(sim, **kwargs) as client:
            return await body(client)

    return asyncio.run(main())


def test_create_wait_download_matches_what_the_simulator_served(
    simulator: EvoLinkSimulator,
) -> None:
    sink = io.BytesIO()

    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        assert created.task.status is TaskStatus.PENDING and not created.replayed
        done = await client.wait_for_task(created.task.id, schedule=FAST_POLL, first=created.task)
        return done, await client.download_to(done.results[0], sink, task_id=done.id)

    done, download = run(simulator, job)
    served = httpx.get(done.results[0]).content
    assert sink.getvalue() == served
    assert download.sha256 == hashlib.sha256(served).hexdigest()
    assert (download.image.content_type, download.image.width, download.image.height) == (
        "image/png",
        1360,
        768,
    )
    assert done.billed.known and done.billed.usd is not None and done.billed.usd > 0
    assert len(simulator.billed_tasks()) == 1


def test_invalid_request_fails_before_any_http(simulator: EvoLinkSimulator) -> None:
    with pytest.raises(InvalidRequestError, match="size"):
        run(simulator, lambda c: c.create_task({"prompt": "x", "size": "1000x1000"}))
    assert simulator.request_counts.get("create", 0) == 0


def test_429_with_retry_after_is_honoured(simulator: EvoLinkSimulator) -> None:
    simulator.add_fault(Fault(kind="rate_limit", route="create", retry_after=3, times=2))
    sleep = RecordingSleep()
    created = run(simulator, lambda c: c.create_task(REQUEST, idempotency_key=KEY), sleep=sleep)
    assert created.attempts == 3
    assert sleep.delays == [3.0, 3.0]
    assert len(simulator.ledger()) == 1


def test_429_without_retry_after_uses_the_fallback_suggestion(simulator: EvoLinkSimulator) -> None:
    simulator.add_fault(Fault(kind="rate_limit", route="get", retry_after=None, fallback_seconds=7))
    sleep = RecordingSleep()

    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        return await client.get_task(created.task.id)

    run(simulator, job, sleep=sleep)
    assert sleep.delays == [7.0]


def test_rate_limit_gives_up_after_max_attempts_with_a_typed_error(
    simulator: EvoLinkSimulator,
) -> None:
    simulator.add_fault(Fault(kind="rate_limit", route="create", retry_after=1, times=None))
    with pytest.raises(RateLimitError) as info:
        run(simulator, lambda c: c.create_task(REQUEST, idempotency_key=KEY))
    assert info.value.retry_after == 1.0 and info.value.status_code == 429
    assert simulator.ledger() == []


def test_5xx_burst_on_poll_is_ridden_out(simulator: EvoLinkSimulator) -> None:
    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        for status in (500, 502, 503):
            simulator.add_fault(Fault(kind="server_error", route="get", status=status))
        return await client.wait_for_task(created.task.id, schedule=FAST_POLL)

    assert run(simulator, job).status is TaskStatus.COMPLETED
    assert simulator.fault_counts.get("server_error") == 3


def test_create_without_idempotency_key_is_never_repeated(simulator: EvoLinkSimulator) -> None:
    simulator.add_fault(Fault(kind="server_error", route="create", status=503))
    with pytest.raises(ServerError):
        run(simulator, lambda c: c.create_task(REQUEST))
    assert simulator.request_counts["create"] == 1


def test_dropped_connection_is_retried(simulator: EvoLinkSimulator) -> None:
    simulator.add_fault(Fault(kind="drop_connection", route="create", times=2))
    created = run(simulator, lambda c: c.create_task(REQUEST, idempotency_key=KEY))
    assert created.attempts == 3 and len(simulator.ledger()) == 1


def test_lost_create_response_is_replayed_not_paid_twice(simulator: EvoLinkSimulator) -> None:
    simulator.add_fault(Fault(kind="lose_create_response"))

    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        await client.wait_for_task(created.task.id, schedule=FAST_POLL)
        return created

    created = run(simulator, job)
    assert created.replayed and created.attempts == 2
    assert [e.task_id for e in simulator.billed_tasks()] == [created.task.id]


def test_lost_create_response_without_key_raises_and_does_not_guess(
    simulator: EvoLinkSimulator,
) -> None:
    simulator.add_fault(Fault(kind="lose_create_response"))
    with pytest.raises(APIConnectionError):
        run(simulator, lambda c: c.create_task(REQUEST))
    assert simulator.request_counts["create"] == 1


def test_idempotency_key_reused_for_another_body_is_a_bad_request(
    simulator: EvoLinkSimulator,
) -> None:
    async def job(client: EvoLinkClient) -> Any:
        await client.create_task(REQUEST, idempotency_key=KEY)
        await client.create_task({**REQUEST, "prompt": "something else"}, idempotency_key=KEY)

    with pytest.raises(BadRequestError, match="idempotency_conflict"):
        run(simulator, job)


@pytest.mark.parametrize(
    ("code", "may_help"),
    [
        ("content_policy_violation", False),
        ("invalid_parameters", False),
        ("generation_timeout", True),
        ("service_error", True),
        ("something_new", True),
    ],
)
def test_failed_task_is_typed_with_its_resubmit_verdict(
    simulator: EvoLinkSimulator, code: str, may_help: bool
) -> None:
    simulator.add_fault(Fault(kind="fail_task", error_code=code))

    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        return await client.wait_for_task(created.task.id, schedule=FAST_POLL)

    with pytest.raises(TaskFailedError) as info:
        run(simulator, job)
    assert info.value.code == code and info.value.resubmit_may_help is may_help
    assert info.value.task_id and info.value.task_id in str(info.value)
    assert simulator.billed_tasks() == []


def test_poll_deadline_is_a_clear_error(simulator: EvoLinkSimulator) -> None:
    simulator.add_fault(Fault(kind="slow_task", seconds=30))
    schedule = PollSchedule(min_interval=0.05, max_interval=0.1, deadline_seconds=0.5)

    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        return await client.wait_for_task(created.task.id, schedule=schedule)

    with pytest.raises(PollDeadlineExceeded) as info:
        run(simulator, job)
    assert info.value.task_id in str(info.value) and "poll the same task id" in str(info.value)
    assert info.value.last_status in ("pending", "processing")


def test_a_resumed_wait_gets_its_full_deadline_however_old_the_task(
    simulator: EvoLinkSimulator,
) -> None:
    simulator.generation_seconds = 0.6
    schedule = PollSchedule(min_interval=0.05, max_interval=0.1, deadline_seconds=5)

    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        # a rerun an hour later: pacing knows the task is old, the deadline starts now
        return await client.wait_for_task(created.task.id, schedule=schedule, elapsed_before=3600)

    assert run(simulator, job, sleep=asyncio.sleep).status is TaskStatus.COMPLETED


def test_an_aimed_poll_finds_the_task_done_in_one_query(simulator: EvoLinkSimulator) -> None:
    """Linear progress on the simulator: after the create response, two readings agree on
    the end, and the next query lands just past it."""
    simulator.generation_seconds = 2.0
    schedule = PollSchedule(min_interval=0.05, max_interval=5, aim_margin=0.1)

    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        assert created.task.estimated_time == 2.0
        return await client.wait_for_task(created.task.id, schedule=schedule, first=created.task)

    assert run(simulator, job, sleep=asyncio.sleep).status is TaskStatus.COMPLETED
    # the earliest end a ±50 % estimate allows, then two readings confirm the rate
    # (evolink/polling.py), then one query lands just past the end
    assert simulator.request_counts["get"] <= 4


def test_expired_link_names_the_task(simulator: EvoLinkSimulator) -> None:
    simulator.add_fault(Fault(kind="expire_links", ttl_seconds=0))

    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        done = await client.wait_for_task(created.task.id, schedule=FAST_POLL)
        await client.download_to(done.results[0], io.BytesIO(), task_id=done.id)
        return done

    with pytest.raises(ResultExpiredError) as info:
        run(simulator, job)
    assert info.value.task_id and info.value.task_id in str(info.value)
    assert "sig=" not in str(info.value)  # the signed query string is a credential too


def test_download_size_cap(simulator: EvoLinkSimulator) -> None:
    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        done = await client.wait_for_task(created.task.id, schedule=FAST_POLL)
        await client.download_to(done.results[0], io.BytesIO(), task_id=done.id)

    with pytest.raises(InvalidImageError, match="cap"):
        run(simulator, job, max_download_bytes=1000)


def test_wrong_key_is_an_authentication_error_without_the_key(simulator: EvoLinkSimulator) -> None:
    wrong = "sk-wrong-SECRET-abcdef0123456789"

    async def job() -> None:
        async with EvoLinkClient(wrong, base_url=simulator.base_url) as client:
            await client.get_task("task-unified-1-abc")

    with pytest.raises(AuthenticationError) as info:
        asyncio.run(job())
    assert wrong not in str(info.value) and wrong not in repr(info.value)


def test_the_key_is_in_no_repr_log_or_error(
    simulator: EvoLinkSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    simulator.add_fault(Fault(kind="server_error", route="any", status=502, times=2))
    simulator.add_fault(Fault(kind="fail_task", error_code="content_policy_violation"))
    errors: list[EvoLinkError] = []

    async def job(client: EvoLinkClient) -> Any:
        assert TEST_API_KEY not in repr(client)
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        try:
            await client.wait_for_task(created.task.id, schedule=FAST_POLL)
        except TaskFailedError as error:
            errors.append(error)
        try:
            await client.get_task("task-unified-0-missing0")
        except EvoLinkError as error:
            errors.append(error)

    run(simulator, job)
    assert len(errors) == 2
    assert caplog.records, "the retries should have been logged"
    everything = "\n".join(r.getMessage() for r in caplog.records) + "".join(
        f"{e}{e!r}{e.__dict__}" for e in errors
    )
    assert TEST_API_KEY not in everything


def test_evolink_s_request_id_is_kept_on_a_create_and_on_a_status_error(
    simulator: EvoLinkSimulator,
) -> None:
    async def job(client: EvoLinkClient) -> Any:
        created = await client.create_task(REQUEST, idempotency_key=KEY)
        with pytest.raises(BadRequestError) as info:
            await client.create_task({**REQUEST, "prompt": "something else"}, idempotency_key=KEY)
        return created, info.value

    created, error = run(simulator, job)
    assert created.request_id is not None and created.request_id.startswith("req_sim_")
    assert isinstance(error, APIError)
    assert error.request_id is not None and error.request_id.startswith("req_sim_")
    assert error.request_id != created.request_id
    assert str(error).endswith(f"(request id {error.request_id})")


def test_a_request_id_header_is_kept_only_when_it_is_plain_text() -> None:
    assert request_id_of(httpx.Headers({"X-Request-Id": " req_123 "})) == "req_123"
    assert request_id_of(httpx.Headers({"x-request-id": "r" * 500})) == "r" * 128
    assert request_id_of(httpx.Headers({"x-request-id": "a\tb"})) is None
    assert request_id_of(httpx.Headers({"x-request-id": ""})) is None
    assert request_id_of(httpx.Headers({})) is None


def test_the_user_agent_names_the_installed_version() -> None:
    installed = importlib.metadata.version("prefect-evolink")
    assert f"prefect-evolink/{installed}" == USER_AGENT

    async def headers() -> tuple[str, str]:
        async with EvoLinkClient("sk-test") as client:
            return client._api.headers["user-agent"], client._files.headers["user-agent"]

    assert asyncio.run(headers()) == (USER_AGENT, USER_AGENT)
