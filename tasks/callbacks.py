"""The callback receiver: EvoLink callbacks in, Prefect events out (`prefect-evolink callbacks`).

An ASGI app (`CallbackReceiver`) served by uvicorn (`serve`). For each POST to its path it:

1. refuses plain http outside testing (403): EvoLink only calls https URLs, so a plain request
   did not come from it — unless `EVOLINK_ALLOW_PRIVATE_URLS=true` (testing), or a proxy in
   `--forwarded-allow-ips` says the client spoke https (X-Forwarded-Proto);
2. reads the body within the read deadline (408) and up to `max_body_bytes` (413);
3. takes only a task id from it (`read_callback_task_id`): anything that is not one UTF-8 JSON
   object with a well-formed task id — wrong content type, deep nesting, duplicate keys, huge
   numbers, no id — gets 400, so the id never becomes a storage key unchecked;
4. answers at once, for free, what it already knows: 200 `duplicate` for a task it reported,
   409 `not_final` for a task the API called unfinished less than `not_final_ttl` ago;
5. charges the sender one token of its own bucket (`SourceBuckets`: 429 when empty) and reads
   storage: 202 `ignored` for a task id without our index (`_tasks/<task id>.json`, written at
   submit), 200 `duplicate` when its "reported" marker (`_tasks/_reported/<task id>.json`)
   says another process or an earlier life of this one reported it;
6. takes one token of the global bucket (429 when empty: it guards only what reads the API)
   and asks the API for the task with our key (503 when it cannot, so EvoLink retries; 202
   when the API does not know it); 409 `not_final` while the API says it is not finished;
7. writes the marker, then emits `evolink.task.completed` or `evolink.task.failed`, built from
   the API's answer and the index (`evolink.callbacks.task_event`). The event id is derived
   from (task id, status): two replicas racing past each other's marker emit the same id,
   which the Prefect event store keeps once.

Requests for one task id are handled one at a time, so a burst of forged callbacks for an
unfinished task costs one API read, not one each. Every request ends in one audit log line
(outcome, source address, task id) on the `prefect_evolink.callbacks` logger, at INFO.

Below the app, `prefect_evolink.tasks.callback_server.serve` guards the connections themselves
(`ConnectionGuard`: per-source and total caps at accept(), a deadline for every phase of a
connection).

Polling stays the source of truth: the event only tells people (automations) sooner; the
waiting poll task does not hear of it (receiver and poller share no process, and a socket per
waiting poll would cost more than the poll interval it saves).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError

from evolink.callbacks import (
    DEFAULT_BURST,
    DEFAULT_RATE,
    DEFAULT_SOURCE_BURST,
    DEFAULT_SOURCE_RATE,
    MAX_CALLBACK_BYTES,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_SOURCE,
    READ_TIMEOUT_SECONDS,
    SourceBuckets,
    TaskEvent,
    TokenBucket,
    read_callback_task_id,
    reported_marker,
    task_event,
)
from evolink.client import EvoLinkClient
from evolink.errors import BadCallbackError, EvoLinkError, NotFoundError
from evolink.jobs import TaskIndex
from evolink.records import RecordStore
from evolink.retry import RetryPolicy
from evolink.urls import private_urls_allowed
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials

logger = logging.getLogger("prefect_evolink.callbacks")

DEFAULT_PATH: Final = "/evolink/callback"
HEALTH_PATH: Final = "/healthz"
API_TIMEOUT_SECONDS: Final = 8.0
"""EvoLink waits 10 s for an answer; the task query must be done (or given up) before that."""
NOT_FINAL_TTL_SECONDS: Final = 2.5
"""Under the 2 s and 4 s gaps between EvoLink's later retries: each of those reads again."""
REMEMBERED_TASKS: Final = 4096

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Emit = Callable[[TaskEvent], None]

_SAFE_SOURCE = re.compile(r"[0-9A-Za-z.:%\[\]_-]{1,64}")
_JSON_TYPE = re.compile(r"application/([a-z0-9.+-]+\+)?json", re.IGNORECASE)


