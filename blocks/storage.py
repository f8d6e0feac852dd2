"""The asset storage interface: `AssetStorage` and what a write returns, `StoredObject`.

Generated images and their JSON sidecars live on local disk (`blocks/local.py`) or in any
S3-compatible store (`blocks/s3.py`). Both back-ends are Prefect blocks, so an operator creates
"where do the images go" once in the Prefect UI and flows only carry a block name; tasks take an
`AssetStorage` and never branch on the kind of storage. Keys are validated by `check_key`
(`blocks/keys.py`) on every call; `blocks/lookup.py` picks a storage by block name.

Every operation has an async method and a sync twin, as prefect-aws's `S3Bucket` does:

| async            | sync           |
|------------------|----------------|
| `aput_file`      | `put_file`     |
| `aput_bytes`     | `put_bytes`    |
| `aput_json`      | `put_json`     |
| `aget_bytes`     | `get_bytes`    |
| `aget_json`      | `get_json`     |
| `aexists`        | `exists`       |
| `alist_keys`     | `list_keys`    |
| `adelete_key`    | `delete_key`   |
| `apresigned_url` | `presigned_url`|

Async code awaits the `a…` methods; they run the blocking disk or boto3 work in a worker thread,
so the event loop never blocks. The sync names follow Prefect's `async_dispatch` (see
`blocks/_dispatch.py` for the exact rule): called from async code they return the async twin's
coroutine; in sync code, and in any thread without a running event loop (e.g. code run with
`asyncio.to_thread`), they run and return the result. `_sync=True` forces the sync path.

A back-end implements the blocking methods `_put_file`, `_put_bytes`, `_get_bytes`, `_exists`,
`_list_keys`, `_presigned_url` and `uri` (and `_delete`, which only the spend cap's running total
uses). The async twins run the public sync method in the worker
thread, so a subclass that overrides a sync method (a test double, say) changes both twins.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

from prefect.blocks.core import Block
from pydantic import BaseModel

from prefect_evolink.blocks._dispatch import in_worker_thread, storage_dispatch
from prefect_evolink.blocks.keys import check_key

__all__ = ["JSON_CONTENT_TYPE", "AssetStorage", "StoredObject"]

JSON_CONTENT_TYPE: Final = "application/json"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What a write produced: enough to record it in a sidecar or an artifact."""

    key: str
    uri: str
    size_bytes: int
    content_type: str


def _json_bytes(obj: Any) -> bytes:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"


