"""Provider limits shared by every worker: how many EvoLink jobs run at once, how fast we submit.

EvoLink limits an account, not a process. A campaign on one worker and three event-triggered runs
on another all spend the same account's concurrency and request rate, so the limits live on the
Prefect server as **global concurrency limits**, which every flow run on every worker consults:

- `evolink-active-jobs` (a concurrency limit): one slot is held from just before a job is
  submitted until its poll has finished, i.e. for as long as the job is generating at EvoLink.
  Downloads and storage run after the slot is released; they do not use provider capacity.
- `evolink-submits` (a rate limit: a limit with slot decay): one token per create call, so a
  burst of jobs is spread out instead of drawing 429s.

Both are created (idempotently) by `ensure_limits`, which `prefect-evolink deploy` calls.

**strict.** Prefect skips a global limit that does not exist *silently* (PrefectHQ/prefect#11787)
— a typo or a fresh workspace would then mean "no limit at all". `strict=True` makes a missing
limit an error before anything is paid. It is read from `EVOLINK_LIMITS_STRICT` (`true`/`1`/`yes`)
unless passed explicitly; the deployments in `deployments/prefect.yaml` set it, local demos and
unit tests leave it off: then a missing limit costs one look-up per process and minute and one
warning, and its calls are skipped (not made only for Prefect to skip them, slowly).

**No deadlock.** A job holds at most one active-job slot and never waits for a second one while
holding it; the submit token is taken while holding the slot, but a rate-limit token is not held
(it decays on its own), so the wait for it always ends. Slots are leases: a crashed run's slot is
freed by the server when its lease (`LEASE_SECONDS`) runs out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Final, Literal

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency, rate_limit
from prefect.exceptions import MissingContextError, ObjectNotFound
from prefect.logging.loggers import get_run_logger
from prefect.settings import get_current_settings

from evolink.errors import ProviderLimitsError

ACTIVE_JOBS_LIMIT: Final = "evolink-active-jobs"
"""Concurrency limit: EvoLink jobs submitted and not yet finished, across all workers."""
SUBMIT_RATE_LIMIT: Final = "evolink-submits"
"""Rate limit: create calls (`POST /v1/images/generations`), across all workers."""
LIMIT_NAMES: Final = (ACTIVE_JOBS_LIMIT, SUBMIT_RATE_LIMIT)

ENV_STRICT: Final = "EVOLINK_LIMITS_STRICT"
"""`true` → a missing limit fails the job before submit instead of being skipped."""
ENV_TIMEOUT: Final = "EVOLINK_LIMITS_TIMEOUT_SECONDS"
"""Optional: give up waiting for a slot or token after this many seconds (default: wait)."""

DEFAULT_ACTIVE_JOBS: Final = 4
DEFAULT_SUBMITS_PER_MINUTE: Final = 30.0
DEFAULT_SUBMIT_BURST: Final = 5

LEASE_SECONDS: Final = 120.0
"""Slot lease, renewed while the job runs; bounds how long a crashed run can hold a slot."""
_REPORT_WAIT_SECONDS: Final = 1.0

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})

logger = logging.getLogger(__name__)

Change = Literal["created", "updated", "unchanged"]


def strict_from_env() -> bool:
    """`EVOLINK_LIMITS_STRICT` as a bool; an unreadable value is an error, not a silent False."""
    raw = os.environ.get(ENV_STRICT, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{ENV_STRICT} must be true or false, got {raw!r}")


def timeout_from_env() -> float | None:
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    return float(raw) if raw else None


@dataclass(frozen=True)
class LimitSpec:
    """A global concurrency limit as the server stores it (`slot_decay_per_second` > 0: rate)."""

    name: str
    limit: int
    slot_decay_per_second: float = 0.0


def limit_specs(
    *,
    active_jobs: int = DEFAULT_ACTIVE_JOBS,
    submits_per_minute: float = DEFAULT_SUBMITS_PER_MINUTE,
    submit_burst: int = DEFAULT_SUBMIT_BURST,
) -> tuple[LimitSpec, LimitSpec]:
    """The two limits for an account: set them to what your EvoLink plan allows."""
    if active_jobs < 1 or submit_burst < 1 or submits_per_minute <= 0:
        raise ValueError("limits must be positive (a limit of 0 would block every job forever)")
    return (
        LimitSpec(ACTIVE_JOBS_LIMIT, active_jobs),
        LimitSpec(SUBMIT_RATE_LIMIT, submit_burst, slot_decay_per_second=submits_per_minute / 60),
    )


async def ensure_limits(
    *,
    active_jobs: int | None = None,
    submits_per_minute: float | None = None,
    submit_burst: int | None = None,
) -> dict[str, Change]:
    """Create missing limits; change existing ones only in the values passed explicitly.

    Idempotent: run it on every deploy. Values an operator tuned in the UI are kept unless the
    caller asks for a value (None = "keep what is there, or the default when creating").
    """
    wanted = limit_specs(
        active_jobs=DEFAULT_ACTIVE_JOBS if active_jobs is None else active_jobs,
        submits_per_minute=(
            DEFAULT_SUBMITS_PER_MINUTE if submits_per_minute is None else submits_per_minute
        ),
        submit_burst=DEFAULT_SUBMIT_BURST if submit_burst is None else submit_burst,
    )
    explicit: dict[str, dict[str, float | None]] = {
        ACTIVE_JOBS_LIMIT: {"limit": active_jobs},
        SUBMIT_RATE_LIMIT: {
            "limit": submit_burst,
            "slot_decay_per_second": wanted[1].slot_decay_per_second
            if submits_per_minute is not None
            else None,
        },
    }
    changes: dict[str, Change] = {}
    async with get_client() as client:
        for spec in wanted:
            try:
                current = await client.read_global_concurrency_limit_by_name(spec.name)
            except ObjectNotFound:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(
                        name=spec.name,
                        limit=spec.limit,
                        slot_decay_per_second=spec.slot_decay_per_second,
                    )
                )
                changes[spec.name] = "created"
                continue
            update = {
                field: value
                for field, value in explicit[spec.name].items()
                if value is not None and getattr(current, field) != value
            }
            if update:
                await client.update_global_concurrency_limit(
                    spec.name, GlobalConcurrencyLimitUpdate.model_validate(update)
                )
            changes[spec.name] = "updated" if update else "unchanged"
    forget_limit_lookups()  # this process applies them from its next job on
    return changes


async def missing_limits(names: tuple[str, ...] = LIMIT_NAMES) -> list[str]:
    """The names that do not exist or are inactive — Prefect would skip them silently."""
    missing: list[str] = []
    async with get_client() as client:
        for name in names:
            try:
                limit = await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                missing.append(name)
                continue
            if not limit.active:
                missing.append(name)
    return missing


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:  # outside a flow or task run
        return logger


MISSING_TTL_SECONDS: Final = 60.0
"""How long a non-strict process trusts "these limits do not exist" before looking again."""

_missing_seen: dict[str, tuple[float, frozenset[str]]] = {}
_warned: dict[str, frozenset[str]] = {}


async def _skippable_limits() -> frozenset[str]:
    """Non-strict mode: the limits that do not exist, so their calls can be skipped.

    Prefect would skip them anyway, but not for free: each `concurrency()` / `rate_limit()` on a
    missing limit is a round trip that logs a WARNING, and concurrent ones on a SQLite-backed API
    draw `SQLITE_BUSY` → 503 → a ~2 s client retry (README, Benchmarks, 1). One look-up per
    process and API, refreshed every `MISSING_TTL_SECONDS` so limits created meanwhile apply
    within a minute, and one warning per distinct finding.
    """
    api = str(get_current_settings().api.url or "ephemeral")
    seen = _missing_seen.get(api)
    if seen is not None and time.monotonic() - seen[0] < MISSING_TTL_SECONDS:
        return seen[1]
    try:
        missing = frozenset(await missing_limits())
    except httpx.HTTPError as error:  # unknown: leave it to Prefect (it skips missing ones)
        _logger().debug("Could not check the provider limits: %s", error)
        missing = frozenset()
    _missing_seen[api] = (time.monotonic(), missing)
    if missing and _warned.get(api) != missing:
        _warned[api] = missing
        _logger().log(
            _missing_limits_level(),
            "Provider limits %s do not exist or are inactive on this Prefect API, so EvoLink jobs "
            "run without them. Create them with `prefect-evolink deploy`"
            " (or `prefect gcl create`), and set %s=true to make this an error.",
            ", ".join(sorted(missing)),
            ENV_STRICT,
        )
    return missing


def _missing_limits_level() -> int:
    """INFO on a temporary local API (a demo, an ad-hoc run: no limits is expected there, and
    it is the first thing a new user sees); WARNING on a real server or in a deployed run,
    where a missing limit means jobs may exceed what the EvoLink account allows."""
    from prefect.context import FlowRunContext

    on_real_server = bool(get_current_settings().api.url)
    context = FlowRunContext.get()
    deployed = bool(context and context.flow_run and context.flow_run.deployment_id)
    return logging.WARNING if on_real_server or deployed else logging.INFO


def forget_limit_lookups() -> None:
    """Drop what this process remembers about missing limits (after creating or deleting them)."""
    _missing_seen.clear()
    _warned.clear()


@asynccontextmanager
async def provider_capacity(
    *,
    strict: bool | None = None,
    timeout_seconds: float | None = None,
    reattach: bool = False,
) -> AsyncIterator[None]:
    """Hold one `evolink-active-jobs` slot for the body, after taking one `evolink-submits` token.

    Wrap the submit and the poll of one job in it. `strict` defaults to `EVOLINK_LIMITS_STRICT`,
    `timeout_seconds` to `EVOLINK_LIMITS_TIMEOUT_SECONDS` (None: wait as long as it takes).
    Lease renewal failures never abort the body: the job is already paid for, and losing the
    slot for a moment is better than abandoning a running job.

    `reattach=True` is for a job already at EvoLink (its submit record exists: the rerun of a
    crashed or failed run). It creates nothing, so it takes no submit token, and it takes a
    slot only if one is free at once: waiting would gain nothing (the task generates at EvoLink
    whether or not anyone polls it), and the slot it would wait for may be its own, still held
    by the dead run's lease for up to `LEASE_SECONDS`.
    """
    strict = strict_from_env() if strict is None else strict
    timeout_seconds = timeout_from_env() if timeout_seconds is None else timeout_seconds
    skip = frozenset() if strict else await _skippable_limits()
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        try:
            if ACTIVE_JOBS_LIMIT not in skip:
                if reattach and not await _slot_free():
                    _logger().info(
                        "Reattaching to a job already at EvoLink without a free %s slot: it "
                        "generates either way (a crashed run's lease may still hold its slot)",
                        ACTIVE_JOBS_LIMIT,
                    )
                else:
                    await stack.enter_async_context(
                        concurrency(
                            ACTIVE_JOBS_LIMIT,
                            occupy=1,
                            timeout_seconds=timeout_seconds,
                            lease_duration=LEASE_SECONDS,
                            strict=strict,
                            raise_on_lease_renewal_failure=False,
                        )
                    )
            if SUBMIT_RATE_LIMIT not in skip and not reattach:
                await rate_limit(
                    SUBMIT_RATE_LIMIT, occupy=1, timeout_seconds=timeout_seconds, strict=strict
                )
        except ConcurrencySlotAcquisitionError as error:
            raise ProviderLimitsError(
                f"{error} — create the provider limits with "
                "`prefect-evolink deploy` (nothing was submitted)"
            ) from error
        waited = time.monotonic() - started
        if waited >= _REPORT_WAIT_SECONDS:
            _logger().info(
                "Waited %.1fs for provider capacity (%s, %s)",
                waited,
                ACTIVE_JOBS_LIMIT,
                SUBMIT_RATE_LIMIT,
            )
        yield


async def _slot_free() -> bool:
    """Whether `evolink-active-jobs` has a free slot now (a missing limit counts as free: the
    acquisition then decides, strict or not)."""
    async with get_client() as client:
        try:
            limit = await client.read_global_concurrency_limit_by_name(ACTIVE_JOBS_LIMIT)
        except ObjectNotFound:
            return True
    return not limit.active or limit.active_slots < limit.limit
