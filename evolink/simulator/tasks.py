"""A simulated task: its timeline, its task object as the API shows it, and its signed links.

A task's state is a pure function of the clock: pending for the first 10% of its generation time,
processing (progress rising along its `progress_curve`) until `finish_at`, then completed, failed
or cancelled (a `cancel_task` fault; `cancel_billed_fraction` of the estimate is charged).
Nothing runs in the background, so a thousand tasks cost nothing while nobody looks, and every
read agrees with every other read at the same instant.

Forgetting is a function of the clock too, as at EvoLink: `task_ttl_seconds` after it finished
the API no longer knows the task (404 "Task not found or expired"), and `idempotency_ttl_seconds`
after it was created its Idempotency-Key no longer replays it. Both TTLs are fixed when the task
is created (like its link TTL), so changing the simulator's settings later never brings a
forgotten task back. The simulator keeps forgotten tasks for its ledger: billing is forever.

`SimTask.to_state` / `SimTask.from_state` are the task as JSON, for the simulator's state file
(`evolink.simulator.state`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlencode

from evolink.cost import CREDIT_PLACES, USD_PLACES, CostEstimate
from evolink.models import ImageRequest
from evolink.simulator.ledger import LedgerEntry

PENDING_FRACTION: Final = 0.1
PROGRESS_CURVES: Final[dict[str, Callable[[float], float]]] = {
    "linear": lambda x: x,
    # front-loaded: fast start, slow tail (99 % for the last tenth of the time)
    "ease-out": lambda x: 1 - (1 - x) ** 2,
    # back-loaded: slow start, quick end (25 % at half time)
    "ease-in": lambda x: x * x,
    # back-loaded: queued at 5 % until 60 % of the time, then jumps and runs on
    "stall": lambda x: min(x, 0.05) if x < 0.6 else x,
}
"""Share of the work shown as done at each share of the generation time (both 0..1): the
progress of a task is 100 × curve(elapsed / generation_seconds), kept within 1..99 while it
runs. Real progress is rarely linear; these let tests and `bench/polling.py` see the pacing
cope with a task that races ahead and then sticks, or lags and then rushes."""
_ZERO: Final = Decimal(0)


class LinkSigner:
    """HMAC signatures for result links, so a tampered or guessed URL is refused like at S3."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @property
    def secret(self) -> bytes:
        """The HMAC key, for the state file: a restarted simulator must verify old links."""
        return self._secret

    def sign(self, task_id: str, index: int, expires: int) -> str:
        message = f"{task_id}/{index}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:40]

    def verify(self, task_id: str, index: int, expires: int, signature: str) -> bool:
        return hmac.compare_digest(self.sign(task_id, index, expires), signature)


