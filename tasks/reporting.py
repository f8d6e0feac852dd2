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


def job_rows(record: JobRecord, failed: str | None = None) -> list[dict[str, Any]]:
    """One row per stored image, the job's cost split evenly over its `n` images.

    With `failed` (a paid job whose images were not all stored) the images that are missing get
    one more row carrying their share, so the rows always add up to what the job cost.
    """
    count = max(1, record.request.n, len(record.images))

    def share(value: str | None, images: int = 1) -> Decimal | None:
        return None if value is None else Decimal(value) * images / count

    def row(images: int, pixels: str, stored_at: str, sha256: str) -> dict[str, Any]:
        credits = share(record.billed_credits, images)
        return {
            "job": record.namespace,
            "task_id": record.task_id,
            "quality": record.request.quality,
            "pixels": pixels,
            "estimated_usd": usd(share(record.estimated_usd, images)),
            "billed_usd": usd(share(record.billed_usd, images)),
            "billed_credits": "unknown" if credits is None else f"{credits:.5f}",
            "stored_at": stored_at,
            "sha256": sha256,
        }

    rows = [
        row(1, f"{image.width}x{image.height}", image.uri, image.sha256[:16])
        for image in record.images
    ]
    if failed is not None:
        missing = count - len(record.images)
        rows.append(row(missing, "-", f"NOT STORED (paid, {missing} image(s)): {failed}", "-"))
    return rows


async def publish_job_report(
    record: JobRecord, *, key_prefix: str, failed: str | None = None
) -> None:
    """The job's cost table and summary; `failed` says why a paid job's images are missing."""
    await acreate_table_artifact(
        key=artifact_key(key_prefix, "cost"),
        table=job_rows(record, failed),
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
