"""Flow: one product image asked for by another system through a `marketing.asset.requested` event.

A shop, PIM or DAM emits the event (see README, "Deploying and operating"); the deployment's
trigger turns its payload into this flow's parameters. The job is named after the product, so a
repeated event for the same product and the same request reattaches to the job already paid for
(or returns its stored result) instead of paying again; a different prompt, size or quality for
the same product is a new job.
"""

from __future__ import annotations

from typing import Any, Final

from prefect import flow

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
from prefect_evolink.flows.generate import run_and_report

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


@flow(name="evolink-product-asset", flow_run_name="product {product_id}", log_prints=True)
async def generate_product_asset(
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
    credentials: EvoLinkCredentials | None = None,
    storage: LocalAssetStorage | S3AssetStorage | None = None,
    spend_cap_block: str | None = None,
    spend_cap: EvoLinkSpendCap | None = None,
) -> JobRecord:
    """Generate and store the images one product asked for, with their cost as artifacts.

    Parameters arrive from the event payload, so they are plain strings and validated here,
    where a bad value fails the run with a message naming the field (`quality: ...`) rather than
    being refused somewhere in the automation. `reference_image_key` is an optional stable id
    of the reference image (its sha256 or a DAM id): give it when `reference_image_url` is a
    presigned URL, so a re-signed URL for the same image still reattaches to the paid job.

    Blocks: a block object wins over a block name (`credentials` over `credentials_block`,
    `storage` over `storage_block`); events can only carry names, a run started from the
    deployment form can pick blocks.

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
        credentials_block: Name of a saved EvoLink Credentials block. Ignored when
            `credentials` is given; with neither, `EVOLINK_API_KEY` is used.
        storage_block: Name of a saved storage block (`<name>` or `<block-type-slug>/<name>`).
            Ignored when `storage` is given; with neither, images go to local `assets/`.
        poll_deadline_seconds: Most seconds to wait for EvoLink to finish the job before the
            run fails (a rerun reattaches to the same job and pays nothing new).
        credentials: An EvoLink Credentials block (the form offers the saved ones). Wins over
            `credentials_block`.
        storage: A Local or S3 asset storage block (the form offers the saved ones). Wins over
            `storage_block`.
        spend_cap_block: Name of a saved EvoLink Spend Cap block: before the job is sent, the
            period's spend plus its estimate must fit the cap (an estimate check with
            reservations; a job sent before only reattaches). Ignored when `spend_cap` is
            given; with neither, no cap.
        spend_cap: An EvoLink Spend Cap block (the form offers the saved ones). Wins over
            `spend_cap_block`.

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
    product = product_id.strip()
    return await run_and_report(
        request,
        namespace=namespace,
        dest_prefix=safe_key("products", product),
        artifact_prefix=f"evolink-product-{safe_key(product)}",
        credentials_block=credentials_block,
        storage_block=storage_block,
        credentials=credentials,
        storage=storage,
        poll_deadline_seconds=poll_deadline_seconds,
        identity=identity,
        spend_cap_block=spend_cap_block,
        spend_cap=spend_cap,
    )
