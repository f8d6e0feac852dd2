"""Calendar periods of the spend report and the spend cap: a month, an ISO week or a day in a
time zone, as [start, end) instants with a label (`2026-10`, `2026-W41`, `2026-10-05`).

One concept, split from `evolink.spend` (which re-exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal

Period = Literal["month", "week", "day"]


def _midnight(day: date, where: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=where)


def _next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


@dataclass(frozen=True)
class PeriodWindow:
    """[start, end) of a period, and its label (`2026-10`, `2026-W41`, `2026-10-05`)."""

    start: datetime
    end: datetime
    label: str

    def contains(self, when: datetime) -> bool:
        return self.start <= when < self.end


def period_window(when: datetime, period: Period, where: tzinfo) -> PeriodWindow:
    """The calendar period (in time zone `where`) that contains `when`."""
    local = when.astimezone(where).date()
    if period == "month":
        first = local.replace(day=1)
        return PeriodWindow(
            _midnight(first, where), _midnight(_next_month(first), where), f"{first:%Y-%m}"
        )
    if period == "week":
        monday = local - timedelta(days=local.weekday())
        year, week, _ = monday.isocalendar()
        return PeriodWindow(
            _midnight(monday, where),
            _midnight(monday + timedelta(days=7), where),
            f"{year}-W{week:02d}",
        )
    if period == "day":
        return PeriodWindow(
            _midnight(local, where), _midnight(local + timedelta(days=1), where), f"{local}"
        )
    raise ValueError(f"period must be month, week or day, got {period!r}")


def previous_period(now: datetime, period: Period, where: tzinfo) -> PeriodWindow:
    """The period before the one `now` is in (what the monthly report reports)."""
    current = period_window(now, period, where)
    return period_window(current.start - timedelta(microseconds=1), period, where)


def parse_bound(text: str, where: tzinfo, *, end: bool) -> datetime:
    """`YYYY-MM`, `YYYY-MM-DD` or an ISO date-time → an instant.

    As a start (`end=False`) a month or a day means its first moment; as an end it means the
    moment after its last one, so `--until 2026-10` includes all of October. A date-time is
    taken as it is (a naive one in `where`).
    """
    text = text.strip()
    try:
        if len(text) == 7 and text[4] == "-":
            first = date(int(text[:4]), int(text[5:]), 1)
            return _midnight(_next_month(first) if end else first, where)
        if len(text) == 10:
            day = date.fromisoformat(text)
            return _midnight(day + timedelta(days=1) if end else day, where)
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise ValueError(
            f"not a month (YYYY-MM), a date (YYYY-MM-DD) or an ISO date-time: {text!r}"
        ) from error
    return moment if moment.tzinfo else moment.replace(tzinfo=where)


def window_label(since: datetime | None, until: datetime | None, where: tzinfo) -> str:
    """A period's name for keys and titles: `2026-10` for a calendar month, else the range."""
    if since is None and until is None:
        return "all"
    if since is not None and until is not None:
        month = period_window(since, "month", where)
        if month.start == since and month.end == until:
            return month.label

    def text(moment: datetime | None, *, last: bool) -> str:
        if moment is None:
            return "start" if not last else "now"
        local = moment.astimezone(where)
        if local.time() == time(0):
            return f"{(local - timedelta(days=1)).date() if last else local.date()}"
        return local.strftime("%Y-%m-%dT%H%M%S")

    return f"{text(since, last=False)}_{text(until, last=True)}"
