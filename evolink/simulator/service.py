"""The simulated EvoLink API: routes in, `Reply` values out, all state behind one lock.

This is where the documented behaviour lives (auth, validation with the project's own
`ImageRequest`, idempotency, task lifecycle, billing, signed result links) and where faults are
applied. It knows nothing about sockets, so the HTTP layer stays a thin adapter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import ValidationError

from evolink.cost import estimate
from evolink.models import ImageRequest, validation_problems
from evolink.simulator.callbacks import CallbackSender
from evolink.simulator.chaos import Chaos, FaultRates, request_key
from evolink.simulator.faults import SERVER_ERROR_CODES, Fault, FaultBook
from evolink.simulator.ledger import LedgerEntry, max_concurrent
from evolink.simulator.png import PngCache
from evolink.simulator.replies import (
    Reply,
    error_reply,
    invalid_request,
    json_reply,
    not_found,
    xml_error_reply,
)
from evolink.simulator.tasks import PROGRESS_CURVES, LinkSigner, SimTask

DEFAULT_API_KEY: Final = "sk-sim-local-demo-key"
IDEMPOTENCY_KEY_RE: Final = re.compile(r"[A-Za-z0-9._-]{16,96}")
ROUTE_NAMES: Final = ("create", "get", "download")
_TASK_PATH: Final = re.compile(r"/v1/tasks/(?P<task_id>[^/]+)")
_FILE_PATH: Final = re.compile(r"/files/(?P<task_id>[^/]+)/(?P<index>\d+)\.png")
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits


class Headers(Protocol):
    """Case-insensitive header lookup (http.client.HTTPMessage, or a dict in unit use)."""

    def get(self, name: str, default: None = None) -> str | None: ...


def _seconds_text(seconds: float) -> str:
    """'2' for 2.0, '0.5' for 0.5: integral hints stay integers, as real servers send them."""
    return str(int(seconds)) if float(seconds).is_integer() else format(seconds, "g")


def _fingerprint(body: Any) -> str:
    """Same JSON meaning → same fingerprint, whatever the key order or whitespace."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class SimulatorService:
    """State and behaviour of one simulated EvoLink account."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        generation_seconds: float = 2.0,
        result_ttl_seconds: float = 86400,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        png_cache_bytes: int = 128 * 1024 * 1024,
        chaos: FaultRates | None = None,
        callback_ca_file: str | None = None,
        estimate_factor: float = 1.0,
        estimate_spread: float = 0.0,
        progress_curve: str = "linear",
    ) -> None:
        self.api_key = api_key
        self.generation_seconds = generation_seconds
        self.result_ttl_seconds = result_ttl_seconds
        self.bill_multiplier = 1.0  # new tasks bill this many times their estimated tokens
        self.estimate_factor = estimate_factor
        self.estimate_spread = estimate_spread
        self.progress_curve = progress_curve
        self.seed = seed
        self._base_clock = clock
        self._clock_offset = 0.0
        self.base_url = "http://127.0.0.1"  # set by the server once bound
        self.fault_book = FaultBook(seed)
        self.chaos = Chaos(seed, chaos)  # random faults by rate (evolink/simulator/chaos.py)
        self.png_cache = PngCache(png_cache_bytes)
        # POSTs finished tasks to their callback_url (evolink/simulator/callbacks.py).
        self.callbacks = CallbackSender(
            self.task_status, self.task_object, ca_file=callback_ca_file
        )
        self._signer = LinkSigner(secrets.token_bytes(32))
        self._lock = threading.RLock()
        self._reset_state()

    def _reset_state(self) -> None:
        # Task ids, drawn apart from the fault RNG on purpose; not secrets.
        self._ids = random.Random(f"task-ids-{self.seed}")  # nosec B311
        self._tasks: dict[str, SimTask] = {}
        self._order: list[str] = []
        self._idempotency: dict[str, str] = {}  # key → task id
        self._chaos_streams: dict[str, str] = {}  # task id → what its chaos draws are about
        self._counts: dict[str, int] = dict.fromkeys(ROUTE_NAMES, 0)
        self._clock_offset = 0.0

    # --- how wrong the estimate is, how progress moves --------------------------------------

    @property
    def progress_curve(self) -> str:
        """Progress curve of new tasks: a name in `tasks.PROGRESS_CURVES`."""
        return self._progress_curve

    @progress_curve.setter
    def progress_curve(self, name: str) -> None:
        if name not in PROGRESS_CURVES:
            raise ValueError(f"progress_curve: one of {sorted(PROGRESS_CURVES)}, got {name!r}")
        self._progress_curve = name

    def estimated_seconds(self, true_seconds: float, stream: str) -> float:
        """What a new task's `estimated_time` says: the true time × `estimate_factor` × a draw
        in 1 ± `estimate_spread`, seeded by (seed, what the task is about) like chaos draws,
        so the same requests get the same estimates whatever their order."""
        factor = self.estimate_factor
        if self.estimate_spread:
            rng = random.Random(f"estimate-{self.seed}-{stream}")  # nosec B311 - not a secret
            factor *= 1 + rng.uniform(-self.estimate_spread, self.estimate_spread)
        return true_seconds * factor

    # --- time -----------------------------------------------------------------------------

    def now(self) -> float:
        """The simulator's Unix time: the real clock plus whatever `advance_clock` added."""
        return self._base_clock() + self._clock_offset

    def advance_clock(self, seconds: float) -> float:
        """Jump ahead (tasks finish, links expire) without sleeping; returns the new offset."""
        if seconds < 0:
            raise ValueError("the simulator's clock only moves forward")
        with self._lock:
            self._clock_offset += seconds
            return self._clock_offset

    # --- inspection -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every task, key, count and fault: afterwards it behaves like a fresh simulator."""
        with self._lock:
            self._reset_state()
        self.fault_book.reset()
        self.chaos.reset()
        self.png_cache.clear()
        self.callbacks.forget()

    def close(self) -> None:
        """Stop sending callbacks (the server calls this when it stops)."""
        self.callbacks.close()

    def ledger(self) -> list[LedgerEntry]:
        now = self.now()
        with self._lock:
            return [self._tasks[task_id].ledger_entry(now) for task_id in self._order]

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def task_status(self, task_id: str) -> str | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else task.status_at(self.now())

    def task_object(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else task.to_api(self.now(), self.base_url, self._signer)

    def stats(self) -> dict[str, Any]:
        entries = self.ledger()
        return {
            "request_counts": self.request_counts(),
            "fault_counts": self.fault_book.counts(),
            "chaos_counts": self.chaos.counts(),
            "tasks": len(entries),
            "max_concurrent_processing": max_concurrent(entries, now=self.now()),
            "clock_offset_seconds": self._clock_offset,
            "billed_usd": str(sum((e.billed_usd for e in entries), Decimal(0))),
            "billed_credits": str(sum((e.billed_credits for e in entries), Decimal(0))),
        }

    # --- dispatch -------------------------------------------------------------------------

    def dispatch(
        self, method: str, target: str, headers: Headers, body: bytes, loopback: bool
    ) -> Reply:
        """Route one HTTP request (HEAD is answered like GET; the HTTP layer omits the body)."""
        method = "GET" if method == "HEAD" else method
        parts = urlsplit(target)
        path = parts.path
        if path.startswith("/_sim/"):
            if not loopback:
                message = "admin endpoints are loopback-only"
                return error_reply(403, "forbidden", message, "permission_error")
            return self._admin(method, path, body)
        if path == "/v1/images/generations":
            if method != "POST":
                return self._method_not_allowed(method, path)
            return self._create(headers, body)
        match = _TASK_PATH.fullmatch(path)
        if match:
            if method != "GET":
                return self._method_not_allowed(method, path)
            return self._get(headers, unquote(match["task_id"]))
        match = _FILE_PATH.fullmatch(path)
        if match:
            if method != "GET":
                return self._method_not_allowed(method, path)
            return self._download(unquote(match["task_id"]), int(match["index"]), parts.query)
        return not_found(f"No route for {method} {path}")

    @staticmethod
    def _method_not_allowed(method: str, path: str) -> Reply:
        return error_reply(
            405, "method_not_allowed", f"{method} is not allowed on {path}", "invalid_request_error"
        )

    # --- shared gates ---------------------------------------------------------------------

    def _count(self, route: str) -> None:
        with self._lock:
            self._counts[route] += 1

    def _auth(self, headers: Headers) -> Reply | None:
        header = headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        given, expected = token.strip().encode(), self.api_key.encode()  # bytes: any charset
        if scheme.lower() == "bearer" and hmac.compare_digest(given, expected):
            return None
        message = (
            "Invalid API key" if header else "Missing API key: send 'Authorization: Bearer <key>'"
        )
        return error_reply(401, "unauthorized", message, "authentication_error")

    def _request_faults(self, route: str, prompt: str | None, chaos_key: str) -> Reply | None:
        """Apply latency, then answer with the terminal fault if one fires — a scripted one
        first, else a random one (chaos) drawn for what the request is about (`chaos_key`)."""
        decision = self.fault_book.for_request(route, prompt)
        if decision.delay_seconds > 0:
            time.sleep(decision.delay_seconds)
        fault = decision.terminal or self.chaos.for_request(route, chaos_key)
        if fault is None:
            return None
        if fault.kind == "drop_connection":
            return Reply(drop=True)
        if fault.kind == "rate_limit":
            wait = fault.retry_after if fault.retry_after is not None else fault.fallback_seconds
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = _seconds_text(fault.retry_after)
            return error_reply(
                429,
                "rate_limit_exceeded",
                "Too many requests: rate limit exceeded for this API key",
                "rate_limit_error",
                fallback_suggestion=f"retry after {_seconds_text(wait)} seconds",
                headers=headers,
            )
        code = SERVER_ERROR_CODES[fault.status]  # server_error
        return error_reply(fault.status, code, f"Simulated {code} ({fault.status})", code)

    # --- POST /v1/images/generations ------------------------------------------------------

    def _create(self, headers: Headers, raw: bytes) -> Reply:
        self._count("create")
        refused = self._auth(headers)
        if refused:
            return refused
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        prompt = body.get("prompt") if isinstance(body, dict) else None
        chaos_key = request_key(body)
        refused = self._request_faults(
            "create", prompt if isinstance(prompt, str) else None, chaos_key
        )
        if refused:
            return refused

        key = headers.get("Idempotency-Key")
        if key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(key):
            return invalid_request(
                "Idempotency-Key must be 16-96 characters of [A-Za-z0-9._-]",
                param="Idempotency-Key",
            )
        if not isinstance(body, dict):
            return invalid_request("Request body must be a JSON object")
        fingerprint = _fingerprint(body)
        with self._lock:
            now = self.now()
            if key is not None and key in self._idempotency:
                task = self._tasks[self._idempotency[key]]
                if task.fingerprint != fingerprint:
                    return error_reply(
                        409,
                        "idempotency_conflict",
                        "This Idempotency-Key was already used with a different request body",
                        "invalid_request_error",
                        param="Idempotency-Key",
                    )
                return json_reply(
                    task.to_api(now, self.base_url, self._signer),
                    headers={"idempotency-replayed": "true"},
                )
            try:
                request = ImageRequest.model_validate(body)
            except ValidationError as error:
                field, message = validation_problems(error)[0]
                param = None if field == "request" else field
                return invalid_request(f"{field}: {message}", param=param)
            task = self._new_task(request, key, fingerprint, now, chaos_key)
            reply = json_reply(task.to_api(now, self.base_url, self._signer))
        if task.response_lost:
            return Reply(drop=True)
        return reply

    def _new_task_id(self, now: float) -> str:
        while True:
            suffix = "".join(self._ids.choice(_ID_ALPHABET) for _ in range(8))
            task_id = f"task-unified-{int(now)}-{suffix}"
            if task_id not in self._tasks:
                return task_id

    def _new_task(
        self,
        request: ImageRequest,
        key: str | None,
        fingerprint: str,
        now: float,
        chaos_key: str = "",
    ) -> SimTask:
        """Create and record a task (lock held), shaped by whichever task faults fire
        (scripted ones first, then random ones for the kinds they left)."""
        faults = self.fault_book.for_new_task(request.prompt)
        stream, random_faults = self.chaos.for_new_task(chaos_key, taken=faults)
        faults = {**faults, **random_faults}
        slow, fail = faults.get("slow_task"), faults.get("fail_task")
        links, cancel = faults.get("expire_links"), faults.get("cancel_task")
        seconds = slow.seconds if slow and slow.seconds is not None else self.generation_seconds
        task = SimTask(
            id=self._new_task_id(now),
            request=request,
            payload=request.to_payload(),
            estimate=estimate(request).scaled(self.bill_multiplier),
            created_at=now,
            generation_seconds=seconds,
            link_ttl_seconds=links.ttl_seconds if links else self.result_ttl_seconds,
            idempotency_key=key,
            fingerprint=fingerprint,
            failure=(fail.error_code, fail.failure_message) if fail else None,
            cancel_billed_fraction=cancel.billed_fraction if cancel else None,
            faults=tuple(sorted(faults)),
            response_lost="lose_create_response" in faults,
            progress_curve=self.progress_curve,
            estimated_seconds=self.estimated_seconds(seconds, stream),
        )
        self._tasks[task.id] = task
        self._chaos_streams[task.id] = stream
        self._order.append(task.id)
        if request.callback_url:
            self.callbacks.watch(task.id, request.callback_url)
        if key is not None:
            self._idempotency[key] = task.id
        return task

    # --- GET /v1/tasks/{id} ---------------------------------------------------------------

    def _get(self, headers: Headers, task_id: str) -> Reply:
        self._count("get")
        refused = self._auth(headers)
        if refused:
            return refused
        with self._lock:
            task = self._tasks.get(task_id)
            stream = self._chaos_streams.get(task_id, f"unknown/{task_id}")
        refused = self._request_faults("get", task.request.prompt if task else None, stream)
        if refused:
            return refused
        if task is None:
            return not_found("Task not found or expired")
        with self._lock:
            return json_reply(task.to_api(self.now(), self.base_url, self._signer))

    # --- GET /files/{id}/{i}.png ----------------------------------------------------------

    def _download(self, task_id: str, index: int, query: str) -> Reply:
        """Presigned-link semantics: the signature and expiry are checked before anything else."""
        self._count("download")
        with self._lock:
            task = self._tasks.get(task_id)
            stream = self._chaos_streams.get(task_id, f"unknown/{task_id}")
        refused = self._request_faults(
            "download", task.request.prompt if task else None, f"{stream}/{index}"
        )
        if refused:
            return refused
        params = parse_qs(query)
        try:
            expires = int(params["expires"][0])
            signature = params["sig"][0]
        except (KeyError, IndexError, ValueError):
            message = "Query-string authentication requires expires and sig"
            return xml_error_reply(403, "AccessDenied", message)
        if not self._signer.verify(task_id, index, expires, signature):
            message = "The request signature does not match"
            return xml_error_reply(403, "SignatureDoesNotMatch", message)
        now = self.now()
        if now >= expires:
            return xml_error_reply(403, "AccessDenied", "Request has expired")
        if task is None or index >= task.request.n or task.status_at(now) != "completed":
            return xml_error_reply(404, "NoSuchKey", "The specified key does not exist.")
        width, height = task.request.pixel_size()
        data = self.png_cache.get(f"{task_id}/{index}", width, height)
        return Reply(
            body=data,
            content_type="image/png",
            headers={"Cache-Control": "private, max-age=86400"},
        )

    # --- /_sim/* --------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: bytes) -> Reply:
        if (method, path) == ("GET", "/_sim/health"):
            with self._lock:
                tasks = len(self._order)
            return json_reply({"status": "ok", "base_url": self.base_url, "tasks": tasks})
        if (method, path) == ("GET", "/_sim/ledger"):
            return json_reply([entry.to_json() for entry in self.ledger()])
        if (method, path) == ("GET", "/_sim/stats"):
            return json_reply(self.stats())
        if (method, path) == ("GET", "/_sim/faults"):
            return json_reply([fault.to_dict() for fault in self.fault_book.snapshot()])
        if (method, path) == ("POST", "/_sim/faults"):
            return self._add_faults(body)
        if (method, path) == ("GET", "/_sim/callbacks"):
            return json_reply([attempt.to_json() for attempt in self.callbacks.attempts()])
        if (method, path) == ("GET", "/_sim/chaos"):
            return self._chaos_reply()
        if (method, path) == ("POST", "/_sim/chaos"):
            return self._set_chaos(body)
        if (method, path) == ("POST", "/_sim/clock"):
            return self._advance_clock(body)
        if (method, path) == ("POST", "/_sim/reset"):
            self.reset()
            return json_reply({"status": "reset"})
        return not_found(f"No admin route {method} {path}")

    def _add_faults(self, raw: bytes) -> Reply:
        """Body: one fault object or a list of them; all are validated before any is armed."""
        try:
            data = json.loads(raw or b"null")
            specs = data if isinstance(data, list) else [data]
            faults = [Fault.from_dict(spec) for spec in specs]
        except (ValueError, TypeError) as error:
            return invalid_request(str(error))
        armed = [self.fault_book.add(fault) for fault in faults]
        return json_reply({"added": len(armed), "faults": [f.to_dict() for f in armed]})

    def _chaos_reply(self) -> Reply:
        rates = self.chaos.rates
        return json_reply(
            {"rates": None if rates is None else rates.to_dict(), "counts": self.chaos.counts()}
        )

    def _set_chaos(self, raw: bytes) -> Reply:
        """Body: the `FaultRates` fields as an object (missing ones default), or null for off."""
        try:
            data = json.loads(raw or b"null")
            rates = None if data is None else FaultRates.from_dict(data)
        except (ValueError, TypeError) as error:
            return invalid_request(str(error))
        self.chaos.rates = rates
        return self._chaos_reply()

    def _advance_clock(self, raw: bytes) -> Reply:
        """Body: {"advance": seconds}."""
        try:
            seconds = float(json.loads(raw or b"{}")["advance"])
            offset = self.advance_clock(seconds)
        except (ValueError, TypeError, KeyError) as error:
            return invalid_request(f'expected {{"advance": seconds >= 0}}: {error}')
        return json_reply({"clock_offset_seconds": offset, "now": self.now()})
