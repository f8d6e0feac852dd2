"""Where generated images and their JSON sidecars live: local disk or any S3-compatible store.

Both back-ends are Prefect blocks, so an operator can create "where do the images go" once in the
Prefect UI and flows only carry a block name. They share one small, synchronous interface,
`AssetStorage`, so tasks never branch on the kind of storage.

Keys are '/'-separated relative keys such as ``"campaign/asset/draft/0.png"``. Parts of a key
often come from untrusted input (campaign names, asset ids echoed by an API), so:

- build keys with `safe_key(*parts)`, which turns any string into one harmless segment, and
- every storage method re-validates the key it receives (`check_key`), and local storage also
  checks that the resolved path stays inside its base directory.

A rejected key raises `ValueError` naming the key; nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Final, Literal
from urllib.parse import quote

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "ENV_ASSETS_DIR",
    "AssetStorage",
    "LocalAssetStorage",
    "S3AssetStorage",
    "StoredObject",
    "check_key",
    "default_storage",
    "load_storage",
    "safe_key",
]

logger = logging.getLogger(__name__)

ENV_ASSETS_DIR: Final = "EVOLINK_ASSETS_DIR"
"""Overrides the base directory of `default_storage()` (tests and local runs use a temp dir)."""

MAX_PART_CHARS: Final = 80
"""Longest segment `safe_key` produces; long names are cut and given a hash suffix."""
MAX_SEGMENT_BYTES: Final = 255
"""Most file systems refuse longer file names (NAME_MAX)."""
MAX_KEY_BYTES: Final = 1024
"""S3's limit on a full object key (UTF-8)."""

_MIB: Final = 1024 * 1024
_COPY_BUFFER: Final = _MIB
_HASH_CHARS: Final = 10
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

# S3 user metadata: ASCII only, and at most 2 KB for all keys and values together.
_S3_METADATA_VALUE_CHARS: Final = 256
_S3_METADATA_KEY_CHARS: Final = 64
_S3_METADATA_TOTAL_BYTES: Final = 2000
_S3_METADATA_KEY_UNSAFE = re.compile(r"[^a-z0-9_-]")
# Printable ASCII stays readable; '%' is escaped so that `unquote` restores the value exactly.
_S3_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")

JSON_CONTENT_TYPE: Final = "application/json"


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def _safe_part(part: str) -> str:
    """One untrusted string -> one segment of [A-Za-z0-9._-] that cannot climb or hide.

    A part that is already safe passes through unchanged (so ids stay readable and stable).
    Any part that had to change - characters replaced, leading dots neutralised, emptiness
    filled, length cut - gets a short hash of its (NFKC-normalised) original appended, because
    otherwise two different campaign names ("春季", "夏季", or "a b" and "a/b") would map to
    the same key and overwrite each other's images.
    """
    if not isinstance(part, str):
        raise TypeError(f"key parts must be str, got {type(part).__name__}: {part!r}")
    original = unicodedata.normalize("NFKC", part)
    cleaned = _UNSAFE_CHARS.sub("-", original)
    # Leading dots make '.', '..' and hidden files; our temp files also start with a dot.
    stripped = cleaned.lstrip(".")
    cleaned = "_" * (len(cleaned) - len(stripped)) + stripped
    if not cleaned:
        cleaned = "_"
    if cleaned == original and len(cleaned) <= MAX_PART_CHARS:
        return cleaned
    suffix = "-" + _short_hash(original)
    return cleaned[: MAX_PART_CHARS - len(suffix)] + suffix


def safe_key(*parts: str) -> str:
    """Build a storage key from untrusted parts; each part becomes exactly one segment.

    Unicode is NFKC-normalised, anything outside ``[A-Za-z0-9._-]`` (including '/', '\\\\' and
    NUL) becomes '-', leading dots become '_', an empty part becomes '_', and parts are capped
    at 80 characters. Changed parts carry a hash suffix so that distinct inputs stay distinct.
    The result always passes `check_key`, so it can never point outside a storage root.

    Example:
        >>> safe_key("summer", "asset_42", "draft", "0.png")
        'summer/asset_42/draft/0.png'
    """
    if not parts:
        raise ValueError("safe_key() needs at least one part")
    return check_key("/".join(_safe_part(p) for p in parts))


