"""Async client for EvoLink's Files API: upload an image, list, look up and delete uploads, read
the quota.

Why it exists: EvoLink fetches references (`image_urls`, `mask_url`) by URL. A local image — a
brief's reference on disk, a stored draft whose 24 h result link has expired — needs a URL
EvoLink can read. The Files API hands one out for 72 h without any storage of our own (S3).

What the API is, as far as public sources show (`evolink-api.md`, "Files API": EvoLink's own
MCP client, not a reference page): a separate host (`DEFAULT_FILES_BASE_URL`), Bearer auth, and
every answer an envelope `{success, code, msg, data}` — where a refusal may come back as HTTP 200
with `success: false`. This module is the one small adapter that knows that shape: parsing is
tolerant (unknown fields ignored, optional fields optional), and everything else sees only the
typed models and errors below.

Rules it keeps, the task client's (`evolink.client`):
- no Prefect; an explicit timeout on every call;
- the base URL must pass `evolink.urls.api_base_url_problem` (https; a private or loopback host,
  and then plain http, only with `EVOLINK_ALLOW_PRIVATE_URLS` on — the simulator);
- the API key goes to the Files API host only, and is in no repr, error or log line;
- every API error carries EvoLink's `x-request-id` (`APIError.request_id`);
- a full quota is `FilesQuotaExceededError`, never retried, naming `prefect-evolink files prune`.

Retries, and why uploads are different. Reads (`list_files`, `quota`, `find_file`) and
`delete_file` are repeated under the `RetryPolicy` (`evolink.retry`: 429 with the server's hint,
5xx, no response), since repeating them changes nothing at EvoLink; a delete repeated after a
lost answer may find the file already gone, and that 404 counts as deleted. An upload is a POST
with no Idempotency-Key, and each stored copy takes one of the account's 100 slots for 72 h. So
an upload is repeated only when the server certainly stored nothing:
- the connection was never made (`ConnectError`, `ConnectTimeout`, `PoolTimeout`: not one byte
  of the request left this process);
- a 429, which refuses the request before it is processed (after its `Retry-After`/suggestion).
Everything after the request left — a timeout or a dropped connection while waiting for the
answer, a 5xx, a 2xx we cannot read — raises `FileUploadOutcomeUnknownError`, which no layer
retries. EvoLink's own client also repeats uploads once on 502/503; we do not, because a gateway
can answer 502/503 after the upstream stored the file, and a duplicate silently eats quota while
a clear error lets the caller look (`list_files`) before it uploads again. Uploads that the
server explicitly refuses (`success: false`, a 4xx) stored nothing and are not repeated either:
the same bytes would be refused again.

Before anything is sent the bytes are checked here (`InvalidUploadError`, no quota used): not
empty, at most `MAX_UPLOAD_BYTES`, and a JPEG, PNG, GIF or WebP image by its first bytes — the
formats the Files API takes (EvoLink's task API takes JPEG, PNG and WebP references).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from evolink.client import USER_AGENT, Timeouts, _tls_context, request_id_of, secret_key
from evolink.endpoint import DEFAULT_FILES_BASE_URL, SIMULATOR_HEADER
from evolink.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    EvoLinkError,
    FilesQuotaExceededError,
    FileUploadOutcomeUnknownError,
    InvalidUploadError,
    NotFoundError,
    RateLimitError,
    UnexpectedResponseError,
    status_error_class,
)
from evolink.retry import RetryPolicy, parse_retry_after
from evolink.urls import api_base_url_problem, private_urls_allowed, sniff_format, url_problem

__all__ = [
    "DEFAULT_FILES_BASE_URL",
    "FILE_TTL_SECONDS",
    "MAX_FILES",
    "MAX_UPLOAD_BYTES",
    "EvoLinkFilesClient",
    "FileInfo",
    "FilePage",
    "FilesQuota",
    "UploadedFile",
]

UPLOAD_STREAM_PATH: Final = "/api/v1/files/upload/stream"
UPLOAD_BASE64_PATH: Final = "/api/v1/files/upload/base64"
UPLOAD_URL_PATH: Final = "/api/v1/files/upload/url"
LIST_PATH: Final = "/api/v1/files/list"
QUOTA_PATH: Final = "/api/v1/files/quota"
FILE_PATH: Final = "/api/v1/files/{file_id}"

MAX_UPLOAD_BYTES: Final = 100 * 1024 * 1024
FILE_TTL_SECONDS: Final = 72 * 3600
"""Uploads expire this long after they were made (the documented 72 h)."""
MAX_FILES: Final = 100
"""The documented default quota (500 on VIP accounts): what `FilesQuota` reports wins."""
DEFAULT_PAGE_SIZE: Final = 100  # one page holds a default account's whole quota
MAX_LIST_PAGES: Final = 50  # a listing that never ends is a server bug, not a reason to spin
SNIFF_BYTES: Final = 512
UPLOAD_FORMATS: Final[dict[str, str]] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
"""What the Files API takes, by the format the first bytes show (`evolink.urls.sniff_format`)."""
UPLOAD_URL_EXTENSIONS: Final = (".jpeg", ".jpg", ".png", ".webp", ".gif")
_EXTENSIONS: Final = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
# No byte of the request has left when these are raised: an upload may be repeated after them.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_CREDIT_CODES: Final = ("insufficient_quota", "key_quota")  # credits, not the file quota

logger = logging.getLogger("evolink.files")

UploadSource = bytes | bytearray | memoryview | Path | IO[bytes]
"""What `upload` takes: the bytes, a path to a file, or a seekable binary stream."""


# --- the models --------------------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """A timestamp as the Files API may send it — ISO 8601 (`Z`, an offset, a space for the
    `T`, or none: read as UTC), or Unix seconds / milliseconds — as an aware UTC datetime; None
    when it is missing or unreadable (tolerant parsing: a field we cannot read is unknown)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value) / (1000 if value > 1e11 else 1)
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """A stored upload, as the upload call answered it. `file_url` goes into `image_urls`.

    `simulator` is True when the bundled simulator answered (`SIMULATOR_HEADER`): such a URL is
    only good for the simulator's own tasks. `request_id` is EvoLink's `x-request-id`."""

    file_id: str
    file_url: str
    file_name: str | None = None
    original_name: str | None = None
    size_bytes: int | None = None
    mime_type: str | None = None
    upload_path: str | None = None
    download_url: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    simulator: bool = False
    request_id: str | None = None

    @classmethod
    def from_api(
        cls, data: Any, *, simulator: bool = False, request_id: str | None = None
    ) -> UploadedFile:
        """Read an upload's `data`; `UnexpectedResponseError` without a `file_id` and a
        `file_url`, since an upload we cannot refer to is of no use."""
        if not isinstance(data, dict):
            raise UnexpectedResponseError(
                "Files API upload answered without a data object", request_id=request_id
            )
        file_id, file_url = _text(data.get("file_id")), _text(data.get("file_url"))
        if file_id is None or file_url is None or not file_url.startswith(("https:", "http:")):
            raise UnexpectedResponseError(
                "Files API upload answer has no file_id or no http(s) file_url",
                request_id=request_id,
            )
        return cls(
            file_id=file_id,
            file_url=file_url,
            file_name=_text(data.get("file_name")),
            original_name=_text(data.get("original_name")),
            size_bytes=_int(data.get("file_size")),
            mime_type=_text(data.get("mime_type")),
            upload_path=_text(data.get("upload_path")),
            download_url=_text(data.get("download_url")),
            created_at=parse_time(data.get("upload_time") or data.get("created_at")),
            expires_at=parse_time(data.get("expires_at")),
            simulator=simulator,
            request_id=request_id,
        )

    def expired(self, now: datetime | None = None) -> bool:
        """Whether `expires_at` has passed (False when unknown: the API decides then)."""
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One entry of the file list. The list documents only id, name, size and upload time; the
    rest is read when the server sends it (the simulator does)."""

    file_id: str
    file_name: str | None = None
    size_bytes: int | None = None
    mime_type: str | None = None
    file_url: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> FileInfo | None:
        """None for an entry without a file id (nothing could be done with it)."""
        file_id = _text(data.get("file_id"))
        if file_id is None:
            return None
        return cls(
            file_id=file_id,
            file_name=_text(data.get("file_name")),
            size_bytes=_int(data.get("file_size")),
            mime_type=_text(data.get("mime_type")),
            file_url=_text(data.get("file_url")),
            created_at=parse_time(data.get("upload_time") or data.get("created_at")),
            expires_at=parse_time(data.get("expires_at")),
        )


@dataclass(frozen=True, slots=True)
class FilePage:
    """One page of `list_files`; `total` is the server's count of all files (None if absent)."""

    files: tuple[FileInfo, ...]
    total: int | None
    page: int
    page_size: int


