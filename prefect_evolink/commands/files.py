"""`prefect-evolink files`: this project's uploads to EvoLink's Files API, listed and pruned."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from prefect_evolink.commands.outcome import (
    EXIT_OK,
    fail,
)
from prefect_evolink.commands.stored import storage_arguments, stored_runs


def add_parser(commands: Any) -> None:
    files_parser = commands.add_parser(
        "files",
        help="this project's uploads to EvoLink's Files API: list, prune",
        description="The images this project uploaded to EvoLink's Files API (local reference "
        "files and stored drafts on local storage), from their records in storage "
        "(_uploads/). Uploads count against EvoLink's quota of 100 files until deleted or "
        "expired (72 h).",
    )
    actions = files_parser.add_subparsers(dest="files_command", required=True)
    listing = actions.add_parser(
        "list", help="every recorded upload: file id, expiry, source, the jobs that used it"
    )
    storage_arguments(listing)
    prune = actions.add_parser(
        "prune",
        help="delete the uploads no job needs (their jobs are stored, or they expired)",
        description="Delete, at the Files API, the recorded uploads whose jobs are all stored "
        "or ended, or that expired, and forget their records. An upload whose job may still "
        "be running at EvoLink is kept unless --all.",
    )
    prune.add_argument(
        "--all",
        action="store_true",
        dest="everything",
        help="delete every recorded upload of this Files API endpoint, needed or not "
        "(default: off)",
    )
    storage_arguments(prune)


def run(args: argparse.Namespace) -> int:
    """`files list | prune`: this project's uploads, from their records (and the Files API)."""
    from evolink.records import RecordStore
    from prefect_evolink.blocks.credentials import resolve_credentials
    from prefect_evolink.tasks.image_delivery import prune_uploads

    async def act() -> int:
        storage, _ = await stored_runs(args, quiet=True)
        store = RecordStore(storage)
        if args.files_command == "list":
            for line in await upload_lines(store):
                print(line)
            return EXIT_OK
        credentials = await resolve_credentials(args.credentials_block)
        deleted, kept = await prune_uploads(storage, credentials, everything=args.everything)
        for record in deleted:
            print(f"  deleted {record.file_id}  {record.source}")
        for record, why in kept:
            print(f"  kept {record.file_id}  {record.source}: {why}")
        print(f"{len(deleted)} upload(s) deleted, {len(kept)} kept")
        return EXIT_OK

    try:
        return asyncio.run(act())
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return fail(error, args)


async def upload_lines(store: Any, campaign: str | None = None) -> list[str]:
    """The recorded uploads (of one campaign, or all), a line each: what `files list` and
    `report` print, so an upload a crash left behind is never out of sight."""
    from prefect_evolink.tasks.image_delivery import upload_verdict

    problems: list[str] = []
    records = [
        record
        for record in await store.uploads(problems)
        if campaign is None or record.campaign == campaign
    ]
    lines = [f"{len(records)} upload(s) recorded"]
    for record in records:
        why = await upload_verdict(store, record)
        expires = record.expires_at.isoformat() if record.expires_at else "72 h after"
        state = "expired" if record.expired() else f"expires {expires}"
        lines.append(
            f"  {record.file_id}  {state}  {record.source}  "
            f"campaign={record.campaign or '-'}  jobs={len(record.used_by)}  "
            f"{'needed: ' + why if why else 'prunable'}  {record.files_base_url}"
        )
    lines.extend(f"  unreadable record: {problem}" for problem in problems)
    return lines
