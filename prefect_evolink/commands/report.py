"""`prefect-evolink report CAMPAIGN`: a campaign's manifest rebuilt from its job records."""

from __future__ import annotations

import argparse
import asyncio
import sys

from prefect_evolink.commands.outcome import (
    ENV_API_KEY,
    EXIT_INVALID,
    EXIT_OK,
    PROG,
    fail,
)
from prefect_evolink.commands.stored import stored_runs


def run(args: argparse.Namespace) -> int:
    """`report CAMPAIGN`: the manifest rebuilt from the job records, stored, and its cost."""
    from evolink.records import RecordStore
    from prefect_evolink.commands.files import upload_lines
    from prefect_evolink.tasks.campaign_cost import cost_summary
    from prefect_evolink.tasks.recovery import manifest_key, rebuild_campaign

    async def rebuild() -> int:
        storage, credentials = await stored_runs(args)
        if credentials is None:
            print(
                f"No {ENV_API_KEY} and no --credentials-block: EvoLink is not asked; the bills "
                "of tasks without a result record stay unknown (counted at their estimates)"
            )
        rebuilt = await rebuild_campaign(args.campaign, storage, credentials)
        # Uploads to EvoLink's Files API still recorded: in use, or left by a crash (a run
        # that died after uploading, even before its first job): `files prune` frees them.
        uploads = await upload_lines(RecordStore(storage), args.campaign)
        if len(uploads) > 1:
            print("\n".join(uploads))
        if not rebuilt.found:
            where = storage.uri(manifest_key(args.campaign)).rsplit("/", 2)[0]
            print(
                f"{PROG}: no manifest and no job records of campaign {args.campaign!r} in "
                f"{where}; nothing written",
                file=sys.stderr,
            )
            return EXIT_INVALID
        print("\n".join(cost_summary(rebuilt.manifest)))
        for problem in rebuilt.problems:
            print(f"  unreadable record: {problem}")
        print(f"\nManifest rebuilt from the job records: {rebuilt.uri}")
        return EXIT_OK

    try:
        return asyncio.run(rebuild())
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return fail(error, args)