@dataclass(frozen=True, slots=True)
class FilesQuota:
    """How many files the account holds and may hold (`GET /api/v1/files/quota`)."""

    used_files: int
    max_files: int
    remain_files: int
    user_group: str | None = None

    @property
    def full(self) -> bool:
        return self.remain_files <= 0


# --- errors from answers -----------------------------------------------------------------------


def _envelope_fields(body: Any) -> tuple[Any, str, dict[str, Any]]:
    """(code, message, error fields) from either envelope: the Files API's `{success, code, msg,
    data}` or, from a gateway in front of it, the task API's `{"error": {...}}`."""
    if not isinstance(body, dict):
        return None, "no error message", {}
    error = body.get("error")
    if isinstance(error, dict):
        message = error.get("message") or error.get("msg")
        return error.get("code"), str(message or "no error message")[:500], error
    message = body.get("msg") or body.get("message")
    return body.get("code"), str(message or "no error message")[:500], {}


def _status_of(code: Any) -> int | None:
    """The envelope `code` as an HTTP-like status (EvoLink's client reads it as one)."""
    number = _int(code)
    return number if number is not None and 400 <= number < 600 else None


def _quota_exhausted(kind: int, code: Any, message: str) -> bool:
    """Whether a refusal says the file quota is full. EvoLink documents no code for it, so the
    words decide — but never for auth, rate limits, 5xx or the credit codes (402
    `insufficient_quota` is about money, and uploads are free)."""
    if kind in (401, 429) or kind >= 500:
        return False
    words = f"{code} {message}".lower()
    if any(credit in words for credit in _CREDIT_CODES):
        return False
    return any(sign in words for sign in ("quota", "file limit", "max_files", "too many files"))