def check_key(key: str) -> str:
    """Validate a relative storage key and return it unchanged; raise ValueError otherwise.

    Rules (the same for every back-end, so keys are portable between them): a non-empty str,
    relative (no leading '/'), no backslash, no NUL or control characters, no empty segments
    (no '//' and no trailing '/'), no segment starting with '.' (covers '.', '..', hidden and
    in-progress temp files), segments of at most 255 UTF-8 bytes, the whole at most 1024 bytes.
    """
    if not isinstance(key, str):
        raise ValueError(f"storage key must be a str, got {type(key).__name__}: {key!r}")
    problem: str | None = None
    if not key:
        problem = "is empty"
    elif key.startswith("/"):
        problem = "is absolute"
    elif "\\" in key:
        problem = "contains a backslash"
    elif _CONTROL_CHARS.search(key):
        problem = "contains NUL or control characters"
    else:
        try:
            encoded_len = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            encoded_len = -1
        if encoded_len < 0:
            problem = "is not valid Unicode"
        elif encoded_len > MAX_KEY_BYTES:
            problem = f"is longer than {MAX_KEY_BYTES} bytes"
        else:
            for segment in key.split("/"):
                if not segment:
                    problem = "has an empty segment"
                elif segment in (".", ".."):
                    problem = f"has a {segment!r} segment"
                elif segment.startswith("."):
                    problem = "has a segment starting with '.'"
                elif len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
                    problem = f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
                if problem:
                    break
    if problem:
        raise ValueError(f"invalid storage key {key!r}: it {problem}")
    return key


