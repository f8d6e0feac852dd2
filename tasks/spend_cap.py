"""The spend cap's check with reservations, on the running total of the record store.

`reserve_spend` is the check a campaign, product or ad-hoc run makes before it sends anything.
Holding the storage's spend cap lock (`spend_cap_lock`, below) it reads the period's spend from
the running total (`evolink.records`: the bookings of every job since the last check are
folded into a checkpoint, so a check costs what was booked since the previous one, not the
period's whole history), adds the reservations of other running runs, refuses with
`SpendCapExceededError` when this run's estimate does not fit, and else stores this run's
reservation (`_reports/spend/reservations/<period>/<flow run id>.json`) before the lock is
released. The run releases it when it ends (`SpendReservation.release`, in a `finally`); until
then it counts less what the run's own jobs already recorded. A reservation whose flow run
ended (any final state) or that is older than the cap's `reservation_hours` no longer counts,
so a killed run cannot hold the cap forever. The period's spend is the real spend only: jobs
made at the bundled simulator are synthetic bills nobody paid, so they never count against a
cap.

**The lock** has two jobs: two runs checking at once cannot both pass a cap only one fits, and
the running total's checkpoint (`running/totals.json`, `facts/`, `campaigns.json`, the live
reservations `running/live/<period>.json`) has one writer at a time — bookings only append
entries of their own, and a fold or rebuild writes the checkpoint only while holding it
(`evolink.records` explains why). It is one lock per storage, since the running total is:

- **Local storage** (`LocalAssetStorage`, on POSIX): an OS file lock (`fcntl.flock`) on
  `_reports/spend/running/lock` in the storage's directory (`evolink.layout.spend_lock_key`).
  Every worker that shares a local storage shares its file system, so the file is the lock: no
  API round trip, and the kernel drops it when its holder dies.
- **Any other storage** (S3): the global concurrency limit `evolink-spend-cap` (one slot,
  created when missing, acquired strictly, with a lease), since the workers sharing a bucket
  share nothing else but the Prefect API.

Either way the capped runs of one process queue on a local `asyncio.Lock` first, so one of
them at a time asks for the lock itself, and a lock not held within `LOCK_TIMEOUT_SECONDS`
raises `ProviderLimitsError` (nothing was sent). Workers sharing one local storage must all run
a version with the file lock (one that takes the Prefect slot for it would not see the file).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final, TypeGuard
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
from evolink.layout import spend_lock_key
from evolink.periods import PeriodWindow, period_window
from evolink.records import CapSpend, RecordStore
from evolink.spend_cap import HeldReservation, Reservation, cap_refusal, held_against
from evolink.timezones import zone
from prefect_evolink.blocks import AssetStorage, LocalAssetStorage
from prefect_evolink.blocks.spend_cap import EvoLinkSpendCap

logger = logging.getLogger(__name__)

SPEND_CAP_LIMIT: Final = "evolink-spend-cap"
"""Global concurrency limit (1 slot) held while a run checks the cap and stores its reservation,
on a storage that is not local (a local one is locked with a file: `spend_cap_lock`)."""
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


_LOCAL_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _local_lock(name: str) -> asyncio.Lock:
    """This event loop's queue in front of the lock `name` (see `spend_cap_lock`)."""
    loop = asyncio.get_running_loop()
    locks = _LOCAL_LOCKS.get(loop)
    if locks is None:
        locks = _LOCAL_LOCKS[loop] = {}
    lock = locks.get(name)
    if lock is None:
        lock = locks[name] = asyncio.Lock()
    return lock


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value() or "ephemeral")


def file_locked(storage: AssetStorage | None) -> TypeGuard[LocalAssetStorage]:
    """Whether `storage`'s spend cap lock is a file lock (a local storage, on POSIX) rather than
    the global concurrency limit `evolink-spend-cap`."""
    return isinstance(storage, LocalAssetStorage) and os.name == "posix"


@asynccontextmanager
async def spend_cap_lock(
    storage: AssetStorage | None = None, timeout_seconds: float = LOCK_TIMEOUT_SECONDS
) -> AsyncIterator[None]:
    """Hold `storage`'s spend cap lock for the body (strict: never skipped).

    On a `LocalAssetStorage` (POSIX): an exclusive `fcntl.flock` on its
    `_reports/spend/running/lock` (`LocalAssetStorage.file_lock`), shared by every process
    using that directory. On any other storage, or None: the one slot of `evolink-spend-cap`,
    made sure of (`ensure_spend_cap_limit`) at most once a minute per process and API; a strict
    acquisition that fails (the limit was deleted meanwhile, or another API answers) makes sure
    of it again and tries once more.

    The runs of one process (a task worker runs dozens of capped products at once) queue on a
    local lock first, so one of them at a time asks for the lock: the next one asks the moment
    the last releases, rather than all of them polling and sleeping out retry delays while the
    lock sits free. Across processes the file or the global slot decides.

    Raises:
        ProviderLimitsError: Not held within `timeout_seconds` (the local queue, then the lock,
            each get that long).
    """
    local_storage = storage if file_locked(storage) else None
    name = (
        f"{local_storage.root()}/{spend_lock_key()}"
        if local_storage is not None
        else SPEND_CAP_LIMIT
    )
    local = _local_lock(name)
    try:
        async with asyncio.timeout(timeout_seconds):
            await local.acquire()
    except TimeoutError as error:
        raise ProviderLimitsError(
            f"could not hold the spend cap lock {name!r}: this process's queue for it took "
            f"over {timeout_seconds:g} s (nothing was sent)"
        ) from error
    try:
        if local_storage is not None:
            async with _file_spend_cap_lock(local_storage, name, timeout_seconds):
                yield
        else:
            async with _global_spend_cap_lock(timeout_seconds):
                yield
    finally:
        local.release()


@asynccontextmanager
async def _file_spend_cap_lock(
    storage: LocalAssetStorage, name: str, timeout_seconds: float
) -> AsyncIterator[None]:
    held = False
    try:
        async with storage.file_lock(spend_lock_key(), timeout_seconds=timeout_seconds):
            held = True
            yield
    except (TimeoutError, OSError) as error:
        if held:  # the body's own error
            raise
        raise ProviderLimitsError(
            f"could not hold the spend cap lock {name!r}: {error} (nothing was sent)"
        ) from error


@asynccontextmanager
async def _global_spend_cap_lock(timeout_seconds: float) -> AsyncIterator[None]:
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
    runs' recorded spend. Call it holding `spend_cap_lock(store's storage)`: it folds the
    running total."""
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

    Holding the storage's spend cap lock (`spend_cap_lock`: a file lock on local storage, the
    `evolink-spend-cap` slot on S3): the period's spend (the running total of the records
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
    async with spend_cap_lock(storage):
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
    "file_locked",
    "reserve_spend",
    "spend_cap_lock",
]
