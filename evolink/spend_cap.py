"""The spend cap's check: an estimate check with reservations, because EvoLink holds no money
server-side (`evolink.spend` says what counts as spend).

Before a run sends anything, the period's spend plus the estimates other running runs
reserved plus this run's estimate must fit the cap; then the run records its own reservation,
which counts until the run's job records replace it (what its flow run's jobs recorded is taken
off it) and is released when the run ends. The period's spend comes from the running total of
`evolink.records`; the lock and the storage are `prefect_evolink.tasks.spend_cap`'s.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from evolink.cost import usd
from evolink.periods import PeriodWindow
from evolink.spend_jobs import SpendJob


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Reservation(_Model):
    """A running run's estimate, held against a spend cap's period until its records replace it."""

    reservation_id: str
    flow_run_id: str | None
    label: str
    period: str
    estimated_usd: str
    reserved_at: datetime
    expires_at: datetime
    released_at: datetime | None = None


class HeldReservation(_Model):
    reservation: Reservation
    held_usd: str = Field(description="its estimate less what its run's jobs already recorded")


def held_reservations(
    reservations: Iterable[Reservation],
    jobs: Sequence[SpendJob],
    *,
    now: datetime,
    ended_runs: Iterable[str] = (),
    exclude: str | None = None,
) -> list[HeldReservation]:
    """The reservations that still count, each less the spend its own run already recorded.

    A reservation stops counting when it was released, when it expired, or when its flow run
    ended (`ended_runs`): then its run's records are the whole story.
    """
    recorded: dict[str, Decimal] = defaultdict(Decimal)
    for job in jobs:
        if job.flow_run_id:
            recorded[job.flow_run_id] += job.counted_usd
    return held_against(reservations, recorded, now=now, ended_runs=ended_runs, exclude=exclude)


def held_against(
    reservations: Iterable[Reservation],
    recorded: Mapping[str, Decimal],
    *,
    now: datetime,
    ended_runs: Iterable[str] = (),
    exclude: str | None = None,
) -> list[HeldReservation]:
    """`held_reservations` given what each flow run's jobs recorded (flow run id → USD): how
    the cap counts them from its running total (`evolink.records`)."""
    ended = set(ended_runs)
    held: list[HeldReservation] = []
    for reservation in reservations:
        if reservation.reservation_id == exclude or reservation.released_at is not None:
            continue
        if reservation.expires_at <= now or reservation.flow_run_id in ended:
            continue
        run = reservation.flow_run_id
        recorded_usd = recorded.get(run, Decimal(0)) if run else Decimal(0)
        left = max(Decimal(0), Decimal(reservation.estimated_usd) - recorded_usd)
        if left > 0:
            held.append(HeldReservation(reservation=reservation, held_usd=str(left)))
    return held


def cap_refusal(
    *,
    cap: str,
    limit_usd: Decimal,
    window: PeriodWindow,
    spent_usd: Decimal,
    reserved: Sequence[HeldReservation],
    estimate_usd: Decimal,
    label: str,
) -> str | None:
    """The refusal message when the period's spend, the reservations and this estimate do not
    fit the cap; None when they do."""
    held = sum((Decimal(r.held_usd) for r in reserved), Decimal(0))
    if spent_usd + held + estimate_usd <= limit_usd:
        return None
    others = (
        f" + {usd(held)} reserved by {len(reserved)} running run(s) "
        f"({', '.join(r.reservation.label for r in reserved)})"
        if reserved
        else ""
    )
    return (
        f"spend cap {cap} of {usd(limit_usd)} for {window.label}: spent so far "
        f"{usd(spent_usd)}{others} + the estimate of {label} {usd(estimate_usd)} = "
        f"{usd(spent_usd + held + estimate_usd)}, over the cap; nothing was sent. "
        "(An estimate check with reservations: EvoLink holds no money server-side.)"
    )
