"""The event-triggered product flow, called directly: validation names the payload's fields, and a
repeated request for the same product reattaches instead of paying again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from evolink.errors import InvalidRequestError
from evolink.jobs import JobRecord
from evolink.simulator import EvoLinkSimulator
from prefect_evolink.flows.asset_requested import (
    build_request,
    generate_product_asset,
    product_namespace,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def request_for(product_id: str, **payload: Any) -> JobRecord:
    return asyncio.run(
        generate_product_asset.aio(
            product_id=product_id,
            **{"prompt": "a ceramic mug", "quality": "low", "poll_deadline_seconds": 30, **payload},
        )
    )


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"quality": "ultra"}, "quality"),
        ({"size": "17:9"}, "size"),
        ({"reference_image_url": "https://cdn.example.com/ref.gif"}, "reference_image_url"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_a_bad_payload_names_the_field_it_came_in(payload: dict[str, Any], field: str) -> None:
    arguments = {
        "prompt": "a mug",
        "size": "1:1",
        "resolution": None,
        "quality": "high",
        "n": 1,
        "reference_image_url": None,
        **payload,
    }
    with pytest.raises(InvalidRequestError, match=rf"{field}: ") as caught:
        build_request(**arguments)
    assert [name for name, _ in caught.value.problems] == [field]


def test_a_product_id_is_required() -> None:
    with pytest.raises(InvalidRequestError, match="product_id"):
        product_namespace("  ")
    assert product_namespace("sku-42") == "product/sku-42"


def test_a_bad_event_fails_the_run_before_anything_is_paid(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    with pytest.raises(InvalidRequestError, match="quality"):
        request_for("sku-1", quality="ultra")
    assert evolink_env.request_counts["create"] == 0


def test_a_repeated_request_for_a_product_reuses_the_paid_job(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    first = request_for("sku-7")
    again = request_for("sku-7")
    other_product = request_for("sku-8")
    assert again.task_id == first.task_id and other_product.task_id != first.task_id
    assert len(evolink_env.ledger()) == 2
    assert first.namespace == "product/sku-7"
    assert "/products/sku-7/" in first.images[0].uri


def test_a_re_signed_reference_url_with_the_same_key_reuses_the_job(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    signed = "https://cdn.example.com/ref/mug.png?X-Amz-Signature="
    first = request_for("sku-9", reference_image_url=signed + "aaa", reference_image_key="sha256:1")
    again = request_for("sku-9", reference_image_url=signed + "bbb", reference_image_key="sha256:1")
    assert again.task_id == first.task_id and len(evolink_env.ledger()) == 1
