"""One product image asked for by another system, as a flow run or as a background task.

A shop, PIM or DAM emits a `marketing.asset.requested` event (see README, "Deploying and
operating"). Two ways run it, with the same body (`run_product_job`), so the same payload is the
same job either way:

- `generate_product_asset`, a flow: the deployment `product-asset-on-request`'s trigger turns
  each event into a flow run. A process worker starts a Python process per run (~1.3 s of CPU
  before any work), which is right for a trickle of products.
- `product_image`, a background task: served by long-lived task workers
  (`prefect-evolink serve-products`, see `prefect_evolink.deployments.task_workers`), one task
  run per product, many at once in one event loop. For catalogue syncs of hundreds or
  thousands of products.
 The job is named after the product, so a
repeated event for the same product and the same request reattaches to the job already paid for
(or returns its stored result) instead of paying again; a different prompt, size or quality for
the same product is a new job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from prefect.cache_policies import NO_CACHE

from evolink.errors import InvalidRequestError
from evolink.jobs import JobRecord
from evolink.models import ImageRequest, parse_request
from evolink.polling import DEFAULT_DEADLINE_SECONDS
from prefect_evolink.blocks import (
    EvoLinkCredentials,
    EvoLinkSpendCap,
    LocalAssetStorage,
    S3AssetStorage,
    safe_key,
)
from prefect_evolink.flows.generate import DEFAULT_JOB_OPTIONS, JobOptions, run_and_report
from prefect_evolink.flows.run_blocks import RunBlocks
from prefect_evolink.tasks.dispatch import sync_or_async_flow, sync_or_async_task

EVENT_NAME: Final = "marketing.asset.requested"
"""The event the deployment `product-asset-on-request` listens for."""
RESOURCE_PREFIX: Final = "marketing.product."
"""Emit the event with resource id `marketing.product.<product_id>` (the trigger matches on it)."""

# Request fields are named after the event payload, not after the API body; errors must name
# the field the sender actually sent.
_PAYLOAD_NAMES: Final = {"image_urls": "reference_image_url", "image_urls.0": "reference_image_url"}


def build_request(
    *,
    prompt: str,
    size: str,
    resolution: str | None,
    quality: str,
    n: int,
    reference_image_url: str | None,
) -> ImageRequest:
    """The API request for an event payload; `InvalidRequestError` names the payload's fields."""
    data: dict[str, Any] = {"prompt": prompt, "size": size, "quality": quality, "n": n}
    if resolution:
        data["resolution"] = resolution
    if reference_image_url:
        data["image_urls"] = [reference_image_url]
    try:
        return parse_request(data)
    except InvalidRequestError as error:
        raise InvalidRequestError(
            [(_PAYLOAD_NAMES.get(field, field), rule) for field, rule in error.problems]
        ) from None


def product_namespace(product_id: str) -> str:
    """Job namespace of a product: the same product + request → the same job key."""
    if not product_id or not product_id.strip():
        raise InvalidRequestError([("product_id", "must be a non-empty string")])
    return f"product/{product_id.strip()}"


