"""The simulated EvoLink API: routes in, `Reply` values out, all state behind one lock.

This is where the documented behaviour lives (auth, validation with the project's own
`ImageRequest`, idempotency, task lifecycle, billing, signed result links, forgetting) and where
faults are applied. It knows nothing about sockets or files, so the HTTP layer stays a thin
adapter; `snapshot_state` / `restore_state` hand its state to `evolink.simulator.state` as plain
JSON, and `changes` tells that saver when there is something new to write.

Like the real API it forgets: a task `task_ttl_seconds` after it finished (GET answers 404 "Task
not found or expired", its links 404), an Idempotency-Key `idempotency_ttl_seconds` after its task
was created (the same key then creates, and bills, a new task). Its ledger forgets nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
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
from evolink.simulator.callbacks import FINAL_STATUSES, CallbackSender
from evolink.simulator.chaos import Chaos, FaultRates, request_key
from evolink.simulator.faults import SERVER_ERROR_CODES, Fault, FaultBook
from evolink.simulator.files import SimulatorFiles
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
"""The simulator's own key: a public test value (printing it leaks nothing)."""
DEFAULT_TASK_TTL_SECONDS: Final = 86400.0
DEFAULT_IDEMPOTENCY_TTL_SECONDS: Final = 86400.0
STATE_FORMAT: Final = "evolink-simulator-state"
STATE_VERSION: Final = 1
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


