"""One exception root: every error the packages define derives from `EvoLinkError`, lives in
`evolink.errors`, and is importable from `prefect_evolink.errors` too; one tier, `APIError`, holds
every failure of the EvoLink API itself and nothing else; validation errors (raised before any
money is spent) are also `ValueError`s, so `except ValueError` keeps working for callers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import evolink
import evolink.errors
import prefect_evolink
import prefect_evolink.errors
from evolink.errors import APIError, EvoLinkError

VALIDATION_ERRORS = ("InvalidRequestError", "BriefError", "HostError", "InvalidUploadError")
# The simulator stands in for EvoLink's service and runs as its own program
# (`python -m evolink.simulator`): the client and the flows never raise its errors (a state file
# it cannot use), so they are the service's, not this family's.
NOT_OURS = ("evolink.simulator",)


def _modules(package: ModuleType) -> list[ModuleType]:
    found = [package]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__") or info.name.startswith(NOT_OURS):
            continue
        found.append(importlib.import_module(info.name))
    return found


def _defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined (not just imported) in our two packages."""
    found: dict[str, type[BaseException]] = {}
    for package in (evolink, prefect_evolink):
        for module in _modules(package):
            for name, value in vars(module).items():
                if (
                    inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                ):
                    found[f"{module.__name__}.{name}"] = value
    return found


def test_the_walk_finds_the_errors_and_would_find_a_stray_one() -> None:
    found = _defined_exceptions()
    assert "evolink.errors.PaidJobNotStoredError" in found
    assert len(found) >= 20, sorted(found)


@pytest.mark.parametrize("name", sorted(_defined_exceptions()))
def test_every_error_derives_from_the_root_and_lives_in_errors(name: str) -> None:
    error = _defined_exceptions()[name]
    assert issubclass(error, EvoLinkError), f"{name} does not derive from EvoLinkError"
    assert error.__module__ == "evolink.errors", f"{name} is defined outside evolink/errors.py"
    assert getattr(prefect_evolink.errors, error.__name__) is error, f"{name} not re-exported"
    assert error.__name__ in prefect_evolink.errors.__all__


@pytest.mark.parametrize("name", VALIDATION_ERRORS)
def test_validation_errors_are_value_errors(name: str) -> None:
    error = getattr(evolink.errors, name)
    assert issubclass(error, ValueError) and issubclass(error, EvoLinkError)


def test_messages_survive_the_double_base() -> None:
    error = evolink.errors.InvalidRequestError([("quality", "must be low, medium or high")])
    assert str(error) == "invalid image request — quality: must be low, medium or high"
    assert error.problems == [("quality", "must be low, medium or high")]


def test_every_error_survives_pickling_with_its_attributes() -> None:
    """Prefect pickles the exception of a failed state when it persists or ships it."""
    import pickle

    from evolink.errors import BriefError, InvalidRequestError, RateLimitError, TaskFailedError

    samples: list[EvoLinkError] = [
        BriefError(["asset 'a': size: bad"]),
        InvalidRequestError([("quality", "must be low, medium or high")]),
        TaskFailedError("task-1", "content_policy_violation", "refused"),
        RateLimitError("slow down", retry_after=3.0, status_code=429),
    ]
    for error in samples:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


# Every error, on one side of the tier or the other: a new error must be placed here on purpose.
API_ERRORS = {
    "APIError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "InsufficientCreditsError",
    "PermissionDeniedError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "APIConnectionError",
    "APITimeoutError",
    "TaskFailedError",
    "PollDeadlineExceeded",
    "ResultExpiredError",
    "InvalidImageError",
    "UnsafeResultLinkError",
    "FilesQuotaExceededError",
    "UnexpectedResponseError",
    "FileUploadOutcomeUnknownError",
}
OUR_OWN = {  # refusals before sending, and bookkeeping after EvoLink did its part
    "EvoLinkError",
    "DraftUnavailableError",
    "PaidJobNotStoredError",
    "SubmitRecordNotStoredError",
    "BudgetExceededError",
    "SpendCapExceededError",
    "ProviderLimitsError",
    "MissingCredentialsError",
    "CampaignIncompleteError",
    "BadCallbackError",
    "InvalidRequestError",
    "BriefError",
    "HostError",
    "InvalidUploadError",
}


def test_every_error_is_placed_on_one_side_of_the_api_tier() -> None:
    names = {error.__name__ for error in _defined_exceptions().values()}
    assert names == API_ERRORS | OUR_OWN
    assert not API_ERRORS & OUR_OWN
    for name in API_ERRORS:
        assert issubclass(getattr(evolink.errors, name), APIError), name
    for name in OUR_OWN:
        assert not issubclass(getattr(evolink.errors, name), APIError), name


def test_the_tier_keeps_the_relations_callers_rely_on() -> None:
    """Callers (the CLI's exit codes, the retry rule, `except` clauses) test these."""
    e = evolink.errors
    assert issubclass(e.APITimeoutError, e.APIConnectionError)
    assert issubclass(e.UnsafeResultLinkError, e.InvalidImageError)
    for status in ("BadRequestError", "RateLimitError", "ServerError", "NotFoundError"):
        assert issubclass(getattr(e, status), e.APIStatusError)
    assert e.InvalidImageError.retryable and not e.UnsafeResultLinkError.retryable


def test_a_status_error_carries_evolink_s_request_id() -> None:
    body = {"error": {"code": "rate_limit_exceeded", "message": "slow down"}}
    error = evolink.errors.error_for_status(429, body, retry_after=2.0, request_id="req_123")
    assert isinstance(error, evolink.errors.RateLimitError) and isinstance(error, APIError)
    assert error.request_id == "req_123"
    assert str(error) == "HTTP 429 rate_limit_exceeded: slow down (request id req_123)"
    plain = evolink.errors.error_for_status(500, None)
    assert plain.request_id is None and "request id" not in str(plain)


def test_api_errors_without_a_response_have_no_request_id() -> None:
    errors: list[APIError] = [
        evolink.errors.APIConnectionError("GET /v1/tasks/t failed: ConnectError"),
        evolink.errors.TaskFailedError("task-1", "content_policy_violation", "refused"),
        evolink.errors.PollDeadlineExceeded("task-1", 900.0, "processing", 40),
        evolink.errors.ResultExpiredError("task-1", "https://cdn.example/x.png?sig=1", 404),
    ]
    for error in errors:
        assert error.request_id is None and "request id" not in str(error)


def test_the_request_id_survives_pickling() -> None:
    import pickle

    error = evolink.errors.error_for_status(
        400, {"error": {"code": "invalid_parameters"}}, request_id="req_abc"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.request_id, str(copy)) == (type(error), "req_abc", str(error))