class AssetStorage(Block, ABC):
    """Interface shared by the storage blocks: tasks take an `AssetStorage` and never care which.

    Methods are thread-safe. `ABC` among the bases keeps Prefect from registering this interface
    as a block type.
    """

    _block_type_name: ClassVar[str | None] = "EvoLink Asset Storage"
    _description: ClassVar[str | None] = "Interface for EvoLink asset storage blocks."

    @classmethod
    def __dispatch_key__(cls) -> str | None:
        """The key of Prefect's block registry: the block type slug.

        Prefect's own `Block.__dispatch_key__` gives the same slug, but builds the whole block
        schema to read it, every time a block class is defined: each time Prefect loads
        collections, and before `S3AssetStorage` may know its `credentials` type (blocks/s3.py).
        """
        return cls.get_block_type_slug()

    def _check_key(self, key: str) -> str:
        """Validate `key` (see `check_key`); back-ends add their own containment checks."""
        return check_key(key)

    # -- blocking implementations, one set per back-end

    @abstractmethod
    def _put_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Blocking `put_file`."""

    @abstractmethod
    def _put_bytes(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None
    ) -> StoredObject:
        """Blocking `put_bytes`."""

    @abstractmethod
    def _get_bytes(self, key: str) -> bytes | None:
        """Blocking `get_bytes`."""

    @abstractmethod
    def _exists(self, key: str) -> bool:
        """Blocking `exists`."""

    @abstractmethod
    def _list_keys(self, prefix: str) -> list[str]:
        """Blocking `list_keys`."""

    @abstractmethod
    def _presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """Blocking `presigned_url`."""

    def _delete(self, key: str) -> None:
        """Blocking `delete_key`. Only the spend cap's running total deletes (the bookings it has
        folded in); a back-end without it cannot keep that total (`evolink.records`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete objects")

    @abstractmethod
    def uri(self, key: str) -> str:
        """A stable address for `key` ("file:///..." or "s3://bucket/..."), for records."""

    # -- writes

    async def aput_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Store a file that is already on local disk, streaming it (never whole in memory).

        Args:
            key: Where to store it (see `check_key`).
            path: The local file.
            content_type: Its MIME type, e.g. "image/png".
            metadata: Per-object metadata, where the back-end keeps any (S3 does, reduced).
        """
        return await in_worker_thread(
            self.put_file, key, path, content_type=content_type, metadata=metadata
        )

    @storage_dispatch(aput_file)
    def put_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Sync twin of `aput_file`."""
        return self._put_file(key, Path(path), content_type=content_type, metadata=metadata)

    async def aput_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Store a small payload (JSON sidecars, records) under `key`."""
        return await in_worker_thread(
            self.put_bytes, key, data, content_type=content_type, metadata=metadata
        )

    @storage_dispatch(aput_bytes)
    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Sync twin of `aput_bytes`."""
        return self._put_bytes(key, data, content_type=content_type, metadata=metadata)

    async def aput_json(
        self, key: str, obj: Any, *, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Store `obj` as UTF-8 JSON with sorted keys, so equal records give equal bytes.

        Pydantic models are dumped in JSON mode first; anything else must be JSON-serialisable
        (a TypeError says what is not, rather than silently stringifying it).
        """
        return await in_worker_thread(self.put_json, key, obj, metadata=metadata)

    @storage_dispatch(aput_json)
    def put_json(
        self, key: str, obj: Any, *, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Sync twin of `aput_json`."""
        return self.put_bytes(
            key, _json_bytes(obj), content_type=JSON_CONTENT_TYPE, metadata=metadata
        )

    # -- reads

    async def aget_bytes(self, key: str) -> bytes | None:
        """The stored bytes, or None when nothing is stored under `key`."""
        return await in_worker_thread(self.get_bytes, key)

    @storage_dispatch(aget_bytes)
    def get_bytes(self, key: str) -> bytes | None:
        """Sync twin of `aget_bytes`."""
        return self._get_bytes(key)

    async def aget_json(self, key: str) -> Any | None:
        """The decoded JSON under `key`, or None when missing (bad JSON raises ValueError)."""
        return await in_worker_thread(self.get_json, key)

    @storage_dispatch(aget_json)
    def get_json(self, key: str) -> Any | None:
        """Sync twin of `aget_json`."""
        data = self.get_bytes(key)
        if data is None:
            return None
        return json.loads(data.decode("utf-8"))

    async def aexists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        return await in_worker_thread(self.exists, key)

    @storage_dispatch(aexists)
    def exists(self, key: str) -> bool:
        """Sync twin of `aexists`."""
        return self._exists(key)

    async def alist_keys(self, prefix: str = "") -> list[str]:
        """Sorted relative keys that start with `prefix` (a plain string prefix, as in S3)."""
        return await in_worker_thread(self.list_keys, prefix)

    @storage_dispatch(alist_keys)
    def list_keys(self, prefix: str = "") -> list[str]:
        """Sync twin of `alist_keys`."""
        return self._list_keys(prefix)

    async def adelete_key(self, key: str) -> None:
        """Remove the object under `key`; nothing happens when there is none."""
        await in_worker_thread(self.delete_key, key)

    @storage_dispatch(adelete_key)
    def delete_key(self, key: str) -> None:
        """Sync twin of `adelete_key` (a block's own `delete` removes the block document)."""
        self._delete(key)

    async def apresigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        """A temporary HTTP(S) GET URL, or None when the back-end has no such thing."""
        return await in_worker_thread(self.presigned_url, key, expires_seconds)

    @storage_dispatch(apresigned_url)
    def presigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        """Sync twin of `apresigned_url`."""
        return self._presigned_url(key, expires_seconds)
