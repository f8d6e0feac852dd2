"""The review of a campaign's drafts: the sheet a reviewer looks at, the form they answer, and
the approval step that waits for the answer.

One concept, kept together because each part is made for the others: the review sheet
(`<campaign>-review`, larger pictures and links) and the Resume dialog's description show the
drafts labelled as the form's options (`image-0` …); the form has one choice per asset up to
`REVIEW_FIELDS_MAX` assets and two pick lists beyond, and the sheet says which; `approve`
publishes the sheet, waits — suspended or paused (`approval_wait`) — and records each asset's
decision, or that nobody answered before the deadline (`deadline_rule`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal

from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, Pause
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input import RunInput
from pydantic import Field, create_model

from evolink.brief import AssetPlan
from evolink.campaign import AssetOutcome, AssetStatus
from evolink.cost import usd
from evolink.jobs import StoredImage, utcnow
from evolink.previews import REVIEW_EDGE, SHEET_EDGE, GridCell, Thumbnail, grid, thumbnail
from prefect_evolink.blocks import AssetStorage, S3AssetStorage
from prefect_evolink.flows.campaign_boundary import AssetBoundary
from prefect_evolink.flows.campaign_stages import DRAFT_LINK_USABLE_SECONDS
from prefect_evolink.tasks.campaign_artifacts import ARTIFACT_BUDGET_CHARS, PictureBudget, run_label
from prefect_evolink.tasks.reporting import artifact_key

logger = logging.getLogger(__name__)

DEFAULT_APPROVAL_TIMEOUT_SECONDS: Final = 20 * 3600
"""How long an approval run waits for its reviewer by default: inside the drafts' usable life
(`DRAFT_LINK_USABLE_SECONDS`), so on local storage an answer in time always gets its finals.
Longer is allowed, with a warning on local storage (a late answer's assets fail with
`DraftUnavailableError`, whose message names both ways out)."""

REVIEW_KEY: Final = "review"
"""The pause key of the review: a rerun of a suspended run finds the answer under it."""

REVIEW_FIELDS_MAX: Final = 40
"""Up to this many assets to review, the Resume form has one choice per asset. Beyond, it has
two searchable lists — assets to reject, drafts to use instead of the suggestion — and every
other asset gets its suggested draft: a thousand dropdowns are no form to review in."""

Decision = tuple[int | None, str]
"""A reviewer's decision on one asset: the chosen draft's index (None: no final) and why."""

REVIEW_LINK_MAX_SECONDS: Final = 7 * 24 * 3600
"""S3 presigned URLs (SigV4) live at most 7 days; the review's links never claim longer."""
DESCRIPTION_BUDGET_CHARS: Final = 300_000
"""Most characters of thumbnails in the Resume dialog's description. The API stored and the UI
rendered descriptions of 40 KB and 400 KB; 4 assets × 4 drafts take about 30 KB."""


# --- the approval step: wait for the reviewer ----------------------------------------------


