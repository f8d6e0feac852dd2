"""Every error this project raises, in one family rooted at `EvoLinkError`.

Import any of them from here or from `prefect_evolink.errors`; `prefect_evolink` itself exports
the root, the `APIError` tier and the few a caller of its flows catches by name. The tree:

    EvoLinkError
    ├── APIError                   the EvoLink API failed us: catch this for "any API failure"
    │   ├── APIStatusError         the API answered with an error status
    │   │   ├── BadRequestError        400/409/413/422
    │   │   ├── AuthenticationError    401
    │   │   ├── InsufficientCreditsError 402
    │   │   ├── PermissionDeniedError  403
    │   │   ├── NotFoundError          404
    │   │   ├── RateLimitError         429 (retryable, honours Retry-After)
    │   │   └── ServerError            5xx (retryable)
    │   ├── APIConnectionError     no usable response (retryable)
    │   │   └── APITimeoutError
    │   ├── TaskFailedError        the task ended failed/cancelled at EvoLink
    │   ├── PollDeadlineExceeded   we stopped waiting; the task may still finish
    │   ├── ResultExpiredError     a result link no longer serves the image
    │   ├── InvalidImageError      a download was not a usable image (retryable)
    │   │   └── UnsafeResultLinkError  a link we refuse to fetch
    │   ├── UnexpectedResponseError    a 2xx answer we cannot read (Files API)
    │   └── FileUploadOutcomeUnknownError  an upload was sent, no clear answer came back
    │       (and, under APIStatusError: FilesQuotaExceededError, the 100-file quota is full)
    ├── DraftUnavailableError      a final's chosen draft is no longer at EvoLink (local storage)
    ├── PaidJobNotStoredError      billed, but its images could not all be stored
    ├── SubmitRecordNotStoredError the task was created, but its submit record not stored
    ├── BudgetExceededError        the campaign's estimate is over its budget; nothing sent
    ├── SpendCapExceededError      the period's spend + reservations + estimate is over the cap
    ├── ProviderLimitsError        strict mode and a provider limit is missing
    ├── MissingCredentialsError    no credentials block and no EVOLINK_API_KEY
    ├── CampaignIncompleteError    some assets of a campaign got no final
    └── (also ValueError) validation errors, raised before any money is spent:
        InvalidRequestError, BriefError, HostError, InvalidUploadError; and BadCallbackError, a
        callback body the receiver refuses

`APIError` is what a call to EvoLink, a task at EvoLink or a result link of one can end in; the
rest are our own decisions and bookkeeping around it: a brief or request we refuse, a budget or
spend cap that says no, a missing credential or limit, storage that failed after EvoLink did its
part (`PaidJobNotStoredError`, `SubmitRecordNotStoredError`: the API error, if any, is their
`__cause__`), a draft local storage cannot hand back (`DraftUnavailableError`: EvoLink did as
documented, links live 24 h), a campaign that ended incomplete. Every `APIError` has a
`request_id`: EvoLink's `x-request-id` of the response that carried the error, for support, shown
in the message as "(request id …)"; None when there was no such response (no connection, a
deadline, a result link, a task that failed after it was created).

`retryable` answers "may the *same* call be repeated?" (a GET, or a POST carrying an
Idempotency-Key). `resubmit_may_help` on a failed task answers the different, costlier question
"would a *new* paid job be worth it?". Messages never contain the API key: nothing here is ever
given the key, and response bodies are reduced to the documented error fields.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Final, Protocol

from evolink.cost import BilledCost, usd


class PaidJob(Protocol):
    """What `PaidJobNotStoredError` reads of the job record it carries (an `evolink.jobs.
    JobRecord`). A protocol, not an import: the client's errors must not import the campaign
    domain (`evolink.jobs` imports this module), so the layers form no loop."""

    @property
    def task_id(self) -> str: ...
    @property
    def billed_usd(self) -> str | None: ...
    @property
    def images(self) -> Sized: ...


class CreatedTask(Protocol):
    """What `SubmitRecordNotStoredError` reads of the submit record it carries (an
    `evolink.jobs.SubmitRecord`; see `PaidJob` for why a protocol)."""

    @property
    def task_id(self) -> str: ...
    @property
    def job_key(self) -> str: ...


PRUNE_COMMAND: Final = "prefect-evolink files prune"
"""The command that deletes this project's uploads that are no longer needed: what a full Files
API quota asks the user to run (`FilesQuotaExceededError`)."""

# Task failure codes that a fresh submission will not fix (EvoLink's own client's verdict).
NOT_WORTH_RESUBMITTING: Final = frozenset(
    {
        "content_policy_violation",
        "invalid_parameters",
        "image_dimension_mismatch",
        "image_processing_error",
        "request_cancelled",
        "resource_not_found",
    }
)


class EvoLinkError(Exception):
    """Base of every error this package raises about the EvoLink API."""

    retryable: bool = False

    def __init__(self, message: str, *, task_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.task_id = task_id

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by state, not by calling `__init__` again: subclasses take other arguments
        (a task id and a code, a list of problems, a job record), and Prefect pickles the
        exceptions of failed states when it persists or ships them between processes."""
        return (_rebuild_error, (type(self), self.args, self.__dict__))


