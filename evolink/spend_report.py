"""The spend report of a period: totals and one group per value of every dimension of the
real jobs, the bundled simulator's jobs summed apart (`evolink.spend` says what is counted).

One concept, split from `evolink.spend` (which re-exports these names); laying a report out as
CSV, markdown or text is `prefect_evolink.tasks.spend_report`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from evolink.jobs import utcnow
from evolink.periods import window_label
from evolink.spend_cap import HeldReservation
from evolink.spend_jobs import DIMENSIONS, SIMULATOR_LABEL, SpendJob
from evolink.timezones import zone


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SpendTotals(_Model):
    jobs: int
    estimated_usd: str = Field(description="sum of the estimates of every job")
    billed_usd: str = Field(description="sum of the bills that are known")
    billed_credits: str = Field(default="0", description="sum of the credits that are known")
    unknown_bills: int = Field(description="jobs whose bill is unknown (counted at estimate)")
    unknown_estimated_usd: str = Field(description="what those jobs are counted at")
    total_usd: str = Field(description="known bills + unknown ones at their estimates")
    drift_usd: str = Field(description="known bills − their estimates (> 0: billed more)")
    drift_ratio: str | None = Field(description="known bills / their estimates; None: no bill")


class SpendGroup(SpendTotals):
    dimension: str
    value: str


class SpendReport(_Model):
    """What storage says was spent in a period (see the module docstring).

    `totals` and `groups` are real spend only; the simulator's jobs are summed apart in
    `simulator_totals` (synthetic bills nobody paid), and `jobs` lists both, each marked.
    """

    period: str
    since: datetime | None
    until: datetime | None
    timezone: str
    generated_at: datetime = Field(default_factory=utcnow)
    totals: SpendTotals = Field(description="the real jobs (not the simulator's)")
    groups: list[SpendGroup] = Field(description="the real jobs, by every dimension")
    simulator_totals: SpendTotals = Field(
        default_factory=lambda: totals_of(()),
        description=f"the jobs of the {SIMULATOR_LABEL}; never in `totals`",
    )
    jobs: list[SpendJob] = Field(description="every job counted, real and simulator, each marked")
    campaigns: list[str] = Field(description="the campaigns whose manifests were read")
    reserved: list[HeldReservation] = Field(default_factory=list)
    evolink_asked: bool = False
    problems: list[str] = Field(default_factory=list, description="records that were unreadable")

    @property
    def reserved_usd(self) -> Decimal:
        return sum((Decimal(r.held_usd) for r in self.reserved), Decimal(0))

    @property
    def real_jobs(self) -> list[SpendJob]:
        return [job for job in self.jobs if not job.simulator]

    @property
    def simulator_jobs(self) -> list[SpendJob]:
        return [job for job in self.jobs if job.simulator]

    def group(self, dimension: str) -> dict[str, SpendGroup]:
        return {g.value: g for g in self.groups if g.dimension == dimension}


def totals_of(jobs: Iterable[SpendJob]) -> SpendTotals:
    every = list(jobs)
    known = [job for job in every if job.billed_usd is not None]
    unknown = [job for job in every if job.billed_usd is None]
    billed = sum((Decimal(job.billed_usd or 0) for job in known), Decimal(0))
    credits = sum((Decimal(job.billed_credits or 0) for job in known), Decimal(0))
    known_estimate = sum((Decimal(job.estimated_usd) for job in known), Decimal(0))
    at_estimate = sum((Decimal(job.estimated_usd) for job in unknown), Decimal(0))
    return SpendTotals(
        jobs=len(every),
        estimated_usd=str(sum((Decimal(job.estimated_usd) for job in every), Decimal(0))),
        billed_usd=str(billed),
        billed_credits=str(credits),
        unknown_bills=len(unknown),
        unknown_estimated_usd=str(at_estimate),
        total_usd=str(billed + at_estimate),
        drift_usd=str(billed - known_estimate),
        drift_ratio=f"{billed / known_estimate:.4f}" if known_estimate else None,
    )


def in_window(
    jobs: Iterable[SpendJob], since: datetime | None, until: datetime | None
) -> list[SpendJob]:
    return [
        job
        for job in jobs
        if (since is None or job.submitted_at >= since)
        and (until is None or job.submitted_at < until)
    ]


def build_report(
    jobs: Sequence[SpendJob],
    *,
    since: datetime | None,
    until: datetime | None,
    timezone: str = "UTC",
    campaigns: Sequence[str] = (),
    reserved: Sequence[HeldReservation] = (),
    evolink_asked: bool = False,
    problems: Sequence[str] = (),
) -> SpendReport:
    """The report of the jobs submitted in [since, until): totals and one group per value of
    every dimension (`DIMENSIONS`) of the real jobs, and the simulator's jobs summed apart."""
    where = zone(timezone)
    chosen = in_window(jobs, since, until)
    real = [job for job in chosen if not job.simulator]
    groups: list[SpendGroup] = []
    for dimension in DIMENSIONS:
        values: dict[str, list[SpendJob]] = {}
        for job in real:
            values.setdefault(job.value(dimension, where), []).append(job)
        for value in sorted(values):
            summed = totals_of(values[value])
            groups.append(
                SpendGroup(dimension=dimension, value=value, **summed.model_dump(mode="json"))
            )
    return SpendReport(
        period=window_label(since, until, where),
        since=since,
        until=until,
        timezone=timezone,
        totals=totals_of(real),
        groups=groups,
        simulator_totals=totals_of(job for job in chosen if job.simulator),
        jobs=chosen,
        campaigns=sorted(campaigns),
        reserved=list(reserved),
        evolink_asked=evolink_asked,
        problems=list(problems),
    )
