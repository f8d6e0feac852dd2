"""Persist: copy a result image from its 24 h link into our storage, verified, exactly once."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from evolink.errors import redact_url
from evolink.jobs import StoredImage
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.steps import evolink_step


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
    retry or rerun that finds it returns at once instead of downloading again. Result links live
    24 h, so this runs right after the poll; the link's signature never reaches logs or storage.

    Args:
        url: The result link EvoLink returned for this image.
        task_id: The EvoLink task the image belongs to (for logs, metadata and errors).
        index: The image's position among the task's results (0 for the first).
        dest_prefix: Storage key prefix of the job; the image is stored as
            `<dest_prefix>/image-<index>.<ext>` with its sidecar beside it.
        metadata: Job details (prompt, size, quality, cost, ...) stored with the image as object
            metadata and in the sidecar.
        credentials: The EvoLink credentials block whose client downloads the result.
        storage: Where the image and its sidecar go.

    Returns:
        The stored image: key, URI, sha256, size in bytes, content type, width and height, and
        the result link without its query string.

    Raises:
        InvalidImageError: The download was not a usable image (wrong type, too big,
            truncated); retried.
        UnsafeResultLinkError: The link (or a redirect) is not http(s) or points at a private
            host; not retried.
        ResultExpiredError: The link no longer serves the image (links live 24 h); not
            retried.
        ValueError: The storage key was refused by the storage block; nothing is written.

    Example:
        A Prefect task: call it inside a flow, once per result link of a completed task:
        ```python
        image = await persist_image(
            done.results[0],
            task_id=done.id,
            index=0,
            dest_prefix="adhoc/mug/0123456789ab",
            metadata={"prompt": "a ceramic mug"},
            credentials=credentials,
            storage=storage,
        )
        print(image.uri, image.sha256)
        ```
    """
    logger = get_run_logger()
    done = await storage.aget_json(sidecar_key(f"{dest_prefix}/image-{index}"))
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
        stored = await storage.aput_file(
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
    await storage.aput_json(sidecar_key(f"{dest_prefix}/image-{index}"), sidecar)
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
