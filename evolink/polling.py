"""How often to ask whether a task is done.

Every query of an unfinished task makes EvoLink ask the upstream provider, so a fixed fast poll
costs everyone. Two predictions of when the task ends are available: its progress rate (once it
reports progress) and the `estimated_time` of the create response. When they agree, the next
query is aimed just past the predicted end — one query finds the task done. When they disagree,
or only one is known, we ask again after a fraction of the predicted remaining time, so polls
thin out while the job is far from done and tighten near the end. `max_interval` bounds every
wait, and so the lag of any wrong prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DEFAULT_MIN_INTERVAL: Final = 1.0
DEFAULT_MAX_INTERVAL: Final = 15.0
DEFAULT_REMAINING_FRACTION: Final = 0.5
DEFAULT_AGREEMENT: Final = 0.1
"""Predictions of the total job time within 10 % of each other count as agreeing."""
DEFAULT_AIM_MARGIN: Final = 0.25
"""Seconds past the predicted end at which an aimed query lands."""
DEFAULT_DEADLINE_SECONDS: Final = 900.0  # gpt-image jobs can take minutes; EvoLink estimates ~100 s


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """Pacing of status queries, and how long to wait in all before giving up."""

    min_interval: float = DEFAULT_MIN_INTERVAL
    max_interval: float = DEFAULT_MAX_INTERVAL
    remaining_fraction: float = DEFAULT_REMAINING_FRACTION
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    agreement: float = DEFAULT_AGREEMENT
    aim_margin: float = DEFAULT_AIM_MARGIN

    def predicted_remaining(
        self, elapsed: float, progress: int, estimated_time: float | None
    ) -> float | None:
        if 0 < progress < 100 and elapsed > 0:
            return elapsed * (100 - progress) / progress
        if estimated_time is not None:
            return max(0.0, estimated_time - elapsed)
        return None

    def predictions_agree(
        self, elapsed: float, progress: int, estimated_time: float | None
    ) -> bool:
        """Does the progress rate predict (within `agreement`) the job time EvoLink estimated?"""
        if not (0 < progress < 100 and elapsed > 0 and estimated_time):
            return False
        by_progress = elapsed * 100 / progress
        return abs(by_progress - estimated_time) <= self.agreement * estimated_time

    def next_delay(
        self,
        elapsed: float,
        progress: int,
        estimated_time: float | None,
        *,
        waited: float | None = None,
    ) -> float:
        """Seconds until the next query, given what the last one said.

        `elapsed` counts from the submission (what the predictions are about); `waited` from
        the start of this wait (what the deadline is about), the same unless a wait resumes a
        task submitted earlier.
        """
        remaining = self.predicted_remaining(elapsed, progress, estimated_time)
        if remaining is None:
            delay = self.max_interval
        elif self.predictions_agree(elapsed, progress, estimated_time):
            delay = remaining + self.aim_margin
        else:
            delay = remaining * self.remaining_fraction
        delay = min(self.max_interval, max(self.min_interval, delay))
        time_left = self.deadline_seconds - (elapsed if waited is None else waited)
        return max(0.0, min(delay, time_left))
