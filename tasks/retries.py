"""Which failures a Prefect task may retry: only those the error family calls retryable.

A blind `retries=3` around a paid call is how jobs get paid twice; here a retry happens only for
errors that are safe and useful to repeat (the submit carries an Idempotency-Key, so even a
repeated create reattaches to the original task).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE

from evolink.errors import EvoLinkError

#: Seconds between task-level retries (after the client's own quick retries gave up).
TASK_RETRY_DELAYS: Final[list[float]] = [
    float(part) for part in os.environ.get("EVOLINK_TASK_RETRY_DELAYS", "10,60").split(",")
]

# S3 answers that will not change on a retry (bad bucket, no permission).
_PERMANENT_S3_CODES: Final = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
    }
)


def is_retryable(error: BaseException) -> bool:
    """The retry verdict for any exception raised inside our tasks."""
    if isinstance(error, EvoLinkError):
        return error.retryable
    if isinstance(error, ClientError):
        return error.response.get("Error", {}).get("Code") not in _PERMANENT_S3_CODES
    if isinstance(error, S3UploadFailedError):
        return _upload_failure_is_retryable(error)
    return isinstance(error, (BotoCoreError, ConnectionError, TimeoutError))


def _upload_failure_is_retryable(error: S3UploadFailedError) -> bool:
    """`upload_file` (our `S3AssetStorage.put_file`) wraps the `ClientError` it got, after
    botocore's own retries, in `S3UploadFailedError` — raised inside its `except`, so the
    original is the `__context__`. Judge that; failing it, the code quoted in the message
    ("An error occurred (AccessDenied) when calling …"). A busy or failing S3 is worth another
    try: the image is still behind its 24 h link, and nothing is generated again."""
    original = error.__cause__ or error.__context__
    if original is not None:
        return is_retryable(original)
    message = str(error)
    return not any(f"({code})" in message for code in _PERMANENT_S3_CODES)


def failure_of(state: Any) -> BaseException | None:
    """The exception a failed Prefect state carries.

    Read from `state.data` first: inside an async task `state.result()` is dispatched to its
    async twin and returns an un-awaited coroutine, which would silently mean "never retry".
    """
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    result = state.result(raise_on_failure=False, _sync=True)
    return result if isinstance(result, BaseException) else None


def retry_if_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks."""
    error = failure_of(state)
    return error is not None and is_retryable(error)


def evolink_step(name: str, run_name: str) -> Callable[[Callable[..., Any]], Any]:
    """The decorator of every pipeline step (submit, poll, persist).

    No Prefect cache: the job records in storage are what remembers finished work, and a status
    is only true when it is read. Retries, jittered, only for errors `is_retryable` accepts.
    """
    decorator: Callable[[Callable[..., Any]], Any] = task(
        name=name,
        task_run_name=run_name,
        cache_policy=NO_CACHE,
        retries=len(TASK_RETRY_DELAYS),
        retry_delay_seconds=TASK_RETRY_DELAYS,
        retry_jitter_factor=0.2,
        retry_condition_fn=retry_if_retryable,
    )
    return decorator
