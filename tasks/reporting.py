"""Cost and result artifacts, so a run's spend and images are visible in the Prefect UI.

The rows and the money in them come from `evolink.campaign` and `evolink.cost`; this module
only publishes them.
"""

from __future__ import annotations

import re

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from evolink.campaign import image_cost_rows
from evolink.cost import usd
from evolink.jobs import JobRecord

_ARTIFACT_KEY_CHARS = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    joined = "-".join(parts).lower()
    return _ARTIFACT_KEY_CHARS.sub("-", joined).strip("-")[:120] or "evolink"


async def publish_job_report(
    record: JobRecord, *, key_prefix: str, failed: str | None = None
) -> None:
    """The job's cost table and summary; `failed` says why a paid job's images are missing."""
    await acreate_table_artifact(
        key=artifact_key(key_prefix, "cost"),
        table=image_cost_rows(record, failed),
        description=f"Cost of job {record.namespace} (estimated before, billed after)",
    )
    lines = [
        f"# {record.namespace}",
        "",
        *([f"**FAILED after it was paid:** {failed}", ""] if failed else []),
        f"- task: `{record.task_id}`",
        f"- estimated: **{usd(record.estimated_usd)}** ({record.estimated_credits} credits)",
        f"- billed: **{usd(record.billed_usd)}** "
        f"({record.billed_credits or 'unknown'} credits, from `{record.billed_source}`)",
        "",
        "| image | size | stored at |",
        "|---|---|---|",
        *(
            f"| {image.index} | {image.width}x{image.height} | `{image.uri}` |"
            for image in record.images
        ),
    ]
    await acreate_markdown_artifact(
        key=artifact_key(key_prefix, "summary"),
        markdown="\n".join(lines),
        description=f"Images and cost of {record.namespace}",
    )
