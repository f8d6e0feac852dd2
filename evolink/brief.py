"""A campaign brief: what a marketing team writes once (YAML or JSON), validated before any spend.

Every asset's draft and final requests are built and checked here, so a brief that would be
refused by the API — or that names a size the final cannot have — fails with the asset id and the
field, not halfway through a paid run.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from evolink.cost import CostEstimate, Quality, estimate
from evolink.errors import BriefError, InvalidRequestError
from evolink.models import MAX_REFERENCE_IMAGES, ImageRequest, parse_request
from evolink.sizes import Resolution

ASSET_ID: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PLACEHOLDER_DRAFT_URL: Final = "https://drafts.invalid/chosen-draft.png"  # estimates only
MAX_ASSETS: Final = 10_000
"""Most assets in one brief. The budget is the guard on spend; this ceiling only catches a
generated brief gone wrong (a loop, a pasted catalogue) before it is parsed, planned and
estimated in full. The run's memory does not grow with it beyond small per-asset records
(`flows/campaign.py`, README "Campaign scale"); 10,000 assets are planned in a few seconds
and their manifest is a few tens of MB. Larger catalogues: split them into several briefs."""


class CampaignDefaults(BaseModel):
    """What every asset gets unless it says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: str = Field(default="1:1", description="Ratio, 'auto' or 'WxH' for drafts and finals.")
    resolution: Resolution = Field(default="1K", description="Tier of the final (ratio sizes).")
    draft_resolution: Resolution = Field(default="1K", description="Tier of the drafts.")
    drafts: int = Field(default=4, ge=1, le=10, description="Low-quality variants per asset.")
    draft_quality: Quality = Field(default="low", description="Quality of the drafts.")
    final_quality: Quality = Field(default="high", description="Quality of the final.")
    storage_block: str | None = Field(default=None, description="Storage block for this campaign.")


class AssetBrief(BaseModel):
    """One image the campaign needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Stable id: lowercase letters, digits, '-' or '_' (max 64).")
    prompt: str = Field(min_length=1, description="What to draw (or how to edit the references).")
    size: str | None = Field(
        default=None, description="Ratio, 'auto' or 'WxH'; unset: the default."
    )
    resolution: Resolution | None = Field(
        default=None, description="Tier of the final; unset: the default."
    )
    draft_resolution: Resolution | None = Field(
        default=None, description="Tier of the drafts; unset: the default."
    )
    drafts: int | None = Field(
        default=None, ge=1, le=10, description="Low-quality variants; unset: the default."
    )
    final_quality: Quality | None = Field(
        default=None, description="Quality of the final; unset: the default."
    )
    reference_images: list[str] = Field(
        default_factory=list,
        max_length=MAX_REFERENCE_IMAGES - 1,  # one slot is kept for the chosen draft
        description="https URLs, s3://bucket/key or storage:key objects, or local files.",
    )
    mask: str | None = Field(default=None, description="PNG mask (needs reference images).")

    @field_validator("id")
    @classmethod
    def _id_rule(cls, value: str) -> str:
        if not ASSET_ID.match(value):
            raise ValueError(
                "must be 1-64 of lowercase letters, digits, '-' or '_', starting alnum"
            )
        return value

    @model_validator(mode="after")
    def _mask_rule(self) -> AssetBrief:
        if self.mask is not None and not self.reference_images:
            raise ValueError("mask: only allowed together with reference_images")
        return self


class CampaignBrief(BaseModel):
    """A campaign: its name, its budget, the defaults and the images it needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    campaign: str = Field(min_length=1, max_length=80, description="Campaign name.")
    # A number in the run form (a Decimal's schema is "number or string"); YAML and API callers
    # may still give "1.50", which validation turns into the same Decimal.
    budget_usd: Annotated[Decimal, WithJsonSchema({"type": "number", "exclusiveMinimum": 0})] = (
        Field(gt=0, title="Budget (USD)", description="Most the run may spend, drafts and finals.")
    )
    defaults: CampaignDefaults = Field(
        default_factory=CampaignDefaults,
        description="What every asset gets unless it says otherwise.",
    )
    assets: list[AssetBrief] = Field(
        min_length=1,
        max_length=MAX_ASSETS,
        description=f"The images to make (1 to {MAX_ASSETS:,}); the budget limits the spend.",
    )

    @field_validator("assets", mode="before")
    @classmethod
    def _assets_ceiling(cls, value: Any) -> Any:
        """Say what to do about a brief over the ceiling, before validating 10,000+ items."""
        if isinstance(value, list) and len(value) > MAX_ASSETS:
            raise ValueError(
                f"{len(value):,} assets; a brief holds at most {MAX_ASSETS:,} (the budget "
                "limits the spend): split the catalogue into several briefs"
            )
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> CampaignBrief:
        seen: set[str] = set()
        for asset in self.assets:
            if asset.id in seen:
                raise ValueError(f"assets: id {asset.id!r} is used twice")
            seen.add(asset.id)
        return self


# --- the plan: concrete requests and estimates per asset ------------------------------------