def emit_to_prefect(event: TaskEvent) -> None:
    """Send the event to the Prefect API this process is configured for."""
    from prefect.events import emit_event

    sent = emit_event(
        event=event.event,
        resource=event.resource,
        related=event.related,
        payload=event.payload,
        id=event.id,
    )
    if sent is None:
        where = event.resource["prefect.resource.id"]
        logger.warning("Event %s for %s not sent: no Prefect events client", event.event, where)


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    """The receiver's limits. `rate`/`burst` guard the API reads (global); `source_rate`/
    `source_burst` the storage reads, per sender address; the connection settings are
    enforced by `serve`."""

    path: str = DEFAULT_PATH
    max_body_bytes: int = MAX_CALLBACK_BYTES
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    api_timeout: float = API_TIMEOUT_SECONDS
    source_rate: float = DEFAULT_SOURCE_RATE
    source_burst: int = DEFAULT_SOURCE_BURST
    read_timeout: float = READ_TIMEOUT_SECONDS
    not_final_ttl: float = NOT_FINAL_TTL_SECONDS
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE

    def __post_init__(self) -> None:
        if self.read_timeout <= 0 or self.not_final_ttl < 0 or self.max_body_bytes < 1:
            raise ValueError("read_timeout must be > 0, not_final_ttl >= 0, max_body_bytes >= 1")
        if self.max_connections < 1 or self.max_connections_per_source < 1:
            raise ValueError("max_connections and max_connections_per_source must be >= 1")


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[bytes, bytes], ...] = ()
    task_id: str | None = None
    note: str | None = None  # for the log line only, never for the caller
    level: int = logging.INFO


_GONE: Final = _Answer(499, {"status": "client_gone"})  # logged, never sent


def _retry_after(wait: float) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"retry-after", str(max(1, math.ceil(wait))).encode()),)


