"""The simulator's Files API: uploads that EvoLink's task API can then fetch as references.

A second implementation of what `evolink.files` talks to (evolink-api.md, "Files API"), served
by the same server on the same base URL (EvoLink uses another host; the paths do not collide):

    POST   /api/v1/files/upload/stream   multipart: file, uploadPath?, fileName?
    POST   /api/v1/files/upload/base64   {base64_data, upload_path?, file_name?}
    POST   /api/v1/files/upload/url      {file_url, upload_path?, file_name?}
    GET    /api/v1/files/list?page=&pageSize=
    GET    /api/v1/files/quota
    DELETE /api/v1/files/{file_id}
    GET    /uploads/{file_id}/{file_name}   the file_url: public, no key, until expiry/deletion
    GET    /_sim/files                      admin (loopback): every file, counts, settings

Every API answer is the envelope `{success, code, msg, data}`. Like EvoLink it may refuse with
HTTP 200 and `success: false`: a full quota does (the form a client that reads only the status
would take for success), and so does an upload from a URL it cannot fetch. Other refusals carry
their status (401, 400, 404). Request faults (`evolink.simulator.faults`, routes `upload` and
`files`) answer in the task API's error envelope, as a gateway in front of the service would.

Behaviour, by the simulator's clock (so `POST /_sim/age` moves it): a file expires
`ttl_seconds` after its upload (72 h by default, fixed per file at upload time, like a task's
TTLs), then it is gone from the list, the quota and its URL. At most `quota` live files
(100 by default). Only JPEG, PNG, GIF and WebP, recognised by their bytes. An upload from a URL
is only fetched from the simulator itself (its result links and uploads): it never reaches out
to the network, and says so with `success: false`.

`reference_failure` is how the task API treats references: an `image_urls`/`mask_url` that is
one of these uploads must still be live when the task is created, else the task fails with
`resource_not_found` (a documented failure code) — what EvoLink does with a reference it cannot
fetch. Other URLs are judged only by the request rules, as before.

`snapshot_state`/`parse_state` carry the files (bytes as base64) in the simulator's state file.
Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import json
import math
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, quote, unquote, urlsplit

from evolink.simulator.replies import Reply, json_reply, xml_error_reply

if TYPE_CHECKING:
    from evolink.simulator.service import Headers, SimulatorService

DEFAULT_FILE_TTL_SECONDS: Final = 72 * 3600.0
DEFAULT_FILE_QUOTA: Final = 100
API_PREFIX: Final = "/api/v1/files"
UPLOADS_PREFIX: Final = "/uploads/"
ADMIN_PATH: Final = "/_sim/files"
FILE_ROUTES: Final = ("upload", "list", "quota", "delete", "fetch")
MAX_PAGE_SIZE: Final = 100
_FORMATS: Final = (
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"GIF87a", "image/gif", "gif"),
    (b"GIF89a", "image/gif", "gif"),
)
_UPLOAD_PATH: Final = re.compile(r"/uploads/(?P<file_id>[^/]+)/(?P<name>[^/]+)")
_DELETE_PATH: Final = re.compile(r"/api/v1/files/(?P<file_id>[^/]+)")
_SAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")


def sniff_mime(data: bytes) -> tuple[str, str] | None:
    """(media type, extension) of a JPEG, PNG, GIF or WebP, from its first bytes; else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    for magic, mime, extension in _FORMATS:
        if data.startswith(magic):
            return mime, extension
    return None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def envelope(
    data: Any = None, *, code: int = 200, msg: str = "success", status: int = 200
) -> Reply:
    """The Files API's answer: `{success, code, msg, data}`; `success` is `code == 200`."""
    body = {"success": code == 200, "code": code, "msg": msg, "data": data}
    return json_reply(body, status)


def refusal(code: int, msg: str, *, in_200: bool = False, data: Any = None) -> Reply:
    """A refusal with its status, or (`in_200`) as HTTP 200 with `success: false`."""
    return envelope(data, code=code, msg=msg, status=200 if in_200 else code)