@sync_or_async_flow(
    name="evolink-product-asset", flow_run_name="product {product_id}", log_prints=True
)
async def generate_product_asset(
    product_id: str,
    prompt: str,
    size: str = "1:1",
    resolution: str | None = None,
    quality: str = "high",
    n: int = 1,
    reference_image_url: str | None = None,
    reference_image_key: str | None = None,
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    credentials: EvoLinkCredentials | None = None,
    storage: LocalAssetStorage | S3AssetStorage | None = None,
    spend_cap: EvoLinkSpendCap | None = None,
) -> JobRecord:
    """Generate and store the images one product asked for, with their cost as artifacts.

    Parameters arrive from the event payload, so they are plain strings and validated here,
    where a bad value fails the run with a message naming the field (`quality: ...`) rather than
    being refused somewhere in the automation. `reference_image_key` is an optional stable id
    of the reference image (its sha256 or a DAM id): give it when `reference_image_url` is a
    presigned URL, so a re-signed URL for the same image still reattaches to the paid job.

    Blocks: an event carries the product, not blocks; the run uses the blocks the deployment's
    defaults reference (`prefect-evolink deploy` writes them from prefect.yaml), and a run
    started from the deployment form can pick others.

    Args:
        product_id: The product the image is for (the event's `marketing.product.<id>`
            resource). Names the job: the same product and request reuse the paid job.
        prompt: What to draw, at most 32,000 characters.
        size: 'auto', a ratio such as '1:1' or '16:9', or an explicit 'WxH' (multiples of 16).
        resolution: Pixel budget of a ratio size: '1K', '2K' or '4K'; empty means 1K.
        quality: 'low', 'medium' or 'high' (the price grows with it).
        n: Number of images, 1-10; each one is billed.
        reference_image_url: Optional https URL of a reference image (jpeg, png or webp) to
            edit or to take as a model.
        reference_image_key: Optional stable id of the reference image (its sha256 or a DAM
            id); give it when `reference_image_url` is presigned, so a re-signed URL still
            reattaches to the job already paid for.
        poll_deadline_seconds: Most seconds to wait for EvoLink to finish the job before the
            run fails (a rerun reattaches to the same job and pays nothing new).
        credentials: An EvoLink Credentials block (the form offers the saved ones); without
            it, `EVOLINK_API_KEY` is used.
        storage: A Local or S3 asset storage block (the form offers the saved ones); without
            it, images go to local `assets/`.
        spend_cap: An EvoLink Spend Cap block (the form offers the saved ones): before the job
            is sent, the period's spend plus its estimate must fit the cap (an estimate check
            with reservations; a job sent before only reattaches); without it, no cap.

    Returns:
        The job's record: task id, estimated and billed cost, and every stored image, stored
        under `products/<product_id>/`.

    Raises:
        InvalidRequestError: A payload field is invalid; the message names the field as sent
            (`quality`, `reference_image_url`, ...), and nothing is paid.
        MissingCredentialsError: No credentials block and no `EVOLINK_API_KEY`.
        SpendCapExceededError: The period's spend and the job's estimate are over the spend
            cap; nothing was sent.
        TaskFailedError: EvoLink failed the task (failed tasks are not billed).
        PollDeadlineExceeded: The job did not finish within `poll_deadline_seconds`.
        PaidJobNotStoredError: The job was billed but not every image could be stored; the
            cost artifacts still show the bill, and a rerun stores what is missing for free.

    Example:
        Another system asks for the image with an event; the trigger of the deployment
        `product-asset-on-request` turns its payload into this flow's parameters:
        ```python
        from prefect.events import emit_event

        emit_event(
            event="marketing.asset.requested",
            resource={"prefect.resource.id": "marketing.product.sku-42"},
            payload={"product_id": "sku-42", "prompt": "a ceramic mug", "quality": "low"},
        )
        ```
    """
    job = ProductJob.from_payload(
        product_id,
        prompt,
        size=size,
        resolution=resolution,
        quality=quality,
        n=n,
        reference_image_url=reference_image_url,
        reference_image_key=reference_image_key,
    )
    blocks = await RunBlocks.resolve(credentials, storage, spend_cap)
    return await run_product_job(job, blocks, JobOptions(poll_deadline_seconds))


@dataclass(frozen=True, slots=True)
class ProductJob:
    """One product's job, validated from its payload: what a product flow run or background
    task runs (`run_product_job`)."""

    product: str
    """The product id, stripped."""
    request: ImageRequest
    namespace: str
    """The job's namespace, `product/<id>`: the same product + request → the same job key."""
    identity: dict[str, Any] | None = None
    """What keys the job instead of the request, when a stable reference image key is given."""

    @classmethod
    def from_payload(
        cls,
        product_id: str,
        prompt: str,
        *,
        size: str = "1:1",
        resolution: str | None = None,
        quality: str = "high",
        n: int = 1,
        reference_image_url: str | None = None,
        reference_image_key: str | None = None,
    ) -> ProductJob:
        """The job of a `marketing.asset.requested` payload; `InvalidRequestError` names the
        payload's fields. Pure: it runs before any block is loaded, so a bad payload fails
        naming its field, whatever the blocks."""
        namespace = product_namespace(product_id)
        request = build_request(
            prompt=prompt,
            size=size,
            resolution=resolution,
            quality=quality,
            n=n,
            reference_image_url=reference_image_url,
        )
        identity = None
        if reference_image_url and reference_image_key:
            identity = {**request.to_payload(), "image_urls": [f"key:{reference_image_key}"]}
        return cls(product_id.strip(), request, namespace, identity)


