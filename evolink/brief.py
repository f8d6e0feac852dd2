"""A campaign brief: what a marketing team writes once (YAML or JSON), validated before any spend.

Its fields are checked here as it is parsed (ids, sizes, limits, the budget); `evolink.plans`
then builds and checks every asset's requests, so a brief that the API would refuse — or that
names a size the final cannot have — fails with the asset id and the field, not halfway through
a paid run.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, cast

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from evolink.adaptations import (
    Adaptation,
    BrandKit,
    id_rule,
    unique_adaptation_ids,
)
from evolink.cost import Quality
from evolink.errors import BriefError
from evolink.forms import form_money, form_optional, unset_none_in_json
from evolink.models import MAX_REFERENCE_IMAGES
from evolink.sizes import Resolution

MAX_ASSETS: Final = 10_000
"""Most assets in one brief. The budget is the guard on spend; this ceiling only catches a
generated brief gone wrong (a loop, a pasted catalogue) before it is parsed, planned and
estimated in full. The run's memory does not grow with it beyond small per-asset records
(`flows/campaign.py`, README "Campaign scale"); 10,000 assets are planned in a few seconds
and their manifest is a few tens of MB. Larger catalogues: split them into several briefs."""


class CampaignDefaults(BaseModel):
    """What every asset gets unless it says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Defaults for every asset")

    size: str = Field(
        default="1:1",
        title="Size",
        description="Ratio (1:1, 3:2, 16:9…), 'auto' or 'WxH' for drafts and finals.",
    )
    drafts: int = Field(
        default=4, ge=1, le=10, title="Drafts per asset", description="Low-quality variants."
    )
    resolution: Resolution = Field(
        default="1K", title="Final resolution", description="Tier of the final (ratio sizes)."
    )
    draft_resolution: Resolution = Field(
        default="1K", title="Draft resolution", description="Tier of the drafts."
    )
    draft_quality: Quality = Field(
        default="low", title="Draft quality", description="Quality of the drafts."
    )
    final_quality: Quality = Field(
        default="high", title="Final quality", description="Quality of the final."
    )
    storage_block: str | None = Field(
        default=None,
        title="Storage block",
        description="Name of a saved storage block for this campaign (the run's wins).",
        json_schema_extra=form_optional,
    )
    adaptations: list[Adaptation] = Field(
        default_factory=list,
        title="Adaptations",
        description="Versions of every approved final (an asset's own list replaces these).",
    )
    brand: BrandKit | None = Field(
        default=None,
        title="Brand kit",
        description="Style references, a style line and what to avoid, for every job.",
        json_schema_extra=form_optional,
    )

    @model_serializer(mode="wrap")
    def _json(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return unset_none_in_json(self, handler, info)

    @field_validator("adaptations")
    @classmethod
    def _unique_adaptations(cls, value: list[Adaptation]) -> list[Adaptation]:
        return unique_adaptation_ids(value)


class AssetBrief(BaseModel):
    """One image the campaign needs."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Asset")

    id: str = Field(
        title="Asset id",
        description="Stable id: lowercase letters, digits, '-' or '_' (max 64).",
    )
    prompt: str = Field(
        min_length=1, title="Prompt", description="What to draw (or how to edit the references)."
    )
    size: str | None = Field(
        default=None,
        title="Size",
        description="Ratio, 'auto' or 'WxH'; empty: the default size.",
        json_schema_extra=form_optional,
    )
    drafts: int | None = Field(
        default=None,
        ge=1,
        le=10,
        title="Drafts",
        description="Variants of this asset; empty: the default.",
        json_schema_extra=form_optional,
    )
    resolution: Resolution | None = Field(
        default=None,
        title="Final resolution",
        description="Empty: the default.",
        json_schema_extra=form_optional,
    )
    draft_resolution: Resolution | None = Field(
        default=None,
        title="Draft resolution",
        description="Empty: the default.",
        json_schema_extra=form_optional,
    )
    final_quality: Quality | None = Field(
        default=None,
        title="Final quality",
        description="Empty: the default.",
        json_schema_extra=form_optional,
    )
    reference_images: list[str] = Field(
        default_factory=list,
        max_length=MAX_REFERENCE_IMAGES - 1,  # one slot is kept for the chosen draft
        title="Reference images",
        description="https URLs, s3://bucket/key or storage:key objects, or local files.",
    )
    mask: str | None = Field(
        default=None,
        title="Mask",
        description="PNG mask, like a reference image (needs reference images).",
        json_schema_extra=form_optional,
    )
    adaptations: list[Adaptation] | None = Field(
        default=None,
        title="Adaptations",
        description="Versions of the approved final; empty: the defaults' ([] for none).",
        json_schema_extra=form_optional,
    )

    @model_serializer(mode="wrap")
    def _json(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        return unset_none_in_json(self, handler, info)

    @field_validator("id")
    @classmethod
    def _id_rule(cls, value: str) -> str:
        return id_rule(value)

    @field_validator("adaptations")
    @classmethod
    def _unique_adaptations(cls, value: list[Adaptation] | None) -> list[Adaptation] | None:
        return None if value is None else unique_adaptation_ids(value)

    def adaptations_of(self, defaults: CampaignDefaults) -> list[Adaptation]:
        """The asset's adaptations: its own list when it gives one (even empty), else the
        defaults'."""
        return defaults.adaptations if self.adaptations is None else self.adaptations

    @model_validator(mode="after")
    def _mask_rule(self) -> AssetBrief:
        if self.mask is not None and not self.reference_images:
            raise ValueError("mask: only allowed together with reference_images")
        return self


class CampaignBrief(BaseModel):
    """A campaign: its name, its budget, what every asset gets, and the assets."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Brief")

    campaign: str = Field(
        min_length=1,
        max_length=80,
        title="Campaign name",
        description="Names the campaign's folder in storage and its artifacts.",
    )
    budget_usd: Decimal = Field(
        gt=0,
        title="Budget (USD)",
        description="Most the run may spend, drafts and finals.",
        json_schema_extra=form_money,
    )
    defaults: CampaignDefaults = Field(
        default_factory=CampaignDefaults,
        title="Defaults for every asset",
        description="What every asset gets unless it says otherwise.",
    )
    assets: list[AssetBrief] = Field(
        min_length=1,
        max_length=MAX_ASSETS,
        title="Assets",
        description=f"The images to make (1 to {MAX_ASSETS:,}); the budget limits the spend.",
    )

    @field_serializer("budget_usd", when_used="json")
    def _budget_number(self, budget: Decimal) -> int | float | str:
        """A number in JSON, as the form sends it (exactly: a budget no float holds stays a
        string)."""
        number = int(budget) if budget == budget.to_integral_value() else float(budget)
        return number if Decimal(repr(number)) == budget else str(budget)

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

    @model_validator(mode="after")
    def _reference_limit(self) -> CampaignBrief:
        """Every job's images within EvoLink's limit, the brand kit's included: a final sends
        the chosen draft, the asset's references and the brand's; an adaptation the final
        and the brand's."""
        brand = len(self.defaults.brand.references) if self.defaults.brand else 0
        problems = []
        for index, asset in enumerate(self.assets):
            total = 1 + len(asset.reference_images) + brand
            if total > MAX_REFERENCE_IMAGES:
                problems.append(
                    f"asset {asset.id!r} (#{index + 1}): reference_images: "
                    f"{len(asset.reference_images)} + {brand} brand reference(s) + the chosen "
                    f"draft = {total} images in its final, over EvoLink's limit of "
                    f"{MAX_REFERENCE_IMAGES}: drop {total - MAX_REFERENCE_IMAGES}"
                )
        if problems:
            raise ValueError("\n".join(problems))  # one line each (`_brief_problems`)
        return self


def _brief_problems(error: ValidationError, data: Any) -> list[str]:
    """One line per problem, naming the asset (id and position), the adaptation (id) and the
    field: `asset 'hero' (#1): adaptation 'de': prompt: …`."""
    problems = []
    assets = data.get("assets") if isinstance(data, dict) else None
    for item in error.errors(include_url=False):
        loc = list(item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if not loc and message.startswith("asset "):  # whole-brief rules that name the asset
            problems.extend(message.splitlines())
            continue
        where = "brief"
        owner: Any = data
        if len(loc) >= 2 and loc[0] == "assets" and isinstance(loc[1], int):
            index = loc[1]
            owner = _item(assets, index)
            asset_id = owner.get("id") if owner else None
            where = f"asset {asset_id!r} (#{index + 1})" if asset_id else f"asset #{index + 1}"
            loc = loc[2:]
        elif len(loc) >= 1 and loc[0] == "defaults":
            owner = data.get("defaults") if isinstance(data, dict) else None
            where, loc = "defaults", loc[1:]
        if len(loc) >= 2 and loc[0] == "adaptations" and isinstance(loc[1], int):
            adaptations = owner.get("adaptations") if isinstance(owner, dict) else None
            adaptation = _item(adaptations, loc[1])
            name = adaptation.get("id") if adaptation else None
            where += f": adaptation {name!r}" if name else f": adaptation #{loc[1] + 1}"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        if not field and ": adaptation " not in where:
            field = "(whole)"
        problems.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")
    return problems


def _item(items: Any, index: int) -> dict[str, Any] | None:
    found = items[index] if isinstance(items, list) and index < len(items) else None
    return cast(dict[str, Any], found) if isinstance(found, dict) else None


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
