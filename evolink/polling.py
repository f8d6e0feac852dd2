"""How often to ask whether a task is done.

Every query of an unfinished task makes EvoLink ask the upstream provider, so a fixed fast poll
costs everyone. Neither prediction of when a task ends can be trusted alone: EvoLink's
`estimated_time` may be off by half either way, and progress need not be linear (fast then stuck
at 99 %, or queued at a few % then quick). So the pacing, all of it in this file:

1. **Aim** when two successive predictions from the progress agree within `agreement` (10 %):
   the next query lands `aim_margin` past the predicted end — one query finds the task done.
   The first prediction of a run of rising progress is the plain rate (elapsed × 100 /
   progress); each later one fits a curve through the newest reading and one at least
   `fit_baseline` older, of the shape the two show (`fitted_total`): progress = (t / T) ** k
   when the rate rises, 1 − (1 − t / T) ** k when it falls, so a task that starts slowly, or
   races ahead and then crawls, is predicted rather than mistaken for a rate. A fit is never
   later than the latest end the newest reading allows (see 2). `estimated_time` alone never
   aims: one number cannot show it is wrong.
2. Otherwise, **go to the earliest end still plausible**: `estimated_time` / (1 +
   `estimate_error`), and from the progress either an unconfirmed fit / (1 + `fit_error`) or,
   without a fit, the end of the most back-loaded curve planned for through the newest reading,
   (t / T) ** `backload`: a task at p % after t s ends no sooner than t × (100 / p) ** (1 / 2).
   Its mirror, 1 − (1 − t / T) ** `backload`, is the latest end a reading allows. A prediction
   already passed is contradicted and dropped. When every one has passed but the unconfirmed
   fit itself has not, the next query goes to the fit (a task that raced ahead and now shows 99 %
   is near that end: asking at the lag-bounded pace until then would waste queries). No wait
   is longer than `growth` × the elapsed time, so a prediction that was far too late costs a
   bounded lag.
3. **A stall predicts nothing**: progress that did not rise since the last reading, or a first
   reading too low for even the most back-loaded curve to end before the latest end the
   estimate allows (`estimated_time` / (1 − `estimate_error`)), is a task queued or stuck, not
   one running along a curve. It ends the run: it feeds no fit, and the next rising reading
   starts afresh (a fit across the jump out of a queue predicts nonsense). Meanwhile only rule
   2's bound from the newest reading applies: at 5 % it is 4.5× the elapsed time, so the wait
   grows (up to `growth` × elapsed) instead of creeping at the lag-bounded pace.
4. Progress `PROGRESS_CEILING` (99) or more is not a reading: a running task shows at most 99,
   and a front-loaded one sits there for its last tenth, so it says only "near the end".
5. **Never faster than `lag_fraction` × elapsed** (nor `min_interval`): a task still running at
   t ends after t, so a wait of 8 % of t delays its detection by less than 8 % of the job's
   time — within the 10 % goal of issue #12 and free of wasted queries near the end.
6. `max_interval` bounds every wait, `deadline_seconds` the whole wait.

`tests/test_pacing.py` checks these rules on simulated time, for estimates 0.5×–1.5× and
linear, front-loaded, back-loaded and stalled progress; `bench/polling.py` measures them in real
time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

DEFAULT_MIN_INTERVAL: Final = 1.0
DEFAULT_MAX_INTERVAL: Final = 15.0
DEFAULT_AGREEMENT: Final = 0.1
"""Two predictions of the total job time within 10 % of each other count as agreeing."""
DEFAULT_AIM_MARGIN: Final = 0.25
"""Seconds past the predicted end at which an aimed query lands."""
DEFAULT_ESTIMATE_ERROR: Final = 0.5
"""How far EvoLink's `estimated_time` may be off (issue #12 measures ±50 %)."""
DEFAULT_BACKLOAD: Final = 2.0
"""The most back-loaded progress planned for: 100 × (t / T) ** 2, 25 % at half time. A task
at p % after t s then ends no sooner than t × (100 / p) ** (1 / 2)."""
DEFAULT_FIT_ERROR: Final = 0.1
"""How far a fitted prediction that its predecessor does not yet confirm may be late (the
whole-percent progress makes a fit through close or high readings wobble)."""
DEFAULT_LAG_FRACTION: Final = 0.08
"""Shortest wait, as a share of the elapsed time: bounds the detection lag at 8 % of the job
(the goal is 10 %; the rest is headroom for request latency)."""
DEFAULT_GROWTH: Final = 1.0
"""Longest wait while no prediction is confirmed, as a multiple of the elapsed time."""
DEFAULT_FIT_BASELINE: Final = 1.15
"""A fit pairs the newest reading with one at least 15 % older in time, so rounding of the
integer progress between two close readings does not swing the fitted curve."""
PROGRESS_CEILING: Final = 99
"""The most a running task shows; a reading at it says only "near the end" and is not fitted."""
_FIT_HORIZON: Final = 1e6
_FIT_STEPS: Final = 100
"""Bisection of a front-loaded fit: T in (t2, 1e6 × t2), 100 halvings of its logarithm."""
DEFAULT_DEADLINE_SECONDS: Final = 900.0  # gpt-image jobs can take minutes; EvoLink estimates ~100 s


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """Pacing of status queries, and how long to wait in all before giving up.

    Immutable configuration; the readings of one wait live in the `Pacer` from `pacer()`.
    """

    min_interval: float = DEFAULT_MIN_INTERVAL
    max_interval: float = DEFAULT_MAX_INTERVAL
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    agreement: float = DEFAULT_AGREEMENT
    aim_margin: float = DEFAULT_AIM_MARGIN
    estimate_error: float = DEFAULT_ESTIMATE_ERROR
    backload: float = DEFAULT_BACKLOAD
    fit_error: float = DEFAULT_FIT_ERROR
    lag_fraction: float = DEFAULT_LAG_FRACTION
    growth: float = DEFAULT_GROWTH
    fit_baseline: float = DEFAULT_FIT_BASELINE

    def pacer(self) -> Pacer:
        """A fresh pacer for one wait: it remembers that wait's progress readings."""
        return Pacer(self)

    def next_delay(
        self,
        elapsed: float,
        progress: int,
        estimated_time: float | None,
        *,
        waited: float | None = None,
    ) -> float:
        """The delay after this one reading alone (no history): see `Pacer.next_delay`."""
        return self.pacer().next_delay(elapsed, progress, estimated_time, waited=waited)


