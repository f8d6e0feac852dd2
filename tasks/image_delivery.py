"""THE ONE RULE for how an image of ours reaches EvoLink: a local reference file, a stored
draft, a stored final — anything EvoLink must fetch that is not already a URL of its own.

In this order, the first that gives a URL wins:

1. **presigned S3** — the storage can presign (`storage.presigned_url` is None on local storage);
2. **the fresh result link** — where one exists (a draft's link while EvoLink still keeps it:
   the caller's `fresh_link`, which answers None when the link is gone or too old);
3. **an upload to the Files API** — keyed by the image's sha256 and the Files API endpoint
   (`evolink.uploads.files_scope`), and reused while valid (at least `REUSE_MARGIN`, 1 h, left
   of EvoLink's 72 h, and still listed by the Files API), so a rerun uploads nothing twice.

Every upload is recorded through the record store (`_uploads/<scope>/<sha256>.json`,
`evolink.uploads.UploadRecord`) *before* its URL is sent, with the job key that sends it
(`used_by`): a crash leaves nothing unaccounted, `prefect-evolink report` and `prefect-evolink
files list` show it, and cleanup knows when it is no longer needed. `cleanup` (end of a campaign
run) and `prune_uploads` (`prefect-evolink files prune`) delete an upload once every job that
used it is stored or ended — or it expired — and forget its record.

A full Files API quota raises `FilesQuotaExceededError`, whose message names
`prefect-evolink files prune`; it is never retried (an upload is no Prefect task with retries,
and the Files API client never retries it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from evolink.errors import FilesQuotaExceededError, FileUploadOutcomeUnknownError
from evolink.files import EvoLinkFilesClient, FileInfo, UploadedFile
from evolink.jobs import utcnow
from evolink.models import ImageRequest
from evolink.records import RecordStore
from evolink.uploads import UploadRecord, files_scope
from prefect_evolink.blocks import AssetStorage, EvoLinkCredentials

PRESIGN_SECONDS: Final = 24 * 3600  # EvoLink fetches when the task runs; a day covers retries
PENDING_HOST: Final = "uploads.invalid"
"""A reference that is delivered only when its job is really sent has this placeholder URL in
the plan (`pending_url`); `ImageDelivery.deliver_request` swaps it for the real one."""


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PendingImage:
    """An image of ours to deliver when a job is sent: a local file, or a stored object."""

    sha256: str
    path: Path | None = None
    storage_key: str | None = None

    @property
    def source(self) -> str:
        if self.path is not None:
            return f"file:{self.path.name}"
        return f"storage:{self.storage_key}"

    @property
    def url(self) -> str:
        """The placeholder that stands for it in a planned request (never sent)."""
        return pending_url(self.sha256)


def pending_url(sha256: str) -> str:
    return f"https://{PENDING_HOST}/{sha256}.png"


@dataclass
class ImageDelivery:
    """The rule of the module docstring for one run (campaign or single job).

    Args:
        credentials: Whose Files API (its `files_base_url`) receives uploads.
        storage: Where the images and the upload records are.
        campaign: The run's campaign (recorded with each upload), or None.
    """

    credentials: EvoLinkCredentials
    storage: AssetStorage
    campaign: str | None = None
    used: dict[str, UploadRecord] = field(default_factory=dict)
    """The uploads this run sent (sha256 → record), for `cleanup`."""
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return files_scope(self.credentials.files_base_url)

    @property
    def store(self) -> RecordStore:
        return RecordStore(self.storage)

    # -- the rule --------------------------------------------------------------------------------

    async def stored_image(
        self,
        key: str,
        sha256: str,
        *,
        job: str | None,
        fresh_link: Callable[[], Awaitable[str | None]] | None = None,
    ) -> str:
        """A URL for the stored image `key` (a draft, a final, a `storage:` reference)."""
        presigned = await self.storage.apresigned_url(key, PRESIGN_SECONDS)
        if presigned is not None:
            return presigned
        if fresh_link is not None:
            link = await fresh_link()
            if link is not None:
                return link
        return await self._uploaded(PendingImage(sha256, storage_key=key), job=job)

    async def pending(self, image: PendingImage, *, job: str | None) -> str:
        """A URL for a reference resolved as pending (a local file, a stored object)."""
        if image.storage_key is not None:
            return await self.stored_image(image.storage_key, image.sha256, job=job)
        return await self._uploaded(image, job=job)

    async def deliver_request(
        self, request: ImageRequest, pending: dict[str, PendingImage], *, job: str | None
    ) -> ImageRequest:
        """`request` with every placeholder of `pending` (by its `url`) made a real URL."""
        if not pending:
            return request

        async def real(url: str) -> str:
            image = pending.get(url)
            return url if image is None else await self.pending(image, job=job)

        urls = [await real(url) for url in request.image_urls or []]
        mask = request.mask_url and await real(request.mask_url)
        update: dict[str, object] = {}
        if request.image_urls is not None:
            update["image_urls"] = urls
        if request.mask_url is not None:
            update["mask_url"] = mask
        return request.model_copy(update=update)

    # -- uploads ---------------------------------------------------------------------------------

    def _lock(self, sha256: str) -> asyncio.Lock:
        return self._locks.setdefault(sha256, asyncio.Lock())

    async def _uploaded(self, image: PendingImage, *, job: str | None) -> str:
        """The image's valid upload (recorded, still listed), else a new one; `job` is added
        to its `used_by` before its URL is returned."""
        async with self._lock(image.sha256):
            record = self.used.get(image.sha256) or await self.store.get_upload(
                self.scope, image.sha256
            )
            async with self.credentials.get_files_client() as client:
                if record is not None and not await self._still_there(client, record):
                    await self.store.forget_upload(record)
                    record = None
                if record is None:
                    record = await self._upload(client, image)
            if job is not None and job not in record.used_by:
                record = record.model_copy(update={"used_by": [*record.used_by, job]})
            await self.store.put_upload(record)
            self.used[image.sha256] = record
            return record.file_url

    async def _still_there(self, client: EvoLinkFilesClient, record: UploadRecord) -> bool:
        if not record.usable(utcnow()):
            return False
        info = await client.find_file(record.file_id)
        return info is not None

    async def _upload(self, client: EvoLinkFilesClient, image: PendingImage) -> UploadRecord:
        data = await self._bytes(image)
        name = f"{image.sha256[:16]}{_suffix(image)}"
        started = utcnow()
        try:
            uploaded: UploadedFile | FileInfo = await client.upload(data, file_name=name)
        except FileUploadOutcomeUnknownError:
            # The file may be stored at EvoLink although no answer came: look for it by its
            # name (the image's own hash) among the files made since this upload began, and
            # record it, so an outage at this moment leaves no upload unaccounted for.
            found = await self._made_since(client, name, started)
            if found is None:
                raise
            _logger().warning(
                "The Files API's answer to the upload of %s was lost; found it stored (file %s)",
                image.source,
                found.file_id,
            )
            uploaded = found
        except FilesQuotaExceededError:
            _logger().error(
                "Files API quota full: %s not uploaded (free it: prefect-evolink files prune)",
                image.source,
            )
            raise
        if uploaded.file_url is None:  # a listed file without its URL cannot be sent
            raise FileUploadOutcomeUnknownError(
                f"the upload of {image.source} was stored as {uploaded.file_id}, but the Files "
                "API did not say its URL"
            )
        record = UploadRecord(
            sha256=image.sha256,
            file_id=uploaded.file_id,
            file_url=uploaded.file_url,
            expires_at=uploaded.expires_at,
            files_base_url=self.credentials.files_base_url,
            scope=self.scope,
            uploaded_at=utcnow(),
            size_bytes=len(data),
            source=image.source,
            campaign=self.campaign,
            simulator=getattr(uploaded, "simulator", False),
        )
        await self.store.put_upload(record)  # recorded before anything is sent with it
        _logger().info(
            "Uploaded %s to the Files API (file %s, expires %s)",
            image.source,
            record.file_id,
            record.expires_at.isoformat() if record.expires_at else "in 72 h",
        )
        return record

    @staticmethod
    async def _made_since(
        client: EvoLinkFilesClient, name: str, started: datetime
    ) -> FileInfo | None:
        """The file named `name` created since `started` (less a minute of clock skew), if the
        Files API lists one: what a lost upload answer leaves behind."""
        since = started - timedelta(minutes=1)
        for info in await client.all_files():
            created = info.created_at
            if info.file_name == name and (created is None or created >= since):
                return info
        return None

    async def _bytes(self, image: PendingImage) -> bytes:
        if image.path is not None:
            data = await asyncio.to_thread(image.path.read_bytes)
        else:
            stored = await self.storage.aget_bytes(image.storage_key or "")
            if stored is None:
                raise FileNotFoundError(f"{image.source}: not in storage")
            data = stored
        digest = hashlib.sha256(data).hexdigest()
        if digest != image.sha256:
            raise ValueError(f"{image.source} changed since it was planned (sha256 {digest[:12]})")
        return data

    # -- cleanup ---------------------------------------------------------------------------------

    async def cleanup(self) -> list[UploadRecord]:
        """Delete this run's uploads whose jobs are all stored or ended (`prune_uploads`'s
        rule); the others stay recorded for a later run or `prefect-evolink files prune`.
        Never raises: what is left is logged and recorded."""
        if not self.used:
            return []
        try:
            deleted, kept = await prune_uploads(self.storage, self.credentials, only=set(self.used))
        except Exception as error:  # noqa: BLE001 — recorded: `prefect-evolink files prune`
            _logger().warning(
                "Uploads not cleaned up (%s: %s); they stay recorded — "
                "prefect-evolink files prune deletes them",
                type(error).__name__,
                error,
            )
            return []
        if deleted:
            _logger().info(
                "Deleted %d upload(s) from the Files API: their jobs are stored", len(deleted)
            )
        for record, why in kept:
            _logger().info("Upload %s kept: %s", record.file_id, why)
        return deleted


def _suffix(image: PendingImage) -> str:
    name = image.path.name if image.path is not None else (image.storage_key or "")
    suffix = Path(name).suffix.lower()
    return suffix if suffix in (".png", ".jpg", ".jpeg", ".webp") else ".png"


async def upload_verdict(store: RecordStore, record: UploadRecord) -> str:
    """Why an upload is still needed ("" when it is not): a job that used it may still be at
    work at EvoLink (sent, neither stored nor ended)."""
    if record.expired(utcnow()):
        return ""
    for job in record.used_by:
        if await store.job_started(job) and not await store.job_ended(job):
            return f"job {job[:16]}… may still be running at EvoLink"
    return ""


async def prune_uploads(
    storage: AssetStorage,
    credentials: EvoLinkCredentials,
    *,
    everything: bool = False,
    only: set[str] | None = None,
) -> tuple[list[UploadRecord], list[tuple[UploadRecord, str]]]:
    """Delete the recorded uploads of `credentials`' Files API endpoint that no job needs
    (every job that used one is stored or ended, or it expired) — all of them with
    `everything` — and forget their records. `only`: these sha256s. Returns (deleted, kept
    with the reason)."""
    store = RecordStore(storage)
    scope = files_scope(credentials.files_base_url)
    deleted: list[UploadRecord] = []
    kept: list[tuple[UploadRecord, str]] = []
    records = [
        r for r in await store.uploads() if r.scope == scope and (only is None or r.sha256 in only)
    ]
    if not records:
        return deleted, kept
    async with credentials.get_files_client() as client:
        for record in records:
            why = "" if everything else await upload_verdict(store, record)
            if why:
                kept.append((record, why))
                continue
            if not record.expired(utcnow()):
                await client.delete_file(record.file_id, missing_ok=True)
            await store.forget_upload(record)
            deleted.append(record)
    return deleted, kept
