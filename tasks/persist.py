"""Persist: copy a result image from its 24 h link into our storage, verified, exactly once."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from blocks.credentials import EvoLinkCredentials
from blocks.storage import AssetStorage
from evolink.errors import redact_url
from evolink.jobs import StoredImage
from tasks.retries import evolink_step


def sidecar_key(image_key: str) -> str:
    return f"{image_key}.json"


@evolink_step("evolink-persist", "persist {task_id} image {index}")
async def persist_image(
    url: str,
    *,
    task_id: str,
    index: int,
    dest_prefix: str,
    metadata: dict[str, Any],
    credentials: EvoLinkCredentials,
    storage: AssetStorage,
) -> StoredImage:
    """Stream one result to a temp file (never whole in memory), check it, store it atomically.

    The sidecar `<image>.json` is written last, so its presence means the image is complete; a
    retry or rerun that finds it returns at once instead of downloading again.
    """
    logger = get_run_logger()
    done = await asyncio.to_thread(storage.get_json, sidecar_key(f"{dest_prefix}/image-{index}"))
    if done is not None:
        logger.info("Image %d of task %s is already stored at %s", index, task_id, done["uri"])
        return StoredImage.model_validate(done)

    with tempfile.TemporaryDirectory(prefix="evolink-") as tmp:
        part = Path(tmp) / "download.part"
        with part.open("w+b") as sink:
            async with credentials.get_client() as client:
                download = await client.download_to(url, sink, task_id=task_id)
        key = f"{dest_prefix}/image-{index}.{download.image.extension}"
        details = {**metadata, "task_id": task_id, "index": index, "sha256": download.sha256}
        stored = await asyncio.to_thread(
            storage.put_file,
            key,
            part,
            content_type=download.image.content_type,
            metadata={name: str(value) for name, value in details.items()},
        )
    image = StoredImage(
        index=index,
        key=key,
        uri=stored.uri,
        sha256=download.sha256,
        size_bytes=download.size_bytes,
        content_type=download.image.content_type,
        width=download.image.width,
        height=download.image.height,
        source_url=redact_url(url),
    )
    sidecar = {**image.model_dump(mode="json"), "metadata": details}
    await asyncio.to_thread(storage.put_json, sidecar_key(f"{dest_prefix}/image-{index}"), sidecar)
    logger.info(
        "Stored image %d of task %s: %s (%d bytes, %sx%s, sha256 %s…)",
        index,
        task_id,
        stored.uri,
        download.size_bytes,
        image.width,
        image.height,
        download.sha256[:12],
    )
    return image
