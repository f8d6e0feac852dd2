"""The request for `POST /v1/images/generations`, with every rule the API documents.

A request that would be refused (or silently mean something else) must fail here, before any
HTTP request and so before any money: each rule raises with the field's name and the rule in words.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evolink.cost import Quality
from evolink.errors import InvalidRequestError
from evolink.sizes import (
    RATIOS,
    Resolution,
    explicit_size_problem,
    is_ratio,
    parse_explicit,
    resolve_size,
)
from evolink.urls import callback_url_problem, reference_url_problem

MODEL: Final = "gpt-image-2"
MAX_PROMPT_CODE_POINTS: Final = 32_000
MAX_IMAGES: Final = 10
MAX_REFERENCE_IMAGES: Final = 16
REFERENCE_EXTENSIONS: Final = (".jpeg", ".jpg", ".png", ".webp")
MASK_EXTENSIONS: Final = (".png",)
MAX_CALLBACK_URL_CHARS: Final = 2048


class ImageRequest(BaseModel):
    """One GPT Image 2 generation or edit, as sent to EvoLink."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(default=MODEL, description="EvoLink model name.")
    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CODE_POINTS,
        description="What to draw or how to edit, at most 32,000 Unicode code points.",
    )
    size: str = Field(
        default="auto",
        description="'auto', a ratio such as '16:9', or an explicit 'WxH' (multiples of 16).",
    )
    resolution: Resolution | None = Field(
        default=None, description="1K/2K/4K pixel budget; only with a ratio size (default 1K)."
    )
    quality: Quality = Field(default="medium", description="low, medium or high.")
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES)] = Field(
        default=1, description="Number of images, 1-10; each is billed."
    )
    image_urls: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REFERENCE_IMAGES,
        description=(
            "1-16 reference images (JPEG, PNG or WEBP) for edits and image-to-image: URLs "
            "ending in .jpeg/.jpg/.png/.webp, or without a file extension."
        ),
    )
    mask_url: str | None = Field(
        default=None, description="PNG mask with alpha, same size as the first reference image."
    )
    callback_url: str | None = Field(
        default=None,
        max_length=MAX_CALLBACK_URL_CHARS,
        description="HTTPS URL EvoLink POSTs the finished task to.",
    )

    @field_validator("size")
    @classmethod
    def _size_rule(cls, size: str) -> str:
        if size == "auto" or is_ratio(size):
            return size
        explicit = parse_explicit(size)
        if explicit is None:
            raise ValueError(
                f"must be 'auto', one of {', '.join(RATIOS)}, or 'WxH' like '1536x1024'"
            )
        problem = explicit_size_problem(*explicit)
        if problem:
            raise ValueError(f"explicit size: {problem}")
        return size

    # URL rules live in evolink/urls.py (https only, no private/loopback/link-local hosts, no
    # user:password; EVOLINK_ALLOW_PRIVATE_URLS relaxes the first two for local testing). The
    # setting is read at validation time, so the same process can validate under either.

    @field_validator("image_urls")
    @classmethod
    def _reference_rule(cls, urls: list[str] | None) -> list[str] | None:
        """EvoLink fetches these: public https only, so none aims it inward; JPEG, PNG or WEBP
        (a .gif/.svg/.heic/… URL is refused, one without an extension is not: evolink/urls.py)."""
        for index, url in enumerate(urls or ()):
            problem = reference_url_problem(url, extensions=REFERENCE_EXTENSIONS)
            if problem:
                raise ValueError(f"item {index} {problem}")
        return urls

    @field_validator("mask_url")
    @classmethod
    def _mask_rule(cls, url: str | None) -> str | None:
        """Fetched by EvoLink like a reference, so the same host rules; PNG only (needs alpha):
        a .jpg/.webp/.gif/… URL is refused, one without an extension is not."""
        problem = url and reference_url_problem(url, extensions=MASK_EXTENSIONS)
        if problem:
            raise ValueError(problem)
        return url

    @field_validator("callback_url")
    @classmethod
    def _callback_rule(cls, url: str | None) -> str | None:
        """HTTPS only (the API's rule), whatever the setting; private hosts only with it on."""
        problem = url and callback_url_problem(url)
        if problem:
            raise ValueError(problem)
        return url

    @model_validator(mode="after")
    def _combination_rules(self) -> ImageRequest:
        if self.resolution is not None and not is_ratio(self.size):
            raise ValueError(
                "resolution: only allowed when size is a ratio such as '16:9' "
                f"(size is {self.size!r})"
            )
        if self.mask_url is not None and not self.image_urls:
            raise ValueError("mask_url: only allowed together with image_urls")
        return self

    def pixel_size(self) -> tuple[int, int]:
        """Output W×H; `auto` gives the size it is priced as (2048×2048)."""
        return resolve_size(self.size, self.resolution)

    def to_payload(self) -> dict[str, Any]:
        """The JSON body: only what was set, so the API's own defaults apply to the rest."""
        return self.model_dump(exclude_none=True)


def validation_problems(error: ValidationError) -> list[tuple[str, str]]:
    """Turn pydantic's report into (field, rule) pairs a person can read."""
    problems = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "request"
        message = str(item["msg"]).removeprefix("Value error, ")
        if field == "request" and ": " in message:
            field, message = message.split(": ", 1)
        problems.append((field, message))
    return problems


def parse_request(data: dict[str, Any] | ImageRequest) -> ImageRequest:
    """Validate a request, raising `InvalidRequestError` that names each field and rule."""
    if isinstance(data, ImageRequest):
        return data
    try:
        return ImageRequest.model_validate(data)
    except ValidationError as error:
        raise InvalidRequestError(validation_problems(error)) from None
