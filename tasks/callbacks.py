"""The callback receiver: EvoLink callbacks in, Prefect events out (`prefect-evolink callbacks`).

An ASGI app (`CallbackReceiver`) served by uvicorn (`serve`). For each POST to its path it:

1. refuses plain http outside testing (403): EvoLink only calls https URLs, so a plain request
   did not come from it — unless `EVOLINK_ALLOW_PRIVATE_URLS=true` (testing), or a proxy in
   `--forwarded-allow-ips` says the client spoke https (X-Forwarded-Proto);
2. applies one request rate limit to everything (429 with Retry-After; `TokenBucket`);
3. refuses a body over `max_body_bytes` (413), by its Content-Length or while reading it;
4. takes only a task id from the body (400 without one that could be an EvoLink task id, so
   it never becomes a storage key) — nothing else in the body is read, let alone believed;
5. answers 202 `ignored` at once for a task id our storage has no index for
   (`_tasks/<task id>.json`, written at submit): not ours, nothing emitted, EvoLink not asked;
   200 `duplicate` for a task it already reported (EvoLink repeating itself);
6. asks the API for the task with our key (503 when it cannot, so EvoLink retries; 202 when
   the API does not know the task), and answers 409 `not_final` while the API says the task
   is not finished (a lying body, or a callback faster than the API: EvoLink retries);
7. emits `evolink.task.completed` or `evolink.task.failed` built from the API's answer and the
   index (`evolink.callbacks.task_event`: resource, related job/campaign/asset/flow run, bill);
   the event id is derived from (task id, status), so the Prefect event store keeps one even
   when two receivers report the same task.

Polling stays the source of truth: the event only tells people (automations) sooner; the
waiting poll task does not hear of it (receiver and poller share no process, and a socket per
waiting poll would cost more than the poll interval it saves).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from evolink.callbacks import (
    MAX_CALLBACK_BYTES,
    TaskEvent,
    TokenBucket,
    callback_task_id,
    task_event,
)
from evolink.client import EvoLinkClient
from evolink.errors import EvoLinkError, NotFoundError
from evolink.jobs import TaskIndex, task_index_key
from evolink.retry import RetryPolicy
from evolink.urls import private_urls_allowed
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials

logger = logging.getLogger("prefect_evolink.callbacks")

DEFAULT_PATH: Final = "/evolink/callback"
HEALTH_PATH: Final = "/healthz"
DEFAULT_RATE: Final = 20.0
DEFAULT_BURST: Final = 40
API_TIMEOUT_SECONDS: Final = 8.0
"""EvoLink waits 10 s for an answer; the task query must be done (or given up) before that."""
REMEMBERED_TASKS: Final = 4096

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Emit = Callable[[TaskEvent], None]


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
    path: str = DEFAULT_PATH
    max_body_bytes: int = MAX_CALLBACK_BYTES
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    api_timeout: float = API_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[bytes, bytes], ...] = ()


class CallbackReceiver:
    """The ASGI app. `emit` is how events leave (default: the Prefect API); `counts` tallies
    the outcomes (`emitted`, `ignored`, `rate_limited`, …) for `GET /healthz`."""

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
        self._bucket = TokenBucket(self.settings.rate, self.settings.burst)
        self._client: EvoLinkClient | None = None
        self._reported: OrderedDict[str, str] = OrderedDict()  # task id → status, newest last

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
        answer = await self._answer(scope, receive)
        self.counts[str(answer.body.get("status", answer.status))] += 1
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

    async def _answer(self, scope: Scope, receive: Receive) -> _Answer:
        method, path = scope.get("method", ""), scope.get("path", "")
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            return _Answer(200, {"status": "ok", "counts": dict(self.counts)})
        if path != self.settings.path:
            return _Answer(404, {"status": "not_found"})
        if method != "POST":
            return _Answer(405, {"status": "method_not_allowed"}, ((b"allow", b"POST"),))
        if scope.get("scheme") != "https" and not private_urls_allowed():
            return _Answer(403, {"status": "https_required"})
        wait = self._bucket.take()
        if wait is not None:
            retry_after = str(max(1, math.ceil(wait))).encode()
            return _Answer(429, {"status": "rate_limited"}, ((b"retry-after", retry_after),))
        body = await self._read_body(scope, receive)
        if body is None:
            return _Answer(413, {"status": "too_large", "limit": self.settings.max_body_bytes})
        task_id = callback_task_id(body)
        if task_id is None:
            return _Answer(400, {"status": "no_task_id"})
        return await self._confirm(task_id)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The body; None once it is over the limit (unread, when its Content-Length says so)."""
        limit = self.settings.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    # --- the callback itself --------------------------------------------------------------

    async def _confirm(self, task_id: str) -> _Answer:
        """Index → API → event. Only the task id came from the caller."""
        if task_id in self._reported:  # only ever our tasks: EvoLink repeating itself
            return _Answer(200, {"status": "duplicate", "task_status": self._reported[task_id]})
        try:
            raw = await self.storage.aget_json(task_index_key(task_id))
        except Exception as error:  # noqa: BLE001 — storage trouble: let EvoLink retry
            logger.warning("Callback for task %s not checked: storage failed: %s", task_id, error)
            return _Answer(503, {"status": "storage_unavailable"}, ((b"retry-after", b"2"),))
        if raw is None:
            logger.info("Callback for task %s ignored: not one of ours", task_id)
            return _Answer(202, {"status": "ignored"})
        try:
            index = TaskIndex.model_validate(raw)
        except ValidationError:
            logger.warning("Callback for task %s ignored: its index is unreadable", task_id)
            return _Answer(202, {"status": "ignored"})
        try:
            task = await asyncio.wait_for(
                self._api().get_task(task_id), timeout=self.settings.api_timeout
            )
        except NotFoundError:
            logger.warning("Callback for task %s ignored: EvoLink does not know it", task_id)
            return _Answer(202, {"status": "ignored"})
        except (EvoLinkError, TimeoutError, ValueError) as error:  # ValueError: no task object
            logger.warning("Callback for task %s not confirmed: %s", task_id, error)
            return _Answer(503, {"status": "api_unavailable"}, ((b"retry-after", b"2"),))
        if task.id != task_id:
            logger.warning("Callback for task %s ignored: the API answered for another id", task_id)
            return _Answer(202, {"status": "ignored"})
        event = task_event(task, index)
        if event is None:
            return _Answer(409, {"status": "not_final", "task_status": task.status.value})
        self.emit(event)
        self._remember(task_id, task.status.value)
        logger.info("Task %s %s: emitted %s", task_id, task.status.value, event.event)
        return _Answer(200, {"status": "emitted", "event": event.event})

    def _api(self) -> EvoLinkClient:
        if self._client is None:
            # Few, quick retries: EvoLink retries the callback itself if we answer 503.
            policy = RetryPolicy(max_attempts=2, base_delay=0.5, max_delay=2.0)
            self._client = self.credentials.get_client(retry=policy)
        return self._client

    def _remember(self, task_id: str, status: str) -> None:
        self._reported[task_id] = status
        self._reported.move_to_end(task_id)
        while len(self._reported) > REMEMBERED_TASKS:
            self._reported.popitem(last=False)


def _json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve(
    receiver: CallbackReceiver,
    sock: socket.socket,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    forwarded_allow_ips: str | None = None,
    on_ready: Callable[[], None] | None = None,
    log_level: str = "info",
) -> None:
    """Run `receiver` under uvicorn on `sock` until SIGINT/SIGTERM; `on_ready` once it
    accepts connections."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and on_ready is not None:
                on_ready()

    config = uvicorn.Config(
        receiver,
        lifespan="on",
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level=log_level,
        access_log=False,  # one log line per callback comes from the receiver itself
        timeout_keep_alive=5,
        limit_concurrency=64,
    )
    _Server(config).run(sockets=[sock])
