"""The simulator's books: one entry per task created, evaluated at the moment it is read.

Tests prove claims about the client from the server's side: "exactly one task per logical job"
(idempotency), "the money billed equals the estimate", "never more than N tasks running at once"
(a concurrency limit). The ledger is the evidence. Task state advances with the clock, not with
background threads, so an entry is a snapshot of the task as of the read.

It is the provider's billing record, so it keeps every task ever created — also those the API has
forgotten (`forgotten`: GET answers 404 "Task not found or expired"), and across restarts of a
simulator with a state directory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class LedgerEntry:
    """One task as of the read. Billed figures and token counts are 0 unless it completed
    (a task cancelled with a charge, the `cancel_task` fault, has billed figures, no tokens).

    `started_at` is when the task enters (or will enter) processing; `finished_at` is None until
    it has finished. `expected_finish_at` is when it finishes (or finished). Times are Unix seconds.
    """

    task_id: str
    idempotency_key: str | None
    request: dict[str, Any]
    created_at: float
    started_at: float
    finished_at: float | None
    expected_finish_at: float
    status: str
    output_tokens: int
    image_input_tokens: int
    text_input_tokens: int
    reserved_credits: Decimal
    billed_usd: Decimal
    billed_credits: Decimal
    error_code: str | None
    faults: tuple[str, ...] = ()
    response_lost: bool = False
    forgotten: bool = False  # the API answers 404 for it now; the bill stands

    @property
    def input_tokens(self) -> int:
        return self.image_input_tokens + self.text_input_tokens

    @property
    def billed(self) -> bool:
        return self.status == "completed" or self.billed_usd > 0  # a charged cancellation too

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; Decimals become strings so no digit is lost on the way."""
        data = asdict(self)
        for name, value in data.items():
            if isinstance(value, Decimal):
                data[name] = str(value)
        data["faults"] = list(self.faults)
        data["input_tokens"] = self.input_tokens
        return data


def max_concurrent(
    entries: Iterable[LedgerEntry], *, include_pending: bool = False, now: float | None = None
) -> int:
    """The most tasks that were processing at the same instant, from the entries' intervals.

    A task is active over [started_at, finished_at) — from created_at instead when
    `include_pending` — and an unfinished task up to `now`. Tasks that have not started by `now`
    are not counted. Ends sort before starts at the same instant: back-to-back is not overlap.
    """
    now = time.time() if now is None else now
    events: list[tuple[float, int]] = []
    for entry in entries:
        start = entry.created_at if include_pending else entry.started_at
        end = entry.finished_at if entry.finished_at is not None else now
        if start > now or end <= start:
            continue
        events.append((start, 1))
        events.append((end, -1))
    events.sort()  # (t, -1) sorts before (t, +1)
    active = peak = 0
    for _, delta in events:
        active += delta
        peak = max(peak, active)
    return peak
