"""Random faults by rate per endpoint ("chaos"), for soak tests: seeded, so a failure replays.

Scripted faults (`evolink.simulator.faults`) say exactly what goes wrong and where; a soak wants
the opposite — many runs, each under a different, unplanned mix of bad luck — and still needs to
replay the run that broke. `FaultRates` gives each endpoint a chance that a request meets a fault
and each new task a chance of a task fault; `Chaos` draws them from the simulator's seed.

    EvoLinkSimulator(seed=3, chaos=FaultRates(create=0.05, get=0.03, download=0.03,
                                              burst_length=6, fail_task=0.05, cancel_task=0.03))
    sim.chaos = FaultRates(get=0.1)       # change it, or switch it off (None), while running
    sim.chaos_counts                      # what fired: {"get.burst": 1, "task.fail_task": 2, …}

    python -m evolink.simulator --seed 3 --chaos '{"create": 0.05, "get": 0.03}'   # or @FILE
    curl -X POST localhost:8787/_sim/chaos -d '{"download": 0.05, "burst_length": 6}'
    curl -X POST localhost:8787/_sim/chaos -d 'null'    # off
    curl localhost:8787/_sim/chaos        # {"rates": {…} or null, "counts": {…}}

What can happen:

- `create`, `get`, `download` — the chance (0–1) that one request on that route meets a request
  fault. Its kind is drawn from `mix` (relative weights):
  `server_error` — one 500, 502 or 503;
  `burst` — this request and the next `burst_length - 1` on the same route, whichever task they
  are about, all answer the same 5xx: longer than the client's retries when `burst_length`
  exceeds its attempts (4), so a whole step fails and has to be retried by the layer above;
  `drop_connection` — the socket is closed with no reply;
  `rate_limit` — 429 with `Retry-After: retry_after`.
- per task created (drawn when a create really creates a task, never on a replay):
  `lose_create_response` — the task exists but the create reply is dropped;
  `fail_task` — it ends `failed` with a code drawn from `fail_codes` (not charged);
  `cancel_task` — it ends `cancelled`: not charged, or — with chance `cancel_charged` — charged
  `cancel_billed_fraction` of its estimate (a task cancelled after EvoLink charged for it);
  `slow_task` — it takes `slow_seconds` instead of the simulator's generation time.
  `fail_task` and `cancel_task` exclude each other (their sum must be ≤ 1).

Draws do not depend on how concurrent requests interleave. Each is seeded by (seed, route, what
the request is about, how often that was asked before): for a create, the request body without
its reference URLs (which change from run to run); for a status query or a download, the task it
is about (that body, and which task of that body it is). The same seed and the same requests give
the same faults, a retry or a resubmission gets a fresh draw, and only which requests absorb a
burst depends on their order. Scripted faults come first: a request or task that meets one is
not drawn for the same thing. Rates are configuration: a simulator reset keeps them and restarts
the draws and counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final

from evolink.simulator.faults import SERVER_ERROR_CODES, Fault

CHAOS_ROUTES: Final = ("create", "get", "download")
MIX_KINDS: Final = frozenset({"server_error", "burst", "drop_connection", "rate_limit"})
DEFAULT_MIX: Final[dict[str, float]] = {
    "server_error": 0.3,
    "burst": 0.2,
    "drop_connection": 0.35,
    "rate_limit": 0.15,
}
DEFAULT_FAIL_CODES: Final = ("generation_timeout", "service_error", "content_policy_violation")
_STATUSES: Final = tuple(sorted(SERVER_ERROR_CODES))
# The request fields that say what a create is about; reference URLs carry ports and signatures
# that differ from run to run, so they are left out.
_KEY_FIELDS: Final = ("model", "prompt", "size", "resolution", "quality", "n")


def _rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class FaultRates:
    """Chances of random faults; see the module docstring. All rates are 0–1, default 0 (off)."""

    create: float = 0.0
    get: float = 0.0
    download: float = 0.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    burst_length: int = 6
    retry_after: float = 0.2
    lose_create_response: float = 0.0
    fail_task: float = 0.0
    cancel_task: float = 0.0
    cancel_charged: float = 0.0
    cancel_billed_fraction: float = 0.5
    slow_task: float = 0.0
    slow_seconds: float = 1.0
    fail_codes: tuple[str, ...] = DEFAULT_FAIL_CODES

    def __post_init__(self) -> None:
        for name in (
            "create",
            "get",
            "download",
            "lose_create_response",
            "fail_task",
            "cancel_task",
            "cancel_charged",
            "cancel_billed_fraction",
            "slow_task",
        ):
            _rate(name, getattr(self, name))
        if self.fail_task + self.cancel_task > 1.0:
            raise ValueError("fail_task + cancel_task: a task fails or is cancelled, at most 1")
        unknown = sorted(set(self.mix) - MIX_KINDS)
        if unknown:
            raise ValueError(f"mix: unknown kind(s) {unknown}; known: {sorted(MIX_KINDS)}")
        if any(weight < 0 for weight in self.mix.values()) or not sum(self.mix.values()) > 0:
            raise ValueError("mix: weights must be >= 0 with a positive sum")
        if self.burst_length < 1:
            raise ValueError("burst_length: must be >= 1")
        if self.retry_after < 0 or self.slow_seconds < 0:
            raise ValueError("retry_after, slow_seconds: must be >= 0")
        if self.fail_task > 0 and not self.fail_codes:
            raise ValueError("fail_codes: fail_task needs at least one code")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRates:
        """Build from a JSON object (the POST /_sim/chaos body, --chaos); unknown keys fail."""
        if not isinstance(data, dict):
            raise ValueError(f"chaos rates must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown chaos field(s): {', '.join(unknown)}")
        values = dict(data)
        if "mix" in values:
            if not isinstance(values["mix"], dict):
                raise ValueError("mix: must be an object of kind → weight")
            values["mix"] = {str(k): float(v) for k, v in values["mix"].items()}
        if "fail_codes" in values:
            values["fail_codes"] = tuple(str(code) for code in values["fail_codes"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fail_codes"] = list(self.fail_codes)
        return data

    def rate(self, route: str) -> float:
        return float(getattr(self, route)) if route in CHAOS_ROUTES else 0.0


def request_key(body: Any) -> str:
    """What a create request is about, stably: its body without reference URLs, hashed."""
    if not isinstance(body, dict):
        return "invalid-body"
    about = {name: body.get(name) for name in _KEY_FIELDS}
    text = json.dumps(about, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Chaos:
    """Draws random faults for a `FaultRates` (or none), with its own counters, under one lock."""

    def __init__(self, seed: int = 0, rates: FaultRates | None = None) -> None:
        self._seed = seed
        self._rates = rates
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._bursts: dict[str, tuple[int, int]] = {}  # route → (requests left, status)
        self._counts: dict[str, int] = {}

    @property
    def rates(self) -> FaultRates | None:
        return self._rates

    @rates.setter
    def rates(self, rates: FaultRates | None) -> None:
        with self._lock:
            self._rates = rates
            self._bursts.clear()

    def reset(self) -> None:
        """Restart the draws, bursts and counts (the rates stay)."""
        with self._lock:
            self._seen.clear()
            self._bursts.clear()
            self._counts.clear()

    def counts(self) -> dict[str, int]:
        """What fired, as "<route>.<kind>" (a burst: `.burst` once, `.burst_5xx` per request)
        and "task.<kind>"."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    def _count(self, name: str) -> None:
        self._counts[name] = self._counts.get(name, 0) + 1

    def _rng(self, stream: str) -> random.Random:
        """A generator for the next draw of `stream` (lock held): its own seed, so the order in
        which other streams are drawn does not matter."""
        n = self._seen.get(stream, 0)
        self._seen[stream] = n + 1
        # Reproducible fault draws, not secrets.
        return random.Random(f"chaos/{self._seed}/{stream}/{n}")  # nosec B311

    def for_request(self, route: str, key: str) -> Fault | None:
        """The fault this request meets, if any: an ongoing burst first, else a fresh draw."""
        with self._lock:
            rates = self._rates
            if rates is None or route not in CHAOS_ROUTES:
                return None
            left, status = self._bursts.get(route, (0, 503))
            if left > 0:
                self._bursts[route] = (left - 1, status)
                self._count(f"{route}.burst_5xx")
                return Fault(kind="server_error", route=route, status=status, times=None)
            rate = rates.rate(route)
            if rate <= 0:
                return None
            rng = self._rng(f"{route}/{key}")
            if rng.random() >= rate:
                return None
            kinds = sorted(kind for kind, weight in rates.mix.items() if weight > 0)
            kind = rng.choices(kinds, weights=[rates.mix[k] for k in kinds])[0]
            if kind == "burst":
                status = rng.choice(_STATUSES)
                self._bursts[route] = (rates.burst_length - 1, status)
                self._count(f"{route}.burst")
                self._count(f"{route}.burst_5xx")
                return Fault(kind="server_error", route=route, status=status, times=None)
            self._count(f"{route}.{kind}")
            if kind == "server_error":
                return Fault(kind=kind, route=route, status=rng.choice(_STATUSES), times=None)
            if kind == "rate_limit":
                return Fault(kind=kind, route=route, retry_after=rates.retry_after, times=None)
            return Fault(kind="drop_connection", route=route, times=None)

    def for_new_task(self, key: str, taken: Collection[str] = ()) -> tuple[str, dict[str, Fault]]:
        """For a task being created from a request about `key`: the stream name its later
        queries and downloads are drawn under, and the task faults it gets (at most one per
        kind; failed and cancelled exclude each other). Kinds in `taken` (already chosen by a
        scripted fault) are not added; neither is an ending when the task already has one."""
        with self._lock:
            ordinal = self._seen.get(f"task/{key}", 0)
            stream = f"{key}#{ordinal}"
            rng = self._rng(f"task/{key}")
            rates = self._rates
            if rates is None:
                return stream, {}
            ending, slow, lost, charge = rng.random(), rng.random(), rng.random(), rng.random()
            code = rng.choice(rates.fail_codes) if rates.fail_codes else "service_error"
            chosen: dict[str, Fault] = {}
            if {"fail_task", "cancel_task"} & set(taken):
                pass  # the task's ending is scripted
            elif ending < rates.fail_task:
                chosen["fail_task"] = Fault(kind="fail_task", error_code=code)
            elif ending < rates.fail_task + rates.cancel_task:
                fraction = rates.cancel_billed_fraction if charge < rates.cancel_charged else 0.0
                chosen["cancel_task"] = Fault(kind="cancel_task", billed_fraction=fraction)
            if slow < rates.slow_task:
                chosen["slow_task"] = Fault(kind="slow_task", seconds=rates.slow_seconds)
            if lost < rates.lose_create_response:
                chosen["lose_create_response"] = Fault(kind="lose_create_response")
            chosen = {kind: fault for kind, fault in chosen.items() if kind not in taken}
            for kind in chosen:
                self._count(f"task.{kind}")
            return stream, chosen
