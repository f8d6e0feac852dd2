"""Async client for EvoLink's image task API: create, query, wait, download.

Rules it keeps:
- the create POST is repeated only when it carries an `Idempotency-Key` (a lost response must
  not become a second paid job); GETs are repeated with backoff and jitter;
- every call has an explicit timeout;
- the API key is sent only to the API's own host, never to result links (a CDN), and it is not
  in this object's repr, in any error or in any log line.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Final

import certifi
import httpx
from pydantic import SecretStr

from evolink.endpoint import DEFAULT_BASE_URL, SIMULATOR_HEADER
from evolink.errors import (
    APIConnectionError,
    APITimeoutError,
    EvoLinkError,
    InvalidImageError,
    PollDeadlineExceeded,
    ResultExpiredError,
    ServerError,
    TaskFailedError,
    UnsafeResultLinkError,
    error_for_status,
    redact_url,
)
from evolink.images import HEADER_BYTES, ImageInfo, sniff_image
from evolink.models import ImageRequest, parse_request
from evolink.polling import PollSchedule
from evolink.retry import RetryPolicy, parse_retry_after
from evolink.states import TaskSnapshot, TaskStatus
from evolink.urls import download_url_problem, private_urls_allowed
from evolink.version import installed_version

CREATE_PATH: Final = "/v1/images/generations"
TASK_PATH: Final = "/v1/tasks/{task_id}"
MAX_DOWNLOAD_BYTES: Final = 100 * 1024 * 1024  # a 4K PNG is ~25 MB; anything far larger is wrong
MAX_REDIRECTS: Final = 5
DOWNLOAD_CHUNK: Final = 256 * 1024
EXPIRED_LINK_STATUSES: Final = frozenset({401, 403, 404, 410})
USER_AGENT: Final = f"prefect-evolink/{installed_version()}"
REQUEST_ID_HEADER: Final = "x-request-id"  # EvoLink's id of one API response, for support
MAX_REQUEST_ID_CHARS: Final = 128

logger = logging.getLogger("evolink.client")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. Image jobs are asynchronous, so API calls are short; downloads may be large."""

    connect: float = 10.0
    read: float = 60.0
    write: float = 60.0
    pool: float = 30.0
    download_read: float = 120.0

    def api(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)

    def download(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect, read=self.download_read, write=self.write, pool=self.pool
        )


@dataclass(frozen=True, slots=True)
class Download:
    """What was fetched from a result link into a local file."""

    sha256: str
    size_bytes: int
    image: ImageInfo


@dataclass(frozen=True, slots=True)
class CreateResult:
    task: TaskSnapshot
    replayed: bool  # the server returned an existing task for this Idempotency-Key
    attempts: int
    simulator: bool = False  # the bundled simulator answered (`evolink.endpoint.SIMULATOR_HEADER`)
    request_id: str | None = None  # EvoLink's `x-request-id` of the create response


def request_id_of(headers: httpx.Headers) -> str | None:
    """EvoLink's `x-request-id` of a response (what its support asks for), or None.

    A header is the server's text: kept only when printable, and cut to a sane length, since it
    goes into error messages and records."""
    value = headers.get(REQUEST_ID_HEADER, "").strip()[:MAX_REQUEST_ID_CHARS]
    return value if value and value.isprintable() else None


ProgressCallback = Callable[[TaskSnapshot, float], None]


@dataclass(slots=True)
class _Attempts:
    count: int = 0
    last_error: EvoLinkError | None = field(default=None)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verified TLS context per process: loading the CA bundle costs ~40 ms of CPU, and a
    client is made per task, so a fresh context each time blocked the event loop for seconds
    per campaign (bench/campaign_walltime.py)."""
    return ssl.create_default_context(cafile=certifi.where())


def _transport_error(error: httpx.TransportError, what: str, task_id: str | None) -> EvoLinkError:
    """No usable response. Only the exception's type is kept: its text may quote the request."""
    if isinstance(error, httpx.TimeoutException):
        return APITimeoutError(f"{what} timed out ({type(error).__name__})", task_id=task_id)
    return APIConnectionError(f"{what} failed: {type(error).__name__}", task_id=task_id)


