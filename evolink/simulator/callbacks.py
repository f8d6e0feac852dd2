"""Callbacks: the simulator POSTs a finished task to the `callback_url` of its request.

As the API documents it: on completed, failed or cancelled (the task object then carries its
bill), one POST of the task object as `GET /v1/tasks/{id}` shows it; 10 s timeout; 3 retries
after 1 s, 2 s and 4 s; any 2xx is success. Nothing signs it (nothing does at EvoLink either).

Tasks finish by the clock, not by a worker (see `evolink.simulator.tasks`), so one daemon thread
(`CallbackSender`) looks every `tick` seconds at the tasks that have a callback still to send
and hands each finished one to a daemon delivery thread (at most `DELIVERY_SLOTS` POST at once).
Neither holds the service's lock while talking to the network, so callbacks never slow down the
API, and neither keeps a stopping process alive; the watcher starts with the first task that
has a callback, so a simulator without any pays nothing.

`callback_url` is https-only (the request's own rule), so the receiver must speak TLS; tests
give their test CA as `ca_file`.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from evolink.errors import redact_url

log = logging.getLogger("evolink.simulator.callbacks")

FINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
TIMEOUT_SECONDS: Final = 10.0
RETRY_DELAYS: Final = (1.0, 2.0, 4.0)
TICK_SECONDS: Final = 0.05
DELIVERY_SLOTS: Final = 8


@dataclass(frozen=True, slots=True)
class CallbackAttempt:
    """One POST: which task, where (without its query string), the answer or the error."""

    task_id: str
    url: str
    attempt: int
    status: str  # the task's status in the body sent
    http_status: int | None
    error: str | None
    at: float

    @property
    def delivered(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "url": self.url,
            "attempt": self.attempt,
            "status": self.status,
            "http_status": self.http_status,
            "error": self.error,
            "delivered": self.delivered,
            "at": self.at,
        }


class CallbackSender:
    """Watches tasks with a callback URL; POSTs each once it is finished (with retries).

    `status_of(task_id)` is the task's status now and `task_object(task_id)` its task object
    (the service's own, so the body is what a GET returns); both None once the task is
    forgotten (a reset).
    """

    def __init__(
        self,
        status_of: Callable[[str], str | None],
        task_object: Callable[[str], dict[str, Any] | None],
        *,
        ca_file: str | None = None,
        timeout: float = TIMEOUT_SECONDS,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
        tick: float = TICK_SECONDS,
    ) -> None:
        self._status_of = status_of
        self._task_object = task_object
        self.ca_file = ca_file
        self.timeout = timeout
        self.retry_delays = retry_delays
        self.tick = tick
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}  # task id → callback URL
        self._attempts: list[CallbackAttempt] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(DELIVERY_SLOTS)
        self._tls: ssl.SSLContext | None = None

    # --- what the service calls -----------------------------------------------------------

    def watch(self, task_id: str, url: str) -> None:
        """Send `task_id` to `url` once it is finished; starts the thread on first use."""
        with self._lock:
            self._pending[task_id] = url
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="evolink-sim-callbacks", daemon=True
                )
                self._thread.start()

    def forget(self) -> None:
        """Drop callbacks not yet due (the service was reset); the log of attempts too."""
        with self._lock:
            self._pending.clear()
            self._attempts.clear()

    def close(self) -> None:
        """Stop watching; deliveries not yet begun are dropped, one in flight ends at its
        timeout without retries. A later `watch` starts afresh."""
        with self._lock:
            stop, thread = self._stop, self._thread
            self._thread = None
            self._pending.clear()
        stop.set()
        if thread is not None:
            thread.join(timeout=5)

    def attempts(self) -> list[CallbackAttempt]:
        with self._lock:
            return list(self._attempts)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    # --- the watcher and the deliveries ---------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.tick):
            with self._lock:
                watched = list(self._pending.items())
            for task_id, url in watched:
                status = self._status_of(task_id)
                if status is not None and status not in FINAL_STATUSES:
                    continue
                with self._lock:
                    if self._pending.pop(task_id, None) is None:
                        continue  # forgotten meanwhile
                task = None if status is None else self._task_object(task_id)
                if task is None:
                    continue
                threading.Thread(
                    target=self._deliver,
                    args=(task_id, url, task, stop),
                    name=f"evolink-sim-callback:{task_id}",
                    daemon=True,
                ).start()

    def _deliver(self, task_id: str, url: str, task: dict[str, Any], stop: threading.Event) -> None:
        body = json.dumps(task, separators=(",", ":")).encode()
        for attempt in range(1, len(self.retry_delays) + 2):
            with self._slots:
                if stop.is_set():
                    return
                http_status, error = self._post(url, body)
            record = CallbackAttempt(
                task_id=task_id,
                url=redact_url(url),
                attempt=attempt,
                status=str(task.get("status")),
                http_status=http_status,
                error=error,
                at=time.time(),
            )
            with self._lock:
                self._attempts.append(record)
            if record.delivered:
                return
            if attempt > len(self.retry_delays) or stop.wait(self.retry_delays[attempt - 1]):
                log.info("callback for %s to %s not delivered (%s)", task_id, record.url, error)
                return

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=self.ca_file)
        return self._tls

    def _post(self, url: str, body: bytes) -> tuple[int | None, str | None]:
        """One POST: (HTTP status, None), or (None, what went wrong). https only, no redirects
        followed (a 3xx is not a 2xx: it is retried, like any other failure)."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            return None, "callback_url is not an https URL"
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=self.timeout, context=self._context()
        )
        try:
            connection.request(
                "POST",
                target,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": "EvoLinkSimulator/1.0 (callback)",
                },
            )
            response = connection.getresponse()
            response.read(64 * 1024)
            return response.status, None
        except (OSError, http.client.HTTPException) as error:
            return None, f"{type(error).__name__}: {error}"[:200]
        finally:
            connection.close()
