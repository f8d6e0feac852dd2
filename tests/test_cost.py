"""Sizes, the token/cost formula and billed-cost parsing, against the documented figures."""

from __future__ import annotations

from decimal import Decimal

import pytest

from evolink.cost import billed_cost, estimate, estimate_tokens, output_tokens, text_tokens
from evolink.models import parse_request
from evolink.sizes import AUTO_ESTIMATE_SIZE, RATIOS, explicit_size_problem, ratio_size


@pytest.mark.parametrize(
    ("ratio", "resolution", "expected"),
    [
        ("1:1", "1K", (1024, 1024)),
        ("1:1", "2K", (2048, 2048)),
        ("1:1", "4K", (2880, 2880)),
        ("16:9", "1K", (1360, 768)),
        ("16:9", "2K", (2736, 1536)),
        ("16:9", "4K", (3840, 2160)),
        ("9:16", "4K", (2160, 3840)),
        ("2:1", "4K", (3840, 1920)),
        ("3:1", "1K", (1776, 592)),
        ("4:3", "4K", (3312, 2480)),  # rounding up would pass 8,294,400 px
        ("21:9", "4K", (3840, 1648)),
    ],
)
def test_documented_sizes(ratio: str, resolution: str, expected: tuple[int, int]) -> None:
    assert ratio_size(ratio, resolution) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("resolution", ["1K", "2K", "4K"])
def test_every_resolved_size_is_a_valid_explicit_size(ratio: str, resolution: str) -> None:
    width, height = ratio_size(ratio, resolution)  # type: ignore[arg-type]
    assert width % 16 == 0 and height % 16 == 0
    assert width <= 3840 and height <= 3840 and width * height <= 8_294_400
    a, b = (int(x) for x in ratio.split(":"))
    assert (width >= height) == (a >= b)
    if resolution != "1K":  # 1K of the extreme ratios sits below the explicit-size minimum
        assert explicit_size_problem(width, height) is None


def test_output_tokens_for_1024_square() -> None:
    assert [output_tokens(1024, 1024, q) for q in ("low", "medium", "high")] == [196, 1756, 7024]


def test_product_page_cheapest_image() -> None:
    cheapest = estimate_tokens(width=1776, height=592, quality="low", n=1, references=0, prompt="")
    assert cheapest.output_tokens == 62
    assert cheapest.usd == Decimal("0.001674")
    assert round(cheapest.usd, 4) == Decimal("0.0017")
    assert cheapest.credits == Decimal("0.11383")


def test_product_page_most_expensive_image() -> None:
    top = estimate_tokens(width=2880, height=2880, quality="high", n=1, references=16, prompt="")
    assert top.output_tokens == 23_719
    assert top.image_input_tokens == 16 * 1536
    assert round(top.usd, 3) == Decimal("0.817")
    assert top.credits == Decimal("55.58049")


def test_estimate_of_a_request_scales_with_n_and_counts_text_and_references() -> None:
    one = estimate(parse_request({"prompt": "x" * 400, "size": "1:1", "quality": "low"}))
    assert (one.width, one.height, one.output_tokens, one.text_input_tokens) == (
        1024,
        1024,
        196,
        100,
    )
    four = estimate(
        parse_request(
            {
                "prompt": "x" * 400,
                "size": "1:1",
                "quality": "low",
                "n": 4,
                "image_urls": ["https://a.example/r.png"],
            }
        )
    )
    assert four.output_tokens == 4 * 196
    assert four.text_input_tokens == 4 * 100
    assert four.image_input_tokens == 4 * 1536
    assert four.usd == (
        (
            Decimal(4 * 196) * Decimal("0.027")
            + Decimal(400) * Decimal("0.0045")
            + Decimal(4 * 1536) * Decimal("0.0072")
        )
        / 1000
    ).quantize(Decimal("0.000001"))
    assert text_tokens("") == 0


def test_auto_is_priced_as_2048_square() -> None:
    auto = estimate(parse_request({"prompt": "p", "quality": "high"}))
    assert (auto.width, auto.height) == AUTO_ESTIMATE_SIZE == (2048, 2048)


# --- billed cost: every form the API may use ------------------------------------------------


def test_billed_from_usage_cost_object() -> None:
    bill = billed_cost(
        {"status": "completed", "usage": {"cost": {"credits": 0.5, "usd": 0.007353}}}
    )
    assert (bill.usd, bill.credits, bill.source) == (
        Decimal("0.007353"),
        Decimal("0.5"),
        "usage.cost",
    )


def test_billed_from_usage_cost_with_credits_only() -> None:
    bill = billed_cost({"status": "completed", "usage": {"cost": {"credits": 6.8}}})
    assert (bill.usd, bill.credits) == (Decimal("0.1"), Decimal("6.8"))


def test_billed_from_credits_used() -> None:
    bill = billed_cost({"status": "completed", "usage": {"credits_used": 1.836}})
    assert (bill.usd, bill.credits, bill.source) == (
        Decimal("0.027"),
        Decimal("1.836"),
        "usage.credits_used",
    )


def test_billed_from_billing_object() -> None:
    bill = billed_cost(
        {
            "status": "completed",
            "billing": {
                "charge_status": "charged",
                "reserved_credits": 3,
                "charged_credits": 1.36,
                "refunded_credits": 1.64,
            },
        }
    )
    assert (bill.usd, bill.credits, bill.source) == (
        Decimal("0.02"),
        Decimal("1.36"),
        "billing.charged_credits",
    )


def test_billed_from_openai_style_tokens() -> None:
    bill = billed_cost(
        {
            "status": "completed",
            "usage": {
                "input_tokens": 1636,
                "output_tokens": 196,
                "input_tokens_details": {
                    "image_tokens": 1536,
                    "text_tokens": 100,
                    "cached_tokens": 0,
                },
            },
        }
    )
    expected = (
        Decimal(196) * Decimal("0.027")
        + Decimal(1536) * Decimal("0.0072")
        + Decimal(100) * Decimal("0.0045")
    ) / 1000
    assert bill.usd == expected.quantize(Decimal("0.000001"))
    assert bill.source == "usage.tokens"


def test_missing_billing_is_unknown_not_zero() -> None:
    bill = billed_cost(
        {"status": "completed", "usage": {"billing_rule": "per_token", "credits_reserved": 2.5}}
    )
    assert bill.usd is None and bill.credits is None and not bill.known
    assert billed_cost({"status": "completed"}).source == "unknown"


def test_failed_task_without_billing_is_not_charged() -> None:
    bill = billed_cost({"status": "failed", "error": {"code": "content_policy_violation"}})
    assert (bill.usd, bill.credits, bill.source) == (Decimal(0), Decimal(0), "not_charged")


def test_garbage_billing_values_are_unknown() -> None:
    assert not billed_cost(
        {"status": "completed", "usage": {"credits_used": "n/a", "cost": "x"}}
    ).known
    assert not billed_cost({"status": "completed", "usage": {"credits_used": True}}).known