def _rebuild_error(
    cls: type[EvoLinkError], args: tuple[Any, ...], state: dict[str, Any]
) -> EvoLinkError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class APIError(EvoLinkError):
    """A failure of the EvoLink API itself: an error status, no usable response, a task that
    failed or did not finish in time, a result that could not be fetched as an image.

    Not an `APIError`: what we refuse before sending (validation, budget, spend cap, missing
    credentials or limits) and our own bookkeeping failing after EvoLink did its part.
    `request_id` is EvoLink's `x-request-id` of the error response (None without one).
    """

    request_id: str | None = None

    def __init__(self, message: str, *, task_id: str | None = None, request_id: str | None = None):
        if request_id:
            message = f"{message} (request id {request_id})"
        super().__init__(message, task_id=task_id)
        self.request_id = request_id or None


class APIStatusError(APIError):
    """The API answered with an error status and (usually) the error envelope."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        error_type: str | None = None,
        param: str | None = None,
        fallback_suggestion: str | None = None,
        task_id: str | None = None,
        request_id: str | None = None,
    ):
        detail = f"HTTP {status_code}" + (f" {code}" if code else "")
        super().__init__(f"{detail}: {message}", task_id=task_id, request_id=request_id)
        self.status_code = status_code
        self.code = code
        self.error_type = error_type
        self.param = param
        self.fallback_suggestion = fallback_suggestion


class BadRequestError(APIStatusError):
    """400/413/409/422: the request itself is wrong; repeating it cannot help."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, wrong or revoked."""


class InsufficientCreditsError(APIStatusError):
    """402: the account or key has run out of credits."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not use this model."""


class NotFoundError(APIStatusError):
    """404: unknown task id, or a task older than the API keeps."""


class RateLimitError(APIStatusError):
    """429: slow down; `retry_after` (seconds) is the server's hint when it gave one."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the gateway or the upstream provider failed; worth another try."""

    retryable = True


class APIConnectionError(APIError):
    """No usable response: connection refused or dropped, protocol error."""

    retryable = True


class APITimeoutError(APIConnectionError):
    """The request did not complete within its timeout."""


class TaskFailedError(APIError):
    """The task ended `failed` or `cancelled` at EvoLink; says whether a resubmission may help.

    `cancelled` is True when EvoLink reported the status `cancelled` (someone or something
    stopped the task: never resubmitted, see `resubmit_may_help`). `billed` is the bill read from
    the final task body (`evolink.cost.billed_cost`): zero when the body carries no billing fields
    (the docs: failed tasks are not charged), the charged amount when it does — so a task
    cancelled after EvoLink charged for it is booked with that charge.
    """

    def __init__(
        self,
        task_id: str,
        code: str | None,
        message: str | None,
        *,
        cancelled: bool = False,
        billed: BilledCost | None = None,
    ):
        self.code = code or ("cancelled" if cancelled else "unknown_error")
        self.cancelled = cancelled
        self.billed = billed
        self.resubmit_may_help = resubmit_may_help(self.code, cancelled=cancelled, billed=billed)
        verdict = (
            "a new submission may succeed"
            if self.resubmit_may_help
            else "do not resubmit unchanged"
        )
        if cancelled:
            detail = self.code if message is None else f"{self.code}: {message}"
            text = f"task {task_id} was cancelled at EvoLink ({detail}; {_bill_text(billed)})"
            text += "; a cancelled task is not resubmitted"
        else:
            text = f"task {task_id} failed with {self.code}: {message or 'no message'} ({verdict})"
            if charged(billed):
                text += f"; {_bill_text(billed)}"
        super().__init__(text, task_id=task_id)


