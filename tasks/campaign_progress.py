"""A campaign run's own record as it goes: the `<campaign>-progress` artifact while it works,
and the manifest it saves when it ends.

Both are written by the run about itself, not by a reviewer's or a manager's view of it (those
are `campaign_finals`, `campaign_cost` and the review sheet): progress is advanced after every
asset's stage, the manifest stored — as a step, with retries — however the run ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final
from uuid import UUID

from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

from evolink.campaign import CampaignManifest
from evolink.records import RecordStore
from prefect_evolink.blocks import AssetStorage
from prefect_evolink.tasks.reporting import artifact_key
from prefect_evolink.tasks.steps import evolink_step

logger = logging.getLogger(__name__)

PROGRESS_STEP_PERCENT: Final = 1.0
"""The progress artifact is rewritten when the share done has grown by this many points (and
at 100 %), not after every job: a 1,000-asset campaign makes 2,000 jobs, and each update is
an API write. The artifact shows whole percents anyway."""


@evolink_step("evolink-save-manifest", "save manifest {manifest.campaign}")
async def save_manifest(manifest: CampaignManifest, storage: AssetStorage) -> str:
    """Store a campaign's manifest at `<campaign>/manifest.json`, retried like any step.

    The run calls it when it ends — completed, failed or cancelled — so a run that paid for
    anything always leaves its manifest (a killed run's is rebuilt by `prefect-evolink report`).

    Args:
        manifest: The campaign manifest to store.
        storage: Where the campaign's images are; the manifest goes beside them.

    Returns:
        The manifest's storage URI.

    Raises:
        ClientError: S3 refused the write for good (no such bucket, access denied); other S3
            and connection errors are retried.

    Example:
        A Prefect task: call it inside a flow:
        ```python
        uri = await save_manifest(manifest, storage)
        ```
    """
    return await RecordStore(storage).put_manifest(manifest)


class Progress:
    """A progress artifact advanced as draft and final jobs finish (see `PROGRESS_STEP_PERCENT`)."""

    def __init__(self, artifact_id: UUID, total_steps: int):
        self._id = artifact_id
        self._total = max(1, total_steps)
        self._done = 0
        self._shown = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, campaign: str, total_steps: int) -> Progress:
        artifact_id = await acreate_progress_artifact(
            progress=0.0,
            key=artifact_key(campaign, "progress"),
            description=f"Draft and final jobs of campaign {campaign} finished so far",
        )
        return cls(artifact_id, total_steps)

    async def advance(self, steps: int = 1) -> None:
        """One more job done. A failed update is logged, never raised: progress is a view."""
        async with self._lock:
            self._done = min(self._total, self._done + steps)
            percent = 100.0 * self._done / self._total
            if percent < 100.0 and percent - self._shown < PROGRESS_STEP_PERCENT:
                return
            self._shown = percent
            try:
                await aupdate_progress_artifact(self._id, progress=percent)
            except Exception as error:  # noqa: BLE001
                logger.warning("Progress artifact not updated: %s", error)