def _ttl(name: str, seconds: float) -> float:
    """A TTL must be a finite number of seconds >= 0 (0: gone the moment it could be)."""
    value = float(seconds)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be a finite number of seconds >= 0, got {seconds!r}")
    return value


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
        task_ttl_seconds: float = DEFAULT_TASK_TTL_SECONDS,
        idempotency_ttl_seconds: float = DEFAULT_IDEMPOTENCY_TTL_SECONDS,
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
        self.task_ttl_seconds = task_ttl_seconds
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
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
        # Bumped on every change worth saving (a task created, the clock moved, a reset): a
        # state file's saver compares it with what it last wrote. Without one it is only an int.
        self._changes = 0
        self._reset_state()
        self.files = SimulatorFiles(self)  # the Files API (evolink/simulator/files.py)

    def _reset_state(self) -> None:
        # Task ids, drawn apart from the fault RNG on purpose; not secrets.
        self._ids = random.Random(f"task-ids-{self.seed}")  # nosec B311
        self._tasks: dict[str, SimTask] = {}  # forgotten ones too: the ledger keeps them
        self._order: list[str] = []
        self._idempotency: dict[str, str] = {}  # key → the last task id created with it
        self._counts: dict[str, int] = dict.fromkeys(ROUTE_NAMES, 0)
        self._clock_offset = 0.0

    # --- how long things are remembered -----------------------------------------------------

    @property
    def task_ttl_seconds(self) -> float:
        """New tasks are forgotten by the API this long after they finish (GET → 404)."""
        return self._task_ttl_seconds

    @task_ttl_seconds.setter
    def task_ttl_seconds(self, seconds: float) -> None:
        self._task_ttl_seconds = _ttl("task_ttl_seconds", seconds)

    @property
    def idempotency_ttl_seconds(self) -> float:
        """New tasks' Idempotency-Keys replay them this long after they were created."""
        return self._idempotency_ttl_seconds

    @idempotency_ttl_seconds.setter
    def idempotency_ttl_seconds(self, seconds: float) -> None:
        self._idempotency_ttl_seconds = _ttl("idempotency_ttl_seconds", seconds)

    @property
    def changes(self) -> int:
        """How many savable changes so far (tasks created, clock moves, resets, files)."""
        return self._changes + self.files.changes

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
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("the simulator's clock only moves forward, by a finite amount")
        with self._lock:
            self._clock_offset += seconds
            self._changes += 1
            return self._clock_offset

    @property
    def clock_offset(self) -> float:
        """Seconds `advance_clock` has added to the real clock so far."""
        return self._clock_offset

    def seconds_to_expire_everything(self) -> float:
        """How far the clock must move for every task, link and Idempotency-Key that exists
        now to be gone: the longest TTL plus the longest generation time still to run, plus
        1 s — or more, if a task was created under longer TTLs than today's."""
        with self._lock:
            now = self.now()
            tasks = list(self._tasks.values())
        longest_ttl = max(
            self.task_ttl_seconds, self.idempotency_ttl_seconds, self.result_ttl_seconds
        )
        running = max((task.finish_at - now for task in tasks), default=0.0)
        latest = max((task.expires_entirely_at - now for task in tasks), default=0.0)
        uploads = self.files.seconds_to_expire_all(now)
        return max(longest_ttl + max(running, 0.0), latest, uploads) + 1.0

    def age(self, seconds: float | None = None) -> float:
        """Move the clock `seconds` forward — None: far enough that every task, link and key
        that exists now has expired (`seconds_to_expire_everything`). Returns the seconds aged.
        Tasks still generating finish by the aged clock, as they would have by then."""
        with self._lock:
            aged = self.seconds_to_expire_everything() if seconds is None else float(seconds)
            self.advance_clock(aged)
        return aged

    def forgotten_count(self) -> int:
        """How many tasks the API has forgotten by now (all still in the ledger)."""
        with self._lock:
            now = self.now()
            return sum(1 for task in self._tasks.values() if task.forgotten_at(now))

    def _known(self, task_id: str, now: float) -> SimTask | None:
        """The task as the API sees it (lock held): None if it never existed or is forgotten."""
        task = self._tasks.get(task_id)
        return None if task is None or task.forgotten_at(now) else task

    # --- inspection -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every task, key, count and fault: afterwards it behaves like a fresh simulator
        (the link-signing secret stays; links of the forgotten tasks answer 404)."""
        with self._lock:
            self._reset_state()
            self._changes += 1
        self.fault_book.reset()
        self.files.reset()
        self.chaos.reset()
        self.png_cache.clear()
        self.callbacks.forget()

    def close(self) -> None:
        """Stop sending callbacks (the server calls this when it stops)."""
        self.callbacks.close()

    def ledger(self) -> list[LedgerEntry]:
        """Every task ever billed, forgotten ones too (`forgotten`), in creation order."""
        now = self.now()
        with self._lock:
            return [self._tasks[task_id].ledger_entry(now) for task_id in self._order]

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def task_status(self, task_id: str) -> str | None:
        """The task's status now; None if unknown or forgotten (no callback is sent then)."""
        with self._lock:
            now = self.now()
            task = self._known(task_id, now)
            return None if task is None else task.status_at(now)

    def task_object(self, task_id: str) -> dict[str, Any] | None:
        """The task as GET shows it now; None if unknown or forgotten."""
        with self._lock:
            now = self.now()
            task = self._known(task_id, now)
            return None if task is None else task.to_api(now, self.base_url, self._signer)

    def stats(self) -> dict[str, Any]:
        entries = self.ledger()
        return {
            "request_counts": self.request_counts(),
            "fault_counts": self.fault_book.counts(),
            "chaos_counts": self.chaos.counts(),
            "tasks": len(entries),
            "forgotten_tasks": sum(1 for entry in entries if entry.forgotten),
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
        if self.files.handles(path):
            return self.files.dispatch(method, target, headers, body, loopback)
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
            earlier = None if key is None else self._tasks.get(self._idempotency.get(key, ""))
            if earlier is not None and earlier.replays_at(now):
                # Within the key's TTL: the same task (or a conflict). Past it the key is
                # forgotten, so the request is a new one and makes, and bills, a new task.
                task = earlier
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
            failure=(
                (fail.error_code, fail.failure_message)
                if fail
                else self.files.reference_failure(
                    [*(request.image_urls or []), request.mask_url or ""]
                )
            ),
            cancel_billed_fraction=cancel.billed_fraction if cancel else None,
            faults=tuple(sorted(faults)),
            response_lost="lose_create_response" in faults,
            progress_curve=self.progress_curve,
            estimated_seconds=self.estimated_seconds(seconds, stream),
            task_ttl_seconds=self.task_ttl_seconds,
            idempotency_ttl_seconds=self.idempotency_ttl_seconds,
            chaos_stream=stream,
        )
        self._tasks[task.id] = task
        self._order.append(task.id)
        self._changes += 1
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
            task = self._known(task_id, self.now())
        stream = task.chaos_stream if task else f"unknown/{task_id}"
        refused = self._request_faults("get", task.request.prompt if task else None, stream)
        if refused:
            return refused
        with self._lock:
            now = self.now()
            if task is None or task.forgotten_at(now):  # forgotten meanwhile (a fault's delay)
                return not_found("Task not found or expired")
            return json_reply(task.to_api(now, self.base_url, self._signer))

    # --- GET /files/{id}/{i}.png ----------------------------------------------------------

    def _download(self, task_id: str, index: int, query: str) -> Reply:
        """Presigned-link semantics: the signature and expiry are checked before anything else."""
        self._count("download")
        with self._lock:
            task = self._known(task_id, self.now())
        stream = task.chaos_stream if task else f"unknown/{task_id}"
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
        if (
            task is None
            or task.forgotten_at(now)
            or index >= task.request.n
            or task.status_at(now) != "completed"
        ):
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
            return json_reply(
                {
                    "status": "ok",
                    "simulator": True,  # not the real EvoLink API: nothing here is billed
                    "base_url": self.base_url,
                    "tasks": tasks,
                    "forgotten_tasks": self.forgotten_count(),
                    "clock_offset_seconds": self._clock_offset,
                }
            )
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
        if (method, path) == ("POST", "/_sim/age"):
            return self._age(body)
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

    def _age(self, raw: bytes) -> Reply:
        """Body: {"seconds": N} to age by N seconds; {} or {"expire": true} to age until every
        task, link and Idempotency-Key that exists now has expired."""
        try:
            data = json.loads(raw or b"{}")
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            unknown = sorted(set(data) - {"seconds", "expire"})
            if unknown:
                raise ValueError(f"unknown field(s): {', '.join(unknown)}")
            seconds, expire = data.get("seconds"), data.get("expire")
            if expire not in (None, True, False):
                raise ValueError("expire: must be true or false")
            if seconds is not None:
                if expire or isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                    raise ValueError("seconds: a number >= 0 (and not together with expire)")
                aged = self.age(float(seconds))
            elif expire is False:
                raise ValueError("expire false and no seconds: nothing to do")
            else:
                aged = self.age(None)
        except ValueError as error:
            return invalid_request(f'expected {{"seconds": N >= 0}} or {{"expire": true}}: {error}')
        with self._lock:
            tasks = len(self._order)
        return json_reply(
            {
                "aged_seconds": aged,
                "clock_offset_seconds": self._clock_offset,
                "now": self.now(),
                "tasks": tasks,
                "forgotten_tasks": self.forgotten_count(),
            }
        )

    # --- the state file (evolink/simulator/state.py writes and reads it) ----------------------

    def snapshot_state(self) -> dict[str, Any]:
        """Everything a restarted simulator needs to carry on as if it never stopped, as JSON:
        the tasks in creation order (the idempotency map is rebuilt from them), the link-signing
        secret (links issued before a restart still verify), the clock offset, the task-id
        generator and the request counts. Not the fault and chaos books (configuration), nor
        the PNG cache (images are re-rendered, deterministically)."""
        with self._lock:
            tasks = [self._tasks[task_id] for task_id in self._order]
            version, internal, gauss = self._ids.getstate()
            document: dict[str, Any] = {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "clock_offset_seconds": self._clock_offset,
                "link_secret": self._signer.secret.hex(),
                "task_id_rng": [version, list(internal), gauss],
                "request_counts": dict(self._counts),
            }
        # Tasks never change once created and cache their JSON, so this is cheap outside the lock.
        document["tasks"] = [task.to_state() for task in tasks]
        document["files"] = self.files.snapshot_state()
        return document

    def restore_state(self, document: dict[str, Any]) -> None:
        """Carry on from a `snapshot_state` document (replacing whatever is here). Raises
        KeyError, TypeError or ValueError, leaving this service untouched, if it is malformed.
        Tasks still running get their callbacks watched again."""
        if document.get("format") != STATE_FORMAT or document.get("version") != STATE_VERSION:
            raise ValueError(f"not a {STATE_FORMAT} document of version {STATE_VERSION}")
        tasks = [SimTask.from_state(item) for item in document["tasks"]]
        files = SimulatorFiles.parse_state(document.get("files"))
        by_id = {task.id: task for task in tasks}
        if len(by_id) != len(tasks):
            raise ValueError("a task id appears twice")
        idempotency = {task.idempotency_key: task.id for task in tasks if task.idempotency_key}
        offset = float(document["clock_offset_seconds"])
        if not math.isfinite(offset) or offset < 0:
            raise ValueError("clock_offset_seconds: must be a finite number >= 0")
        secret = bytes.fromhex(document["link_secret"])
        if len(secret) < 16:
            raise ValueError("link_secret: too short")
        version, internal, gauss = document["task_id_rng"]
        # Task ids, not secrets.
        ids = random.Random()  # nosec B311
        ids.setstate((int(version), tuple(int(n) for n in internal), gauss))
        counts = dict.fromkeys(ROUTE_NAMES, 0)
        counts.update({str(k): int(v) for k, v in dict(document["request_counts"]).items()})
        with self._lock:
            self._tasks, self._order, self._idempotency = by_id, [t.id for t in tasks], idempotency
            self._clock_offset = offset
            self._signer = LinkSigner(secret)
            self._ids = ids
            self._counts = counts
            self.files.install_state(files)
            self._changes += 1
            now = self.now()
            for task in tasks:
                if task.request.callback_url and task.status_at(now) not in FINAL_STATUSES:
                    self.callbacks.watch(task.id, task.request.callback_url)