class AssetPlan(BaseModel):
    """An asset's requests (references already resolved to URLs) and their estimates."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    asset: AssetBrief
    draft: ImageRequest
    final_size: str
    final_resolution: Resolution | None
    final_quality: Quality
    reference_urls: list[str]
    mask_url: str | None
    draft_estimate: CostEstimate
    final_estimate: CostEstimate
    high_variants_estimate: CostEstimate  # k finals at final quality: what draft-first saves

    def final_request(self, chosen_draft_url: str) -> ImageRequest:
        """The final: the chosen draft first among the references, so it keeps its composition."""
        return _final_request(
            self.asset.prompt,
            self.final_size,
            self.final_resolution,
            self.final_quality,
            [chosen_draft_url, *self.reference_urls],
            self.mask_url,
            n=1,
        )


def _final_request(
    prompt: str,
    size: str,
    resolution: Resolution | None,
    quality: Quality,
    image_urls: list[str],
    mask_url: str | None,
    *,
    n: int,
) -> ImageRequest:
    fields: dict[str, Any] = {"prompt": prompt, "size": size, "quality": quality, "n": n}
    if resolution is not None:
        fields["resolution"] = resolution
    if image_urls:
        fields["image_urls"] = image_urls
        if mask_url is not None:
            fields["mask_url"] = mask_url
    return parse_request(fields)


def _ratio_only(size: str, resolution: Resolution) -> Resolution | None:
    return resolution if ":" in size else None


def plan_asset(
    asset: AssetBrief, defaults: CampaignDefaults, reference_urls: list[str], mask_url: str | None
) -> AssetPlan:
    """Build and validate both requests of an asset; raises InvalidRequestError."""
    size = asset.size or defaults.size
    drafts = asset.drafts or defaults.drafts
    draft = _final_request(
        asset.prompt,
        size,
        _ratio_only(size, asset.draft_resolution or defaults.draft_resolution),
        defaults.draft_quality,
        reference_urls,
        mask_url,
        n=drafts,
    )
    final_resolution = _ratio_only(size, asset.resolution or defaults.resolution)
    final_quality = asset.final_quality or defaults.final_quality
    final = _final_request(
        asset.prompt,
        size,
        final_resolution,
        final_quality,
        [PLACEHOLDER_DRAFT_URL, *reference_urls],
        mask_url,
        n=1,
    )
    # The alternative draft-first replaces: k variants straight at final quality.
    variants = _final_request(
        asset.prompt, size, final_resolution, final_quality, reference_urls, mask_url, n=drafts
    )
    return AssetPlan(
        asset=asset,
        draft=draft,
        final_size=size,
        final_resolution=final_resolution,
        final_quality=final_quality,
        reference_urls=reference_urls,
        mask_url=mask_url,
        draft_estimate=estimate(draft),
        final_estimate=estimate(final),
        high_variants_estimate=estimate(variants),
    )


def _brief_problems(error: ValidationError, data: Any) -> list[str]:
    problems = []
    assets = data.get("assets") if isinstance(data, dict) else None
    for item in error.errors(include_url=False):
        loc = list(item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        where = "brief"
        if len(loc) >= 2 and loc[0] == "assets" and isinstance(loc[1], int):
            index = loc[1]
            asset_id = None
            if isinstance(assets, list) and index < len(assets) and isinstance(assets[index], dict):
                asset_id = assets[index].get("id")
            where = f"asset {asset_id!r} (#{index + 1})" if asset_id else f"asset #{index + 1}"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc) or "(whole)"
        problems.append(f"{where}: {field}: {message}")
    return problems


def parse_brief(data: Any) -> CampaignBrief:
    """Validate brief data; raises `BriefError` naming asset and field for every problem."""
    try:
        return CampaignBrief.model_validate(data)
    except ValidationError as error:
        raise BriefError(_brief_problems(error, data)) from None


def parse_brief_text(text: str, name: str) -> CampaignBrief:
    """Validate the text of a brief: JSON when `name` ends in `.json`, else YAML.

    `name` is where the text came from (a file name, `storage:briefs/spring.yaml`, an
    `s3://` URI), so a syntax error says which brief it is in.
    """
    is_json = name.lower().endswith(".json")
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        kind = "JSON" if is_json else "YAML"
        raise BriefError([f"{name}: not valid {kind}: {error}"]) from None
    return parse_brief(data)


def load_brief(path: str | Path) -> CampaignBrief:
    """Read a `.yaml`/`.yml`/`.json` brief file; a missing file is a `BriefError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BriefError([f"{path}: no such brief file (from {Path.cwd()})"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise BriefError([f"{path}: cannot read the brief: {error}"]) from None
    return parse_brief_text(text, path.name)


def check_plans(
    brief: CampaignBrief, references: dict[str, tuple[list[str], str | None]]
) -> list[AssetPlan]:
    """Plan every asset, collecting every request problem with its asset id before raising."""
    plans: list[AssetPlan] = []
    problems: list[str] = []
    for asset in brief.assets:
        urls, mask = references.get(asset.id, ([], None))
        try:
            plans.append(plan_asset(asset, brief.defaults, urls, mask))
        except InvalidRequestError as error:
            problems.extend(
                f"asset {asset.id!r}: {field}: {rule}" for field, rule in error.problems
            )
    if problems:
        raise BriefError(problems)
    return plans


Stage = Literal["draft", "final"]
