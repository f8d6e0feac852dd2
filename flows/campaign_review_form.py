"""The Resume form of a campaign's review: what the reviewer answers, and how it is read.

Why a module of its own: the form is a model built at run time from the campaign's drafts, and
its reading turns an answer into each asset's decision; the review sheet
(`campaign_review_sheet`) shows the drafts labelled as this form's options (`image-0` …), and
the approval step (`campaign_review`) waits for the answer. Up to `REVIEW_FIELDS_MAX` assets the
form has one choice per asset (`review_input`); beyond, two pick lists
(`compact_review_input`), and the sheet says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeVar

from prefect.input import RunInput
from pydantic import Field, ValidationError, create_model

from evolink.campaign import AssetOutcome
from evolink.cost import usd
from evolink.plans import AssetPlan

REVIEW_FIELDS_MAX: Final = 40
"""Up to this many assets to review, the Resume form has one choice per asset. Beyond, it has
two searchable lists — assets to reject, drafts to use instead of the suggestion — and every
other asset gets its suggested draft: a thousand dropdowns are no form to review in."""

Decision = tuple[int | None, str]
"""A reviewer's decision on one asset: the chosen draft's index (None: no final) and why."""

K = TypeVar("K")
D = TypeVar("D")


def review_form(
    plans: list[AssetPlan],
    outcomes: dict[str, AssetOutcome],
    suggested: dict[str, int | None],
    description: str | None = None,
) -> tuple[type[RunInput], Callable[[Any], dict[str, Decision]]]:
    """The Resume form for this review and how to read its answer: one choice per asset
    (`review_input`) up to `REVIEW_FIELDS_MAX` assets, the two lists of `compact_review_input`
    beyond."""
    if many_to_review(plans, outcomes, suggested):
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
        if drafts is None or not reviewable(plan, outcomes, suggested):
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
    return form_model("CampaignReview", fields, description), names


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
        if not reviewable(plan, outcomes, suggested):
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

    return form_model("CampaignReviewMany", fields, description), read


def reviewable(
    plan: AssetPlan, outcomes: dict[str, AssetOutcome], suggested: dict[str, int | None]
) -> bool:
    """An asset in this review: it has drafts and a suggestion (or a suggested rejection)."""
    return outcomes[plan.asset.id].drafts is not None and plan.asset.id in suggested


def many_to_review(
    plans: list[AssetPlan], outcomes: dict[str, AssetOutcome], suggested: dict[str, int | None]
) -> bool:
    """More assets to review than one field each would make a usable form."""
    return sum(reviewable(p, outcomes, suggested) for p in plans) > REVIEW_FIELDS_MAX


def form_model(name: str, fields: dict[str, Any], description: str | None) -> type[RunInput]:
    """A Resume form (RunInput model) of `fields`, with `description` shown above them (the
    drafts' or the adaptations' thumbnails; see `review_input` for why without field values)."""
    form: type[RunInput] = create_model(name, __base__=RunInput, **fields)
    if description is not None:
        form = form.with_initial_data(description=description)
    return form


def asked_labels(schema: Mapping[str, Any]) -> set[str]:
    """What a review form asked about, read from its JSON schema (what Prefect saves with a
    suspended run's form): the titles of its fields, one per asset or adaptation, or, in the
    form for many, the options of its `reject` list (asset ids, adaptation labels)."""
    properties: Mapping[str, Any] = schema.get("properties") or {}
    listed = ((properties.get("reject") or {}).get("items") or {}).get("enum")
    if listed:
        return {str(option) for option in listed}
    return {str(p["title"]) for p in properties.values() if isinstance(p, dict) and "title" in p}


def read_saved_answer(
    form: type[RunInput],
    read: Callable[[Any], dict[K, D]],
    schema: Mapping[str, Any] | None,
    response: Mapping[str, Any],
    label_of: Callable[[K], str] = str,
) -> tuple[dict[K, D], dict[K, str]]:
    """Decisions from an answer given to an earlier form of a review, for what `form` asks
    about now; and, for each item of `form` the answer does not decide, why not.

    A deployed run reads its reviewer's answer on the rerun after the resume, and builds its
    form again from the brief and the jobs of then: the brief may have changed while the run
    was suspended, or an adaptation failed on the rerun. Prefect would validate the saved
    answer against the new form and fail the run on any difference, and would give an item the
    reviewer never saw its field's default — for a draft, the suggestion: a final nobody
    approved. Here an answer about an item no longer asked about is ignored, and an item the
    reviewer was not asked about, or whose answer names a draft it no longer has, is decided by
    nobody (`AssetStatus.NOT_REVIEWED`: no final). `label_of` names an item as the form does
    (its field title, or its option in the `reject` list): an asset id, an adaptation's label.
    """
    asked_then = asked_labels(schema) if schema else None
    titles = {name: str(field.title) for name, field in form.model_fields.items()}
    undecided: dict[str, str] = {}
    data: dict[str, Any] = {k: v for k, v in response.items() if k in form.model_fields}
    try:
        answer = form.model_validate(data)
    except ValidationError as error:
        dropped: dict[str, set[int]] = {}
        for problem in error.errors():
            where = problem["loc"]
            name = str(where[0])
            if len(where) == 1 and name in titles:  # one item's choice is not an option now
                undecided[titles[name]] = (
                    f"the reviewer's answer {data.get(name)!r} is no longer one of its "
                    "options: not reviewed"
                )
                data.pop(name, None)
            elif len(where) == 2 and isinstance(where[1], int):  # an entry of a pick list
                dropped.setdefault(name, set()).add(where[1])
            else:
                raise
        for name, entries in dropped.items():
            kept = []
            for index, entry in enumerate(data[name]):
                if index not in entries:
                    kept.append(entry)
                elif name == "use_instead":  # a pick of a draft that is no longer there
                    asset = str(entry).partition(": image-")[0]
                    undecided[asset] = (
                        f"the reviewer picked {entry!r}, no longer one of its drafts: not reviewed"
                    )
            data[name] = kept
        answer = form.model_validate(data)
    decisions = read(answer)
    if asked_then is not None:
        for item in decisions:
            if label_of(item) not in asked_then:
                undecided.setdefault(label_of(item), "added after the review: not reviewed")
    left = {item: undecided[label_of(item)] for item in decisions if label_of(item) in undecided}
    return {k: d for k, d in decisions.items() if k not in left}, left
