"""Adaptations of an approved final, and the brand kit every job carries.

One concept: what the step after the final is made of. An adaptation is a version of an
asset's approved final — another channel format (9:16 story, 1:1 feed), another market's
language — made by ONE paid edit job whose first reference is the stored final, so the
composition, the product, the text and the brand are kept; `adaptation_prompt` says so to the
model and then names the change. The brand kit (`BrandKit`) goes into every draft, final and
adaptation: its style references (within EvoLink's 16 images), a style line and a list of things
never to show, appended to every prompt by `branded_prompt`. Both are part of every job's
identity (the prompt is, the references' identities are), so a changed brand kit or a changed
adaptation makes new jobs, never reused ones.

The models are validated with the brief (`evolink.brief`); the plans (`AdaptationPlan`) are
built with the asset's plan (`evolink.plans.plan_asset`).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from evolink.cost import CostEstimate, Quality
from evolink.forms import form_optional, unset_none_in_json
from evolink.models import MAX_REFERENCE_IMAGES, ImageRequest
from evolink.sizes import Resolution

ASSET_ID: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
"""Asset and adaptation ids: they are parts of storage keys and job namespaces."""
PLACEHOLDER_FINAL_URL: Final = "https://finals.invalid/approved-final.png"
"""Stands for the stored final in an adaptation's planned request (estimates and job keys);
the real URL is made only when the adaptation is sent."""
ADAPTATION_STAGE_PREFIX: Final = "adapt-"
"""An adaptation's stage is `adapt-<id>`: its job namespace, journal and image folder."""

MAX_BRAND_AVOID: Final = 20
"""Most entries of a brand kit's `avoid` list (each goes into every prompt)."""


