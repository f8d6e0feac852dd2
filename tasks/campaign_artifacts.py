"""What every campaign artifact shares: how it names its run, how many pictures it may hold,
and an asset's (or an adaptation's) outcome in a word or two.

The artifacts themselves are one module each — the review sheet
(`flows/campaign_review_sheet.py`), the finals (`campaign_finals`), the cost tables
(`campaign_cost`), progress and the manifest (`campaign_progress`); `campaign_report` lists
them all. These few pieces are what they have in common, kept here so the artifacts agree.
"""

from __future__ import annotations

from typing import Final

from evolink.campaign import AdaptationOutcome, AssetOutcome, AssetStatus
from evolink.previews import Thumbnail

ARTIFACT_BUDGET_CHARS: Final = 1_000_000
"""Most characters of thumbnails in one artifact: a keyed artifact past about 1.5 MB is not
published as an event, and the run's Artifacts tab downloads every artifact whole."""

_NO_FINAL: Final = {
    AssetStatus.REJECTED: "rejected",
    AssetStatus.NOT_REVIEWED: "not reviewed",
    AssetStatus.BUDGET_STOPPED: "over budget",
    AssetStatus.FAILED: "failed",
    AssetStatus.CANCELLED: "cancelled",
    AssetStatus.PENDING: "unfinished",
}
"""Why an asset has no final, in the few words a table cell holds (the detail is elsewhere)."""


def run_label() -> str:
    """The flow run's name, for the artifacts' history ("run bright-owl")."""
    from prefect.runtime import flow_run

    name = flow_run.name or "outside a flow run"
    return f"run {name}"


def outcome_words(outcome: AssetOutcome) -> str:
    """An asset's outcome in a word or two: 'final', 'rejected', 'failed', 'over budget'…"""
    if outcome.status is AssetStatus.FINAL:
        return "final"
    return _NO_FINAL.get(outcome.status, outcome.status.value)


def adaptation_words(adaptation: AdaptationOutcome) -> str:
    """An adaptation's outcome in a word or two: 'made', 'rejected', 'failed', 'over budget'…"""
    if adaptation.status is AssetStatus.FINAL:
        return "made"
    return _NO_FINAL.get(adaptation.status, adaptation.status.value)


class PictureBudget:
    """Pictures go in while their data URIs fit `chars`; past it, words replace them."""

    def __init__(self, chars: int):
        self.left = chars
        self.omitted = 0

    def picture(self, preview: Thumbnail | None, alt: str) -> str:
        if preview is None:
            return "_no preview_"
        if len(preview.data_uri) > self.left:
            self.omitted += 1
            return "_not shown_"
        self.left -= len(preview.data_uri)
        return preview.markdown(alt)

    def skip(self) -> str:
        """A picture left out because the budget was known to be spent before it was made."""
        self.omitted += 1
        return "_not shown_"

    def room(self, chars: int = 1) -> bool:
        return self.left >= chars
