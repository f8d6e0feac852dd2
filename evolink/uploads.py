"""What the project uploaded to EvoLink's Files API: one record per image and endpoint.

An image (a local reference file, a stored draft or final) that EvoLink can reach by no other
URL is uploaded (`prefect_evolink.tasks.image_delivery`). The upload is recorded under
`_uploads/<files scope>/<sha256>.json` (`evolink.layout`) through the record store, before it is
used: keyed by the image's sha256 and the Files API endpoint, so a rerun reuses it while it is
valid (`REUSE_MARGIN` left of EvoLink's 72 h), and a crash leaves nothing unaccounted — the
record names every job key that was sent with its URL (`used_by`), which is how cleanup knows
the upload is no longer needed (every such job is stored or ended) and how `report` and
`prefect-evolink files list` show it.

Prefect-free and I/O-free.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Final

from pydantic import BaseModel, Field

from evolink.endpoint import DEFAULT_FILES_BASE_URL, normalize_base_url

REUSE_MARGIN: Final = timedelta(hours=1)
"""An upload is reused only while at least this much of its life is left (EvoLink fetches a
reference when the task starts; the hour covers a queue and the retries)."""
DEFAULT_FILES_SCOPE: Final = "evolink"


def files_scope(files_base_url: str) -> str:
    """The key segment of a Files API endpoint: `evolink` for EvoLink's own host, else 16 hex
    digits of the normalized URL's sha256 (an upload is only good at the host that holds it)."""
    normalized = normalize_base_url(files_base_url)
    if normalized == normalize_base_url(DEFAULT_FILES_BASE_URL):
        return DEFAULT_FILES_SCOPE
    return hashlib.sha256(normalized.encode()).hexdigest()[:16]


class UploadRecord(BaseModel):
    """One image uploaded to the Files API (`_uploads/<files scope>/<sha256>.json`)."""

    sha256: str
    file_id: str
    file_url: str
    expires_at: datetime | None = None
    """EvoLink's expiry (72 h after the upload); None when it did not say."""
    files_base_url: str
    scope: str
    uploaded_at: datetime
    size_bytes: int | None = None
    source: str = ""
    """What was uploaded: `file:<name>`, `storage:<key>` (a stored draft or final)."""
    campaign: str | None = None
    """The campaign of the run that uploaded it (None for other runs)."""
    used_by: list[str] = Field(default_factory=list)
    """The job keys sent with `file_url` (a job is recorded here before its create call)."""
    simulator: bool = False

    def usable(self, now: datetime | None = None, margin: timedelta = REUSE_MARGIN) -> bool:
        """Whether it may be sent in a new job: at least `margin` left (an upload whose expiry
        EvoLink did not say is taken for 72 h from its upload)."""
        now = now or datetime.now(UTC)
        expires = self.expires_at or self.uploaded_at + timedelta(hours=72)
        return expires - now >= margin

    def expired(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        expires = self.expires_at or self.uploaded_at + timedelta(hours=72)
        return now >= expires
