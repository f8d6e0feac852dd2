"""Money: the pre-flight estimate (tokens → USD → credits) and the billed cost of a finished task.

Money is `Decimal` throughout so that sums over a campaign equal the provider's figures to the
last digit, and "unknown" is `None`, never 0: a task whose bill we could not read must not make a
run look cheaper than it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, Protocol

from evolink.sizes import Resolution, resolve_size

Quality = Literal["low", "medium", "high"]

# Published prices, USD per 1,000 tokens.
PRICE_IMAGE_OUTPUT: Final = Decimal("0.027")
PRICE_IMAGE_INPUT: Final = Decimal("0.0072")
PRICE_IMAGE_INPUT_CACHED: Final = Decimal("0.0018")
PRICE_TEXT_INPUT: Final = Decimal("0.0045")
PRICE_TEXT_INPUT_CACHED: Final = Decimal("0.0011")
CREDITS_PER_USD: Final = Decimal(68)
_PER_TOKEN: Final = Decimal(1000)

QUALITY_FACTOR: Final[dict[str, int]] = {"low": 16, "medium": 48, "high": 96}
IMAGE_INPUT_TOKENS_PER_REFERENCE: Final = 1536  # the figure EvoLink's own tools estimate with
CHARS_PER_TEXT_TOKEN: Final = 4  # rough English average; the bill, not this, is the truth

USD_PLACES: Final = Decimal("0.000001")
CREDIT_PLACES: Final = Decimal("0.00001")


def output_tokens(width: int, height: int, quality: Quality) -> int:
    """Image output tokens for one W×H image (the community-verified formula)."""
    f = QUALITY_FACTOR[quality]
    long_edge, short_edge = max(width, height), min(width, height)
    saf = (2 * f * short_edge + long_edge) // (2 * long_edge)
    return math.ceil(f * saf * (width * height + 2_000_000) / 4_000_000)


def text_tokens(prompt: str) -> int:
    """A prompt's text tokens, estimated from its length (no tokenizer dependency)."""
    return math.ceil(len(prompt) / CHARS_PER_TEXT_TOKEN)


def usd(value: str | Decimal | None) -> str:
    """Money for people, in every log, artifact and printout: `$0.012345` (six places, as EvoLink
    bills), and "unknown" for a bill that could not be read — never `$0`."""
    return "unknown" if value is None else f"${Decimal(value):.6f}"


def usd_to_credits(usd: Decimal) -> Decimal:
    return (usd * CREDITS_PER_USD).quantize(CREDIT_PLACES)


def _priced(usd_exact: Decimal) -> tuple[Decimal, Decimal]:
    """(USD, credits), each rounded once from the exact figure: neither inherits the other's
    rounding."""
    return usd_exact.quantize(USD_PLACES), usd_to_credits(usd_exact)


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """What a request should cost, for all of its `n` images, before anything is sent."""

    width: int
    height: int
    quality: str
    n: int
    output_tokens: int
    image_input_tokens: int
    text_input_tokens: int
    usd: Decimal
    credits: Decimal

    def __add__(self, other: CostEstimate) -> CostTotal:
        return CostTotal.of(self) + other

    def scaled(self, factor: float) -> CostEstimate:
        """The same job with every token count multiplied (a bill that came out higher)."""
        out, image_in, text_in = (
            math.ceil(tokens * factor)
            for tokens in (self.output_tokens, self.image_input_tokens, self.text_input_tokens)
        )
        return CostEstimate(
            self.width,
            self.height,
            self.quality,
            self.n,
            out,
            image_in,
            text_in,
            *_priced(_token_usd(out, image_in, text_in)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "quality": self.quality,
            "n": self.n,
            "output_tokens": self.output_tokens,
            "image_input_tokens": self.image_input_tokens,
            "text_input_tokens": self.text_input_tokens,
            "usd": str(self.usd),
            "credits": str(self.credits),
        }


@dataclass(frozen=True, slots=True)
class CostTotal:
    """A sum of estimates (a campaign, a stage)."""

    output_tokens: int = 0
    image_input_tokens: int = 0
    text_input_tokens: int = 0
    usd: Decimal = Decimal(0)
    credits: Decimal = Decimal(0)

    @classmethod
    def of(cls, estimate: CostEstimate | CostTotal) -> CostTotal:
        return cls(
            estimate.output_tokens,
            estimate.image_input_tokens,
            estimate.text_input_tokens,
            estimate.usd,
            estimate.credits,
        )

    def __add__(self, other: CostEstimate | CostTotal) -> CostTotal:
        return CostTotal(
            self.output_tokens + other.output_tokens,
            self.image_input_tokens + other.image_input_tokens,
            self.text_input_tokens + other.text_input_tokens,
            self.usd + other.usd,
            self.credits + other.credits,
        )


def estimate_tokens(
    *, width: int, height: int, quality: Quality, n: int, references: int, prompt: str
) -> CostEstimate:
    out = output_tokens(width, height, quality) * n
    image_in = IMAGE_INPUT_TOKENS_PER_REFERENCE * references * n
    text_in = text_tokens(prompt) * n
    usd = _token_usd(out, image_in, text_in)
    return CostEstimate(width, height, quality, n, out, image_in, text_in, *_priced(usd))


def _token_usd(output: int, image_input: int, text_input: int) -> Decimal:
    return (
        Decimal(output) * PRICE_IMAGE_OUTPUT
        + Decimal(image_input) * PRICE_IMAGE_INPUT
        + Decimal(text_input) * PRICE_TEXT_INPUT
    ) / _PER_TOKEN


class PricedRequest(Protocol):
    """What the price of a request depends on: an `evolink.models.ImageRequest` (a protocol,
    not an import, so that prices sit below the request model and the layers form no loop)."""

    @property
    def size(self) -> str: ...
    @property
    def resolution(self) -> Resolution | None: ...
    @property
    def quality(self) -> Quality: ...
    @property
    def n(self) -> int: ...
    @property
    def image_urls(self) -> Sequence[str] | None: ...
    @property
    def prompt(self) -> str: ...


def estimate(request: PricedRequest) -> CostEstimate:
    """Pre-flight estimate of a validated request (`auto` is priced as 2048×2048)."""
    width, height = resolve_size(request.size, request.resolution)
    return estimate_tokens(
        width=width,
        height=height,
        quality=request.quality,
        n=request.n,
        references=len(request.image_urls or ()),
        prompt=request.prompt,
    )


# --- billed cost -----------------------------------------------------------------------------

BilledSource = Literal[
    "usage.cost",
    "usage.credits_used",
    "billing.charged_credits",
    "usage.tokens",
    "not_charged",
    "unknown",
]


@dataclass(frozen=True, slots=True)
class BilledCost:
    """What a finished task was actually billed; `usd`/`credits` are None when it is not known."""

    usd: Decimal | None
    credits: Decimal | None
    source: BilledSource

    @property
    def known(self) -> bool:
        return self.usd is not None or self.credits is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "usd": None if self.usd is None else str(self.usd),
            "credits": None if self.credits is None else str(self.credits),
            "source": self.source,
        }


