"""The decorator of every pipeline step, and the project's whole retry rule, layer by layer.

`evolink_step` turns submit, poll and persist into Prefect tasks that retry only what is safe
and useful to repeat. A blind `retries=3` around a paid call is how jobs get paid twice; here a
retry happens only for errors `is_retryable` accepts (the submit carries an Idempotency-Key, so
even a repeated create reattaches to the original task).

Retries happen in five layers, innermost first, with where each number lives:

===================  =============================================  ================================
Layer                What is repeated, on which failures, how many  Where the numbers live
===================  =============================================  ================================
1. HTTP attempts     One API call (GETs; the create POST only with  `evolink/retry.py`: `DEFAULT_*`,
(`EvoLinkClient`)    an Idempotency-Key) and each result download,  `RetryPolicy`. Attempts per
                     on `EvoLinkError.retryable`: 429, 5xx,         account: `max_attempts` of
                     connection errors and timeouts, a download     `EvoLinkCredentials`
                     that is no usable image. 4 attempts; backoff   (`blocks/credentials.py`).
                     0.5 s × 2^(n-1), ≤ 20 s, ±25 % jitter; a
                     429's `Retry-After` (or the body's "retry
                     after N seconds") replaces the backoff,
                     capped at 120 s.
2. Prefect task      A whole step: submit (reattaches by its        This module:
retries              Idempotency-Key), poll (the same task id),     `ENV_TASK_RETRY_DELAYS`,
(`evolink_step`)     persist; on `is_retryable`:                    `DEFAULT_TASK_RETRY_DELAYS`,
                     `EvoLinkError.retryable`, S3 errors but        `TASK_RETRY_JITTER`.
                     `_PERMANENT_S3_CODES`, `BotoCoreError`,
                     `ConnectionError`, `TimeoutError`. One retry
                     per delay in `EVOLINK_TASK_RETRY_DELAYS`
                     (default `10,60`: 2 retries), jittered by
                     Prefect (≤ +20 %, same mean); read per run.
3. Resubmission      A new, separately keyed paid job (a failed     `resubmits=1` in `tasks/job.py`
(`run_image_job`)    task is not charged), when                     and `flows/generate.py`; the
                     `TaskFailedError.resubmit_may_help`: its code  codes in `evolink/errors.py`.
                     is not in `NOT_WORTH_RESUBMITTING`. At most 1
                     new job.
4. S3 requests       One S3 request inside an `S3AssetStorage`      `S3AssetStorage.get_client` in
(botocore)           call, on throttling, 5xx and transient         `blocks/s3.py`.
                     connection errors: mode "standard",
                     `max_attempts` 5 (1 + 4 retries), backoff
                     with full jitter ≤ 20 s.
5. Polling deadline  Status queries of one task, 1–15 s apart,      `evolink/polling.py`:
(not a retry)        until it ends; after 900 s                     `DEFAULT_*`; flow parameter
                     `PollDeadlineExceeded`, never retried nor      `poll_deadline_seconds`;
                     resubmitted (a rerun polls the same task).     `EVOLINK_POLL_MIN_INTERVAL`,
                                                                    `EVOLINK_POLL_MAX_INTERVAL`.
===================  =============================================  ================================

With the defaults, one step makes at most 4 HTTP attempts × 3 task runs, and one logical job
at most 2 paid submissions (the first and one resubmission), of which only a completed one is
billed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from prefect.cache_policies import NO_CACHE

from evolink.errors import EvoLinkError
from prefect_evolink.tasks.dispatch import SyncOrAsyncTask

ENV_TASK_RETRY_DELAYS: Final = "EVOLINK_TASK_RETRY_DELAYS"
"""Comma-separated seconds between task-level retries, e.g. `10,60`; one retry per value."""
DEFAULT_TASK_RETRY_DELAYS: Final = (10.0, 60.0)
"""After the client's own quick retries gave up: wait 10 s, then 60 s."""
TASK_RETRY_JITTER: Final = 0.2
_MAX_DELAYS: Final = 50  # Prefect's own limit on retry delays per task

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


def task_retry_delays(environ: Mapping[str, str] | None = None) -> list[float]:
    """`EVOLINK_TASK_RETRY_DELAYS` as seconds, read now; unset or blank means the default."""
    raw = (os.environ if environ is None else environ).get(ENV_TASK_RETRY_DELAYS, "").strip()
    if not raw:
        return list(DEFAULT_TASK_RETRY_DELAYS)
    try:
        delays = [float(part) for part in raw.split(",")]
    except ValueError:
        delays = []
    if not 0 < len(delays) <= _MAX_DELAYS or not all(0 <= d < float("inf") for d in delays):
        raise ValueError(
            f"{ENV_TASK_RETRY_DELAYS} must be 1 to {_MAX_DELAYS} comma-separated seconds "
            f"such as '10,60', got {raw!r}"
        )
    return delays


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


class EvoLinkStep(SyncOrAsyncTask[Any, Any]):
    """A Prefect task taking its retries and their delays from `EVOLINK_TASK_RETRY_DELAYS` per run.

    Like every public step it serves sync and async callers alike (`tasks/dispatch.py`).
    Prefect fixes `retries` and `retry_delay_seconds` when a task is decorated — at import,
    before a worker's or a test's environment is in place. Here both are properties, read when
    Prefect creates a task run and when it handles a failure. Assigning either, or
    `.with_options(retries=…, retry_delay_seconds=…)` (which returns a plain `Task`), fixes them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # `Task.__init__` assigned Prefect's defaults through the setters: forget them.
        self._fixed_retries: int | None = None
        self._fixed_delays: Any = None

    @property
    def retries(self) -> int:
        if self._fixed_retries is not None:
            return self._fixed_retries
        return len(task_retry_delays())

    @retries.setter
    def retries(self, value: int) -> None:
        self._fixed_retries = value

    @property
    def retry_delay_seconds(self) -> Any:
        if self._fixed_delays is not None:
            return self._fixed_delays
        return task_retry_delays()

    @retry_delay_seconds.setter
    def retry_delay_seconds(self, value: Any) -> None:
        self._fixed_delays = value


def evolink_step(name: str, run_name: str) -> Callable[[Callable[..., Any]], Any]:
    """The decorator of every pipeline step (submit, poll, persist).

    No Prefect cache: the job records in storage are what remembers finished work, and a status
    is only true when it is read. Retries, jittered, only for errors `is_retryable` accepts, as
    many and as far apart as `EVOLINK_TASK_RETRY_DELAYS` says when the step runs.
    """

    def decorate(fn: Callable[..., Any]) -> EvoLinkStep:
        return EvoLinkStep(
            fn,
            name=name,
            task_run_name=run_name,
            cache_policy=NO_CACHE,
            retry_jitter_factor=TASK_RETRY_JITTER,
            retry_condition_fn=retry_if_retryable,
        )

    return decorate