async def run_product_job(
    job: ProductJob, blocks: RunBlocks, options: JobOptions = DEFAULT_JOB_OPTIONS
) -> JobRecord:
    """Run a product's job and report its cost: the body of both ways a product image is made —
    the flow `generate_product_asset` (one run per event) and the background task
    `product_image` (many products per long-lived task worker).

    Sharing it means the two cannot drift: the same payload gives the same job key either way,
    so a product made by one is reused, never paid again, by the other.
    """
    return await run_and_report(
        job.request,
        blocks,
        namespace=job.namespace,
        dest_prefix=safe_key("products", job.product),
        artifact_prefix=f"evolink-product-{safe_key(job.product)}",
        options=options,
        identity=job.identity,
    )


@sync_or_async_task(
    name="evolink-product-image",
    task_run_name="product {product_id}",
    cache_policy=NO_CACHE,  # the job records are what remember finished work
    log_prints=True,
)
async def product_image(
    product_id: str,
    prompt: str,
    size: str = "1:1",
    resolution: str | None = None,
    quality: str = "high",
    n: int = 1,
    reference_image_url: str | None = None,
    reference_image_key: str | None = None,
    credentials_block: str | None = None,
    storage_block: str | None = None,
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    spend_cap_block: str | None = None,
) -> JobRecord:
    """One product's images as a background task: the catalogue-scale twin of the
    `generate_product_asset` flow, with the same parameters — but blocks by name, since a
    background task's parameters are stored as JSON until a worker picks it up. The names
    become blocks here, in the worker, once per product (`RunBlocks.resolve`).

    Each call is one task run in the UI (`product <id>`), with the submit, poll and persist
    steps nested under it and the product's cost artifacts attached. The provider limits are
    the same global concurrency limits every flow uses, so any number of task workers share
    them; the job key is the same as the flow's, so a product already made (by either way) is
    reused, never paid again. Not retried as a whole: its steps retry what is safe to retry,
    and running it again reattaches to the job.

    Args:
        product_id: The product the image is for; names the job.
        prompt: What to draw, at most 32,000 characters.
        size: 'auto', a ratio such as '1:1' or '16:9', or an explicit 'WxH' (multiples of 16).
        resolution: Pixel budget of a ratio size: '1K', '2K' or '4K'; empty means 1K.
        quality: 'low', 'medium' or 'high'.
        n: Number of images, 1-10; each one is billed.
        reference_image_url: Optional https URL of a reference image.
        reference_image_key: Optional stable id of the reference image (see the flow).
        credentials_block: Name of a saved EvoLink Credentials block; without it,
            `EVOLINK_API_KEY` of the task worker is used.
        storage_block: Name of a saved storage block; without it, the worker's local `assets/`.
        poll_deadline_seconds: Most seconds to wait for EvoLink to finish the job.
        spend_cap_block: Name of a saved EvoLink Spend Cap block; without it, no cap.

    Returns:
        The job's record (task id, estimated and billed cost, stored images).

    Example:
        Ask for many products at once from your own code; task workers run them:
        ```python
        from prefect_evolink.flows.asset_requested import product_image

        futures = [
            product_image.apply_async(kwargs={"product_id": sku, "prompt": prompt})
            for sku, prompt in catalogue.items()
        ]
        records = [future.result() for future in futures]
        ```
    """
    job = ProductJob.from_payload(
        product_id,
        prompt,
        size=size,
        resolution=resolution,
        quality=quality,
        n=n,
        reference_image_url=reference_image_url,
        reference_image_key=reference_image_key,
    )
    blocks = await RunBlocks.resolve(credentials_block, storage_block, spend_cap_block)
    return await run_product_job(job, blocks, JobOptions(poll_deadline_seconds))
