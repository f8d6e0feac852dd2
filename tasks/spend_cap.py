"""The spend cap's check with reservations, on the running total of the record store.

`reserve_spend` is the check a campaign, product or ad-hoc run makes before it sends anything.
Under the global concurrency limit `evolink-spend-cap` (one slot, created when missing,
acquired strictly) it reads the period's spend from the running total (`evolink.records`:
the bookings of every job since the last check are folded into a checkpoint, so a check costs
what was booked since the previous one, not the period's whole history), adds the reservations
of other running runs, refuses with `SpendCapExceededError` when this run's estimate does not
fit, and else stores this run's reservation
(`_reports/spend/reservations/<period>/<flow run id>.json`) before the slot is released. The run
releases it when it ends (`SpendReservation.release`, in a `finally`); until then it counts
less what the run's own jobs already recorded. A reservation whose flow run ended (any final
state) or that is older than the cap's `reservation_hours` no longer counts, so a killed run
cannot hold the cap forever. The period's spend is the real spend only: jobs made at the
bundled simulator are synthetic bills nobody paid, so they never count against a cap.

The same lock makes the running total safe across workers: its checkpoint is written only by
the holder of the slot (bookings append entries of their own; `evolink.records` explains why).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound
from prefect.logging.loggers import get_run_logger

from evolink.cost import usd
from evolink.errors import ProviderLimitsError, SpendCapExceededError
from evolink.jobs import utcnow
from evolink.periods import PeriodWindow, period_window
from evolink.records import CapSpend, RecordStore
from evolink.spend_cap import HeldReservation, Reservation, cap_refusal, held_against
from evolink.timezones import zone
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.spend_cap import EvoLinkSpendCap

logger = logging.getLogger(__name__)

SPEND_CAP_LIMIT: Final = "evolink-spend-cap"
"""Global concurrency limit (1 slot) held while a run checks the cap and stores its reservation."""
LOCK_LEASE_SECONDS: Final = 60.0
LOCK_TIMEOUT_SECONDS: Final = 600.0


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logger


async def ended_flow_runs(ids: list[str]) -> set[str]:
    """Which of these flow runs are in a final state (their records are the whole story).
    A run the API does not know, or an API that does not answer, leaves the reservation held."""
    wanted: list[UUID] = []
    for value in ids:
        try:
            wanted.append(UUID(value))
        except ValueError:
            continue
    if not wanted:
        return set()
    try:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=wanted))
            )
    except Exception as error:  # noqa: BLE001 — unknown: the reservations stay held
        _logger().warning("Could not read the flow runs of the spend reservations: %s", error)
        return set()
    return {str(run.id) for run in runs if run.state is not None and run.state.is_final()}


async def ensure_spend_cap_limit() -> str:
    """Create `evolink-spend-cap` with one slot when missing; make it one active slot when it
    is not (more slots would not be a lock). Returns created / updated / unchanged."""
    async with get_client() as client:
        try:
            current = await client.read_global_concurrency_limit_by_name(SPEND_CAP_LIMIT)
        except ObjectNotFound:
            try:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=SPEND_CAP_LIMIT, limit=1)
                )
            except ObjectAlreadyExists:  # another run created it meanwhile
                return "unchanged"
            return "created"
        if current.limit == 1 and current.active:
            return "unchanged"
        await client.update_global_concurrency_limit(
            SPEND_CAP_LIMIT, GlobalConcurrencyLimitUpdate(limit=1, active=True)
        )
        return "updated"


_ENSURED: dict[str, float] = {}
"""API URL → when (monotonic) this process last made sure the limit is one active slot."""
ENSURE_EVERY_SECONDS: Final = 60.0
"""How often a process re-checks the limit: each check is a round trip of every capped run."""


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value() or "ephemeral")


@asynccontextmanager
async def spend_cap_lock(timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> AsyncIterator[None]:
    """Hold the one slot of `evolink-spend-cap` for the body (strict: never skipped).

    The limit is made sure of (`ensure_spend_cap_limit`) at most once a minute per process and
    API; a strict acquisition that fails (the limit was deleted meanwhile, or another API
    answers) makes sure of it again and tries once more."""
    api, now = _api_url(), time.monotonic()
    cached = now - _ENSURED.get(api, -ENSURE_EVERY_SECONDS) < ENSURE_EVERY_SECONDS
    if not cached:
        await ensure_spend_cap_limit()
        _ENSURED[api] = now
    async with AsyncExitStack() as stack:
        for attempt in (1, 2):
            try:
                await stack.enter_async_context(
                    concurrency(
                        SPEND_CAP_LIMIT,
                        occupy=1,
                        timeout_seconds=timeout_seconds,
                        lease_duration=LOCK_LEASE_SECONDS,
                        strict=True,
                        raise_on_lease_renewal_failure=False,
                    )
                )
                break
            except (ConcurrencySlotAcquisitionError, TimeoutError) as error:
                _ENSURED.pop(api, None)
                if attempt == 1 and cached and isinstance(error, ConcurrencySlotAcquisitionError):
                    await ensure_spend_cap_limit()
                    _ENSURED[api] = time.monotonic()
                    continue
                raise ProviderLimitsError(
                    f"could not hold the spend cap lock {SPEND_CAP_LIMIT!r}: {error} "
                    "(nothing was sent)"
                ) from error
        yield


@dataclass
class SpendReservation:
    """A run's reservation against a spend cap; `release()` when the run ends (never raises)."""

    storage: AssetStorage | None = None
    key: str | None = None
    reservation: Reservation | None = None

    async def release(self) -> None:
        if self.storage is None or self.key is None or self.reservation is None:
            return
        released = self.reservation.model_copy(update={"released_at": utcnow()})
        try:
            await RecordStore(self.storage).put_reservation(released)
        except Exception as error:  # noqa: BLE001 — it expires, and ends with its flow run
            _logger().warning("Spend reservation %s not released: %s", self.key, error)
        else:
            self.reservation = None