def fitted_total(earlier: tuple[float, int], later: tuple[float, int]) -> float | None:
    """Total job time by the curve through both readings whose shape they show, or None if
    progress did not rise. A rising rate (progress / time grows) fits 100 × (t / T) ** k, k > 1:
    back-loaded, like a task that starts slowly. A falling rate fits 100 × (1 − (1 − t / T) ** k),
    k > 1: front-loaded, like a task that races ahead and then crawls to its end. A steady rate is
    k = 1 in both. Each family alone would mispredict the other's shape: (t / T) ** k through
    front-loaded readings predicts an end far too early, and a tail that decelerates is exactly
    what it cannot express."""
    (t1, p1), (t2, p2) = earlier, later
    if p2 <= p1 or t2 <= t1 or p1 <= 0 or p2 >= 100:
        return None
    k = math.log(p2 / p1) / math.log(t2 / t1)
    if k >= 1:
        return float(t2 * (100 / p2) ** (1 / k))
    # front-loaded: ln(1 − p1) / ln(1 − p2) = ln(1 − t1 / T) / ln(1 − t2 / T), which rises
    # from 0 (T → t2) to t1 / t2 (T → ∞): bisect on log T
    target = math.log(1 - p1 / 100) / math.log(1 - p2 / 100)
    if not 0 < target < t1 / t2:
        return None
    low, high = t2 * (1 + 1 / _FIT_HORIZON), t2 * _FIT_HORIZON
    for _ in range(_FIT_STEPS):
        middle = math.sqrt(low * high)
        if math.log(1 - t1 / middle) / math.log(1 - t2 / middle) < target:
            low = middle
        else:
            high = middle
    return math.sqrt(low * high)


