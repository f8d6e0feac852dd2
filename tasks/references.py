"""Turn a brief's reference images into URLs EvoLink can fetch, before anything is paid.

- `https://…` is sent as it is;
- `s3://bucket/key` and `storage:key` become presigned GET URLs of the configured S3 storage;
- a local file is uploaded to the configured S3 storage first (under the campaign's prefix).
Local-only storage cannot give EvoLink a URL, so a local file or storage reference is refused
there with a message that says what to configure.

Each reference also gets a stable *identity* (the URL, the object, or the file's sha256): presigned
URLs change with every signing, and job keys must not.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from evolink.brief import CampaignBrief
from evolink.errors import BriefError
from prefect_evolink.blocks import AssetStorage, S3AssetStorage, safe_key

PRESIGN_SECONDS: Final = 24 * 3600  # EvoLink fetches when the task runs; a day covers retries


@dataclass(frozen=True, slots=True)
class ResolvedReference:
    url: str
    identity: str


@dataclass(frozen=True, slots=True)
class AssetReferences:
    images: list[ResolvedReference]
    mask: ResolvedReference | None

    @property
    def urls(self) -> list[str]:
        return [ref.url for ref in self.images]

    @property
    def identities(self) -> list[str]:
        return [ref.identity for ref in self.images] + ([self.mask.identity] if self.mask else [])


def _presign(storage: AssetStorage, key: str, spec: str) -> str:
    url = storage.presigned_url(key, PRESIGN_SECONDS)
    if url is None:
        raise ValueError(
            f"{spec!r} needs S3 storage to be sent to EvoLink as a presigned URL; "
            "name an S3 storage block (storage_block) or use an https URL"
        )
    return url


def _resolve_one(
    spec: str, brief: CampaignBrief, base_dir: Path, storage: AssetStorage
) -> ResolvedReference:
    if spec.startswith(("https://", "http://")):
        return ResolvedReference(spec, spec)
    if spec.startswith("storage:"):
        key = spec.removeprefix("storage:")
        if not storage.exists(key):
            raise ValueError(f"{spec!r}: no such object in the configured storage")
        return ResolvedReference(_presign(storage, key, spec), spec)
    if spec.startswith("s3://"):
        if not isinstance(storage, S3AssetStorage):
            raise ValueError(f"{spec!r} needs an S3 storage block (storage_block)")
        bucket, _, key = spec.removeprefix("s3://").partition("/")
        url = storage.get_client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
        )
        return ResolvedReference(url, spec)
    path = (base_dir / spec).resolve()
    if not path.is_file():
        raise ValueError(
            f"{spec!r}: not an https URL, s3:// or storage: object, nor a file at {path}"
        )
    if not isinstance(storage, S3AssetStorage):
        raise ValueError(
            f"local file {spec!r} must be uploaded to S3 storage before EvoLink can fetch it, "
            "but only local storage is configured; name an S3 storage block (storage_block)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    key = safe_key(brief.campaign, "references", f"{digest[:16]}{path.suffix.lower()}")
    if not storage.exists(key):
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        storage.put_file(key, path, content_type=content_type, metadata={"source": path.name})
    return ResolvedReference(_presign(storage, key, spec), f"sha256:{digest}")


def _resolve_all(
    brief: CampaignBrief, base_dir: Path, storage: AssetStorage
) -> dict[str, AssetReferences]:
    resolved: dict[str, AssetReferences] = {}
    problems: list[str] = []
    for asset in brief.assets:
        images: list[ResolvedReference] = []
        mask = None
        for index, spec in enumerate(asset.reference_images):
            try:
                images.append(_resolve_one(spec, brief, base_dir, storage))
            except ValueError as error:
                problems.append(f"asset {asset.id!r}: reference_images.{index}: {error}")
        if asset.mask is not None:
            try:
                mask = _resolve_one(asset.mask, brief, base_dir, storage)
            except ValueError as error:
                problems.append(f"asset {asset.id!r}: mask: {error}")
        resolved[asset.id] = AssetReferences(images, mask)
    if problems:
        raise BriefError(problems)
    return resolved


async def resolve_references(
    brief: CampaignBrief, base_dir: Path, storage: AssetStorage
) -> dict[str, AssetReferences]:
    """Every asset's references as fetchable URLs; raises BriefError naming asset and field."""
    return await asyncio.to_thread(_resolve_all, brief, base_dir, storage)