async def approve(
    assets: AssetBoundary,
    campaign: str,
    storage: AssetStorage,
    suggested: dict[str, int | None],
    timeout: int,
    poll_seconds: int,
) -> bool:
    """Wait for a reviewer (see `approval_wait`). False when the wait timed out (no finals
    will be sent).

    A deployed run suspends: `asuspend_flow_run` raises `Pause` after recording each
    awaiting asset as `not_reviewed` until the deadline (the caller writes that manifest),
    and the process exits. On the rerun after the resume, the same call with the same key
    returns the submitted answer (Prefect rejects a second suspension with a key that has
    already fired and loads the input saved under it).
    """
    if not suggested:
        return True
    run_logger = get_run_logger()
    context = FlowRunContext.get()
    current = context.flow_run if context is not None else None
    wait = approval_wait(current)
    resumed = wait == "suspend" and _answered_before(current)
    description = None
    if not resumed:  # a resumed rerun only reads the answer: no new review sheet
        description = await publish_review_sheet(
            campaign,
            assets.plans,
            assets.outcomes,
            storage,
            suggested,
            links_valid_seconds=timeout + 3600,
            compact=_many_to_review(assets.plans, assets.outcomes, suggested),
            deadline_rule=deadline_rule(storage, timeout),
        )
    form, read_answer = review_form(assets.plans, assets.outcomes, suggested, description)
    estimate = sum(
        (p.final_estimate.usd for p in assets.plans if p.asset.id in suggested), Decimal(0)
    )
    if resumed:
        run_logger.info("Resumed after review: reading the reviewer's answer")
    else:
        run_logger.info(
            "Waiting for review of %d asset(s); finals would cost ≈%s. Open the %s run in "
            "the Prefect UI and click Resume: the dialog shows the drafts (larger: artifact "
            "%s-review).",
            len(suggested),
            usd(estimate),
            "suspended" if wait == "suspend" else "paused",
            campaign,
        )
    try:
        if wait == "suspend":
            try:
                answer = await asuspend_flow_run(
                    wait_for_input=form, timeout=timeout, key=REVIEW_KEY
                )
            except Pause:
                until = (utcnow() + timedelta(seconds=timeout)).isoformat(timespec="seconds")
                for asset in suggested:  # what stays true if nobody answers in time
                    assets.update(
                        asset,
                        status=AssetStatus.NOT_REVIEWED,
                        detail=f"suspended for review until {until}: no final sent unless "
                        "resumed by then",
                    )
                run_logger.info("Suspended for review until %s; no process is held", until)
                raise
        else:
            answer = await apause_flow_run(
                wait_for_input=form, timeout=timeout, poll_interval=poll_seconds, key=REVIEW_KEY
            )
    except FlowPauseTimeout:
        for asset in suggested:
            assets.update(
                asset,
                status=AssetStatus.NOT_REVIEWED,
                detail=f"no review within {timeout}s: no final sent",
            )
        run_logger.warning("Review timed out after %ss; no finals sent", timeout)
        return False
    for asset, (index, detail) in read_answer(answer).items():
        if index is None:
            assets.update(asset, status=AssetStatus.REJECTED, detail=detail)
        else:
            assets.update(asset, chosen_draft=index, detail=detail)
    return True


def approval_wait(run: FlowRun | None = None) -> Literal["suspend", "pause"]:
    """How the approval step waits for its reviewer: the one rule, in one place.

    A run that came from a deployment (its flow run has a `deployment_id`) **suspends**: the
    flow-run process exits, and no worker slot, container or pod is held while the reviewer
    takes their time; the resume reschedules the run, which runs again from the top (drafts
    reattach from their job records, nothing is paid twice) and reads the answer. Any other
    run — a flow called directly, in a script or a test — **pauses** in its process, since
    nothing could restart it. `run` defaults to the current flow run.
    """
    if run is None:
        context = FlowRunContext.get()
        run = context.flow_run if context is not None else None
    return "suspend" if run is not None and run.deployment_id is not None else "pause"


def _answered_before(run: FlowRun | None) -> bool:
    """The run was suspended for review and has been resumed: this is its rerun."""
    return run is not None and REVIEW_KEY in (run.empirical_policy.pause_keys or set())