UNKNOWN_COST: Final = BilledCost(None, None, "unknown")


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, str, Decimal)):
        try:
            number = Decimal(str(value))
        except ArithmeticError:
            return None
        return number if number.is_finite() else None
    return None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _from_credits(credits: Decimal, source: BilledSource) -> BilledCost:
    usd = (credits / CREDITS_PER_USD).quantize(USD_PLACES)
    return BilledCost(usd, credits, source)


def _from_tokens(usage: dict[str, Any]) -> BilledCost | None:
    out = _decimal(usage.get("output_tokens"))
    details = usage.get("input_tokens_details")
    if out is None or not isinstance(details, dict):
        return None
    image_in = _decimal(details.get("image_tokens")) or Decimal(0)
    text_in = _decimal(details.get("text_tokens")) or Decimal(0)
    cached = _decimal(details.get("cached_tokens")) or Decimal(0)
    usd = (
        out * PRICE_IMAGE_OUTPUT
        + image_in * PRICE_IMAGE_INPUT
        + text_in * PRICE_TEXT_INPUT
        + cached * PRICE_IMAGE_INPUT_CACHED
    ) / _PER_TOKEN
    return BilledCost(*_priced(usd), "usage.tokens")


def billed_cost(task: dict[str, Any]) -> BilledCost:
    """Read the bill of a finished task from whichever form the API used.

    Order of trust: an explicit cost object, then credits used, then the billing ledger, then
    OpenAI-style token counts priced by us. The billing fields win whatever the status: a failed
    or cancelled task that carries them is booked as they say (a task cancelled after EvoLink
    charged for it costs what it cost). A failed or cancelled task without them was not charged
    (the docs: failed tasks are not charged, reserved credits are refunded) and is zero. Anything
    else is "unknown" — not zero.
    """
    status = task.get("status")
    usage = _object(task.get("usage"))
    billing = _object(task.get("billing"))

    cost = usage.get("cost")
    if isinstance(cost, dict):
        usd, credits = _decimal(cost.get("usd")), _decimal(cost.get("credits"))
        if usd is not None or credits is not None:
            if usd is None and credits is not None:
                return _from_credits(credits, "usage.cost")
            if credits is None and usd is not None:
                credits = usd_to_credits(usd)
            return BilledCost(usd, credits, "usage.cost")
    credits_used = _decimal(usage.get("credits_used"))
    if credits_used is not None:
        return _from_credits(credits_used, "usage.credits_used")
    charged = _decimal(billing.get("charged_credits"))
    if charged is not None:
        return _from_credits(charged, "billing.charged_credits")
    from_tokens = _from_tokens(usage)
    if from_tokens is not None:
        return from_tokens
    if status in ("failed", "cancelled"):
        return BilledCost(Decimal(0), Decimal(0), "not_charged")
    return UNKNOWN_COST
