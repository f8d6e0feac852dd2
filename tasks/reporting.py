"""Cost and result artifacts, so a run's spend and images are visible in the Prefect UI."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from evolink.jobs import JobRecord

_ARTIFACT_KEY_CHARS = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    joined = "-".join(parts).lower()
    return _ARTIFACT_KEY_CHARS.sub("-", joined).strip("-")[:120] or "evolink"


def usd(value: str | Decimal | None) -> str:
    return "unknown" if value is None else f"${Decimal(value):.6f}"


def job_rows(record: JobRecord) -> list[dict[str, Any]]:
    """One row per stored image; the job's cost is split evenly over its `n` images."""
    count = max(1, len(record.images))

    def share(value: str | None) -> Decimal | None:
        return None if value is None else Decimal(value) / count

    return [
        {
            "job": record.namespace,
            "task_id": record.task_id,
            "quality": record.request.quality,
            "pixels": f"{image.width}x{image.height}",
            "estimated_usd": usd(share(record.estimated_usd)),
            "billed_usd": usd(share(record.billed_usd)),
            "billed_credits": "unknown"
            if record.billed_credits is None
            else f"{Decimal(record.billed_credits) / count:.5f}",
            "stored_at": image.uri,
            "sha256": image.sha256[:16],
        }
        for image in record.images
    ]


async def publish_job_report(record: JobRecord, *, key_prefix: str) -> None:
    await acreate_table_artifact(
        key=artifact_key(key_prefix, "cost"),
        table=job_rows(record),
        description=f"Cost of job {record.namespace} (estimated before, billed after)",
    )
    lines = [
        f"# {record.namespace}",
        "",
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