@dataclass
class SimFile:
    """One upload. `deleted_at` is set by DELETE; expiry is a function of the clock."""

    id: str
    name: str
    original_name: str
    mime_type: str
    data: bytes
    upload_path: str
    created_at: float
    ttl_seconds: float
    deleted_at: float | None = None

    @property
    def expires_at(self) -> float:
        return self.created_at + self.ttl_seconds

    def live_at(self, now: float) -> bool:
        return self.deleted_at is None and now < self.expires_at

    def path(self) -> str:
        return f"{UPLOADS_PREFIX}{quote(self.id, safe='')}/{quote(self.name, safe='')}"

    def to_api(self, base_url: str) -> dict[str, Any]:
        url = f"{base_url}{self.path()}"
        return {
            "file_id": self.id,
            "file_name": self.name,
            "original_name": self.original_name,
            "file_size": len(self.data),
            "mime_type": self.mime_type,
            "upload_path": self.upload_path,
            "file_url": url,
            "download_url": url,
            "upload_time": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
        }

    def to_state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "original_name": self.original_name,
            "mime_type": self.mime_type,
            "data": base64.b64encode(self.data).decode("ascii"),
            "upload_path": self.upload_path,
            "created_at": self.created_at,
            "ttl_seconds": self.ttl_seconds,
            "deleted_at": self.deleted_at,
        }

    @classmethod
    def from_state(cls, item: dict[str, Any]) -> SimFile:
        deleted = item["deleted_at"]
        return cls(
            id=str(item["id"]),
            name=str(item["name"]),
            original_name=str(item["original_name"]),
            mime_type=str(item["mime_type"]),
            data=base64.b64decode(str(item["data"]), validate=True),
            upload_path=str(item["upload_path"]),
            created_at=float(item["created_at"]),
            ttl_seconds=float(item["ttl_seconds"]),
            deleted_at=None if deleted is None else float(deleted),
        )


@dataclass(frozen=True)
class FilesState:
    """A parsed, valid `files` section of the state file, ready to install."""

    files: tuple[SimFile, ...]
    counts: dict[str, int]