def charged(billed: BilledCost | None) -> bool:
    """Whether a bill says money was taken (an unknown bill is not assumed to be a charge)."""
    if billed is None:
        return False
    return bool((billed.usd or 0) > 0 or (billed.credits or 0) > 0)


def resubmit_may_help(code: str, *, cancelled: bool, billed: BilledCost | None = None) -> bool:
    """The one verdict on sending a failed task again as a new, separately paid job.

    Never for a cancelled task (the cancellation was deliberate — by the account, an operator
    or EvoLink — and resubmitting would silently undo it), never for a task that was charged
    anyway (its bill must be reported, not paid twice unnoticed), never for the failure codes in
    `NOT_WORTH_RESUBMITTING`; otherwise yes (EvoLink's own client's verdict).
    """
    return not cancelled and not charged(billed) and code not in NOT_WORTH_RESUBMITTING


def _bill_text(billed: BilledCost | None) -> str:
    if billed is None or not billed.known:
        return "bill unknown"
    if not charged(billed):
        return "not charged"
    amount = usd(billed.usd) if billed.usd is not None else f"{billed.credits} credits"
    return f"billed {amount}"


class PollDeadlineExceeded(APIError):
    """The task did not finish in time. It may still finish: poll the same id again, never resubmit.

    Not retryable: the deadline is the caller's limit on waiting, and a rerun reattaches anyway.
    """

    def __init__(self, task_id: str, waited_seconds: float, last_status: str, progress: int):
        super().__init__(
            f"task {task_id} still {last_status} ({progress}%) after {waited_seconds:.0f}s; "
            "it keeps running at EvoLink — poll the same task id again rather than resubmitting",
            task_id=task_id,
        )
        self.waited_seconds = waited_seconds
        self.last_status = last_status
        self.progress = progress


class ResultExpiredError(APIError):
    """A result link no longer serves the image (links live 24 h). The image is lost at EvoLink."""

    def __init__(self, task_id: str | None, url: str, status_code: int):
        super().__init__(
            f"result link of task {task_id} has expired or is gone (HTTP {status_code}); "
            f"links are valid 24 h after completion — {redact_url(url)}",
            task_id=task_id,
        )
        self.url = url
        self.status_code = status_code


class DraftUnavailableError(EvoLinkError):
    """A final is made from its chosen draft, which EvoLink must fetch from a URL, and there is
    none: the draft's result link expired (24 h) or EvoLink forgot its task, and local storage
    cannot hand out the stored copy. Raised before anything is sent: the final is not paid."""

    def __init__(self, asset: str, index: int, task_id: str, cause: str, redo_usd: Any = None):
        redo = f" (≈{usd(redo_usd)})" if redo_usd is not None else ""
        super().__init__(
            f"the chosen draft image-{index} of asset {asset!r} (task {task_id}) is no longer "
            f"at EvoLink: {cause}. Local storage cannot hand EvoLink its stored copy. Either "
            "store assets in S3 (the stored draft is then sent presigned, however old), or "
            f"rerun with --redo-drafts {asset} (run_campaign(redo_drafts=[{asset!r}])), which "
            f"pays for fresh drafts of this asset{redo}",
            task_id=task_id,
        )
        self.asset = asset


class InvalidImageError(APIError):
    """A download was not a usable image (wrong type, too big, truncated)."""

    retryable = True  # a truncated transfer may well succeed the next time


