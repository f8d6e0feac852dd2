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

from blocks.storage import safe_key
from evolink.jobs import JobRecord
from evolink.models import ImageRequest, InvalidRequestError, parse_request
from evolink.polling import DEFAULT_DEADLINE_SECONDS
from flows.generate import run_and_report

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
) -> JobRecord:
    """Generate and store the images one product asked for, with their cost as artifacts.

    Parameters arrive from the event payload, so they are plain strings and validated here,
    where a bad value fails the run with a message naming the field (`quality: ...`) rather than
    being refused somewhere in the automation. `reference_image_key` is an optional stable id
    of the reference image (its sha256 or a DAM id): give it when `reference_image_url` is a
    presigned URL, so a re-signed URL for the same image still reattaches to the paid job.
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
        poll_deadline_seconds=poll_deadline_seconds,
        identity=identity,
    )