class CallbackReceiver:
    """The ASGI app. `emit` is how events leave (default: the Prefect API); `counts` tallies
    the outcomes (`emitted`, `ignored`, `rate_limited`, …), shown by `GET /healthz` to
    loopback callers and to callers with the API key only."""

    def __init__(
        self,
        storage: AssetStorage,
        credentials: EvoLinkCredentials,
        settings: ReceiverSettings | None = None,
        *,
        emit: Emit = emit_to_prefect,
    ) -> None:
        self.storage = storage
        self.credentials = credentials
        self.settings = settings or ReceiverSettings()
        self.emit = emit
        self.counts: Counter[str] = Counter()
        self.connection_stats: Callable[[], dict[str, Any]] | None = None  # set by `serve`
        self._bucket = TokenBucket(self.settings.rate, self.settings.burst)
        self._sources = SourceBuckets(self.settings.source_rate, self.settings.source_burst)
        self._client: EvoLinkClient | None = None
        self._reported: OrderedDict[str, str] = OrderedDict()  # task id → status, newest last
        self._not_final: OrderedDict[str, tuple[float, str]] = OrderedDict()  # → (until, status)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._storage_ok = True
        self._api_ok = True

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not served (uvicorn closes the connection)
        started = time.monotonic()
        try:
            answer = await self._answer(scope, receive)
        except Exception as error:  # a bug: one line (its traceback at DEBUG)
            answer = _Answer(
                500,
                {"status": "internal_error"},
                note=f"{type(error).__name__}: {error}",
                level=logging.ERROR,
            )
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("Internal error", exc_info=error)
        outcome = str(answer.body.get("status", answer.status))
        if scope.get("path") != HEALTH_PATH:
            self.counts[outcome] += 1
        self._audit(scope, answer, outcome, started)
        if answer is _GONE:
            return
        body = _json_bytes(answer.body)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    *answer.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _audit(self, scope: Scope, answer: _Answer, outcome: str, started: float) -> None:
        """The request's one log line: what, outcome, who, which task — never the body."""
        if not logger.isEnabledFor(answer.level):
            return
        path = scope.get("path", "")
        where = path if path in (self.settings.path, HEALTH_PATH) else "<other path>"
        method = str(scope.get("method", ""))[:16]
        note = f": {answer.note[:200]}" if answer.note else ""
        logger.log(
            answer.level,
            "%s %s %d %s source=%s task=%s %d ms%s",
            method,
            where,
            answer.status,
            outcome,
            _source(scope),
            answer.task_id or "-",
            round((time.monotonic() - started) * 1000),
            note,
        )

    async def _answer(self, scope: Scope, receive: Receive) -> _Answer:
        method, path = scope.get("method", ""), scope.get("path", "")
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            return self._health(scope)
        if path != self.settings.path:
            return _Answer(404, {"status": "not_found"})
        if method != "POST":
            return _Answer(405, {"status": "method_not_allowed"}, ((b"allow", b"POST"),))
        if scope.get("scheme") != "https" and not private_urls_allowed():
            return _Answer(403, {"status": "https_required"})
        content_type = _header(scope, b"content-type")
        if content_type is not None and not _is_json(content_type):
            return _Answer(
                400, {"status": "malformed", "reason": "content_type"}, note="content_type"
            )
        body = await self._read_body(scope, receive)
        if isinstance(body, _Answer):
            return body
        try:
            task_id = read_callback_task_id(body)
        except BadCallbackError as bad:
            if bad.reason == "no_task_id":
                return _Answer(400, {"status": "no_task_id"})
            return _Answer(400, {"status": "malformed", "reason": bad.reason}, note=bad.reason)
        return await self._confirm(task_id, _source(scope))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | _Answer:
        """The body, within `read_timeout` and `max_body_bytes` (unread, when its
        Content-Length says it is too large); else the answer that says why not."""
        limit = self.settings.max_body_bytes
        too_large = _Answer(413, {"status": "too_large", "limit": limit})
        declared = _header(scope, b"content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            return too_large
        if declared is not None and int(declared) > limit:
            return too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.read_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return _GONE
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return too_large
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return _Answer(408, {"status": "read_timeout"}, ((b"connection", b"close"),))
        return b"".join(chunks)

    def _health(self, scope: Scope) -> _Answer:
        """ok or not_ok (the last storage or API check failed: callbacks get 503 now); the
        outcome counts and connection figures only for loopback and holders of the key."""
        healthy = self._storage_ok and self._api_ok
        body: dict[str, Any] = {"status": "ok" if healthy else "not_ok"}
        if self._may_see_details(scope):
            body["storage"] = "ok" if self._storage_ok else "failing"
            body["api"] = "ok" if self._api_ok else "failing"
            body["counts"] = dict(self.counts)
            if self.connection_stats is not None:
                body["connections"] = self.connection_stats()
        return _Answer(200 if healthy else 503, body)

    def _may_see_details(self, scope: Scope) -> bool:
        client = scope.get("client")
        if client:
            try:
                if ipaddress.ip_address(str(client[0]).split("%")[0]).is_loopback:
                    return True
            except ValueError:
                pass
        authorization = _header(scope, b"authorization") or ""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        key = self.credentials.api_key.get_secret_value()
        return hmac.compare_digest(token.strip().encode(), key.encode())

    # --- the callback itself --------------------------------------------------------------

    async def _confirm(self, task_id: str, source: str) -> _Answer:
        """Memory → (sender's token) index, marker → (global token) API → marker, event.
        Only the task id came from the caller."""
        known = self._known(task_id)
        if known is not None:
            return known
        async with self._task_lock(task_id):
            known = self._known(task_id)  # settled while this one waited for the lock
            if known is not None:
                return known
            wait = self._sources.take(source)
            if wait is not None:
                return _Answer(
                    429, {"status": "source_rate_limited"}, _retry_after(wait), task_id=task_id
                )
            return await self._check(task_id)

    def _known(self, task_id: str) -> _Answer | None:
        """What this process already knows, answered without storage or the API."""
        if task_id in self._reported:  # only ever our tasks: EvoLink repeating itself
            status = self._reported[task_id]
            return _Answer(200, {"status": "duplicate", "task_status": status}, task_id=task_id)
        cached = self._not_final.get(task_id)
        if cached is not None:
            until, status = cached
            if time.monotonic() < until:
                return _Answer(409, {"status": "not_final", "task_status": status}, task_id=task_id)
            del self._not_final[task_id]
        return None

    async def _check(self, task_id: str) -> _Answer:
        def answer(status: int, body: dict[str, Any], **extra: Any) -> _Answer:
            return _Answer(status, body, task_id=task_id, **extra)

        def storage_failed(error: Exception) -> _Answer:
            self._storage_ok = False
            return answer(
                503,
                {"status": "storage_unavailable"},
                headers=((b"retry-after", b"2"),),
                note=f"storage: {type(error).__name__}: {error}",
                level=logging.WARNING,
            )

        try:
            raw = await RecordStore(self.storage).get_task_index(task_id)
        except Exception as error:  # noqa: BLE001 — storage trouble: let EvoLink retry
            return storage_failed(error)
        self._storage_ok = True
        if raw is None:
            return answer(202, {"status": "ignored"}, note="not one of ours")
        try:
            index = TaskIndex.model_validate(raw)
        except ValidationError:
            return answer(202, {"status": "ignored"}, note="its index is unreadable")
        try:
            marker = await RecordStore(self.storage).get_reported_marker(task_id)
        except Exception as error:  # noqa: BLE001
            return storage_failed(error)
        reported = _marker_status(marker)
        if reported is not None:  # another replica, or this one before a restart
            self._remember(task_id, reported)
            return answer(200, {"status": "duplicate", "task_status": reported}, note="marker")
        wait = self._bucket.take()
        if wait is not None:
            return answer(429, {"status": "rate_limited"}, headers=_retry_after(wait))
        try:
            task = await asyncio.wait_for(
                self._api().get_task(task_id), timeout=self.settings.api_timeout
            )
        except NotFoundError:
            self._api_ok = True
            return answer(202, {"status": "ignored"}, note="EvoLink does not know it")
        except (EvoLinkError, TimeoutError, ValueError) as error:  # ValueError: no task object
            self._api_ok = False
            return answer(
                503,
                {"status": "api_unavailable"},
                headers=((b"retry-after", b"2"),),
                note=f"{type(error).__name__}: {error}",
                level=logging.WARNING,
            )
        self._api_ok = True
        if task.id != task_id:
            return answer(202, {"status": "ignored"}, note="the API answered for another id")
        event = task_event(task, index)
        if event is None:
            self._cache_not_final(task_id, task.status.value)
            return answer(409, {"status": "not_final", "task_status": task.status.value})
        return await self._report(task_id, event)

    async def _report(self, task_id: str, event: TaskEvent) -> _Answer:
        """Marker first, then the event: a crash between them loses this one hint (polling
        still books the task), it never makes a second one."""
        status = str(event.payload["status"])
        marker = reported_marker(event, datetime.now(UTC))
        records = RecordStore(self.storage)
        try:
            await records.put_reported_marker(task_id, marker)
        except Exception as error:  # noqa: BLE001 — storage trouble: let EvoLink retry
            self._storage_ok = False
            return _Answer(
                503,
                {"status": "storage_unavailable"},
                ((b"retry-after", b"2"),),
                task_id=task_id,
                note=f"marker not written: {type(error).__name__}: {error}",
                level=logging.WARNING,
            )
        try:
            self.emit(event)
        except Exception as error:  # noqa: BLE001 — free the marker so EvoLink's retry emits
            with contextlib.suppress(Exception):
                await records.put_reported_marker(task_id, {**marker, "state": "emit_failed"})
            return _Answer(
                503,
                {"status": "not_emitted"},
                ((b"retry-after", b"2"),),
                task_id=task_id,
                note=f"{type(error).__name__}: {error}",
                level=logging.WARNING,
            )
        self._remember(task_id, status)
        return _Answer(
            200, {"status": "emitted", "event": event.event}, task_id=task_id, note=status
        )

    @contextlib.asynccontextmanager
    async def _task_lock(self, task_id: str) -> AsyncIterator[None]:
        """One request per task id at a time; the lock lives while someone holds or waits."""
        entry = self._locks.get(task_id)
        if entry is None:
            entry = self._locks[task_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                self._locks.pop(task_id, None)

    def _api(self) -> EvoLinkClient:
        if self._client is None:
            # Few, quick retries: EvoLink retries the callback itself if we answer 503.
            policy = RetryPolicy(max_attempts=2, base_delay=0.5, max_delay=2.0)
            self._client = self.credentials.get_client(retry=policy)
        return self._client

    def _remember(self, task_id: str, status: str) -> None:
        self._not_final.pop(task_id, None)
        self._reported[task_id] = status
        self._reported.move_to_end(task_id)
        while len(self._reported) > REMEMBERED_TASKS:
            self._reported.popitem(last=False)

    def _cache_not_final(self, task_id: str, status: str) -> None:
        if self.settings.not_final_ttl <= 0:
            return
        self._not_final[task_id] = (time.monotonic() + self.settings.not_final_ttl, status)
        self._not_final.move_to_end(task_id)
        while len(self._not_final) > REMEMBERED_TASKS:
            self._not_final.popitem(last=False)


def _marker_status(marker: bytes | None) -> str | None:
    """The status a stored marker reports; None when there is none, or its emit failed. A
    marker we cannot read still counts as reported: never a second event."""
    if marker is None:
        return None
    try:
        data = json.loads(marker)
    except ValueError:
        return "unknown"
    if not isinstance(data, dict):
        return "unknown"
    if data.get("state") == "emit_failed":
        return None
    return str(data.get("status") or "unknown")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _is_json(content_type: str) -> bool:
    return _JSON_TYPE.fullmatch(content_type.split(";", 1)[0].strip()) is not None


def _source(scope: Scope) -> str:
    """The sender's address as uvicorn reports it (the proxy's X-Forwarded-For when the proxy
    is trusted), safe to log."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    return host if _SAFE_SOURCE.fullmatch(host) else "?"


def _json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()
