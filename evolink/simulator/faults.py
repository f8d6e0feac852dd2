"""Scripted, seeded failures: the reason the simulator exists.

A client is only as good as its handling of the bad days (429s, 5xx, dropped sockets, lost create
responses, failed and slow tasks, expired links), and those cannot be summoned from the real API
on demand. A `Fault` says what goes wrong, where, how often and for which prompts; the `FaultBook`
decides, with a `random.Random(seed)` it owns, whether each armed fault fires, so a run with the
same seed and the same request order fails the same way.

Two families:
- request faults (latency, rate_limit, server_error, drop_connection) act on one HTTP request;
- task faults (lose_create_response, fail_task, cancel_task, slow_task, expire_links) are drawn
  only when a create request really creates a task (not on a replay, not on a refused request)
  and shape that task for its whole life.

Random faults by rate per endpoint, for soak tests, are `evolink.simulator.chaos.FaultRates`;
they are drawn after the scripted faults here.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Final

REQUEST_KINDS: Final = frozenset({"latency", "rate_limit", "server_error", "drop_connection"})
TASK_KINDS: Final = frozenset(
    {"lose_create_response", "fail_task", "cancel_task", "slow_task", "expire_links"}
)
KINDS: Final = REQUEST_KINDS | TASK_KINDS
# "upload" and "files" are the Files API's uploads and its other calls (evolink/simulator/files.py).
ROUTES: Final = frozenset({"create", "get", "download", "upload", "files", "any"})

# HTTP status → error code of the documented envelope.
SERVER_ERROR_CODES: Final[dict[int, str]] = {
    500: "internal_error",
    502: "upstream_error",
    503: "service_unavailable_error",
}

DEFAULT_FAILURE_MESSAGES: Final[dict[str, str]] = {
    "content_policy_violation": "The prompt or image was rejected by the content policy.",
    "generation_timeout": "Image generation timed out upstream.",
    "generation_failed_no_content": "The model returned no image.",
    "service_error": "The upstream service failed while generating the image.",
}


@dataclass
class Fault:
    """One scripted failure. `times` counts down as it fires (None = forever); `fired` counts up.

    Kind-specific fields are ignored by the other kinds:
    - rate_limit: `retry_after` (seconds; None = no Retry-After header), `fallback_seconds`
      (the N in the body's "retry after N seconds" when `retry_after` is None);
    - server_error: `status` 500 / 502 / 503;
    - fail_task: `error_code`, `error_message` (the task's `error` at completion time);
    - cancel_task: the task ends `cancelled` when it would have finished (no `error` object);
      `billed_fraction` of its estimate is charged (0 = refunded, like a failed task);
    - slow_task: `seconds` (the task's generation time); latency: `seconds` (delay before handling);
    - expire_links: `ttl_seconds` (links valid this long after completion; 0 = already expired).
    """

    kind: str
    route: str | None = None
    times: int | None = 1
    probability: float = 1.0
    match_prompt: str | None = None
    status: int = 503
    retry_after: float | None = None
    fallback_seconds: float = 60
    error_code: str = "content_policy_violation"
    error_message: str | None = None
    seconds: float | None = None
    ttl_seconds: float = 0
    billed_fraction: float = 0.0
    fired: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: must be one of {sorted(KINDS)}, got {self.kind!r}")
        if self.route is None:
            self.route = "create" if self.kind in TASK_KINDS else "any"
        if self.route not in ROUTES:
            raise ValueError(f"route: must be one of {sorted(ROUTES)}, got {self.route!r}")
        if self.kind in TASK_KINDS and self.route != "create":
            raise ValueError(
                f"route: a {self.kind} fault acts on task creation, so route is 'create'"
            )
        if self.times is not None and self.times < 0:
            raise ValueError("times: must be >= 0 or None (forever)")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability: must be between 0 and 1")
        if self.kind == "server_error" and self.status not in SERVER_ERROR_CODES:
            raise ValueError(f"status: server_error needs one of {sorted(SERVER_ERROR_CODES)}")
        if self.kind in ("slow_task", "latency") and (self.seconds is None or self.seconds < 0):
            raise ValueError(f"seconds: a {self.kind} fault needs seconds >= 0")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after: must be >= 0")
        if self.ttl_seconds < 0:
            raise ValueError("ttl_seconds: must be >= 0")
        if not 0.0 <= self.billed_fraction <= 1.0:
            raise ValueError("billed_fraction: must be between 0 and 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build from a JSON object (the POST /_sim/faults body); unknown keys are an error."""
        if not isinstance(data, dict):
            raise ValueError(f"a fault must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def armed(self) -> bool:
        return self.times is None or self.times > 0

    @property
    def failure_message(self) -> str:
        return self.error_message or DEFAULT_FAILURE_MESSAGES.get(
            self.error_code, f"The task failed ({self.error_code})."
        )

    def applies_to(self, route: str, prompt: str | None) -> bool:
        if not self.armed or self.route not in ("any", route):
            return False
        return self.match_prompt is None or (prompt is not None and self.match_prompt in prompt)


@dataclass(frozen=True)
class RequestFaults:
    """What the book decided for one request: total delay and at most one terminal fault."""

    delay_seconds: float = 0.0
    terminal: Fault | None = None


class FaultBook:
    """Armed faults in the order they were added, drawn with one seeded RNG under one lock."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        # Reproducible fault draws, not secrets.
        self._rng = random.Random(seed)  # nosec B311
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.fired_counts: dict[str, int] = {}

    def add(self, fault: Fault) -> Fault:
        """Arm a copy of `fault` (so the caller's object is never mutated) and return the copy."""
        armed = dataclasses.replace(fault, fired=0)
        with self._lock:
            self._faults.append(armed)
        return armed

    def snapshot(self) -> list[Fault]:
        with self._lock:
            return [dataclasses.replace(f) for f in self._faults]

    def counts(self) -> dict[str, int]:
        """How many times each kind has fired."""
        with self._lock:
            return dict(self.fired_counts)

    def reset(self) -> None:
        """Disarm everything and restart the RNG, so a reset run replays like a fresh one."""
        with self._lock:
            self._faults.clear()
            self._rng = random.Random(self._seed)  # nosec B311
            self.fired_counts = {}

    def _fire(self, fault: Fault) -> bool:
        """Draw for `fault` (lock held); on success count it down and record it."""
        if fault.probability < 1.0 and self._rng.random() >= fault.probability:
            return False
        if fault.times is not None:
            fault.times -= 1
        fault.fired += 1
        self.fired_counts[fault.kind] = self.fired_counts.get(fault.kind, 0) + 1
        return True

    def for_request(self, route: str, prompt: str | None) -> RequestFaults:
        """Every firing latency fault adds its delay; the first firing terminal fault wins."""
        delay = 0.0
        terminal: Fault | None = None
        with self._lock:
            for fault in self._faults:
                if fault.kind not in REQUEST_KINDS or not fault.applies_to(route, prompt):
                    continue
                if fault.kind == "latency":
                    if self._fire(fault):
                        delay += fault.seconds or 0.0
                elif terminal is None and self._fire(fault):
                    terminal = dataclasses.replace(fault)
        return RequestFaults(delay, terminal)

    def for_new_task(self, prompt: str) -> dict[str, Fault]:
        """The task faults that shape a task being created now: at most one per kind."""
        chosen: dict[str, Fault] = {}
        with self._lock:
            for fault in self._faults:
                if fault.kind not in TASK_KINDS or fault.kind in chosen:
                    continue
                if fault.applies_to("create", prompt) and self._fire(fault):
                    chosen[fault.kind] = dataclasses.replace(fault)
        return chosen