def files_error(
    status_code: int,
    body: Any,
    *,
    retry_after: float | None = None,
    request_id: str | None = None,
) -> APIStatusError:
    """The typed error of a Files API refusal: an error status, or HTTP 200 with `success:
    false` — then the envelope's `code` (an HTTP-like number) picks the class, `status_code`
    stays the real HTTP status and the message says it was a `success: false` answer."""
    code, message, error = _envelope_fields(body)
    in_200 = status_code < 400
    kind = status_code if not in_200 else (_status_of(code) or 400)
    fields: dict[str, Any] = {
        "status_code": status_code,
        "code": None if code is None else str(code),
        "error_type": error.get("type"),
        "param": error.get("param"),
        "fallback_suggestion": error.get("fallback_suggestion"),
        "request_id": request_id,
    }
    text = f"Files API answered success: false: {message}" if in_200 else message
    if _quota_exhausted(kind, code, message):
        data = body.get("data") if isinstance(body, dict) else None
        data = data if isinstance(data, dict) else {}
        return FilesQuotaExceededError(
            text,
            used_files=_int(data.get("used_files")),
            max_files=_int(data.get("max_files")),
            **fields,
        )
    cls = status_error_class(kind)
    if cls is RateLimitError:
        return RateLimitError(text, retry_after=retry_after, **fields)
    return cls(text, **fields)


# --- the client --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Payload:
    """What one upload attempt sends; `rewind` puts a stream back before a repeat."""

    what: str
    build: Callable[[], dict[str, Any]]
    rewind: Callable[[], None] = lambda: None


