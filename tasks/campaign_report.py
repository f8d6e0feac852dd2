"""Campaign artifacts: what reviewers and managers read in the Prefect UI — the index.

Every key is stable per campaign, so the Artifacts page shows each one's history across runs:

- `<campaign>-review` (markdown): every asset's drafts side by side, labelled `image-0` … as the
  Resume form's options, with the final's estimate and links to the full drafts where storage
  can presign them (S3; local storage has none).
- `<campaign>-finals` (markdown): the contact sheet — every asset of the run with its final's
  thumbnail, size, cost and durable storage URI, or why it has none; with adaptations, one row
  per asset: the final (the master), then each adaptation labelled `<asset> · <id>` with its
  pixel size, or shown as failed, rejected or over budget, without a picture.
- `<campaign>-<asset>-final` (markdown): one asset's outcome in the run — its final and its
  adaptations, or "No current final" and why.
- `<campaign>-cost` (table): one row per paid job (an adaptation's stage reads
  `adapt: <id>`), and one per asset left without a final: Asset, Stage, Quality, Size,
  Images, Estimated, Billed, Credits, Status.
- `<campaign>-cost-details` (table): the same jobs' task ids, seconds and tokens.
- `<campaign>-summary` (markdown): spend by stage, the budget, the draft-first saving in words,
  what the adaptations cost next to making their formats from scratch (when the brief has
  adaptations), every asset's outcome, and paid jobs whose images were not stored.
- `<campaign>-progress` (progress): jobs finished so far.

The paused run's Resume dialog shows the review grid too: its description
(`review_description`) is markdown with small thumbnails, so a reviewer chooses while looking at
the drafts.

History that does not mislead: every run that ends (completed, failed or cancelled) publishes
`<campaign>-<asset>-final` for **every** asset of its brief, whatever the outcome. An asset the
reviewer rejected, that failed, or that the budget stopped gets a version saying "No current
final" with the reason, the run and the date, so the latest version of a key — what the
Artifacts page shows — is never an older run's final presented as current. Earlier finals stay
in the key's history, each labelled with the run that made it. Two cases keep an older version
on top: a run killed outright (it publishes nothing; `prefect-evolink report` rebuilds its
manifest, not its artifacts) and an asset removed from the brief (no later run mentions it).

Pictures are never published with `create_image_artifact`: the UI prints the data URI as the
"Image URL" line and stretches the picture. Data URIs appear only as markdown pictures.

Each artifact is made in its own module, and every name is re-exported here:

- the review sheet and the Resume dialog's description: `flows/campaign_review_sheet.py` (the
  form they describe is `campaign_review_form`, the approval step `campaign_review`);
- the finals (`-finals`, `-<asset>-final`): `campaign_finals`;
- the cost tables and the summary (`-cost`, `-cost-details`, `-summary`): `campaign_cost`,
  with the cost lines `prefect-evolink report` prints (`cost_summary`);
- progress and the manifest the run saves: `campaign_progress`;
- what they share (the run's label, the picture budget, an outcome in words):
  `campaign_artifacts`.
"""

from __future__ import annotations

from prefect_evolink.flows.campaign_review_sheet import (
    DESCRIPTION_BUDGET_CHARS,
    REVIEW_LINK_MAX_SECONDS,
    DraftPreview,
    publish_review_sheet,
    review_description,
    review_drafts,
    review_markdown,
)
from prefect_evolink.tasks.campaign_artifacts import (
    ARTIFACT_BUDGET_CHARS,
    adaptation_words,
    outcome_words,
)
from prefect_evolink.tasks.campaign_cost import (
    COST_COLUMNS,
    DETAIL_COLUMNS,
    NONE,
    adaptations_words,
    cost_detail_rows,
    cost_rows,
    cost_summary,
    draft_first_words,
    publish_campaign_report,
    stage_label,
    stages_in_order,
    summary_markdown,
)
from prefect_evolink.tasks.campaign_finals import (
    PREVIEW_WORKERS,
    asset_final_markdown,
    contact_sheet_markdown,
    publish_final_previews,
    sheet_key,
)
from prefect_evolink.tasks.campaign_progress import PROGRESS_STEP_PERCENT, Progress, save_manifest

__all__ = [
    "ARTIFACT_BUDGET_CHARS",
    "COST_COLUMNS",
    "DESCRIPTION_BUDGET_CHARS",
    "DETAIL_COLUMNS",
    "NONE",
    "PREVIEW_WORKERS",
    "PROGRESS_STEP_PERCENT",
    "REVIEW_LINK_MAX_SECONDS",
    "DraftPreview",
    "Progress",
    "adaptation_words",
    "adaptations_words",
    "asset_final_markdown",
    "contact_sheet_markdown",
    "cost_detail_rows",
    "cost_rows",
    "cost_summary",
    "draft_first_words",
    "outcome_words",
    "publish_campaign_report",
    "publish_final_previews",
    "publish_review_sheet",
    "review_description",
    "review_drafts",
    "review_markdown",
    "save_manifest",
    "sheet_key",
    "stage_label",
    "stages_in_order",
    "summary_markdown",
]
