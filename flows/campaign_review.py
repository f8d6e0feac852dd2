"""The approval step of a campaign's review: publish the sheet, wait for the answer, record it.

`approve` publishes the review sheet (`campaign_review_sheet`), waits — suspended or paused
(`approval_wait`) — on the Resume form (`campaign_review_form`), and records each asset's
decision, or that nobody answered before the deadline (`deadline_rule`). The sheet and the form
are modules of their own, each one concept: the sheet is what the reviewer looks at, the form
what they answer; they share the drafts' labels (`image-0` …) and the rule for how many assets
make a review of many (`REVIEW_FIELDS_MAX`, read where it lives: `campaign_review_form`).

The form's names are re-exported here, where `flows/campaign.py` imports them from.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any, Final, Literal
from uuid import UUID

from prefect import get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, Pause
from prefect.flow_runs import apause_flow_run, asuspend_flow_run
from prefect.input.actions import aread_flow_run_input
from prefect.input.run_input import RunInput, keyset_from_base_key

from evolink.campaign import AssetStatus
from evolink.cost import usd
from evolink.jobs import utcnow
from prefect_evolink.blocks import AssetStorage, S3AssetStorage
from prefect_evolink.flows.campaign_boundary import AssetBoundary
from prefect_evolink.flows.campaign_review_form import (
    REVIEW_FIELDS_MAX,
    D,
    Decision,
    K,
    compact_review_input,
    many_to_review,
    read_saved_answer,
    review_form,
    review_input,
)
from prefect_evolink.flows.campaign_review_sheet import publish_review_sheet
from prefect_evolink.flows.campaign_stages import DRAFT_LINK_USABLE_SECONDS

__all__ = [
    "DEFAULT_APPROVAL_TIMEOUT_SECONDS",
    "REVIEW_FIELDS_MAX",
    "REVIEW_KEY",
    "Decision",
    "answered_before",
    "approval_wait",
    "approve",
    "compact_review_input",
    "deadline_rule",
    "resumed_answer",
    "review_form",
    "review_input",
    "saved_answer",
]

DEFAULT_APPROVAL_TIMEOUT_SECONDS: Final = 20 * 3600
"""How long an approval run waits for its reviewer by default: inside the drafts' usable life
(`DRAFT_LINK_USABLE_SECONDS`), so on local storage an answer in time always gets its finals.
Longer is allowed: on local storage a late answer's chosen drafts are uploaded to EvoLink's
Files API for their finals (`tasks.image_delivery`), and the run says so when it starts."""

REVIEW_KEY: Final = "review"
"""The pause key of the review: a rerun of a suspended run finds the answer under it."""


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
    and the process exits. On the rerun after the resume, the answer Prefect saved under the
    key is read against the form built now (`read_saved_answer`): the brief may have changed
    while the run was suspended, and an asset the reviewer did not see gets no final.
    """
    if not suggested:
        return True
    run_logger = get_run_logger()
    context = FlowRunContext.get()
    current = context.flow_run if context is not None else None
    wait = approval_wait(current)
    resumed = wait == "suspend" and answered_before(current)
    description = None
    if not resumed:  # a resumed rerun only reads the answer: no new review sheet
        description = await publish_review_sheet(
            campaign,
            assets.plans,
            assets.outcomes,
            storage,
            suggested,
            links_valid_seconds=timeout + 3600,
            compact=many_to_review(assets.plans, assets.outcomes, suggested),
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
    if resumed and current is not None:
        found = await resumed_answer(current.id, REVIEW_KEY, form, read_answer)
        if found is not None:
            decisions, undecided = found
            for asset, detail in undecided.items():
                detail += ": no final"
                assets.update(asset, status=AssetStatus.NOT_REVIEWED, detail=detail)
                run_logger.warning("%s: %s", asset, detail)
            _record(assets, decisions)
            return True
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
    _record(assets, read_answer(answer))
    return True


def _record(assets: AssetBoundary, decisions: dict[str, Decision]) -> None:
    for asset, (index, detail) in decisions.items():
        if index is None:
            assets.update(asset, status=AssetStatus.REJECTED, detail=detail)
        else:
            assets.update(asset, chosen_draft=index, detail=detail)


async def saved_answer(
    flow_run_id: UUID, key: str = REVIEW_KEY
) -> tuple[dict[str, Any] | None, dict[str, Any]] | None:
    """The Resume form a suspended run saved (its JSON schema) and the reviewer's answer to it,
    as Prefect stored them under the review's pause key `key`; None if there is no answer."""
    keyset = keyset_from_base_key(f"suspended-{key}")
    response = await aread_flow_run_input(keyset["response"], flow_run_id=flow_run_id)
    if not isinstance(response, dict):
        return None
    schema = await aread_flow_run_input(keyset["schema"], flow_run_id=flow_run_id)
    return (schema if isinstance(schema, dict) else None), response


async def resumed_answer(
    flow_run_id: UUID,
    key: str,
    form: type[RunInput],
    read: Callable[[Any], dict[K, D]],
    label_of: Callable[[K], str] = str,
) -> tuple[dict[K, D], dict[K, str]] | None:
    """On the rerun of a suspended run, the reviewer's answer saved under `key`, read against
    the form built now (`read_saved_answer`: decisions, and why the rest is undecided); None
    when Prefect holds no answer (the caller then asks Prefect, as on a first run)."""
    saved = await saved_answer(flow_run_id, key)
    if saved is None:
        return None
    return read_saved_answer(form, read, *saved, label_of=label_of)


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


def answered_before(run: FlowRun | None, key: str = REVIEW_KEY) -> bool:
    """The run was suspended for the review under `key` and has been resumed: this is its
    rerun. Prefect keeps every pause key that fired in the run's policy (`pause_keys`), so a
    run with two reviews (drafts `REVIEW_KEY`, adaptations `ADAPTATION_REVIEW_KEY`) knows, on
    each rerun, which answers it already has: a fired key's suspension is rejected and the
    input saved under it (`suspended-<key>-response`) is read instead."""
    return run is not None and key in (run.empirical_policy.pause_keys or set())


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
        f"from its draft's result link at EvoLink while it is usable ({usable} h after the "
        "draft); a later answer's chosen drafts are uploaded from storage to EvoLink's Files "
        "API for their finals (nothing is drafted again; the uploads are deleted after the run)."
    )