@dataclass(slots=True)
class Pacer:
    """The pacing of one wait: `PollSchedule`'s rules plus the readings seen so far."""

    schedule: PollSchedule
    readings: list[tuple[float, int]] = field(default_factory=list)
    """Readings of the current run of rising progress (a stall starts a new run)."""
    predictions: list[float | None] = field(default_factory=list)
    """One per recorded reading: its prediction of the total job time (None: a stall)."""
    last: tuple[float, int] | None = None
    """The newest reading below `PROGRESS_CEILING`, stalled or not."""

    def earliest_from(self, reading: tuple[float, int]) -> float:
        """The soonest a task at this progress may end: on the most back-loaded curve planned
        for, progress = 100 × (t / T) ** `backload`."""
        t, p = reading
        return float(t * (100 / p) ** (1 / self.schedule.backload))

    def latest_from(self, reading: tuple[float, int]) -> float:
        """The latest a task at this progress may end: on the most front-loaded curve planned
        for, progress = 100 × (1 − (1 − t / T) ** `backload`) (75 % at half time)."""
        t, p = reading
        return float(t / (1 - (1 - p / 100) ** (1 / self.schedule.backload)))

    def _record(self, elapsed: float, progress: int, estimated_time: float | None) -> None:
        """Keep a reading in progress and its prediction of the total job time."""
        s = self.schedule
        reading = (elapsed, progress)
        flat = self.last is not None and progress <= self.last[1]
        self.last = reading
        latest_end = estimated_time / (1 - s.estimate_error) if estimated_time else math.inf
        # `agreement` as slack: whole-percent progress puts a back-loaded task right at the bound
        behind = not self.readings and self.earliest_from(reading) > latest_end * (1 + s.agreement)
        if flat or behind:  # queued or stuck: says nothing about the end; a new run follows
            self.readings.clear()
            self.predictions.append(None)
            return
        if not self.readings:
            prediction: float | None = elapsed * 100 / progress
        else:
            limit = elapsed / s.fit_baseline
            older = [r for r in self.readings if r[0] <= limit] or self.readings[:1]
            fitted = fitted_total(older[-1], reading)
            prediction = None if fitted is None else min(fitted, self.latest_from(reading))
        self.readings.append(reading)
        self.predictions.append(prediction)

    def confirmed_total(self) -> float | None:
        """The newest prediction, if the one before agrees with it within `agreement`."""
        if len(self.predictions) < 2:
            return None
        newest, before = self.predictions[-1], self.predictions[-2]
        if newest is None or before is None:
            return None
        return newest if abs(newest - before) <= self.schedule.agreement * newest else None

    def earliest_plausible_end(self, elapsed: float, estimated_time: float | None) -> float | None:
        """The soonest the task may end by any prediction not yet contradicted."""
        s = self.schedule
        ends = []
        if estimated_time:
            ends.append(estimated_time / (1 + s.estimate_error))
        fit = None
        if len(self.readings) >= 2 and self.predictions[-1] is not None:
            fit = self.predictions[-1]
            ends.append(fit / (1 + s.fit_error))
        elif self.last is not None:  # a first reading, or a stall: how far is the task along?
            ends.append(self.earliest_from(self.last))
        ends = [end for end in ends if end > elapsed]  # one already passed is contradicted
        if not ends and fit is not None and fit > elapsed:
            return fit  # the hedges have passed, the fit itself not yet
        return min(ends) if ends else None

    def next_delay(
        self,
        elapsed: float,
        progress: int,
        estimated_time: float | None,
        *,
        waited: float | None = None,
    ) -> float:
        """Seconds until the next query, given what the last one said (the rules: module doc).

        `elapsed` counts from the submission (what the predictions are about); `waited` from
        the start of this wait (what the deadline is about), the same unless a wait resumes a
        task submitted earlier. Call once per reading: each call records it.
        """
        s = self.schedule
        if 0 < progress < PROGRESS_CEILING and elapsed > 0:
            self._record(elapsed, progress, estimated_time)
        confirmed = self.confirmed_total()
        if confirmed is not None:
            delay = confirmed - elapsed + s.aim_margin
        else:
            end = self.earliest_plausible_end(elapsed, estimated_time)
            if end is not None:
                delay = end - elapsed
            elif estimated_time or self.predictions:
                delay = 0.0  # every prediction has passed: ask at the lag-bounded pace
            else:
                delay = s.max_interval  # nothing known yet: the slowest pace
            if self.last is not None:  # not before: the wait from the create response is 0 s old
                delay = min(delay, s.growth * elapsed)
        delay = min(s.max_interval, max(s.min_interval, s.lag_fraction * elapsed, delay))
        time_left = s.deadline_seconds - (elapsed if waited is None else waited)
        return max(0.0, min(delay, time_left))