class Adaptation(BaseModel):
    """A version of an asset's approved final: another channel format, another market's
    language. One paid edit job whose first reference is the stored final
    (`evolink.adaptations`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Adaptation")

    id: str = Field(
        title="Adaptation id",
        description="Stable id within the asset: lowercase letters, digits, '-' or '_' (max 64).",
    )
    size: str | None = Field(
        default=None,
        title="Size",
        description="Ratio (9:16, 1:1, 4:5…), 'auto' or 'WxH'; empty: the final's size.",
        json_schema_extra=form_optional,
    )
    resolution: Resolution | None = Field(
        default=None,
        title="Resolution",
        description="Tier (ratio sizes); empty: the final's.",
        json_schema_extra=form_optional,
    )
    prompt: str | None = Field(
        default=None,
        min_length=1,
        title="Change",
        description="What changes, e.g. 'Translate every visible text into German'.",
        json_schema_extra=form_optional,
    )
    quality: Quality | None = Field(
        default=None,
        title="Quality",
        description="Empty: the final's quality.",
        json_schema_extra=form_optional,
    )

    @model_serializer(mode="wrap")
    def _json(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return unset_none_in_json(self, handler, info)

    @field_validator("id")
    @classmethod
    def _id_rule(cls, value: str) -> str:
        return id_rule(value)

    @model_validator(mode="after")
    def _changes_something(self) -> Adaptation:
        if self.size is None and self.prompt is None and self.resolution is None:
            raise ValueError(
                "changes nothing: give a size, a resolution or a prompt (what changes)"
            )
        return self


class BrandKit(BaseModel):
    """What every job of the campaign carries: style references, a style line, what never to
    show. All three are part of every job's identity: a new brand kit makes new jobs."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Brand kit")

    references: list[str] = Field(
        default_factory=list,
        max_length=MAX_REFERENCE_IMAGES - 1,
        title="Style references",
        description="Images sent with every draft, final and adaptation (URLs, s3://, "
        "storage: or local files).",
    )
    style: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        title="Style",
        description="A line appended to every prompt.",
        json_schema_extra=form_optional,
    )
    avoid: list[str] = Field(
        default_factory=list,
        max_length=MAX_BRAND_AVOID,
        title="Avoid",
        description="Things never to show.",
    )

    @model_serializer(mode="wrap")
    def _json(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return unset_none_in_json(self, handler, info)

    @field_validator("avoid")
    @classmethod
    def _avoid_rule(cls, value: list[str]) -> list[str]:
        for index, item in enumerate(value):
            if not item.strip():
                raise ValueError(f"entry {index} is empty")
        return value


def id_rule(value: str) -> str:
    if not ASSET_ID.match(value):
        raise ValueError("must be 1-64 of lowercase letters, digits, '-' or '_', starting alnum")
    return value


def unique_adaptation_ids(value: list[Adaptation]) -> list[Adaptation]:
    seen: set[str] = set()
    for adaptation in value:
        if adaptation.id in seen:
            raise ValueError(f"adaptation id {adaptation.id!r} is used twice")
        seen.add(adaptation.id)
    return value


# --- the prompts ------------------------------------------------------------------------------

KEEP_INSTRUCTION: Final = (
    "Adapt the approved key visual in the first image. Keep its composition, the product, "
    "every visible text, the typeface, the colours and the brand exactly as they are."
)
"""What every adaptation keeps; the change follows it."""


def branded_prompt(prompt: str, brand: BrandKit | None) -> str:
    """`prompt` with the brand kit's style line and what never to show appended."""
    if brand is None:
        return prompt
    parts = [prompt]
    if brand.style:
        parts.append(f"Brand style: {brand.style}")
    if brand.avoid:
        parts.append("Never show: " + "; ".join(item.strip() for item in brand.avoid) + ".")
    if brand.references:
        parts.append("The last reference image(s) are the brand's style references.")
    return "\n\n".join(parts)


def adaptation_prompt(adaptation: Adaptation, size: str, brand: BrandKit | None) -> str:
    """The adaptation's instruction: keep everything (`KEEP_INSTRUCTION`), then the change —
    the new format, and the adaptation's own prompt — and the brand kit."""
    parts = [KEEP_INSTRUCTION]
    if adaptation.size is not None:
        parts.append(
            f"Recompose it for a {size} format: extend or reframe the background, never crop, "
            "stretch or distort the product or the text."
        )
    if adaptation.prompt is not None:
        parts.append(f"Change only this: {adaptation.prompt}")
    return branded_prompt(" ".join(parts), brand)


def adaptation_stage(adaptation_id: str) -> str:
    """The stage name of an adaptation's job (`adapt-<id>`)."""
    return f"{ADAPTATION_STAGE_PREFIX}{adaptation_id}"


def adaptation_of_stage(stage: str) -> str | None:
    """`adapt-<id>` → the adaptation id; None for drafts and finals."""
    if stage.startswith(ADAPTATION_STAGE_PREFIX):
        return stage.removeprefix(ADAPTATION_STAGE_PREFIX) or None
    return None


def stage_kind(stage: str) -> str:
    """`draft`, `final` or `adaptation`: how totals group stages."""
    return "adaptation" if adaptation_of_stage(stage) is not None else stage


# --- the plan ---------------------------------------------------------------------------------


class AdaptationPlan(BaseModel):
    """One adaptation's request (the final's URL a placeholder, the brand references resolved)
    and estimates: its own, and what making that format from scratch with drafts would cost."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    adaptation: Adaptation
    request: ImageRequest
    estimate: CostEstimate
    from_scratch_usd: Decimal
    """Drafts and a final in this format: the way without adaptations."""

    @property
    def id(self) -> str:
        return self.adaptation.id

    @property
    def stage(self) -> str:
        return adaptation_stage(self.adaptation.id)

    def request_for(self, final_url: str) -> ImageRequest:
        """The request to send: the stored final's URL in place of the placeholder."""
        urls = list(self.request.image_urls or ())
        return self.request.model_copy(update={"image_urls": [final_url, *urls[1:]]})

    def identity(self, final_sha256: str, brand_identities: list[str]) -> dict[str, Any]:
        """What the job key is made of: the request without URLs, the final it adapts (by
        its bytes), the brand references (by identity)."""
        return {
            "request": self.request.model_dump(exclude={"image_urls", "mask_url"}),
            "final_sha256": final_sha256,
            "brand": brand_identities,
        }
