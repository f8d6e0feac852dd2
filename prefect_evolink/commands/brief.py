"""`prefect-evolink brief`: check a brief and put it into the storage block (`brief put`), where
deployed runs read it (`storage:briefs/<name>.yaml`); print the example brief (`brief example`)."""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from evolink.brief import load_brief
from evolink.campaign import budget_refusal
from evolink.errors import (
    BriefError,
    BudgetExceededError,
)
from evolink.models import MASK_EXTENSIONS, REFERENCE_EXTENSIONS
from evolink.plans import check_plans
from prefect_evolink.commands.outcome import (
    EXIT_INVALID,
    EXIT_OK,
    PROG,
    fail,
)


def deployments_storage_block() -> str:
    """The storage block the deployments use by default (`definitions.blocks.storage` of the
    packaged prefect.yaml), read without importing Prefect."""
    config = yaml.safe_load((files("prefect_evolink.deployments") / "prefect.yaml").read_text())
    return str(((config.get("definitions") or {}).get("blocks") or {}).get("storage") or "")


def add_parser(commands: Any) -> None:
    brief = commands.add_parser(
        "brief",
        help="campaign briefs for deployed runs: put one into the storage block",
        description="Deployed campaign runs read their brief from the storage block "
        "(`brief: storage:briefs/<name>.yaml` in prefect.yaml), so a worker on any machine "
        "finds it. `brief put` checks a brief and puts it there; `brief example` prints the "
        "example brief.",
    )
    actions = brief.add_subparsers(dest="brief_command", required=True)
    put = actions.add_parser(
        "put",
        help="check a brief and put it into the storage block",
        description="Check the brief as `campaign` does (its rules, reference formats, the "
        "estimate against its budget; exit 2 or 3 when it fails, nothing is written), then "
        "store the file as it is under KEY in the storage block and print its `storage:` "
        "location, which a deployment's `brief` parameter takes. A brief read from storage has "
        "no folder: its reference images must be storage:, s3:// or https:// references.",
    )
    put.add_argument("path", type=Path, help="the brief file (YAML, or JSON)")
    put.add_argument(
        "--key", default=None, help="where in the storage (default briefs/<the file's name>)"
    )
    where = put.add_mutually_exclusive_group()
    default_block = deployments_storage_block()
    where.add_argument(
        "--storage-block",
        default=None,
        help=f"the storage block (default {default_block or 'none'}: the deployments' own, "
        "definitions.blocks in prefect.yaml)",
    )
    where.add_argument(
        "--assets-dir",
        default=None,
        help="a local storage directory instead of a block (default: none, the block)",
    )
    put.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    actions.add_parser(
        "example",
        help="print the example brief (briefs/spring-launch.yaml), e.g. to start your own",
        description="Print the example campaign brief that ships with the package: "
        "`prefect-evolink brief example > briefs/spring-launch.yaml`.",
    )


def run(args: argparse.Namespace) -> int:
    """`brief put` (check, then store in the storage block) and `brief example`."""
    if args.brief_command == "example":
        sys.stdout.write(EXAMPLE_BRIEF.read_text())
        return EXIT_OK
    key = args.key or f"briefs/{args.path.name}"
    block = None if args.assets_dir else (args.storage_block or deployments_storage_block())
    try:
        check_brief(args.path)  # BriefError: exit 2, BudgetExceededError: exit 3
        check_storable(load_brief(args.path))
        if block:
            from prefect.settings import get_current_settings

            if not get_current_settings().api.url:
                print(
                    f"{PROG}: invalid input: PREFECT_API_URL is not set; the storage block "
                    f"{block!r} is saved in your Prefect server: point PREFECT_API_URL at it",
                    file=sys.stderr,
                )
                return EXIT_INVALID
        from prefect_evolink.blocks import AssetStorage, LocalAssetStorage, load_storage

        storage: AssetStorage
        if block:
            try:
                storage = load_storage(block)
            except (ValueError, TypeError) as error:
                print(
                    f"{PROG}: invalid input: {error}; save it first, e.g. "
                    f"S3AssetStorage(bucket=..., prefix=...).save({block!r})",
                    file=sys.stderr,
                )
                return EXIT_INVALID
        else:
            storage = LocalAssetStorage(base_dir=str(Path(args.assets_dir).resolve()))
        content_type = "application/json" if key.endswith(".json") else "application/yaml"
        try:
            stored = storage.put_bytes(key, args.path.read_bytes(), content_type=content_type)
        except ValueError as error:  # a key storage refuses
            print(f"{PROG}: invalid input: --key {key!r}: {error}", file=sys.stderr)
            return EXIT_INVALID
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return fail(error, args)
    print(f"Stored {args.path} at {stored.uri}")
    print(f"brief: storage:{key}")
    return EXIT_OK


def check_storable(brief: Any) -> None:
    """A brief read from storage has no folder, so its local reference paths could never be
    found: refuse them here, naming asset and field, rather than in every run."""
    problems = [
        f"asset {asset.id!r}: {field}: {spec!r} is a local path; a brief in storage refers to "
        "images by storage:<key>, s3:// or https://"
        for asset in brief.assets
        for field, spec in [
            *((f"reference_images.{i}", ref) for i, ref in enumerate(asset.reference_images)),
            *([("mask", asset.mask)] if asset.mask else []),
        ]
        if not spec.startswith(("https://", "http://", "s3://", "storage:"))
    ]
    if problems:
        raise BriefError(problems)


EXAMPLE_BRIEF = files("prefect_evolink.briefs") / "spring-launch.yaml"
"""The example brief ships inside the package, so `demo` works from any directory."""


def check_brief(path: Path) -> None:
    """Validate the brief and its estimate against its budget without Prefect: BriefError (or
    InvalidRequestError inside it) and BudgetExceededError surface here, before any server.

    References other than URLs (files, `s3://`, `storage:`) are resolved only in the flow (they
    need the storage block); here their extensions are checked and they stand in as placeholder
    URLs, so the estimate (1,536 input tokens per reference) is the flow's.
    """
    from prefect_evolink.tasks.references import reference_format_problems

    try:
        brief = load_brief(path)
    except OSError as error:
        raise BriefError([f"{path}: cannot read the brief ({error.strerror or error})"]) from None
    problems = reference_format_problems(brief)
    references: dict[str, tuple[list[str], str | None]] = {}
    brand_kit = brief.defaults.brand.references if brief.defaults.brand else []
    brand = [
        stand_in(spec, f"brand/{index}", REFERENCE_EXTENSIONS)
        for index, spec in enumerate(brand_kit)
    ]
    for asset in brief.assets:
        urls = [
            stand_in(spec, f"{asset.id}/{index}", REFERENCE_EXTENSIONS)
            for index, spec in enumerate(asset.reference_images)
        ]
        mask = asset.mask and stand_in(asset.mask, f"{asset.id}/mask", MASK_EXTENSIONS)
        references[asset.id] = ([*urls, *brand], mask)
    try:
        plans = check_plans(brief, references, brand)
    except BriefError as error:
        raise BriefError(problems + error.problems) from None
    if problems:
        raise BriefError(problems)
    refusal = budget_refusal(brief, plans)
    if refusal:
        raise BudgetExceededError(refusal)


def stand_in(spec: str, name: str, extensions: tuple[str, ...]) -> str:
    """A URL reference as it is; anything else, or a URL whose extension was already refused
    (reported once, under `reference_images` or `mask`), as a placeholder PNG URL."""
    from prefect_evolink.tasks.references import format_problem

    if spec.startswith(("https://", "http://")) and not format_problem(spec, extensions):
        return spec
    return f"https://references.invalid/{name}.png"
