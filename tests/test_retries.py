"""The retry rule itself, on real Prefect states, from sync and async code."""

from __future__ import annotations

import asyncio

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError
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
from tasks.retries import is_retryable, retry_if_retryable

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
