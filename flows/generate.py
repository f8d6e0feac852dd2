"""Flow: one GPT Image 2 request, from validated input to images safely stored, with its cost."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from blocks.credentials import resolve_credentials
from blocks.storage import load_storage, safe_key
from evolink.jobs import JobRecord, PaidJobNotStoredError
from evolink.models import ImageRequest
from evolink.polling import DEFAULT_DEADLINE_SECONDS
from tasks.job import run_image_job
from tasks.reporting import publish_job_report


@flow(name="evolink-generate-image", log_prints=True)
async def generate_image(
    request: ImageRequest,
    job_name: str = "adhoc",
    credentials_block: str | None = None,
    storage_block: str | None = None,
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    resubmits: int = 1,
) -> JobRecord:
    """Generate the images of one request and store them.

    `job_name` names the logical job: running the same request under the same name again
    returns the stored result instead of paying again; use a new name for new variants.
    Credentials come from the named `EvoLinkCredentials` block, else `EVOLINK_API_KEY`;
    storage from the named storage block, else the local `assets/` directory.
    """
    return await run_and_report(
        request,
        namespace=f"adhoc/{job_name}",
        dest_prefix=safe_key("adhoc", job_name),
        artifact_prefix=f"evolink-{safe_key(job_name)}",
        credentials_block=credentials_block,
        storage_block=storage_block,
        poll_deadline_seconds=poll_deadline_seconds,
        resubmits=resubmits,
    )


async def run_and_report(
    request: ImageRequest,
    *,
    namespace: str,
    dest_prefix: str,
    artifact_prefix: str,
    credentials_block: str | None,
    storage_block: str | None,
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    resubmits: int = 1,
    identity: dict[str, Any] | None = None,
) -> JobRecord:
    """Blocks → one job → cost artifacts: the body every single-request flow shares.

    Kept outside any one flow so the ad-hoc flow and the event-triggered product flow differ
    only in how they name the job (its namespace decides when a rerun reattaches) and where
    the images go; the pipeline itself cannot drift between them.
    """
    credentials = await resolve_credentials(credentials_block)
    storage = load_storage(storage_block)
    try:
        record = await run_image_job(
            request,
            namespace=namespace,
            dest_prefix=dest_prefix,
            credentials=credentials,
            storage=storage,
            schedule=credentials.poll_schedule(poll_deadline_seconds),
            resubmits=resubmits,
            identity=identity,
        )
    except PaidJobNotStoredError as error:  # the run fails, but its bill is still shown
        await publish_job_report(error.record, key_prefix=artifact_prefix, failed=str(error))
        raise
    await publish_job_report(record, key_prefix=artifact_prefix)
    get_run_logger().info(
        "Done: %d image(s), estimated $%s, billed %s",
        len(record.images),
        record.estimated_usd,
        f"${record.billed_usd}" if record.billed_usd is not None else "unknown",
    )
    return record
