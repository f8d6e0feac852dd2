"""One exception root: every error the packages define derives from `EvoLinkError`, lives in
`evolink.errors`, and is importable from `prefect_evolink` too; validation errors (raised before
any money is spent) are also `ValueError`s, so `except ValueError` keeps working for callers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import evolink
import evolink.errors
import prefect_evolink
from evolink.errors import EvoLinkError

VALIDATION_ERRORS = ("InvalidRequestError", "BriefError", "HostError")
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
    assert getattr(prefect_evolink, error.__name__) is error, f"{name} not in prefect_evolink"
    assert error.__name__ in prefect_evolink.__all__


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