def _check_prefix(prefix: str) -> str:
    """A listing prefix: '' or a key, maybe ending in '/', whose last segment may be partial."""
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What a write produced: enough to record it in a sidecar or an artifact."""

    key: str
    uri: str
    size_bytes: int
    content_type: str


# --------------------------------------------------------------------------------------------
# Interface
# --------------------------------------------------------------------------------------------


class AssetStorage(Block, ABC):
    """Interface shared by the storage blocks: tasks take an `AssetStorage` and never care which.

    All methods are synchronous and thread-safe. Keys are validated by `check_key` on every call.
    `ABC` among the bases keeps Prefect from registering this interface as a block type.
    """

    _block_type_name: ClassVar[str | None] = "EvoLink Asset Storage"
    _description: ClassVar[str | None] = "Interface for EvoLink asset storage blocks."

    def _check_key(self, key: str) -> str:
        """Validate `key` (see `check_key`); back-ends add their own containment checks."""
        return check_key(key)

    @abstractmethod
    def put_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Store a file that is already on local disk, streaming it (never whole in memory)."""

    @abstractmethod
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Store a small payload (JSON sidecars, records)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """The stored bytes, or None when nothing is stored under `key`."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """A stable address for `key` ("file:///..." or "s3://bucket/..."), for records."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Sorted relative keys that start with `prefix` (a plain string prefix, as in S3)."""

    @abstractmethod
    def presigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        """A temporary HTTP(S) GET URL, or None when the back-end has no such thing."""

    def put_json(
        self, key: str, obj: Any, *, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Store `obj` as UTF-8 JSON with sorted keys, so equal records give equal bytes.

        Pydantic models are dumped in JSON mode first; anything else must be JSON-serialisable
        (a TypeError says what is not, rather than silently stringifying it).
        """
        if isinstance(obj, BaseModel):
            obj = obj.model_dump(mode="json")
        data = json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=2).encode("utf-8")
        return self.put_bytes(key, data + b"\n", content_type=JSON_CONTENT_TYPE, metadata=metadata)

    def get_json(self, key: str) -> Any | None:
        """The decoded JSON under `key`, or None when missing (bad JSON raises ValueError)."""
        data = self.get_bytes(key)
        if data is None:
            return None
        return json.loads(data.decode("utf-8"))


# --------------------------------------------------------------------------------------------
# Local disk
# --------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort, since some file systems refuse to fsync directories."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalAssetStorage(AssetStorage):
    """Store generated images and sidecars in a directory on local disk.

    Writes are atomic: data goes to a hidden temp file in the destination directory, is
    fsynced, then moved into place with `os.replace`, so a reader never sees half an image.
    Per-object metadata is not kept on disk; write a JSON sidecar with `put_json` instead.

    Example:
        Save once (or create the block in the Prefect UI):
        ```python
        from blocks.storage import LocalAssetStorage
        LocalAssetStorage(base_dir="/data/evolink-assets").save("local-assets")
        ```
        Then use it from a flow or task:
        ```python
        from blocks.storage import LocalAssetStorage, safe_key
        storage = LocalAssetStorage.load("local-assets")
        stored = storage.put_file(
            safe_key("summer", "asset-1", "draft", "0.png"),
            Path("/tmp/image.png"),
            content_type="image/png",
            metadata={"prompt": "a red kite"},
        )
        print(stored.uri)
        ```
    """

    _block_type_name: ClassVar[str | None] = "EvoLink Local Asset Storage"
    _block_type_slug: ClassVar[str | None] = "evolink-local-asset-storage"
    _description: ClassVar[str | None] = (
        "Stores EvoLink GPT Image 2 results and their JSON sidecars in a directory on local "
        "disk, with atomic writes."
    )

    base_dir: str = Field(
        default="assets",
        min_length=1,
        title="Base Directory",
        description=(
            "Directory that holds all assets. A relative path is resolved against the working "
            "directory of the process at the time of use; '~' is expanded."
        ),
    )

    # -- paths

    def root(self) -> Path:
        """The absolute, symlink-resolved base directory (resolved per call: cwd may change)."""
        return Path(self.base_dir).expanduser().resolve()

    def _path(self, key: str) -> Path:
        """Validated key -> absolute path, refusing anything that resolves outside `root()`.

        Resolving follows symlinks, so a link inside the base directory that points elsewhere
        is refused as well.
        """
        self._check_key(key)
        root = self.root()
        path = (root / key).resolve()
        if path == root or not path.is_relative_to(root):
            raise ValueError(f"invalid storage key {key!r}: it resolves outside {root}")
        return path

    # -- writes

    def _write_atomically(self, key: str, fill: Callable[[BinaryIO], object]) -> tuple[Path, int]:
        """Create a temp file next to the destination, let `fill(fileobj)` write it, then replace.

        Returns the final path and the number of bytes written.
        """
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".partial")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
                size = os.fstat(out.fileno()).st_size
            # mkstemp creates 0600; assets are meant to be readable like any other output file.
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)
        return dest, size

    def put_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Copy `path` into the store in 1 MiB chunks, atomically. `metadata` is not kept."""
        src = Path(path)
        with src.open("rb") as source:  # open first: a missing source leaves no temp file
            dest, size = self._write_atomically(
                key, lambda out: shutil.copyfileobj(source, out, _COPY_BUFFER)
            )
        logger.debug("stored %s (%d bytes) at %s", key, size, dest)
        return StoredObject(key=key, uri=dest.as_uri(), size_bytes=size, content_type=content_type)

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Write `data` atomically. `metadata` is not kept (use a JSON sidecar)."""
        dest, size = self._write_atomically(key, lambda out: out.write(data))
        return StoredObject(key=key, uri=dest.as_uri(), size_bytes=size, content_type=content_type)

    # -- reads

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def list_keys(self, prefix: str = "") -> list[str]:
        """Regular files under the base directory whose key starts with `prefix`.

        Hidden entries (names starting with '.', such as in-progress temp files) are skipped,
        and symlinks are not followed out of the tree.
        """
        _check_prefix(prefix)
        root = self.root()
        # Walk only the deepest directory the prefix names completely.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(directory) if directory else root
        if not start.is_dir():
            return []
        keys: list[str] = []
        for current, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                full = Path(current) / name
                if full.is_symlink() or not full.is_file():
                    continue
                key = full.relative_to(root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def presigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        """Local files have no shareable URL: always None (after validating the key)."""
        self._path(key)
        return None


# --------------------------------------------------------------------------------------------
# S3 and S3-compatible stores
# --------------------------------------------------------------------------------------------


def _s3_metadata_value(raw: str) -> str:
    """Percent-encode one value character by character, stopping before the length cap.

    Encoding per character means a cut never splits an escape or a multi-byte character.
    """
    pieces: list[str] = []
    length = 0
    last = len(raw) - 1
    for index, char in enumerate(raw):
        if char == " " and index in (0, last):
            encoded = "%20"
        else:
            encoded = quote(char, safe=_S3_METADATA_SAFE, errors="replace")
        if length + len(encoded) > _S3_METADATA_VALUE_CHARS:
            # Cut here; a space now at the end would be stripped by HTTP, so drop it.
            return "".join(pieces).rstrip(" ")
        pieces.append(encoded)
        length += len(encoded)
    return "".join(pieces)


def _s3_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Make metadata acceptable to S3: ASCII keys and values, short, 2 KB in total.

    Keys are lower-cased (S3 does so anyway) and reduced to [a-z0-9_-]. Values are
    percent-encoded outside printable ASCII ('%' too, so `urllib.parse.unquote` restores them),
    leading/trailing spaces are encoded because HTTP would strip them, and each value is cut to
    256 characters. Entries that no longer fit in S3's 2 KB budget are dropped. This is lossy
    on purpose: the full metadata belongs in the JSON sidecar.
    """
    result: dict[str, str] = {}
    total = 0
    for raw_key, raw_value in sorted((metadata or {}).items()):
        key = _S3_METADATA_KEY_UNSAFE.sub("-", str(raw_key).lower())[:_S3_METADATA_KEY_CHARS]
        if not key or key in result:
            continue
        value = _s3_metadata_value(str(raw_value))
        size = len(key) + len(value)
        if total + size > _S3_METADATA_TOTAL_BYTES:
            logger.debug("S3 metadata %r dropped: over the 2 KB limit", key)
            continue
        result[key] = value
        total += size
    return result


def _is_not_found(error: Exception) -> bool:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NotFound"} or status == 404


_CLIENT_LOCK = threading.Lock()
"""Guards client creation: boto3 sessions are not thread-safe, the clients they make are."""


class S3AssetStorage(AssetStorage):
    """Store generated images and sidecars in an S3 bucket or any S3-compatible store.

    Large files are uploaded with multipart transfers straight from disk. Object metadata is
    reduced to what S3 accepts (ASCII, 2 KB); keep the full record in a JSON sidecar.
    Credentials are secrets: masked in the UI, in repr() and in logs. Leave them empty to use
    boto3's default credential chain (environment, profile, instance role).

    Example:
        Save once (or create the block in the Prefect UI):
        ```python
        from blocks.storage import S3AssetStorage
        S3AssetStorage(
            bucket="my-images",
            prefix="evolink",
            endpoint_url="https://s3.example.com",  # omit for AWS
            addressing_style="path",
        ).save("s3-assets")
        ```
        Then use it from a flow or task:
        ```python
        from blocks.storage import S3AssetStorage
        storage = S3AssetStorage.load("s3-assets")
        storage.put_json("summer/asset-1/record.json", {"status": "approved"})
        url = storage.presigned_url("summer/asset-1/final/0.png", expires_seconds=600)
        ```
    """

    _block_type_name: ClassVar[str | None] = "EvoLink S3 Asset Storage"
    _block_type_slug: ClassVar[str | None] = "evolink-s3-asset-storage"
    _description: ClassVar[str | None] = (
        "Stores EvoLink GPT Image 2 results and their JSON sidecars in an S3 bucket or any "
        "S3-compatible object store, with multipart uploads and presigned download URLs."
    )

    bucket: str = Field(min_length=1, description="Name of the bucket that holds the assets.")
    prefix: str = Field(
        default="",
        description=(
            "Key prefix inside the bucket, e.g. 'evolink/prod'; every asset key is stored "
            "under it. Leading and trailing '/' are ignored."
        ),
    )
    endpoint_url: str | None = Field(
        default=None,
        title="Endpoint URL",
        description=(
            "URL of an S3-compatible service (MinIO, Ceph, R2, ...). Leave empty for AWS S3."
        ),
    )
    region_name: str | None = Field(
        default=None,
        description="Region of the bucket, e.g. 'us-east-1'. Empty: boto3's configured default.",
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None,
        title="Access Key ID",
        description="Access key ID. Empty: boto3's default credential chain is used.",
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        title="Secret Access Key",
        description="Secret access key matching the access key ID. Stored encrypted.",
    )
    addressing_style: Literal["auto", "virtual", "path"] = Field(
        default="auto",
        description=(
            "How the bucket appears in URLs: 'virtual' (bucket.host), 'path' (host/bucket; "
            "usually needed for S3-compatible servers) or 'auto' (boto3 decides)."
        ),
    )
    multipart_threshold_mb: int = Field(
        default=8,
        ge=5,
        le=5120,
        title="Multipart Threshold (MB)",
        description=(
            "Files at least this many MiB are uploaded in parts of this size (S3 minimum: 5)."
        ),
    )

    _client: Any = PrivateAttr(default=None)

    @field_validator("prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        """Strip slashes; refuse a prefix that could not be a key (it starts every key)."""
        value = value.strip("/")
        if value:
            check_key(value)
        return value

    # -- client

    def get_client(self) -> Any:
        """The boto3 S3 client for this block, built once and cached on the instance.

        The cache is a private attribute: it is not part of the block's data, is not saved to
        Prefect, and is dropped when the block is copied or pickled.
        """
        client = self._client
        if client is not None:
            return client
        with _CLIENT_LOCK:
            if self._client is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session(
                    aws_access_key_id=(
                        self.aws_access_key_id.get_secret_value()
                        if self.aws_access_key_id
                        else None
                    ),
                    aws_secret_access_key=(
                        self.aws_secret_access_key.get_secret_value()
                        if self.aws_secret_access_key
                        else None
                    ),
                    region_name=self.region_name,
                )
                config = Config(
                    signature_version="s3v4",
                    s3={"addressing_style": self.addressing_style},
                    retries={"mode": "standard", "max_attempts": 5},
                )
                self._client = session.client(
                    "s3", endpoint_url=self.endpoint_url or None, config=config
                )
            return self._client

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle without the cached client (it holds sockets and locks; it is rebuilt lazily)."""
        state = super().__getstate__()
        private = state.get("__pydantic_private__")
        if private and private.get("_client") is not None:
            state["__pydantic_private__"] = {**private, "_client": None}
        return state

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        """Deep-copy without the cached client: the copy builds its own when needed."""
        memo = {} if memo is None else memo
        if self._client is not None:
            memo[id(self._client)] = None
        return super().__deepcopy__(memo)

    # -- keys

    def _object_key(self, key: str) -> str:
        self._check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        part = self.multipart_threshold_mb * _MIB
        return TransferConfig(multipart_threshold=part, multipart_chunksize=part)

    # -- writes

    def put_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Upload `path` with boto3's managed transfer (multipart above the threshold)."""
        object_key = self._object_key(key)
        src = Path(path)
        size = src.stat().st_size
        self.get_client().upload_file(
            Filename=str(src),
            Bucket=self.bucket,
            Key=object_key,
            ExtraArgs={"ContentType": content_type, "Metadata": _s3_metadata(metadata)},
            Config=self._transfer_config(),
        )
        logger.debug("uploaded %s (%d bytes) to %s", key, size, self.uri(key))
        return StoredObject(key=key, uri=self.uri(key), size_bytes=size, content_type=content_type)

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """One PUT; meant for small payloads (S3 itself caps a single PUT at 5 GB)."""
        self.get_client().put_object(
            Bucket=self.bucket,
            Key=self._object_key(key),
            Body=data,
            ContentType=content_type,
            Metadata=_s3_metadata(metadata),
        )
        return StoredObject(
            key=key, uri=self.uri(key), size_bytes=len(data), content_type=content_type
        )

    # -- reads

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self.get_client().get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if _is_not_found(error):
                return None
            raise
        with response["Body"] as body:
            data: bytes = body.read()
            return data

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.get_client().head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if _is_not_found(error):
                return False
            raise
        return True

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def list_keys(self, prefix: str = "") -> list[str]:
        """Keys under the block's prefix that start with `prefix`, relative to the block prefix.

        Objects whose names are not valid keys (written by other tools, e.g. 'a//b') are skipped,
        since no other method of this block could address them.
        """
        _check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self.get_client().get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(root) :]
                try:
                    check_key(key)
                except ValueError:
                    logger.debug("skipping object %r: not a valid storage key", item["Key"])
                    continue
                keys.append(key)
        return sorted(keys)

    def presigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        """A presigned GET URL valid for `expires_seconds` (1 s to 7 days, S3's limit)."""
        if not 1 <= expires_seconds <= 7 * 24 * 3600:
            raise ValueError(f"expires_seconds must be between 1 and 604800, got {expires_seconds}")
        url: str = self.get_client().generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._object_key(key)},
            ExpiresIn=expires_seconds,
        )
        return url