def _check_image(head: bytes, size: int, what: str, limit: int) -> str:
    """The format of the bytes to upload (`UPLOAD_FORMATS` key), or `InvalidUploadError`."""
    if size <= 0:
        raise InvalidUploadError(f"{what} is empty")
    if size > limit:
        raise InvalidUploadError(f"{what} is {size} bytes, over the Files API's {limit}-byte cap")
    found = sniff_format(head)
    if found not in UPLOAD_FORMATS:
        shown = found or f"unknown (starts with {head[:8]!r})"
        raise InvalidUploadError(
            f"{what} is not a JPEG, PNG, GIF or WebP image (format: {shown}); the Files API "
            "takes only these"
        )
    return found


def _upload_name(file_name: str | None, fallback: str, image_format: str) -> str:
    name = (file_name or fallback).strip() or fallback
    return name if "." in name else f"{name}.{_EXTENSIONS[image_format]}"


class EvoLinkFilesClient:
    """EvoLink's Files API for one account. Use as `async with EvoLinkFilesClient(key) as files`.

    `base_url` defaults to EvoLink's Files API host; the bundled simulator serves the same
    paths on its own base URL (`EvoLinkSimulator.files_base_url`).
    """

    def __init__(
        self,
        api_key: str | SecretStr,
        *,
        base_url: str = DEFAULT_FILES_BASE_URL,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        seed: int | None = None,
    ):
        self._api_key = secret_key(api_key)
        problem = api_base_url_problem(base_url)
        if problem:
            raise ValueError(f"Files API base URL {problem}")
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.max_upload_bytes = max_upload_bytes
        self._sleep = sleep
        self._rng = random.Random(seed)  # nosec B311 - retry jitter, not cryptography
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeouts.api(),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,  # a redirect would carry the Bearer key to another host
            verify=_tls_context(),
        )

    def __repr__(self) -> str:
        return f"EvoLinkFilesClient(base_url={self.base_url!r}, api_key=**********)"

    async def __aenter__(self) -> EvoLinkFilesClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- uploads ---------------------------------------------------------------------------

    async def upload(
        self,
        source: UploadSource,
        *,
        file_name: str | None = None,
        upload_path: str | None = None,
    ) -> UploadedFile:
        """Upload an image (bytes, a file's path, or a seekable binary stream) as multipart
        (`/upload/stream`); the stream is sent as it is read, not loaded whole."""
        if isinstance(source, Path):
            with source.open("rb") as opened:
                return await self.upload(
                    opened, file_name=file_name or source.name, upload_path=upload_path
                )
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            image_format = _check_image(
                data[:SNIFF_BYTES], len(data), "upload", self.max_upload_bytes
            )
            content: bytes | IO[bytes] = data

            def rewind() -> None:
                return None

        elif source.tell() != 0:
            # httpx sends a file object from its start (it seeks to 0), so a stream that stands
            # elsewhere is read from where it stands into memory: what the caller meant.
            return await self.upload(source.read(), file_name=file_name, upload_path=upload_path)
        else:
            stream = source
            start = 0
            head = stream.read(SNIFF_BYTES)
            size = stream.seek(0, os.SEEK_END)
            stream.seek(start)
            image_format = _check_image(head, size, "upload", self.max_upload_bytes)
            content = stream

            def rewind() -> None:
                stream.seek(start)

        name = _upload_name(file_name, "upload", image_format)
        form = {"fileName": name} if file_name else {}
        if upload_path:
            form["uploadPath"] = upload_path

        def build() -> dict[str, Any]:
            return {
                "files": {"file": (name, content, UPLOAD_FORMATS[image_format])},
                "data": form,
            }

        return await self._upload(
            UPLOAD_STREAM_PATH, _Payload(f"upload of {name!r}", build, rewind)
        )

    async def upload_base64(
        self,
        data: str,
        *,
        file_name: str | None = None,
        upload_path: str | None = None,
    ) -> UploadedFile:
        """Upload base64 text (raw, or a `data:image/...;base64,` URL) via `/upload/base64`.
        The text is decoded here first, so a malformed or non-image one uses no quota."""
        text = data.strip()
        encoded = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidUploadError("base64 upload is not valid base64") from None
        image_format = _check_image(
            raw[:SNIFF_BYTES], len(raw), "base64 upload", self.max_upload_bytes
        )
        body: dict[str, Any] = {"base64_data": text}
        if file_name:
            body["file_name"] = _upload_name(file_name, "upload", image_format)
        if upload_path:
            body["upload_path"] = upload_path
        return await self._upload(
            UPLOAD_BASE64_PATH, _Payload("base64 upload", lambda: {"json": body})
        )

    async def upload_from_url(
        self,
        url: str,
        *,
        file_name: str | None = None,
        upload_path: str | None = None,
    ) -> UploadedFile:
        """Have EvoLink fetch `url` and store it (`/upload/url`): e.g. a result link, kept past
        its 24 h. The URL must pass the rules for URLs we hand EvoLink (`evolink.urls`: public
        https, no internal hosts unless `EVOLINK_ALLOW_PRIVATE_URLS`)."""
        problem = url_problem(
            url,
            allow_private=private_urls_allowed(),
            http_for_testing=True,
            extensions=UPLOAD_URL_EXTENSIONS,
        )
        if problem:
            raise InvalidUploadError(f"file_url {problem}")
        body: dict[str, Any] = {"file_url": url}
        if file_name:
            body["file_name"] = file_name
        if upload_path:
            body["upload_path"] = upload_path
        return await self._upload(
            UPLOAD_URL_PATH, _Payload("upload from URL", lambda: {"json": body})
        )

    # --- reads and deletes -----------------------------------------------------------------

    async def list_files(self, *, page: int = 1, page_size: int = DEFAULT_PAGE_SIZE) -> FilePage:
        """One page of the account's files (pages count from 1)."""
        params = {"page": page, "pageSize": page_size}
        data, _ = await self._read("GET", LIST_PATH, params=params, what="list files")
        entries = data.get("files") if isinstance(data, dict) else data
        files = tuple(
            info
            for item in (entries if isinstance(entries, list) else [])
            if isinstance(item, dict) and (info := FileInfo.from_api(item)) is not None
        )
        total = _int(data.get("total")) if isinstance(data, dict) else None
        return FilePage(files, total, page, page_size)

    async def all_files(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> list[FileInfo]:
        """Every file of the account, page by page (at most `MAX_LIST_PAGES` pages)."""
        found: list[FileInfo] = []
        for page in range(1, MAX_LIST_PAGES + 1):
            listing = await self.list_files(page=page, page_size=page_size)
            found.extend(listing.files)
            done = listing.total is not None and len(found) >= listing.total
            if done or len(listing.files) < page_size:
                break
        return found

    async def find_file(self, file_id: str) -> FileInfo | None:
        """The list entry of one file, None when the account has no such file (deleted or
        expired). The API documents no "get one file" call, so this reads the list."""
        for info in await self.all_files():
            if info.file_id == file_id:
                return info
        return None

    async def quota(self) -> FilesQuota:
        data, response = await self._read("GET", QUOTA_PATH, what="files quota")
        values = data if isinstance(data, dict) else {}
        used, most = _int(values.get("used_files")), _int(values.get("max_files"))
        remain = _int(values.get("remain_files"))
        if used is None or most is None:
            raise UnexpectedResponseError(
                "Files API quota answer has no used_files/max_files",
                request_id=request_id_of(response.headers),
            )
        return FilesQuota(
            used_files=used,
            max_files=most,
            remain_files=max(0, most - used) if remain is None else remain,
            user_group=_text(values.get("user_group")),
        )

    async def delete_file(self, file_id: str, *, missing_ok: bool = False) -> bool:
        """Delete one upload: True when deleted, False when it was already gone (only with
        `missing_ok`; else `NotFoundError`). Repeated like a read: a 404 on a repeat means our
        earlier attempt deleted it before its answer was lost, so it counts as deleted."""
        if not file_id or not file_id.strip():
            raise ValueError("file_id is empty")
        path = FILE_PATH.format(file_id=quote(file_id, safe=""))
        try:
            await self._read("DELETE", path, what=f"delete file {file_id}", gone_ok=True)
        except NotFoundError:
            if missing_ok:
                return False
            raise
        return True

    # --- plumbing --------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}

    async def _read(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, Any] | None = None,
        gone_ok: bool = False,
    ) -> tuple[Any, httpx.Response]:
        """A repeatable call: repeated under the retry policy on every retryable error. With
        `gone_ok` (a delete), a 404 after a repeat is taken as success (see `delete_file`)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    response = await self._http.request(
                        method, path, params=params, headers=self._headers()
                    )
                except httpx.TransportError as error:
                    raise _transport_error(error, what) from None
                return self._data(response, what, upload=False), response
            except NotFoundError as error:
                if gone_ok and attempt > 1:
                    logger.info("%s: already gone after a repeat (%s)", what, error)
                    return None, response
                raise
            except EvoLinkError as error:
                if not self.retry.should_retry(attempt, error):
                    raise
                await self._pause(attempt, error, what)

    async def _upload(self, path: str, payload: _Payload) -> UploadedFile:
        """One upload, repeated only where nothing can have been stored (module docstring)."""
        timeout = httpx.Timeout(
            connect=self.timeouts.connect,
            read=self.timeouts.read,
            write=self.timeouts.download_read,  # a large body may take a while to send
            pool=self.timeouts.pool,
        )
        attempt = 0
        while True:
            attempt += 1
            payload.rewind()
            try:
                try:
                    response = await self._http.post(
                        path, headers=self._headers(), timeout=timeout, **payload.build()
                    )
                except _NOT_SENT as error:
                    raise _transport_error(error, payload.what) from None
                except httpx.TransportError as error:
                    kind = "timed out" if isinstance(error, httpx.TimeoutException) else "failed"
                    raise FileUploadOutcomeUnknownError(
                        f"{payload.what} {kind} after it was sent ({type(error).__name__})"
                    ) from None
                data = self._data(response, payload.what, upload=True)
                request_id = request_id_of(response.headers)
                uploaded = UploadedFile.from_api(
                    data,
                    simulator=bool(response.headers.get(SIMULATOR_HEADER)),
                    request_id=request_id,
                )
            except UnexpectedResponseError as error:
                raise FileUploadOutcomeUnknownError(
                    f"{payload.what}: {error.message}", request_id=error.request_id
                ) from None
            except (APIConnectionError, RateLimitError) as error:
                # Not sent at all, or refused before processing: nothing stored.
                if not self.retry.should_retry(attempt, error):
                    raise
                await self._pause(attempt, error, payload.what)
                continue
            logger.info(
                "%s stored as file %s (%s bytes, %s), expires %s",
                payload.what,
                uploaded.file_id,
                uploaded.size_bytes,
                uploaded.mime_type,
                uploaded.expires_at.isoformat() if uploaded.expires_at else "unknown",
            )
            return uploaded

    def _data(self, response: httpx.Response, what: str, *, upload: bool) -> Any:
        """The envelope's `data`, or the typed error of a refusal (an error status, or
        `success: false` whatever the status). A 5xx of an upload is an unknown outcome."""
        request_id = request_id_of(response.headers)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.is_success:
            error = files_error(
                response.status_code,
                body,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                request_id=request_id,
            )
            if upload and response.status_code >= 500:
                raise FileUploadOutcomeUnknownError(
                    f"{what} answered HTTP {response.status_code}",
                    status_code=response.status_code,
                    request_id=request_id,
                ) from error
            raise error
        if not isinstance(body, dict) or not ({"success", "data"} & body.keys()):
            raise UnexpectedResponseError(
                f"{what}: HTTP {response.status_code} without the Files API envelope",
                request_id=request_id,
            )
        if body.get("success") is False:
            raise files_error(response.status_code, body, request_id=request_id)
        return body.get("data")

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


def _transport_error(error: httpx.TransportError, what: str) -> APIConnectionError:
    """No usable response. Only the exception's type is kept: its text may quote the request."""
    if isinstance(error, httpx.TimeoutException):
        return APITimeoutError(f"{what} timed out ({type(error).__name__})")
    return APIConnectionError(f"{what} failed: {type(error).__name__}")
