"""Every request rule, accepted at its edge and rejected just past it, with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from evolink.errors import InvalidRequestError
from evolink.models import parse_request
from evolink.sizes import RATIOS

IMG = "https://cdn.example.com/ref.png"


def ok(**fields: Any) -> None:
    parse_request({"prompt": "a red bicycle", **fields})


def rejected(field: str, rule_fragment: str, **fields: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_request({"prompt": "a red bicycle", **fields})
    problems = dict(info.value.problems)
    assert field in problems, info.value.problems
    assert rule_fragment in problems[field], problems[field]
    assert field in str(info.value)


def test_prompt_length_counts_code_points() -> None:
    parse_request({"prompt": "é" * 32_000})  # 64,000 bytes in UTF-8, 32,000 code points
    parse_request({"prompt": "🎨" * 32_000})
    with pytest.raises(InvalidRequestError, match="prompt"):
        parse_request({"prompt": "🎨" * 32_001})
    with pytest.raises(InvalidRequestError, match="prompt"):
        parse_request({"prompt": ""})


@pytest.mark.parametrize("size", ["auto", *RATIOS])
def test_named_sizes(size: str) -> None:
    ok(size=size)


@pytest.mark.parametrize(
    "size",
    [
        "1024x640",  # 655,360 px: the minimum
        "3840x2160",  # 8,294,400 px: the maximum, longest edge
        "2160x3840",
        "3072x1024",  # exactly 3:1
        "1024x3072",
    ],
)
def test_explicit_sizes_at_their_edges(size: str) -> None:
    ok(size=size)


@pytest.mark.parametrize(
    ("size", "fragment"),
    [
        ("1024x624", "total pixels"),  # 638,976 px: just under the minimum
        ("3856x2160", "at most 3840"),  # edge just past 3840
        ("3840x2176", "total pixels"),  # just past 8,294,400 px
        ("3088x1024", "aspect ratio"),  # just past 3:1
        ("1030x1024", "multiples of 16"),
        ("1024*1024", "'WxH'"),
        ("17:9", "'WxH'"),
    ],
)
def test_explicit_sizes_just_past_their_edges(size: str, fragment: str) -> None:
    rejected("size", fragment, size=size)


def test_resolution_only_with_a_ratio() -> None:
    ok(size="16:9", resolution="4K")
    rejected("resolution", "only allowed when size is a ratio", size="auto", resolution="2K")
    rejected("resolution", "only allowed when size is a ratio", size="1024x1024", resolution="1K")
    rejected("resolution", "'1K', '2K' or '4K'", size="1:1", resolution="8K")


def test_quality_and_n() -> None:
    for quality in ("low", "medium", "high"):
        ok(quality=quality)
    rejected("quality", "'low', 'medium' or 'high'", quality="ultra")
    ok(n=1)
    ok(n=10)
    rejected("n", "greater than or equal to 1", n=0)
    rejected("n", "less than or equal to 10", n=11)


def test_reference_images() -> None:
    ok(image_urls=[IMG])
    ok(
        image_urls=[
            f"https://cdn.example.com/{i}.{ext}"
            for i, ext in enumerate(["jpeg", "jpg", "png", "webp", "JPG"] * 3 + ["png"])
        ]
    )  # 16
    ok(image_urls=["https://bucket.s3.amazonaws.com/a/b.png?X-Amz-Signature=abc"])
    rejected("image_urls", "at least 1", image_urls=[])
    rejected("image_urls", "at most 16", image_urls=[IMG] * 17)
    rejected(
        "image_urls",
        "item 1 must point to a jpeg/jpg/png/webp",
        image_urls=[IMG, "https://x.io/a.gif"],
    )
    rejected("image_urls", "absolute", image_urls=["ftp://x.io/a.png"])


def test_mask_needs_references() -> None:
    ok(image_urls=[IMG], mask_url="https://cdn.example.com/mask.png")
    rejected(
        "mask_url",
        "only allowed together with image_urls",
        mask_url="https://cdn.example.com/m.png",
    )
    rejected("mask_url", "png", image_urls=[IMG], mask_url="https://cdn.example.com/m.jpg")


def test_callback_url() -> None:
    base = "https://hooks.example.com/"
    ok(callback_url=base + "a" * (2048 - len(base)))
    rejected("callback_url", "at most 2048", callback_url=base + "a" * (2049 - len(base)))
    rejected("callback_url", "https", callback_url="http://hooks.example.com/x")


def test_unknown_fields_are_refused_not_ignored() -> None:
    rejected("qualty", "Extra inputs", qualty="high")


def test_payload_omits_unset_fields() -> None:
    request = parse_request({"prompt": "p", "size": "1:1"})
    assert request.to_payload() == {
        "model": "gpt-image-2",
        "prompt": "p",
        "size": "1:1",
        "quality": "medium",
        "n": 1,
    }