def secret_key(api_key: str | SecretStr) -> SecretStr:
    """The account's key as a secret (never shown in a repr, log or error); empty is refused."""
    key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
    if not key.get_secret_value():
        raise ValueError("EvoLink API key is empty")
    return key


class EvoLinkClient:
    """One EvoLink account. Use as `async with EvoLinkClient(key) as client: ...`."""

    def __init__(
        self,
        api_key: str | SecretStr,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        seed: int | None = None,
    ):
        self._api_key = secret_key(api_key)
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.max_download_bytes = max_download_bytes
        self._sleep = sleep
        # Retry jitter, not cryptography.
        self._rng = random.Random(seed)  # nosec B311
        self._api = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeouts.api(),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,
            verify=_tls_context(),
        )
        # Redirects of result links are followed by hand (`_stream_result`), so that every hop
        # is checked against the URL policy before we connect to it.
        self._files = httpx.AsyncClient(
            timeout=self.timeouts.download(),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            verify=_tls_context(),
        )

    def __repr__(self) -> str:
        return f"EvoLinkClient(base_url={self.base_url!r}, api_key=**********)"

    async def __aenter__(self) -> EvoLinkClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._files.aclose()

    # --- API calls ---------------------------------------------------------------------------

    async def create_task(
        self, request: ImageRequest | dict[str, Any], *, idempotency_key: str | None = None
    ) -> CreateResult:
        """Start a paid job. Without an idempotency key this is tried exactly once."""
        request = parse_request(request)  # a bad request fails here, before any money
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        attempts = _Attempts()
        response = await self._send(
            "POST",
            CREATE_PATH,
            json=request.to_payload(),
            headers=headers,
            repeatable=idempotency_key is not None,
            attempts=attempts,
        )
        replayed = response.headers.get("idempotency-replayed", "").lower() == "true"
        simulator = bool(response.headers.get(SIMULATOR_HEADER))
        return CreateResult(
            TaskSnapshot.from_api(response.json()),
            replayed,
            attempts.count,
            simulator,
            request_id_of(response.headers),
        )

    async def get_task(self, task_id: str) -> TaskSnapshot:
        response = await self._send(
            "GET", TASK_PATH.format(task_id=task_id), repeatable=True, task_id=task_id
        )
        return TaskSnapshot.from_api(response.json())

    async def wait_for_task(
        self,
        task_id: str,
        *,
        schedule: PollSchedule | None = None,
        first: TaskSnapshot | None = None,
        on_update: ProgressCallback | None = None,
        elapsed_before: float = 0.0,
    ) -> TaskSnapshot:
        """Poll until the task finishes; raise `TaskFailedError` or `PollDeadlineExceeded`.

        `first` is a reading we already have (e.g. the create response), so the loop does not
        spend a query to learn what it was just told. `elapsed_before`: how long ago the task
        was submitted — the pacing predicts from the task's age, while the deadline counts
        from now (a rerun resuming an old task still gets its full wait).
        """
        schedule = schedule or PollSchedule()
        pacer = schedule.pacer()  # remembers this wait's progress readings
        started = time.monotonic()
        snapshot = first or await self.get_task(task_id)
        while True:
            waited = time.monotonic() - started
            elapsed = elapsed_before + waited
            if on_update is not None:
                on_update(snapshot, elapsed)
            if snapshot.status is TaskStatus.COMPLETED:
                return snapshot
            if snapshot.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                error = snapshot.error
                raise TaskFailedError(
                    task_id,
                    error.code if error else snapshot.status.value,
                    error.message if error else None,
                    cancelled=snapshot.status is TaskStatus.CANCELLED,
                    billed=snapshot.billed,
                )
            if waited >= schedule.deadline_seconds:
                raise PollDeadlineExceeded(
                    task_id, waited, snapshot.status.value, snapshot.progress
                )
            await self._sleep(
                pacer.next_delay(elapsed, snapshot.progress, snapshot.estimated_time, waited=waited)
            )
            snapshot = await self.get_task(task_id)

    async def download_to(self, url: str, sink: IO[bytes], *, task_id: str | None) -> Download:
        """Stream one result into `sink`, checking it is an image and not oversized.

        Repeated on connection errors and 5xx (the caller must hand a fresh/truncated sink: we
        truncate it ourselves). A 401/403/404/410 means the link expired: `ResultExpiredError`.
        """
        attempts = _Attempts()
        while True:
            attempts.count += 1
            sink.seek(0)
            sink.truncate()
            try:
                return await self._download_once(url, sink, task_id)
            except EvoLinkError as error:
                if not self.retry.should_retry(attempts.count, error):
                    raise
                await self._pause(attempts.count, error, f"download for task {task_id}")

    # --- plumbing ---------------------------------------------------------------------------

    def _check_result_link(
        self, url: str, task_id: str | None, *, allow_private: bool, redirected_from: str | None
    ) -> None:
        """Refuse, before connecting, a hop that is not http(s) or (setting off) a private host.

        Result links come from the API and redirects from whoever serves them; neither may steer
        our worker to `file:`/`ftp:` or into our own network (e.g. 169.254.169.254 metadata).
        """
        problem = download_url_problem(url, allow_private=allow_private)
        if problem is None:
            return
        where = f"result link of task {task_id}"
        if redirected_from is not None:
            where = f"redirect target (from {redact_url(redirected_from)}) of the {where}"
        raise UnsafeResultLinkError(f"{where} {problem}", task_id=task_id)

    @asynccontextmanager
    async def _stream_result(self, url: str, task_id: str | None) -> AsyncIterator[httpx.Response]:
        """GET `url` as a stream, following at most `MAX_REDIRECTS` redirects by hand.

        httpx's own redirect following would connect to each new location before we could look
        at it; here every hop passes `_check_result_link` first. The setting is read once per
        download so all hops are judged alike. A redirect body is never read.
        """
        allow_private = private_urls_allowed()
        current, previous = url, None
        for _ in range(MAX_REDIRECTS + 1):
            self._check_result_link(
                current, task_id, allow_private=allow_private, redirected_from=previous
            )
            try:
                response = await self._files.send(
                    self._files.build_request("GET", current), stream=True
                )
            except (httpx.InvalidURL, httpx.RemoteProtocolError) as error:
                # httpx parses a redirect's Location even when not following it, and raises
                # for one it cannot parse ('data:…', garbage): that is a bad link, not a
                # network failure worth retrying. Other protocol errors stay connection errors.
                bad_location = "location" in str(error).lower()
                if isinstance(error, httpx.RemoteProtocolError) and not bad_location:
                    raise
                raise UnsafeResultLinkError(
                    f"result link of task {task_id} redirected to a location that is not a "
                    f"valid URL (from {redact_url(current)})",
                    task_id=task_id,
                ) from None
            if not response.has_redirect_location:
                try:
                    yield response
                finally:
                    await response.aclose()
                return
            await response.aclose()
            # The Location as sent (resolved against the current URL), not httpx's repaired
            # `next_request`, so the check and the message see what the server asked for.
            current, previous = str(response.url.join(response.headers["location"])), current
        raise InvalidImageError(
            f"result link of task {task_id} redirected more than {MAX_REDIRECTS} times",
            task_id=task_id,
        )

    async def _download_once(self, url: str, sink: IO[bytes], task_id: str | None) -> Download:
        """One attempt: stream into `sink`, hashing, under the size cap, checking the bytes.

        The Content-Type header is not trusted either way: the sniffed bytes decide. A PNG
        served as `text/html` (misconfigured CDNs do this) is accepted, because the magic
        numbers and header parse are the real check; an HTML page served as `image/png` is
        refused, whatever the header says.
        """
        digest = hashlib.sha256()
        size = 0
        image: ImageInfo | None = None
        head = b""
        try:
            async with self._stream_result(url, task_id) as response:
                if response.status_code in EXPIRED_LINK_STATUSES:
                    raise ResultExpiredError(task_id, url, response.status_code)
                if response.status_code >= 500:
                    raise ServerError(
                        f"result download failed for task {task_id}",
                        status_code=response.status_code,
                        task_id=task_id,
                    )
                if response.status_code != 200:
                    raise InvalidImageError(
                        f"result link of task {task_id} answered HTTP {response.status_code}",
                        task_id=task_id,
                    )
                declared = int(response.headers.get("content-length") or 0)
                if declared > self.max_download_bytes:
                    raise InvalidImageError(
                        f"result of task {task_id} is {declared} bytes, over the "
                        f"{self.max_download_bytes}-byte cap",
                        task_id=task_id,
                    )
                async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
                    size += len(chunk)
                    if size > self.max_download_bytes:
                        raise InvalidImageError(
                            f"result of task {task_id} passed the "
                            f"{self.max_download_bytes}-byte cap",
                            task_id=task_id,
                        )
                    if image is None:
                        head += chunk
                        if len(head) >= HEADER_BYTES:
                            image = self._require_image(head, task_id)
                    digest.update(chunk)
                    sink.write(chunk)
                if declared and size != declared:
                    raise InvalidImageError(
                        f"result of task {task_id} was cut short ({size} of {declared} bytes)",
                        task_id=task_id,
                    )
        except httpx.TransportError as error:
            raise _transport_error(error, f"download of task {task_id}", task_id) from None
        if image is None:
            image = self._require_image(head, task_id)
        sink.flush()
        return Download(digest.hexdigest(), size, image)

    @staticmethod
    def _require_image(head: bytes, task_id: str | None) -> ImageInfo:
        image = sniff_image(head)
        if image is None:
            raise InvalidImageError(
                f"result of task {task_id} is not a PNG, JPEG or WEBP image "
                f"(starts with {head[:8]!r})",
                task_id=task_id,
            )
        return image

    async def _send(
        self,
        method: str,
        path: str,
        *,
        repeatable: bool,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        task_id: str | None = None,
        attempts: _Attempts | None = None,
    ) -> httpx.Response:
        attempts = attempts or _Attempts()
        while True:
            attempts.count += 1
            try:
                return await self._send_once(method, path, json, headers, task_id)
            except EvoLinkError as error:
                attempts.last_error = error
                if not repeatable or not self.retry.should_retry(attempts.count, error):
                    raise
                await self._pause(attempts.count, error, f"{method} {path}")

    async def _send_once(
        self,
        method: str,
        path: str,
        json: dict[str, Any] | None,
        headers: dict[str, str] | None,
        task_id: str | None,
    ) -> httpx.Response:
        all_headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        all_headers.update(headers or {})
        try:
            response = await self._api.request(method, path, json=json, headers=all_headers)
        except httpx.TransportError as error:
            raise _transport_error(error, f"{method} {path}", task_id) from None
        if response.is_success:
            return response
        try:
            body = response.json()
        except ValueError:
            body = None
        raise error_for_status(
            response.status_code,
            body,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            task_id=task_id,
            request_id=request_id_of(response.headers),
        )

    async def _pause(self, attempt: int, error: EvoLinkError, what: str) -> None:
        delay = self.retry.delay(attempt, error, self._rng)
        logger.warning(
            "%s: %s — attempt %d of %d, retrying in %.1fs",
            what,
            error,
            attempt,
            self.retry.max_attempts,
            delay,
        )
        await self._sleep(delay)
