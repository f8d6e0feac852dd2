"""The simulated EvoLink API: routes in, `Reply` values out, for one account.

This is where the documented behaviour of the API lives (auth, validation with the project's
own `ImageRequest`, idempotency, task creation and billing, signed result links) and where
faults are applied. It knows nothing about sockets or files, so the HTTP layer stays a thin
adapter. What the account remembers, and how it forgets, is `account.SimulatedAccount`, which
this service extends; the loopback-only `/_sim/*` routes are `admin`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import string
import time
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import ValidationError

from evolink.cost import estimate
from evolink.models import ImageRequest, validation_problems
from evolink.simulator.account import SimulatedAccount
from evolink.simulator.admin import admin_reply
from evolink.simulator.chaos import request_key
from evolink.simulator.faults import SERVER_ERROR_CODES
from evolink.simulator.files import SimulatorFiles
from evolink.simulator.replies import (
    Reply,
    error_reply,
    invalid_request,
    json_reply,
    not_found,
    xml_error_reply,
)
from evolink.simulator.tasks import SimTask

IDEMPOTENCY_KEY_RE: Final = re.compile(r"[A-Za-z0-9._-]{16,96}")
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


class SimulatorService(SimulatedAccount):
    """The simulated EvoLink API of one account: `dispatch` answers every HTTP request."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.files = SimulatorFiles(self)  # the Files API (evolink/simulator/files.py)

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
            return admin_reply(self, method, path, body)
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
