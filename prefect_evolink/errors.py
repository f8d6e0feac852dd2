"""Every error `prefect_evolink` and the `evolink` client raise, in one place.

    from prefect_evolink.errors import APIError, RateLimitError, TaskFailedError

They are defined in `evolink.errors` (the Prefect-free client), whose docstring draws the tree:
one root, `EvoLinkError`; one tier, `APIError`, for every failure of the EvoLink API itself
(error statuses, no usable response, failed or overdue tasks, results that could not be
fetched); beside it our own refusals (validation, budget, spend cap, missing credentials or
limits) and bookkeeping failures. `prefect_evolink` itself exports only the root, the tier and
the errors a caller of its flows catches by name.
"""

from __future__ import annotations

from evolink.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadCallbackError,
    BadRequestError,
    BriefError,
    BudgetExceededError,
    CampaignIncompleteError,
    DraftUnavailableError,
    EvoLinkError,
    FilesQuotaExceededError,
    FileUploadOutcomeUnknownError,
    HostError,
    InsufficientCreditsError,
    InvalidImageError,
    InvalidRequestError,
    InvalidUploadError,
    MissingCredentialsError,
    NotFoundError,
    PaidJobNotStoredError,
    PermissionDeniedError,
    PollDeadlineExceeded,
    ProviderLimitsError,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    SpendCapExceededError,
    SubmitRecordNotStoredError,
    TaskFailedError,
    UnexpectedResponseError,
    UnsafeResultLinkError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadCallbackError",
    "BadRequestError",
    "BriefError",
    "BudgetExceededError",
    "CampaignIncompleteError",
    "DraftUnavailableError",
    "EvoLinkError",
    "FileUploadOutcomeUnknownError",
    "FilesQuotaExceededError",
    "HostError",
    "InsufficientCreditsError",
    "InvalidImageError",
    "InvalidRequestError",
    "InvalidUploadError",
    "MissingCredentialsError",
    "NotFoundError",
    "PaidJobNotStoredError",
    "PermissionDeniedError",
    "PollDeadlineExceeded",
    "ProviderLimitsError",
    "RateLimitError",
    "ResultExpiredError",
    "ServerError",
    "SpendCapExceededError",
    "SubmitRecordNotStoredError",
    "TaskFailedError",
    "UnexpectedResponseError",
    "UnsafeResultLinkError",
]
