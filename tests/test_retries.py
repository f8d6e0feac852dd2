"""The retry rule itself, on real Prefect states, from sync and async code, and its settings."""

from __future__ import annotations

import asyncio

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError
from prefect import flow
from prefect.client.schemas.objects import TaskRunPolicy
from prefect.context import TaskRunContext
from prefect.states import Failed

from evolink.errors import (
    APIConnectionError,
    AuthenticationError,
    InsufficientCreditsError,
    PollDeadlineExceeded,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    TaskFailedError,
)
from prefect_evolink.tasks.steps import (
    ENV_TASK_RETRY_DELAYS,
    evolink_step,
    is_retryable,
    retry_if_retryable,
    task_retry_delays,
)
from prefect_evolink.tasks.submit import submit_job

RETRYABLE = [
    ServerError("x", status_code=502),
    RateLimitError("x", status_code=429, retry_after=1),
    APIConnectionError("dropped"),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ClientError({"Error": {"Code": "SlowDown"}}, "PutObject"),
]
FINAL = [
    AuthenticationError("x", status_code=401),
    InsufficientCreditsError("x", status_code=402),
    TaskFailedError("t", "content_policy_violation", None),
    TaskFailedError("t", "generation_timeout", None),  # resubmitting is a new job, not a retry
    ResultExpiredError("t", "https://cdn/x.png?sig=1", 403),
    PollDeadlineExceeded("t", 900, "processing", 40),
    ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"),
    ValueError("bug"),
]


def test_verdicts() -> None:
    assert all(is_retryable(e) for e in RETRYABLE)
    assert not any(is_retryable(e) for e in FINAL)


def upload_failed(code: str, *, chained: bool) -> S3UploadFailedError:
    """What `S3Transfer.upload_file` raises once botocore gave up on `code`."""
    cause = ClientError({"Error": {"Code": code, "Message": "m"}}, "PutObject")
    message = f"Failed to upload /tmp/x to b/k: {cause}"
    if not chained:
        return S3UploadFailedError(message)
    try:
        try:
            raise cause
        except ClientError:
            raise S3UploadFailedError(message)  # noqa: B904 — implicit chaining, as boto3 does
    except S3UploadFailedError as error:
        return error


def test_an_upload_that_failed_past_botocores_retries_is_judged_by_its_cause() -> None:
    for chained in (True, False):
        assert is_retryable(upload_failed("SlowDown", chained=chained))
        assert is_retryable(upload_failed("InternalError", chained=chained))
        assert not is_retryable(upload_failed("AccessDenied", chained=chained))
        assert not is_retryable(upload_failed("NoSuchBucket", chained=chained))


def test_condition_reads_failed_states_in_sync_and_async_code() -> None:
    def verdicts() -> list[bool]:
        return [retry_if_retryable(None, None, Failed(data=e)) for e in RETRYABLE + FINAL]

    expected = [True] * len(RETRYABLE) + [False] * len(FINAL)
    assert verdicts() == expected

    async def from_async() -> list[bool]:
        return verdicts()

    assert asyncio.run(from_async()) == expected


def test_step_delays_are_read_when_the_step_runs_not_at_import(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`EVOLINK_TASK_RETRY_DELAYS` set after every module was imported still decides the run."""
    assert submit_job.retries == len(task_retry_delays())  # the shipped steps read it too
    monkeypatch.setenv(ENV_TASK_RETRY_DELAYS, "7,8,9")
    assert (submit_job.retries, submit_job.retry_delay_seconds) == (3, [7.0, 8.0, 9.0])

    policies: list[TaskRunPolicy] = []

    @evolink_step("flaky", "flaky")
    async def flaky() -> str:
        context = TaskRunContext.get()
        assert context is not None
        policies.append(context.task_run.empirical_policy)
        if len(policies) < 4:
            raise ServerError("busy", status_code=503)
        return "done"

    @flow
    async def run_flaky() -> str:
        result: str = await flaky()
        return result

    monkeypatch.setenv(ENV_TASK_RETRY_DELAYS, "0,0,0")  # after decoration: 3 retries, no wait
    assert asyncio.run(run_flaky()) == "done"
    assert len(policies) == 4
    assert (policies[0].retries, policies[0].retry_delay) == (3, [0.0, 0.0, 0.0])


def test_step_delays_setting_is_checked() -> None:
    assert task_retry_delays({}) == [10.0, 60.0]
    assert task_retry_delays({ENV_TASK_RETRY_DELAYS: " "}) == [10.0, 60.0]
    assert task_retry_delays({ENV_TASK_RETRY_DELAYS: "1, 2.5"}) == [1.0, 2.5]
    for bad in ("ten", "1,,2", "-1", "inf", "nan"):
        with pytest.raises(ValueError, match=ENV_TASK_RETRY_DELAYS):
            task_retry_delays({ENV_TASK_RETRY_DELAYS: bad})


def test_fixed_retries_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_TASK_RETRY_DELAYS, "1,2")
    fixed = submit_job.with_options(retries=0)
    monkeypatch.setenv(ENV_TASK_RETRY_DELAYS, "5")
    assert (fixed.retries, fixed.retry_delay_seconds) == (0, [1.0, 2.0])
    assert submit_job.retries == 1
