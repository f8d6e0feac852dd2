"""How often to ask whether a task is done.

Every query of an unfinished task makes EvoLink ask the upstream provider, so a fixed fast poll
costs everyone. We aim the next poll at a fraction of the predicted remaining time: predicted
from the task's progress rate once it reports progress, else from its `estimated_time`. Polls
thin out while the job is far from done and tighten near the end, so the completion is seen
soon after it happens with few queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DEFAULT_MIN_INTERVAL: Final = 1.0
DEFAULT_MAX_INTERVAL: Final = 15.0
DEFAULT_REMAINING_FRACTION: Final = 0.5
DEFAULT_DEADLINE_SECONDS: Final = 900.0  # gpt-image jobs can take minutes; EvoLink estimates ~100 s


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """Pacing of status queries, and how long to wait in all before giving up."""

    min_interval: float = DEFAULT_MIN_INTERVAL
    max_interval: float = DEFAULT_MAX_INTERVAL
    remaining_fraction: float = DEFAULT_REMAINING_FRACTION
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS

    def predicted_remaining(
        self, elapsed: float, progress: int, estimated_time: float | None
    ) -> float | None:
        if 0 < progress < 100 and elapsed > 0:
            return elapsed * (100 - progress) / progress
        if estimated_time is not None:
            return max(0.0, estimated_time - elapsed)
        return None

    def next_delay(self, elapsed: float, progress: int, estimated_time: float | None) -> float:
        """Seconds until the next query, given what the last one said."""
        remaining = self.predicted_remaining(elapsed, progress, estimated_time)
        delay = self.max_interval if remaining is None else remaining * self.remaining_fraction
        delay = min(self.max_interval, max(self.min_interval, delay))
        time_left = self.deadline_seconds - elapsed
        return max(0.0, min(delay, time_left))
