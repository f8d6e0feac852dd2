"""An asset's plan: the concrete requests a brief asks for, each validated and estimated.

`check_plans` turns a parsed brief (`evolink.brief`) and its references, already resolved to
URLs, into one `AssetPlan` per asset: the drafts, the final (with a placeholder for the draft
that will be chosen), the adaptations, and the estimates every report and budget check starts
from. A request the API would refuse fails here, named by asset and field, before any spend.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from evolink.adaptations import (
    PLACEHOLDER_FINAL_URL,
    AdaptationPlan,
    adaptation_prompt,
    branded_prompt,
)
from evolink.brief import AssetBrief, CampaignBrief, CampaignDefaults
from evolink.cost import CostEstimate, Quality, estimate
from evolink.errors import BriefError, InvalidRequestError
from evolink.models import ImageRequest, parse_request
from evolink.sizes import Resolution

PLACEHOLDER_DRAFT_URL: Final = "https://drafts.invalid/chosen-draft.png"  # estimates only


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
    adaptations: list[AdaptationPlan] = Field(default_factory=list)
    prompt: str = ""
    """The prompt every job of the asset sends: the asset's, with the brand kit's lines."""

    def final_request(self, chosen_draft_url: str) -> ImageRequest:
        """The final: the chosen draft first among the references, so it keeps its composition."""
        return _final_request(
            self.prompt or self.asset.prompt,
            self.final_size,
            self.final_resolution,
            self.final_quality,
            [chosen_draft_url, *self.reference_urls],
            self.mask_url,
            n=1,
        )

    @property
    def adaptations_usd(self) -> Decimal:
        """What the asset's adaptations are estimated to cost together."""
        return sum((a.estimate.usd for a in self.adaptations), Decimal(0))


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
    asset: AssetBrief,
    defaults: CampaignDefaults,
    reference_urls: list[str],
    mask_url: str | None,
    brand_urls: list[str] | None = None,
) -> AssetPlan:
    """Build and validate every request of an asset — drafts, final, adaptations; raises
    `InvalidRequestError` (an adaptation's fields are named `adaptation '<id>': <field>`).

    `reference_urls` are the asset's references followed by the brand kit's (`brand_urls`,
    which an adaptation sends after the final)."""
    size = asset.size or defaults.size
    drafts = asset.drafts or defaults.drafts
    prompt = branded_prompt(asset.prompt, defaults.brand)
    draft_resolution = asset.draft_resolution or defaults.draft_resolution
    draft = _final_request(
        prompt,
        size,
        _ratio_only(size, draft_resolution),
        defaults.draft_quality,
        reference_urls,
        mask_url,
        n=drafts,
    )
    resolution = asset.resolution or defaults.resolution
    final_resolution = _ratio_only(size, resolution)
    final_quality = asset.final_quality or defaults.final_quality
    final = _final_request(
        prompt,
        size,
        final_resolution,
        final_quality,
        [PLACEHOLDER_DRAFT_URL, *reference_urls],
        mask_url,
        n=1,
    )
    # The alternative draft-first replaces: k variants straight at final quality.
    variants = _final_request(
        prompt, size, final_resolution, final_quality, reference_urls, mask_url, n=drafts
    )
    adaptations = []
    for adaptation in asset.adaptations_of(defaults):
        a_size = adaptation.size or size
        a_resolution = _ratio_only(a_size, adaptation.resolution or resolution)
        a_quality = adaptation.quality or final_quality
        try:
            request = _final_request(
                adaptation_prompt(adaptation, a_size, defaults.brand),
                a_size,
                a_resolution,
                a_quality,
                [PLACEHOLDER_FINAL_URL, *(brand_urls or [])],
                None,
                n=1,
            )
        except InvalidRequestError as error:
            raise InvalidRequestError(
                [(f"adaptation {adaptation.id!r}: {field}", rule) for field, rule in error.problems]
            ) from None
        # Without adaptations: drafts and a final of their own in this format.
        scratch_drafts = _final_request(
            prompt,
            a_size,
            _ratio_only(a_size, draft_resolution),
            defaults.draft_quality,
            reference_urls,
            mask_url,
            n=drafts,
        )
        scratch_final = _final_request(
            prompt,
            a_size,
            a_resolution,
            a_quality,
            [PLACEHOLDER_DRAFT_URL, *reference_urls],
            mask_url,
            n=1,
        )
        adaptations.append(
            AdaptationPlan(
                adaptation=adaptation,
                request=request,
                estimate=estimate(request),
                from_scratch_usd=estimate(scratch_drafts).usd + estimate(scratch_final).usd,
            )
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
        adaptations=adaptations,
        prompt=prompt,
    )


def check_plans(
    brief: CampaignBrief,
    references: dict[str, tuple[list[str], str | None]],
    brand_urls: list[str] | None = None,
) -> list[AssetPlan]:
    """Plan every asset, collecting every request problem with its asset id before raising.

    `references`: each asset's reference URLs (its own, then the brand kit's) and mask;
    `brand_urls`: the brand kit's alone (an adaptation sends them after the final)."""
    plans: list[AssetPlan] = []
    problems: list[str] = []
    for asset in brief.assets:
        urls, mask = references.get(asset.id, ([], None))
        try:
            plans.append(plan_asset(asset, brief.defaults, urls, mask, brand_urls))
        except InvalidRequestError as error:
            problems.extend(
                f"asset {asset.id!r}: {field}: {rule}" for field, rule in error.problems
            )
    if problems:
        raise BriefError(problems)
    return plans