class SimulatorFiles:
    """The Files API of one simulated account; the service routes to it (`handles`)."""

    def __init__(self, service: SimulatorService) -> None:
        self._service = service
        self._lock = threading.Lock()
        self.ttl_seconds = DEFAULT_FILE_TTL_SECONDS
        self.quota = DEFAULT_FILE_QUOTA
        self.lose_upload_responses = 0
        """How many of the next uploads are stored and then answered with a dropped connection
        (an outage at the worst moment: the file exists, the client never hears of it)."""
        self._changes = 0
        self.reset()

    # --- settings and bookkeeping ---------------------------------------------------------

    @property
    def ttl_seconds(self) -> float:
        """New uploads expire this long after they were made (fixed per file at upload)."""
        return self._ttl_seconds

    @ttl_seconds.setter
    def ttl_seconds(self, seconds: float) -> None:
        value = float(seconds)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"file_ttl_seconds: a finite number of seconds >= 0, got {seconds!r}")
        self._ttl_seconds = value

    @property
    def quota(self) -> int:
        """How many live files the account may hold."""
        return self._quota

    @quota.setter
    def quota(self, files: int) -> None:
        if isinstance(files, bool) or int(files) != files or files < 0:
            raise ValueError(f"file_quota: a whole number >= 0, got {files!r}")
        self._quota = int(files)

    @property
    def changes(self) -> int:
        """Savable changes so far (uploads, deletes, resets): added to the service's count."""
        return self._changes

    def reset(self) -> None:
        """Forget every file and count (POST /_sim/reset)."""
        with self._lock:
            self._files: dict[str, SimFile] = {}
            self._counts: dict[str, int] = dict.fromkeys(FILE_ROUTES, 0)
            self._changes += 1

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def live_files(self) -> list[SimFile]:
        now = self._service.now()
        with self._lock:
            return [file for file in self._files.values() if file.live_at(now)]

    def seconds_to_expire_all(self, now: float) -> float:
        """How far the clock must move for every file that exists now to have expired."""
        with self._lock:
            return max((file.expires_at - now for file in self._files.values()), default=0.0)

    def _count(self, route: str) -> None:
        with self._lock:
            self._counts[route] += 1

    # --- the task API's view -----------------------------------------------------------------

    def reference_failure(self, urls: Iterable[str]) -> tuple[str, str] | None:
        """(code, message) to fail a new task with when one of its references is an upload of
        this simulator that is gone (deleted, expired, never made); None otherwise."""
        base = self._service.base_url
        now = self._service.now()
        for url in urls:
            if not url.startswith(base):
                continue
            match = _UPLOAD_PATH.fullmatch(urlsplit(url).path)
            if match is None:
                continue
            with self._lock:
                file = self._files.get(unquote(match["file_id"]))
            if file is None or not file.live_at(now):
                return (
                    "resource_not_found",
                    "A reference image could not be fetched: the uploaded file is deleted or "
                    "has expired",
                )
        return None

    # --- routing ------------------------------------------------------------------------------

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith((API_PREFIX + "/", UPLOADS_PREFIX)) or path == ADMIN_PATH

    def dispatch(
        self, method: str, target: str, headers: Headers, body: bytes, loopback: bool
    ) -> Reply:
        parts = urlsplit(target)
        path = parts.path
        if path == ADMIN_PATH:
            if not loopback:
                return refusal(403, "admin endpoints are loopback-only")
            return self._admin()
        if path.startswith(UPLOADS_PREFIX):
            if method != "GET":
                return refusal(405, f"{method} is not allowed on {path}")
            return self._fetch(path)
        route = "upload" if path.startswith(API_PREFIX + "/upload/") else "files"
        self._count("upload" if route == "upload" else self._read_route(method, path))
        refused = self._service._auth(headers)
        if refused is not None:
            return refusal(401, "Invalid or missing API key")
        refused = self._service._request_faults(route, None, f"{route}/{path}")
        if refused is not None:
            return refused
        if method == "POST" and path == f"{API_PREFIX}/upload/stream":
            return self._upload_stream(headers, body)
        if method == "POST" and path == f"{API_PREFIX}/upload/base64":
            return self._upload_base64(body)
        if method == "POST" and path == f"{API_PREFIX}/upload/url":
            return self._upload_url(body)
        if method == "GET" and path == f"{API_PREFIX}/list":
            return self._list(parts.query)
        if method == "GET" and path == f"{API_PREFIX}/quota":
            return envelope(self._quota_data())
        match = _DELETE_PATH.fullmatch(path)
        if method == "DELETE" and match is not None:
            return self._delete(unquote(match["file_id"]))
        return refusal(404, f"No route for {method} {path}")

    @staticmethod
    def _read_route(method: str, path: str) -> str:
        if method == "DELETE":
            return "delete"
        return "quota" if path.endswith("/quota") else "list"

    # --- uploads ------------------------------------------------------------------------------

    def _store(self, data: bytes, original_name: str, file_name: str, upload_path: str) -> Reply:
        """Keep one upload, if it is an image and the quota has room."""
        if not data:
            return refusal(400, "The file is empty")
        sniffed = sniff_mime(data)
        if sniffed is None:
            return refusal(400, "Unsupported file type: only JPEG, PNG, GIF and WebP images")
        mime, extension = sniffed
        stem = _SAFE_NAME.sub("_", (file_name or original_name or "upload").strip()) or "upload"
        name = stem if "." in stem else f"{stem}.{extension}"
        now = self._service.now()
        with self._lock:
            used = sum(1 for file in self._files.values() if file.live_at(now))
            if used >= self.quota:
                return refusal(
                    403,
                    f"File quota exceeded: {used} of {self.quota} files used. Delete files to "
                    "upload more",
                    in_200=True,
                    data={"used_files": used, "max_files": self.quota},
                )
            file = SimFile(
                id=f"file_{int(now)}_{secrets.token_hex(6)}",
                name=name,
                original_name=original_name or name,
                mime_type=mime,
                data=data,
                upload_path=_SAFE_NAME.sub("_", upload_path.strip("/")) if upload_path else "",
                created_at=now,
                ttl_seconds=self.ttl_seconds,
            )
            self._files[file.id] = file
            self._changes += 1
            if self.lose_upload_responses > 0:
                self.lose_upload_responses -= 1
                return Reply(drop=True)
        return envelope(file.to_api(self._service.base_url))

    def _upload_stream(self, headers: Headers, body: bytes) -> Reply:
        content_type = headers.get("Content-Type") or ""
        if not content_type.lower().startswith("multipart/form-data"):
            return refusal(400, "Expected multipart/form-data with a 'file' field")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
        )
        fields: dict[str, str] = {}
        data: bytes | None = None
        original = ""
        for part in message.iter_parts() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if not isinstance(name, str) or not isinstance(payload, bytes):
                continue
            if name == "file":
                data, original = payload, part.get_filename() or ""
            else:
                fields[name] = payload.decode("utf-8", "replace")
        if data is None:
            return refusal(400, "Expected multipart/form-data with a 'file' field")
        return self._store(data, original, fields.get("fileName", ""), fields.get("uploadPath", ""))

    @staticmethod
    def _json(body: bytes) -> dict[str, Any] | None:
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _upload_base64(self, body: bytes) -> Reply:
        request = self._json(body)
        text = request.get("base64_data") if request else None
        if not isinstance(text, str) or not text:
            return refusal(400, "base64_data is required")
        encoded = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return refusal(400, "base64_data is not valid base64", in_200=True)
        assert request is not None  # nosec B101 - narrowed above
        return self._store(
            data, "", str(request.get("file_name") or ""), str(request.get("upload_path") or "")
        )

    def _upload_url(self, body: bytes) -> Reply:
        """Fetch `file_url` — from this simulator only (its result links and uploads)."""
        request = self._json(body)
        url = request.get("file_url") if request else None
        if not isinstance(url, str) or not url:
            return refusal(400, "file_url is required")
        base = self._service.base_url
        if not url.startswith(base + "/"):
            return refusal(
                400,
                "Could not fetch file_url: the simulator fetches only its own URLs",
                in_200=True,
            )
        fetched = self._service.dispatch("GET", url[len(base) :], {}, b"", True)
        if fetched.drop or fetched.status != 200:
            return refusal(400, f"Could not fetch file_url: HTTP {fetched.status}", in_200=True)
        assert request is not None  # nosec B101 - narrowed above
        original = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        return self._store(
            fetched.body,
            original,
            str(request.get("file_name") or ""),
            str(request.get("upload_path") or ""),
        )

    # --- reads, deletes, the files themselves ---------------------------------------------------

    def _quota_data(self) -> dict[str, Any]:
        used = len(self.live_files())
        return {
            "user_group": "default",
            "used_files": used,
            "max_files": self.quota,
            "remain_files": max(0, self.quota - used),
        }

    def _list(self, query: str) -> Reply:
        params = parse_qs(query)
        try:
            page = int(params.get("page", ["1"])[0])
            size = int(params.get("pageSize", ["20"])[0])
        except ValueError:
            return refusal(400, "page and pageSize must be whole numbers")
        if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
            return refusal(400, f"page >= 1 and 1 <= pageSize <= {MAX_PAGE_SIZE}")
        files = sorted(self.live_files(), key=lambda file: (file.created_at, file.id))
        shown = files[(page - 1) * size : page * size]
        base = self._service.base_url
        return envelope(
            {
                "total": len(files),
                "page": page,
                "page_size": size,
                "files": [file.to_api(base) for file in shown],
            }
        )

    def _delete(self, file_id: str) -> Reply:
        now = self._service.now()
        with self._lock:
            file = self._files.get(file_id)
            if file is None or not file.live_at(now):
                return refusal(404, "File not found or expired")
            file.deleted_at = now
            self._changes += 1
        return envelope({"file_id": file_id, "deleted": True})

    def _fetch(self, path: str) -> Reply:
        """The file_url: public like EvoLink's, served until the file expires or is deleted."""
        self._count("fetch")
        match = _UPLOAD_PATH.fullmatch(path)
        with self._lock:
            file = None if match is None else self._files.get(unquote(match["file_id"]))
        if file is None or not file.live_at(self._service.now()):
            return xml_error_reply(404, "NoSuchKey", "The specified key does not exist.")
        return Reply(body=file.data, content_type=file.mime_type)

    def _admin(self) -> Reply:
        now = self._service.now()
        with self._lock:
            files = list(self._files.values())
        base = self._service.base_url
        return json_reply(
            {
                "quota": self.quota,
                "ttl_seconds": self.ttl_seconds,
                "request_counts": self.request_counts(),
                "files": [
                    {
                        **file.to_api(base),
                        "live": file.live_at(now),
                        "deleted": bool(file.deleted_at),
                    }
                    for file in files
                ],
            }
        )

    # --- the state file ---------------------------------------------------------------------------

    def snapshot_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "files": [file.to_state() for file in self._files.values()],
                "request_counts": dict(self._counts),
            }

    @staticmethod
    def parse_state(section: Any) -> FilesState:
        """Read the `files` section (absent in files written before the Files API: empty).
        Raises KeyError, TypeError or ValueError on a malformed one; changes nothing."""
        if section is None:
            return FilesState((), dict.fromkeys(FILE_ROUTES, 0))
        files = tuple(SimFile.from_state(item) for item in section["files"])
        if len({file.id for file in files}) != len(files):
            raise ValueError("an uploaded file id appears twice")
        counts = dict.fromkeys(FILE_ROUTES, 0)
        counts.update({str(k): int(v) for k, v in dict(section["request_counts"]).items()})
        return FilesState(files, counts)

    def install_state(self, state: FilesState) -> None:
        with self._lock:
            self._files = {file.id: file for file in state.files}
            self._counts = dict(state.counts)
            self._changes += 1