def deadline_rule(storage: AssetStorage, timeout: int) -> str:
    """The review's deadline and why, for the review artifact."""
    until = (utcnow() + timedelta(seconds=timeout)).isoformat(timespec="minutes")
    if isinstance(storage, S3AssetStorage):
        return (
            f"Answer by {until} ({timeout / 3600:.1f} h). On S3 storage a final is made "
            "from the stored draft (presigned), so a late answer still gets its finals."
        )
    usable = int(DRAFT_LINK_USABLE_SECONDS // 3600)
    return (
        f"Answer by {until} ({timeout / 3600:.1f} h). On local storage a final is made "
        f"from its draft's result link at EvoLink, usable {usable} h after the draft: the "
        "default deadline (20 h) stays inside it. Drafts answered for later cannot become "
        "finals: rerun with --redo-drafts ASSET (fresh drafts, paid) or use S3 storage."
    )


# --- the form: what the reviewer answers ---------------------------------------------------


def review_form(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    description: str | None = None,
) -> tuple[type[RunInput], Callable[[Any], dict[str, Decision]]]:
    """The Resume form for this review and how to read its answer: one choice per asset
    (`review_input`) up to `REVIEW_FIELDS_MAX` assets, the two lists of `compact_review_input`
    beyond."""
    if _many_to_review(plans, outcomes, suggested):
        return compact_review_input(plans, outcomes, suggested, description)
    form, names = review_input(plans, outcomes, suggested, description)

    def read(answer: Any) -> dict[str, Decision]:
        decisions: dict[str, Decision] = {}
        for name, asset in names.items():
            choice = getattr(answer, name)
            if choice == "reject":
                decisions[asset] = (None, "rejected by reviewer")
            else:
                index = int(choice.removeprefix("image-"))
                decisions[asset] = (index, f"approved: image-{index}")
        return decisions

    return form, read


def review_input(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    description: str | None = None,
) -> tuple[type[RunInput], dict[str, str]]:
    """A form with one choice per suggested asset (drafts, no failure): `image-N` or `reject`.

    Each field's default is the selector's suggestion, its title the asset id and its help text
    the final's estimate. `description` (markdown: the drafts' thumbnails, see
    `publish_review_sheet`) is shown above the fields in the Resume dialog; it is attached with
    `RunInput.with_initial_data(description=…)` *without* field values, because that method
    redefines every field it is given a value for and so would drop the titles and help texts
    (the defaults are already on the fields).

    Returns the RunInput model and the map field name → asset id (field names must be
    identifiers; asset ids may contain '-').
    """
    fields: dict[str, Any] = {}
    names: dict[str, str] = {}
    for plan in plans:
        drafts = outcomes[plan.asset.id].drafts
        if drafts is None or not _reviewable(plan, outcomes, suggested):
            continue
        name = plan.asset.id.replace("-", "_")
        while name in fields:
            name += "_"
        options = (*(f"image-{image.index}" for image in drafts.images), "reject")
        default = suggested.get(plan.asset.id)
        fields[name] = (
            Literal[options],
            Field(
                default="reject" if default is None else f"image-{default}",
                title=plan.asset.id,
                description=f"final ≈ {usd(plan.final_estimate.usd)} ({plan.final_quality})",
            ),
        )
        names[name] = plan.asset.id
    return _form("CampaignReview", fields, description), names


def compact_review_input(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    description: str | None = None,
) -> tuple[type[RunInput], Callable[[Any], dict[str, Decision]]]:
    """A form for a review of many assets: `reject` (assets to make no final of) and
    `use_instead` (`<asset>: image-N`, a draft to make final instead of the suggestion), both
    lists of the campaign's own values, which the UI offers as searchable pick lists and the
    server checks on resume (a typo cannot name an asset that does not exist). Every other
    asset gets its suggested draft; one whose suggestion is reject gets a final only when one
    of its drafts is picked.

    Ambiguity spends nothing: an asset both rejected and picked, or picked twice, is rejected,
    and the reason says so.
    """
    assets: list[str] = []
    options: dict[str, tuple[str, int]] = {}
    for plan in plans:
        if not _reviewable(plan, outcomes, suggested):
            continue
        asset = plan.asset.id
        assets.append(asset)
        drafts = outcomes[asset].drafts
        for image in drafts.images if drafts is not None else []:
            options[f"{asset}: image-{image.index}"] = (asset, image.index)
    fields: dict[str, Any] = {
        "reject": (
            list[Literal[tuple(assets)]],  # type: ignore[misc]  # built at run time
            Field(
                default=[],
                title="Reject: no final",
                description="Assets to make no final of (their suggestion is ignored).",
            ),
        ),
        "use_instead": (
            list[Literal[tuple(options)]],  # type: ignore[misc]
            Field(
                default=[],
                title="Use another draft",
                description="A draft to make final instead of its asset's suggestion, listed "
                "as 'asset: image-N'.",
            ),
        ),
    }

    def read(answer: Any) -> dict[str, Decision]:
        rejected = set(answer.reject)
        picked: dict[str, list[int]] = {}
        for option in answer.use_instead:
            asset, index = options[option]
            picked.setdefault(asset, []).append(index)
        decisions: dict[str, Decision] = {}
        for asset in assets:
            choices = sorted(set(picked.get(asset, [])))
            if asset in rejected and choices:
                decisions[asset] = (None, "rejected: both rejected and a draft picked")
            elif asset in rejected:
                decisions[asset] = (None, "rejected by reviewer")
            elif len(choices) > 1:
                listed = ", ".join(f"image-{i}" for i in choices)
                decisions[asset] = (None, f"rejected: {listed} all picked, one is needed")
            elif choices:
                decisions[asset] = (choices[0], f"approved: image-{choices[0]} (picked)")
            elif (suggestion := suggested[asset]) is None:
                decisions[asset] = (None, "rejected: suggested reject, no draft picked")
            else:
                decisions[asset] = (suggestion, f"approved: image-{suggestion} (suggested)")
        return decisions

    return _form("CampaignReviewMany", fields, description), read


def _reviewable(
    plan: AssetPlan, outcomes: dict[str, AssetOutcome], suggested: dict[str, int | None]
) -> bool:
    """An asset in this review: it has drafts and a suggestion (or a suggested rejection)."""
    return outcomes[plan.asset.id].drafts is not None and plan.asset.id in suggested


def _many_to_review(
    plans: list[AssetPlan], outcomes: dict[str, AssetOutcome], suggested: dict[str, int | None]
) -> bool:
    """More assets to review than one field each would make a usable form."""
    return sum(_reviewable(p, outcomes, suggested) for p in plans) > REVIEW_FIELDS_MAX


def _form(name: str, fields: dict[str, Any], description: str | None) -> type[RunInput]:
    form: type[RunInput] = create_model(name, __base__=RunInput, **fields)
    if description is not None:
        form = form.with_initial_data(description=description)
    return form


# --- the sheet: the drafts in the Resume dialog and the review artifact --------------------


@dataclass(frozen=True, slots=True)
class DraftPreview:
    """One draft as the review shows it: its option label, thumbnails and full-size link.

    `small` (`REVIEW_EDGE`) goes in the Resume dialog, `large` (`SHEET_EDGE`) in the artifact.
    """

    label: str
    image: StoredImage
    small: Thumbnail | None
    large: Thumbnail | None
    link: str | None
    omitted: bool = False
    """No thumbnails were made: the review's budgets were spent by the drafts before it."""


async def publish_review_sheet(
    campaign: str,
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    storage: AssetStorage,
    suggested: dict[str, int | None],
    links_valid_seconds: int = 24 * 3600,
    compact: bool = False,
    deadline_rule: str = "",
) -> str:
    """Publish `<campaign>-review` and return the Resume dialog's description (same grid);
    `compact`: the form is the two lists of a review of many assets, not a choice per asset;
    `deadline_rule`: how long the review may take and why, shown under the drafts.

    Full-size links are presigned for `links_valid_seconds` (at most 7 days), where the storage
    can presign (S3); local storage has no links, only the thumbnails and its paths.
    """
    seconds = max(60, min(links_valid_seconds, REVIEW_LINK_MAX_SECONDS))
    drafts = await review_drafts(plans, outcomes, storage, suggested, seconds)
    has_links = any(d.link for previews in drafts.values() for d in previews)
    expires = datetime.now(UTC) + timedelta(seconds=seconds) if has_links else None
    try:
        await acreate_markdown_artifact(
            key=artifact_key(campaign, "review"),
            markdown=review_markdown(
                campaign, plans, outcomes, suggested, drafts, expires, compact=compact
            )
            + (f"\n\n**Review deadline.** {deadline_rule}\n" if deadline_rule else ""),
            description=f"Drafts of {campaign} awaiting review ({run_label()})",
        )
    except Exception as error:  # noqa: BLE001 — the Resume dialog still shows the drafts
        logger.error("Review artifact not published: %s", error)
    return review_description(campaign, plans, outcomes, suggested, drafts, compact=compact)


async def review_drafts(
    plans: Sequence[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    storage: AssetStorage,
    suggested: dict[str, int | None],
    links_valid_seconds: int,
) -> dict[str, list[DraftPreview]]:
    """Every reviewable draft's thumbnails and full-size link (each image read once), until
    the thumbnails made would fill both the dialog's and the artifact's budget: the drafts
    after that are `omitted` (no image read), so memory does not grow with the campaign."""

    def previews(image: StoredImage) -> tuple[Thumbnail | None, Thumbnail | None]:
        try:
            data = storage.get_bytes(image.key)
            if not data:
                return None, None
            return thumbnail(data, REVIEW_EDGE), thumbnail(data, SHEET_EDGE)
        except Exception as error:  # noqa: BLE001 — a preview is not worth failing a run for
            logger.warning("No preview of %s: %s", image.uri, error)
            return None, None

    made = [0, 0]  # characters of small and large thumbnails made so far

    async def one(image: StoredImage) -> DraftPreview:
        label = f"image-{image.index}"
        if made[0] > DESCRIPTION_BUDGET_CHARS and made[1] > ARTIFACT_BUDGET_CHARS:
            # Neither the dialog nor the artifact has room left: a campaign of many assets
            # would otherwise hold thousands of thumbnails only to leave them out.
            link = await asyncio.to_thread(_full_size_link, storage, image, links_valid_seconds)
            return DraftPreview(label, image, None, None, link, omitted=True)
        (small, large), link = await asyncio.gather(
            asyncio.to_thread(previews, image),
            asyncio.to_thread(_full_size_link, storage, image, links_valid_seconds),
        )
        made[0] += len(small.data_uri) if small is not None else 0
        made[1] += len(large.data_uri) if large is not None else 0
        return DraftPreview(label, image, small, large, link)

    found: dict[str, list[DraftPreview]] = {}
    for plan in plans:
        record = outcomes[plan.asset.id].drafts
        if record is not None and plan.asset.id in suggested:
            found[plan.asset.id] = list(await asyncio.gather(*(one(i) for i in record.images)))
    return found


def review_description(
    campaign: str,
    plans: Sequence[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    drafts: dict[str, list[DraftPreview]],
    budget_chars: int = DESCRIPTION_BUDGET_CHARS,
    compact: bool = False,
) -> str:
    """The Resume dialog's markdown: per asset a row of draft thumbnails labelled as the form's
    options (`image-0` …), with the final's estimate and the suggested choice. `compact`: the
    form has two lists (reject, use another draft) instead of a choice per asset, and the first
    line says how to use them.

    No links: the dialog is where the choice is made; the review artifact has them. Pictures
    stop at `budget_chars` of data URIs (a campaign of many assets), and the text says so.
    """
    shown = _reviewable_plans(plans, outcomes, suggested)
    total = sum((p.final_estimate.usd for p in shown), Decimal(0))
    budget = PictureBudget(budget_chars)
    how = (
        "Every asset's **suggested** draft becomes its final unless you list the asset under "
        "**Reject** or pick another of its drafts under **Use another draft** (an asset "
        "suggested *reject* gets a final only if you pick one)"
        if compact
        else "Choose one draft per asset (or **reject**) in the fields below"
    )
    lines = [
        f"{how}: {len(shown)} final(s) would cost ≈ **{usd(total)}** in all. Larger previews: "
        f"artifact `{artifact_key(campaign, 'review')}`.",
        "",
    ]
    for plan in shown:
        asset = plan.asset.id
        lines += [
            f"**{asset}** — final ≈ {usd(plan.final_estimate.usd)} · "
            f"suggested: {_suggestion(suggested, asset)}",
            "",
            *grid(
                [
                    GridCell(
                        d.label, budget.skip() if d.omitted else budget.picture(d.small, d.label)
                    )
                    for d in drafts.get(asset, [])
                ]
            ),
            "",
        ]
    if budget.omitted:
        lines.append(
            f"_{budget.omitted} thumbnail(s) not shown, to keep this form small: see the review "
            "artifact._"
        )
    skipped = [p.asset.id for p in plans if p not in shown]
    if skipped:
        lines.append(
            "Not in this review: " + ", ".join(f"{a} ({outcomes[a].status.value})" for a in skipped)
        )
    return "\n".join(lines).rstrip() + "\n"


def review_markdown(
    campaign: str,
    plans: Sequence[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    drafts: dict[str, list[DraftPreview]],
    links_expire: datetime | None,
    budget_chars: int = ARTIFACT_BUDGET_CHARS,
    compact: bool = False,
) -> str:
    """The `<campaign>-review` artifact: the dialog's grid per asset, side by side, with larger
    thumbnails, full-size links where storage gives them, and where the drafts are stored."""
    budget = PictureBudget(budget_chars)
    how = (
        "Every asset's suggested draft becomes its final unless, in the paused run's **Resume** "
        "dialog, you list the asset under *Reject* or pick another of its drafts (`<asset>: "
        "image-N`) under *Use another draft*"
        if compact
        else "Choose one draft per asset (or reject it) in the paused run's **Resume** dialog"
    )
    lines = [
        f"# Review drafts — {campaign}",
        "",
        f"{how}; the dialog shows these drafts too, and its options are the labels below.",
    ]
    if links_expire is not None:
        lines.append(
            f"The *full size* links are temporary: valid until {links_expire:%Y-%m-%d %H:%M} UTC."
        )
    lines.append("")
    for plan in plans:
        asset = plan.asset.id
        outcome = outcomes[asset]
        lines.append(f"## {asset}")
        if outcome.drafts is None or asset not in suggested:
            detail = f": {outcome.detail}" if outcome.detail else ""
            lines += ["", f"_Nothing to review: {outcome.status.value}{detail}_", ""]
            continue
        estimate = plan.final_estimate
        cells = [
            GridCell(
                d.label,
                budget.skip() if d.omitted else budget.picture(d.large or d.small, d.label),
                (f"[full size]({d.link})",) if d.link else (),
            )
            for d in drafts.get(asset, [])
        ]
        lines += [
            "",
            f"Final ≈ **{usd(estimate.usd)}** ({plan.final_quality}, "
            f"{estimate.width}x{estimate.height}) · suggested: "
            f"**{_suggestion(suggested, asset)}**",
            "",
            *grid(cells),
            "",
        ]
        if outcome.drafts.images:
            lines += [f"Stored at `{_folder(outcome.drafts.images[0].uri)}`", ""]
    if budget.omitted:
        lines.append(f"_{budget.omitted} thumbnail(s) not shown, to keep this artifact small._")
    return "\n".join(lines).rstrip() + "\n"


def _reviewable_plans(
    plans: Sequence[AssetPlan], outcomes: dict[str, AssetOutcome], suggested: dict[str, Any]
) -> list[AssetPlan]:
    return [p for p in plans if _reviewable(p, outcomes, suggested)]


def _suggestion(suggested: dict[str, int | None], asset: str) -> str:
    choice = suggested.get(asset)
    return "reject" if choice is None else f"image-{choice}"


def _full_size_link(storage: AssetStorage, image: StoredImage, seconds: int) -> str | None:
    """A temporary HTTPS link to the full image (S3), or None (local storage has none)."""
    try:
        return storage.presigned_url(image.key, seconds)
    except Exception as error:  # noqa: BLE001
        logger.warning("No link to %s: %s", image.uri, error)
        return None


def _folder(uri: str) -> str:
    return uri.rsplit("/", 1)[0] + "/"
