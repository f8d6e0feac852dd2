"""Persist: copy result images from their 24 h links into our storage, verified, exactly once.

`persist_images` is the step `run_image_job` runs: **one task run per job**, storing all of the
job's images. A campaign of 1,000 assets with k drafts makes 1,000 × (k + 1) images; one task
run per image would make the Prefect API record k − 1 more task runs per asset (their states,
events and logs) for no more safety: each image is still stored on its own, every image gets
its chance before the job is judged, and a retry of the task stores only the images that are
not yet stored (each image's sidecar marks it done). `persist_image` stores a single image as
its own task, for callers that want exactly that.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from evolink.errors import redact_url
from evolink.jobs import StoredImage
from evolink.layout import sidecar_key as sidecar_key  # an image's sidecar: beside it
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.steps import evolink_step, is_retryable


@evolink_step("evolink-persist-image", "persist {task_id} image {index}")
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
    return await store_image(
        url,
        task_id=task_id,
        index=index,
        dest_prefix=dest_prefix,
        metadata=metadata,
        credentials=credentials,
        storage=storage,
    )


@evolink_step("evolink-persist", "persist {task_id}")
async def persist_images(
    urls: list[str],
    *,
    task_id: str,
    dest_prefix: str,
    metadata: dict[str, Any],
    credentials: EvoLinkCredentials,
    storage: AssetStorage,
) -> list[StoredImage]:
    """Store every result image of one completed task, each as `persist_image` would.

    The images are stored side by side and every one gets its chance before the step is
    judged. When some fail, the step raises one of their errors — a retryable one if any, so
    the step's retry (which skips the images already stored) is not given up for the sake of
    an image that cannot be helped — with a note naming how many failed. One task run per job
    instead of one per image: see the module docstring.

    Args:
        urls: The task's result links, in result order (image `i` is `urls[i]`).
        task_id: The EvoLink task the images belong to (for logs, metadata and errors).
        dest_prefix: Storage key prefix of the job; image `i` is stored as
            `<dest_prefix>/image-<i>.<ext>` with its sidecar beside it.
        metadata: Job details (prompt, size, quality, cost, ...) stored with every image as
            object metadata and in its sidecar.
        credentials: The EvoLink credentials block whose client downloads the results.
        storage: Where the images and their sidecars go.

    Returns:
        The stored images, in result order.

    Raises:
        InvalidImageError: A download was not a usable image (wrong type, too big,
            truncated); retried.
        UnsafeResultLinkError: A link (or a redirect) is not http(s) or points at a private
            host; not retried.
        ResultExpiredError: A link no longer serves its image (links live 24 h); not retried.
        ValueError: A storage key was refused by the storage block; nothing is written.

    Example:
        A Prefect task: call it inside a flow, once per completed task:
        ```python
        images = await persist_images(
            done.results,
            task_id=done.id,
            dest_prefix="adhoc/mug/0123456789ab",
            metadata={"prompt": "a ceramic mug"},
            credentials=credentials,
            storage=storage,
        )
        print([image.uri for image in images])
        ```
    """
    outcomes = await asyncio.gather(
        *(
            store_image(
                url,
                task_id=task_id,
                index=index,
                dest_prefix=dest_prefix,
                metadata=metadata,
                credentials=credentials,
                storage=storage,
                log=False,
            )
            for index, url in enumerate(urls)
        ),
        return_exceptions=True,  # every image gets its chance before the job is judged
    )
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    for failure in failures:
        if not isinstance(failure, Exception):
            raise failure  # cancellation and the like pass through untouched
    if failures:
        error = next((f for f in failures if is_retryable(f)), failures[0])
        error.add_note(f"{len(failures)} of {len(urls)} image(s) of task {task_id} not stored")
        raise error
    images = [o for o in outcomes if isinstance(o, StoredImage)]
    get_run_logger().info(
        "Stored %d image(s) of task %s under %s (%s bytes)",
        len(images),
        task_id,
        _folder(images[0].uri) if images else dest_prefix,
        "+".join(str(image.size_bytes) for image in images),
    )
    return images


def _folder(uri: str) -> str:
    return uri.rsplit("/", 1)[0] + "/"


async def stored_images(storage: AssetStorage, dest_prefix: str, count: int) -> list[StoredImage]:
    """The images of a job already stored under `dest_prefix` (those whose sidecar exists):
    what a job whose persist step failed did keep. Best effort: an unreadable sidecar counts
    as not stored."""
    found: list[StoredImage] = []
    for index in range(count):
        try:
            done = await storage.aget_json(sidecar_key(f"{dest_prefix}/image-{index}"))
        except Exception:  # noqa: BLE001 — reported as missing, which is the safe side
            done = None
        if done is not None:
            found.append(StoredImage.model_validate(done))
    return found


async def store_image(
    url: str,
    *,
    task_id: str,
    index: int,
    dest_prefix: str,
    metadata: dict[str, Any],
    credentials: EvoLinkCredentials,
    storage: AssetStorage,
    log: bool = True,
) -> StoredImage:
    """The body of `persist_image` (see its docstring), callable inside any step."""
    logger = get_run_logger()
    done = await storage.aget_json(sidecar_key(f"{dest_prefix}/image-{index}"))
    if done is not None:
        if log:
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
    if not log:
        return image
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