# --------------------------------------------------------------------------------------------
# Choosing a storage
# --------------------------------------------------------------------------------------------

STORAGE_BLOCK_TYPES: Final[tuple[type[AssetStorage], ...]] = (LocalAssetStorage, S3AssetStorage)


def default_storage() -> AssetStorage:
    """Storage used when no block is named: `./assets`, or `$EVOLINK_ASSETS_DIR` when set."""
    base_dir = os.environ.get(ENV_ASSETS_DIR, "").strip()
    return LocalAssetStorage(base_dir=base_dir) if base_dir else LocalAssetStorage()


def load_storage(name: str | None) -> AssetStorage:
    """Load a saved storage block by name, or `default_storage()` when `name` is None or ''.

    - ``"evolink-s3-asset-storage/prod-assets"`` (``<block-type-slug>/<name>``, as Prefect
      prints it) loads exactly that block; it must be an `AssetStorage`.
    - A plain name (``"prod-assets"``) is looked up among both storage block types; if both
      types have a block of that name, a ValueError asks for the slug form.

    Needs a reachable Prefect API (like any `Block.load`). Always synchronous, also when called
    from async code. Raises ValueError when nothing matches.
    """
    if name is None or not name.strip():
        return default_storage()
    name = name.strip()
    if "/" in name:
        block = Block.load(name, _sync=True)  # type: ignore[call-arg]
        if not isinstance(block, AssetStorage):
            raise TypeError(
                f"block {name!r} is a {type(block).__name__}, not an asset storage block"
            )
        return block
    found: list[AssetStorage] = []
    for block_type in STORAGE_BLOCK_TYPES:
        try:
            found.append(block_type.load(name, _sync=True))  # type: ignore[call-arg,arg-type]
        except ValueError:
            continue
    slugs = [t.get_block_type_slug() for t in STORAGE_BLOCK_TYPES]
    if not found:
        raise ValueError(f"no storage block named {name!r} (looked in block types {slugs})")
    if len(found) > 1:
        raise ValueError(
            f"storage block name {name!r} exists for several block types; "
            f"use '<block-type-slug>/{name}' with one of {slugs}"
        )
    return found[0]