class UnsafeResultLinkError(InvalidImageError):
    """A result link (or a redirect it led to) we refuse to fetch: not http(s), or a private,
    loopback or link-local host while `EVOLINK_ALLOW_PRIVATE_URLS` is off.

    An `InvalidImageError`, so callers that handle "no usable image" handle this too; but not
    retryable: the same link would be refused again, and asking again only repeats the probe.
    """

    retryable = False


class FilesQuotaExceededError(APIStatusError):
    """The Files API holds as many files as the account may keep (100; 500 on VIP): nothing was
    stored. Never retryable: repeating the upload cannot succeed until files are deleted or
    expire (72 h after upload), and every repeat is one more refused request. The message names
    the command that frees slots (`PRUNE_COMMAND`). EvoLink may send it as an error status or as
    HTTP 200 with `success: false`; `status_code` is the HTTP status, `code` the envelope's."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        used_files: int | None = None,
        max_files: int | None = None,
        **kwargs: Any,
    ):
        held = f" ({used_files} of {max_files} files)" if used_files is not None else ""
        super().__init__(
            f"{message}{held} — the Files API quota is full; free slots with "
            f"`{PRUNE_COMMAND}`, or wait until uploads expire (72 h after upload)",
            **kwargs,
        )
        self.used_files = used_files
        self.max_files = max_files


class UnexpectedResponseError(APIError):
    """A 2xx answer we cannot read: not JSON, no `success`/`data` envelope, or a required field
    (an upload's `file_id` / `file_url`) missing. Not retryable: the server did answer, and an
    upload repeated on such an answer could store the file twice."""


class FileUploadOutcomeUnknownError(APIError):
    """An upload was sent and no clear answer came back (the connection dropped or timed out
    after the request left, a 5xx, an unreadable 2xx): the file may have been stored, and then
    counts against the 100-file quota until it expires (72 h) or is deleted.

    Deliberately not retryable, here or by any outer layer: the Files API takes no
    Idempotency-Key, so a blind repeat can store the file twice. The caller may look for it
    (`list_files`) or upload again knowing the cost (one quota slot). `status_code` is the HTTP
    status when there was one."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
    ):
        super().__init__(
            f"{message}; the file may have been stored and counts against the Files API quota "
            f"until it expires (72 h) or is deleted (`{PRUNE_COMMAND}`); not repeated "
            "automatically, since a repeat could store it twice",
            request_id=request_id,
        )
        self.status_code = status_code


class PaidJobNotStoredError(EvoLinkError):
    """The task completed — EvoLink billed it — but its images could not all be stored.

    Carries the job's record (with the images that *were* stored, often none) so whoever reports
    cost can count what was paid: a failure after the bill must not make the bill disappear. The
    underlying error (expired link, storage failure, …) is the `__cause__` and leads the message.
    """

    def __init__(self, record: PaidJob, cause: BaseException):
        self.record: Any = record  # the `evolink.jobs.JobRecord`
        billed = "an unknown amount" if record.billed_usd is None else usd(record.billed_usd)
        super().__init__(
            f"{type(cause).__name__}: {cause} (task {record.task_id} was billed {billed}, "
            f"{len(record.images)} of its images stored)",
            task_id=record.task_id,
        )


class SubmitRecordNotStoredError(EvoLinkError):
    """EvoLink created the task — it is billed if it completes — but its submit record could
    not be stored.

    Carries the submit record that was not stored (`record`: task id, job key, the request as
    sent, the estimate) so whoever books cost can count the job, and ask EvoLink for its bill
    by `task_id`: a storage failure after the create must not make the task disappear.
    Retryable when the storage failure is (`retryable` is given by the step that raises it):
    a retry finds the intent record and resends the create with the same Idempotency-Key, so
    EvoLink replays the same task (nothing new is paid) and the write is tried again. The
    storage failure is the `__cause__` and leads the message.
    """

    def __init__(self, record: CreatedTask, cause: BaseException, *, retryable: bool = False):
        self.record: Any = record  # the `evolink.jobs.SubmitRecord`
        self.job_key = record.job_key
        self.retryable = retryable
        super().__init__(
            f"{type(cause).__name__}: {cause} (task {record.task_id} was created, its submit "
            "record not stored: it is billed if it completes)",
            task_id=record.task_id,
        )