def _cap_name(cap: EvoLinkSpendCap) -> str:
    name = getattr(cap, "_block_document_name", None)
    return repr(name) if name else "(unsaved block)"


def _flow_run_id() -> str | None:
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return str(run.id) if run is not None else None


async def cap_spend(
    store: RecordStore, window: PeriodWindow, reservation_id: str
) -> tuple[CapSpend, list[HeldReservation]]:
    """The period's spend (running total) and the reservations that still hold, less their
    runs' recorded spend. Call it holding `spend_cap_lock`: it folds the running total."""
    spend = await store.spend_for_cap(window)
    problems: list[str] = []
    stored = await store.live_reservations(window.label, problems, now=utcnow())
    for problem in problems:
        _logger().warning("%s", problem)
    live = [r for r in stored if r.released_at is None and r.flow_run_id]
    ended = await ended_flow_runs([r.flow_run_id or "" for r in live])
    held = held_against(
        stored, spend.by_run, now=utcnow(), ended_runs=ended, exclude=reservation_id
    )
    return spend, held


async def reserve_spend(
    cap: EvoLinkSpendCap | None,
    storage: AssetStorage,
    estimate_usd: Decimal,
    label: str,
) -> SpendReservation:
    """Check the cap and reserve this run's estimate, or raise `SpendCapExceededError`.

    Under the `evolink-spend-cap` lock: the period's spend (the running total of the records
    in `storage`, `evolink.records`) + what other running runs reserved + `estimate_usd` must
    fit `cap.limit_usd`; then the reservation is stored. Without a cap nothing is checked or
    stored. The spend is the real spend only: what the bundled simulator "billed" is
    synthetic, and a cap that counted it would refuse real work over money never spent.

    Args:
        cap: The spend cap block, or None.
        storage: The run's storage: where the spend is summed and the reservation kept.
        estimate_usd: The most this run is estimated to spend.
        label: What the run is, for messages and the reservation ('campaign X', 'product Y').

    Returns:
        The reservation; release it when the run ends.

    Raises:
        SpendCapExceededError: The estimate does not fit; the message names the cap, the
            spend so far, the reservations and the estimate. Nothing was sent.
        ProviderLimitsError: The lock could not be held.
    """
    if cap is None:
        return SpendReservation()
    where = zone(cap.timezone)
    now = datetime.now(where)
    window: PeriodWindow = period_window(now, cap.period, where)
    run_id = _flow_run_id()
    reservation_id = run_id or uuid.uuid4().hex
    store = RecordStore(storage)
    async with spend_cap_lock():
        spend, held = await cap_spend(store, window, reservation_id)
        refusal = cap_refusal(
            cap=_cap_name(cap),
            limit_usd=Decimal(cap.limit_usd),
            window=window,
            spent_usd=spend.spent_usd,
            reserved=held,
            estimate_usd=estimate_usd,
            label=label,
        )
        if refusal:
            raise SpendCapExceededError(refusal)
        reservation = Reservation(
            reservation_id=reservation_id,
            flow_run_id=run_id,
            label=label,
            period=window.label,
            estimated_usd=str(estimate_usd),
            reserved_at=now,
            expires_at=now + timedelta(hours=cap.reservation_hours),
        )
        key = await store.put_reservation(reservation, live=True)
    reserved = sum((Decimal(r.held_usd) for r in held), Decimal(0))
    left = Decimal(cap.limit_usd) - spend.spent_usd - reserved - estimate_usd
    _logger().info(
        "Spend cap %s (%s per %s, %s): spent so far %s, reserved by other runs %s, this run "
        "reserves %s; %s left (an estimate check with reservations%s)",
        _cap_name(cap),
        usd(cap.limit_usd),
        cap.period,
        window.label,
        usd(spend.spent_usd),
        usd(reserved),
        usd(estimate_usd),
        usd(left),
        "; running total rebuilt from the records" if spend.rebuilt else "",
    )
    if spend.simulator_jobs:
        _logger().info(
            "Not counted against the cap: %s over %d job(s) of the bundled simulator "
            "(synthetic, not billed by EvoLink)",
            usd(spend.simulator_usd),
            spend.simulator_jobs,
        )
    return SpendReservation(storage, key, reservation)


__all__ = [
    "LOCK_LEASE_SECONDS",
    "LOCK_TIMEOUT_SECONDS",
    "SPEND_CAP_LIMIT",
    "SpendReservation",
    "cap_spend",
    "ended_flow_runs",
    "ensure_spend_cap_limit",
    "reserve_spend",
    "spend_cap_lock",
]