@dataclass
class SimTask:
    """One task as the simulator keeps it; `failure` is (code, message) if it is to fail,
    `cancel_billed_fraction` the share of its estimate charged if it is to end cancelled."""

    id: str
    request: ImageRequest
    payload: dict[str, Any]
    estimate: CostEstimate
    created_at: float
    generation_seconds: float
    link_ttl_seconds: float
    idempotency_key: str | None = None
    fingerprint: str | None = None
    failure: tuple[str, str] | None = None
    cancel_billed_fraction: float | None = None
    faults: tuple[str, ...] = ()
    response_lost: bool = False
    progress_curve: str = "linear"
    estimated_seconds: float | None = None  # what `estimated_time` says; None: the truth
    task_ttl_seconds: float = 86400  # the API forgets it this long after it finished
    idempotency_ttl_seconds: float = 86400  # its Idempotency-Key replays it this long
    chaos_stream: str = ""  # what its chaos draws are about (evolink.simulator.chaos)
    _links_cache: list[str] | None = field(default=None, repr=False, compare=False)
    _state_cache: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def started_at(self) -> float:
        return self.created_at + PENDING_FRACTION * self.generation_seconds

    @property
    def finish_at(self) -> float:
        return self.created_at + self.generation_seconds

    @property
    def links_expire_at(self) -> int:
        """Unix second after which links are refused; ttl 0 means expired at completion."""
        if self.link_ttl_seconds <= 0:
            return math.floor(self.finish_at)
        return math.ceil(self.finish_at + self.link_ttl_seconds)

    @property
    def forget_at(self) -> float:
        """When the API forgets the task: `task_ttl_seconds` after it finished."""
        return self.finish_at + self.task_ttl_seconds

    def forgotten_at(self, now: float) -> bool:
        """True once GET answers 404 for it (it stays in the ledger: billing is forever)."""
        return now >= self.forget_at

    def replays_at(self, now: float) -> bool:
        """Whether its Idempotency-Key still returns it: until `idempotency_ttl_seconds` after
        it was created, and never once the task itself is forgotten (a replay cannot show a
        task the API no longer knows)."""
        return (
            self.idempotency_key is not None
            and now < self.created_at + self.idempotency_ttl_seconds
            and not self.forgotten_at(now)
        )

    @property
    def expires_entirely_at(self) -> float:
        """The instant after which nothing of it answers: task, links and key all expired."""
        return max(
            self.forget_at,
            float(self.links_expire_at),
            self.created_at + self.idempotency_ttl_seconds,
        )

    def status_at(self, now: float) -> str:
        if now >= self.finish_at:
            if self.cancel_billed_fraction is not None:
                return "cancelled"
            return "failed" if self.failure else "completed"
        return "processing" if now >= self.started_at else "pending"

    def progress_at(self, now: float) -> int:
        status = self.status_at(now)
        if status in ("completed", "failed"):
            return 100  # a cancelled task keeps the progress it had (99 at most)
        if status == "pending" or self.generation_seconds <= 0:
            return 0
        fraction = (now - self.created_at) / self.generation_seconds
        return max(1, min(99, int(PROGRESS_CURVES[self.progress_curve](fraction) * 100)))

    @property
    def estimated_time(self) -> int:
        """`task_info.estimated_time`: whole seconds, at least 1 (possibly wrong on purpose)."""
        seconds = (
            self.generation_seconds if self.estimated_seconds is None else self.estimated_seconds
        )
        return max(1, math.ceil(seconds))

    def result_links(self, base_url: str, signer: LinkSigner) -> list[str]:
        """The n result URLs: /files/<task>/<i>.png?expires=..&sig=.. on the simulator itself."""
        if self._links_cache is None:
            expires = self.links_expire_at
            self._links_cache = [
                f"{base_url}/files/{self.id}/{index}.png?"
                + urlencode({"expires": expires, "sig": signer.sign(self.id, index, expires)})
                for index in range(self.request.n)
            ]
        return self._links_cache

    def to_api(self, now: float, base_url: str, signer: LinkSigner) -> dict[str, Any]:
        """The task object, shaped like `GET /v1/tasks/{id}` at instant `now`."""
        status = self.status_at(now)
        est = self.estimate
        reserved = float(est.credits)
        usage: dict[str, Any] = {
            "billing_rule": "per_token",
            "credits_reserved": reserved,
            "user_group": "default",
        }
        task: dict[str, Any] = {
            "id": self.id,
            "object": "image.generation.task",
            "created": int(self.created_at),
            "model": self.request.model,
            "status": status,
            "progress": self.progress_at(now),
            "type": "image",
            "task_info": {
                "can_cancel": status in ("pending", "processing"),
                "estimated_time": self.estimated_time,
            },
            "usage": usage,
        }
        if status == "completed":
            task["results"] = list(self.result_links(base_url, signer))
            usage.update(
                credits_used=reserved,
                cost={"credits": reserved, "usd": float(est.usd)},
                input_tokens=est.image_input_tokens + est.text_input_tokens,
                output_tokens=est.output_tokens,
                input_tokens_details={
                    "image_tokens": est.image_input_tokens,
                    "text_tokens": est.text_input_tokens,
                    "cached_tokens": 0,
                },
            )
            task["billing"] = {
                "charge_status": "charged",
                "reserved_credits": reserved,
                "charged_credits": reserved,
                "refunded_credits": 0,
            }
        elif status == "cancelled":
            charged = self._cancel_charge()
            credits = float(charged[1])
            usage.update(credits_used=credits, cost={"credits": credits, "usd": float(charged[0])})
            task["billing"] = {
                "charge_status": "charged" if credits > 0 else "refunded",
                "reserved_credits": reserved,
                "charged_credits": credits,
                "refunded_credits": max(0.0, reserved - credits),
            }
        elif status == "failed" and self.failure is not None:
            code, message = self.failure
            task["error"] = {"code": code, "message": message}
            usage.update(credits_used=0, cost={"credits": 0, "usd": 0})
            task["billing"] = {
                "charge_status": "refunded",
                "reserved_credits": reserved,
                "charged_credits": 0,
                "refunded_credits": reserved,
            }
        return task

    def _cancel_charge(self) -> tuple[Decimal, Decimal]:
        """(USD, credits) charged for a cancelled task: its share of the estimate."""
        share = Decimal(str(self.cancel_billed_fraction or 0))
        est = self.estimate
        return (est.usd * share).quantize(USD_PLACES), (est.credits * share).quantize(CREDIT_PLACES)

    def ledger_entry(self, now: float) -> LedgerEntry:
        status = self.status_at(now)
        charged = status == "completed"
        est = self.estimate
        billed_usd, billed_credits = (est.usd, est.credits) if charged else (_ZERO, _ZERO)
        if status == "cancelled":
            billed_usd, billed_credits = self._cancel_charge()
        return LedgerEntry(
            task_id=self.id,
            idempotency_key=self.idempotency_key,
            request=dict(self.payload),
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finish_at if status in ("completed", "failed", "cancelled") else None,
            expected_finish_at=self.finish_at,
            status=status,
            output_tokens=est.output_tokens if charged else 0,
            image_input_tokens=est.image_input_tokens if charged else 0,
            text_input_tokens=est.text_input_tokens if charged else 0,
            reserved_credits=est.credits,
            billed_usd=billed_usd,
            billed_credits=billed_credits,
            error_code=self.failure[0] if self.failure and status == "failed" else None,
            faults=self.faults,
            response_lost=self.response_lost,
            forgotten=self.forgotten_at(now),
        )

    # --- the state file -------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything that defines the task, as JSON (Decimals as strings, no digit lost);
        `from_state` reads it back. The request is kept as its payload. Computed once: a task
        never changes after it is created, and a state file is rewritten often."""
        if self._state_cache is None:
            self._state_cache = self._state()
        return self._state_cache

    def _state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "payload": self.payload,
            "estimate": self.estimate.as_dict(),
            "created_at": self.created_at,
            "generation_seconds": self.generation_seconds,
            "link_ttl_seconds": self.link_ttl_seconds,
            "task_ttl_seconds": self.task_ttl_seconds,
            "idempotency_ttl_seconds": self.idempotency_ttl_seconds,
            "idempotency_key": self.idempotency_key,
            "fingerprint": self.fingerprint,
            "failure": None if self.failure is None else list(self.failure),
            "cancel_billed_fraction": self.cancel_billed_fraction,
            "faults": list(self.faults),
            "response_lost": self.response_lost,
            "progress_curve": self.progress_curve,
            "estimated_seconds": self.estimated_seconds,
            "chaos_stream": self.chaos_stream,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> SimTask:
        """The task `to_state` wrote. Raises KeyError, TypeError or ValueError on a malformed
        record (the state file reports which file). The request is rebuilt without validation:
        it was validated when it arrived, and the URL rules depend on settings
        (EVOLINK_ALLOW_PRIVATE_URLS) that the restarted process may not share."""
        payload = data["payload"]
        if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str):
            raise ValueError("a task's payload must be a request object with a prompt")
        est = data["estimate"]
        estimate = CostEstimate(
            int(est["width"]),
            int(est["height"]),
            str(est["quality"]),
            int(est["n"]),
            int(est["output_tokens"]),
            int(est["image_input_tokens"]),
            int(est["text_input_tokens"]),
            Decimal(str(est["usd"])),
            Decimal(str(est["credits"])),
        )
        failure = data["failure"]
        curve = str(data["progress_curve"])
        if curve not in PROGRESS_CURVES:
            raise ValueError(f"unknown progress curve {curve!r}")
        estimated = data["estimated_seconds"]
        fraction = data["cancel_billed_fraction"]
        return cls(
            id=str(data["id"]),
            request=ImageRequest.model_construct(**payload),
            payload=dict(payload),
            estimate=estimate,
            created_at=float(data["created_at"]),
            generation_seconds=float(data["generation_seconds"]),
            link_ttl_seconds=float(data["link_ttl_seconds"]),
            task_ttl_seconds=float(data["task_ttl_seconds"]),
            idempotency_ttl_seconds=float(data["idempotency_ttl_seconds"]),
            idempotency_key=_optional_str(data["idempotency_key"]),
            fingerprint=_optional_str(data["fingerprint"]),
            failure=None if failure is None else (str(failure[0]), str(failure[1])),
            cancel_billed_fraction=None if fraction is None else float(fraction),
            faults=tuple(str(kind) for kind in data["faults"]),
            response_lost=bool(data["response_lost"]),
            progress_curve=curve,
            estimated_seconds=None if estimated is None else float(estimated),
            chaos_stream=str(data["chaos_stream"]),
        )


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a string or null, got {type(value).__name__}")
    return value