class BudgetExceededError(EvoLinkError):
    """The campaign's estimate does not fit its budget; nothing was sent."""


class SpendCapExceededError(EvoLinkError):
    """The period's spend so far, the estimates other running runs reserved and this run's
    estimate do not fit the spend cap (`EvoLinkSpendCap`); nothing was sent.

    An estimate check with reservations — EvoLink holds no money server-side. The message names
    the cap, the spend so far, the reservations and the estimate.
    """


class ProviderLimitsError(EvoLinkError):
    """Strict mode and a provider limit is missing (or could not be acquired)."""


class MissingCredentialsError(EvoLinkError):
    """No credentials block named and no `EVOLINK_API_KEY` in the environment."""


class CampaignIncompleteError(EvoLinkError):
    """Some assets failed or were stopped by the budget; the manifest says which and why.

    Raised after the manifest was stored: `manifest` is the `CampaignManifest` (what failed and
    why, what was stored, what was billed) and `manifest_uri` where it is.
    """

    def __init__(
        self,
        message: str,
        *,
        manifest: Any = None,
        manifest_uri: str | None = None,
    ):
        super().__init__(message)
        self.manifest: Any = manifest  # the `evolink.campaign.CampaignManifest` (not imported:
        # the client's errors import no campaign domain, see `PaidJob`)
        self.manifest_uri = manifest_uri


class BadCallbackError(EvoLinkError, ValueError):
    """A callback body the receiver will not read further; `reason` is one short word for the
    log line and the 400 answer: not_json, too_deep, duplicate_key, bad_number, not_an_object,
    no_task_id. Never raised to a flow: the receiver answers it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidRequestError(EvoLinkError, ValueError):
    """A request broke one or more rules; `problems` lists (field, rule) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "; ".join(f"{field}: {rule}" for field, rule in problems)
        super().__init__(f"invalid image request — {lines}")


class BriefError(EvoLinkError, ValueError):
    """A brief broke a rule; each problem names the asset (when there is one) and the field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid campaign brief:\n  - " + "\n  - ".join(problems))


class InvalidUploadError(EvoLinkError, ValueError):
    """A file the Files API client refuses before sending anything (nothing stored, no quota
    slot used): empty, over 100 MB, not a JPEG, PNG, GIF or WebP image, or a source URL that
    breaks the reference rules (`evolink.urls`)."""


class HostError(EvoLinkError, ValueError):
    """A host that is not even a valid address (e.g. `999.1.1.1`); refused whatever the setting."""


def redact_url(url: str) -> str:
    """A URL without its query string: presigned signatures are credentials too."""
    return url.split("?", 1)[0]


_STATUS_ERRORS: Final[dict[int, type[APIStatusError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: BadRequestError,
    413: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The typed error of an HTTP-like status: 429 → RateLimitError, 5xx → ServerError, other
    unknown ones → BadRequestError (never retried). Also read for the Files API's envelope
    `code`, which carries such a status when the HTTP status is 200."""
    cls = _STATUS_ERRORS.get(status_code)
    if cls is None:
        cls = ServerError if status_code >= 500 else BadRequestError
    return cls


def error_for_status(
    status_code: int,
    body: Any,
    *,
    retry_after: float | None = None,
    task_id: str | None = None,
    request_id: str | None = None,
) -> APIStatusError:
    """Build the typed error for an error response, reading old and new envelope shapes.

    `request_id` is the response's `x-request-id` (`evolink.client.request_id_of`).
    """
    envelope = body.get("error") if isinstance(body, dict) else None
    if not isinstance(envelope, dict):
        envelope = {}
    code = envelope.get("code")
    fields: dict[str, Any] = {
        "status_code": status_code,
        "code": None if code is None else str(code),
        "error_type": envelope.get("type"),
        "param": envelope.get("param"),
        "fallback_suggestion": envelope.get("fallback_suggestion"),
        "task_id": task_id,
        "request_id": request_id,
    }
    message = str(envelope.get("message") or "no error message")[:500]
    cls = status_error_class(status_code)
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=retry_after, **fields)
    return cls(message, **fields)
