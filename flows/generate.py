"""Flow: one GPT Image 2 request, from validated input to images safely stored, with its cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from prefect import get_run_logger

from evolink.campaign import submitted_job_record
from evolink.cost import estimate, usd
from evolink.errors import PaidJobNotStoredError, SubmitRecordNotStoredError
from evolink.jobs import JobRecord, job_key
from evolink.models import ImageRequest
from evolink.polling import DEFAULT_DEADLINE_SECONDS
from evolink.records import RecordStore
from prefect_evolink.blocks import (
    EvoLinkCredentials,
    EvoLinkSpendCap,
    LocalAssetStorage,
    S3AssetStorage,
    safe_key,
)
from prefect_evolink.flows.run_blocks import RunBlocks
from prefect_evolink.tasks.dispatch import sync_or_async_flow
from prefect_evolink.tasks.job import run_image_job
from prefect_evolink.tasks.reporting import publish_job_report
from prefect_evolink.tasks.spend import reserve_spend


@sync_or_async_flow(name="evolink-generate-image", log_prints=True)
async def generate_image(
    request: ImageRequest,
    job_name: str = "adhoc",
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    resubmits: int = 1,
    credentials: EvoLinkCredentials | None = None,
    storage: LocalAssetStorage | S3AssetStorage | None = None,
    spend_cap: EvoLinkSpendCap | None = None,
) -> JobRecord:
    """Generate the images of one GPT Image 2 request, store them, and report their cost.

    `job_name` names the logical job: running the same request under the same name again
    returns the stored result instead of paying again; use a new name for new variants. The
    run publishes a cost table and a summary artifact (`evolink-<job_name>-cost`, `-summary`),
    also when a paid job's images could not all be stored, so no bill goes unseen.

    Blocks: the form offers the saved blocks of each kind; a deployment's defaults reference
    saved blocks. Without credentials, `EVOLINK_API_KEY` is used; without storage, the local
    `assets/` directory (`EVOLINK_ASSETS_DIR`); without a spend cap, none (`RunBlocks`).

    Args:
        request: The GPT Image 2 request: prompt, size ('auto', a ratio such as '16:9', or
            'WxH'), resolution, quality (low/medium/high), n images, optional reference images.
        job_name: Names the logical job. The same request under the same name reuses the job
            already paid for; use a new name for a new variant.
        poll_deadline_seconds: Most seconds to wait for EvoLink to finish the job before the
            run fails (a rerun reattaches to the same job and pays nothing new).
        resubmits: How many times a job that failed with a code a new submission may fix is
            submitted again, each a separately keyed (and billed) job; 0 never resubmits.
        credentials: An EvoLink Credentials block (the form offers the saved ones); without
            it, `EVOLINK_API_KEY` is used.
        storage: A Local or S3 asset storage block (the form offers the saved ones); without
            it, images go to local `assets/`.
        spend_cap: An EvoLink Spend Cap block (the form offers the saved ones): before the job
            is sent, the period's spend plus its estimate must fit the cap (an estimate check
            with reservations); without it, no cap.

    Returns:
        The job's record: task id, estimated and billed cost, and every stored image (its
        URI, sha256, size and dimensions).

    Raises:
        MissingCredentialsError: No credentials block and no `EVOLINK_API_KEY`.
        SpendCapExceededError: The period's spend and the job's estimate are over the spend
            cap; nothing was sent.
        TaskFailedError: EvoLink failed the task (failed tasks are not billed).
        PollDeadlineExceeded: The job did not finish within `poll_deadline_seconds`.
        PaidJobNotStoredError: The job was billed but not every image could be stored; the
            cost artifacts still show the bill, and a rerun stores what is missing for free.
        SubmitRecordNotStoredError: EvoLink created the task but its submit record could not
            be stored; the cost artifacts show the job (task id, bill unknown).

    Example:
        ```python
        import asyncio
        from prefect_evolink import (
            EvoLinkCredentials,
            ImageRequest,
            S3AssetStorage,
            generate_image,
        )

        record = asyncio.run(
            generate_image(
                ImageRequest(prompt="a ceramic mug of cocoa", size="1:1", quality="low"),
                job_name="mug-cocoa",
                credentials=EvoLinkCredentials.load("evolink"),
                storage=S3AssetStorage.load("evolink-assets"),
            )
        )
        print(record.images[0].uri, record.billed_usd)
        ```
    """
    blocks = await RunBlocks.resolve(credentials, storage, spend_cap)
    return await run_and_report(
        request,
        blocks,
        namespace=f"adhoc/{job_name}",
        dest_prefix=safe_key("adhoc", job_name),
        artifact_prefix=f"evolink-{safe_key(job_name)}",
        options=JobOptions(poll_deadline_seconds, resubmits),
    )


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How long one job may take and how often it may be sent again: the knobs every
    single-request flow passes down unchanged, as one value."""

    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    """Most seconds to wait for EvoLink to finish the job (`PollSchedule`)."""
    resubmits: int = 1
    """How many times a job that failed with a code a new submission may fix is sent again."""


DEFAULT_JOB_OPTIONS: Final = JobOptions()


async def run_and_report(
    request: ImageRequest,
    blocks: RunBlocks,
    *,
    namespace: str,
    dest_prefix: str,
    artifact_prefix: str,
    options: JobOptions = DEFAULT_JOB_OPTIONS,
    identity: dict[str, Any] | None = None,
) -> JobRecord:
    """Blocks → one job → cost artifacts: the body every single-request flow shares.

    Kept outside any one flow so the ad-hoc flow and the event-triggered product flow differ
    only in how they name the job (its namespace decides when a rerun reattaches) and where
    the images go; the pipeline itself cannot drift between them. The blocks were resolved
    once by the caller (`RunBlocks.resolve`).

    With a spend cap the job's estimate is checked and reserved before anything is sent
    (`reserve_spend`), and the reservation released when the job ends — unless the job was
    sent before (its submit record exists): then it is paid for or on its way, and the run
    only reattaches.
    """
    credentials, storage, cap = blocks.credentials, blocks.storage, blocks.spend_cap
    if cap is not None:
        first = job_key(namespace, request, identity=identity, endpoint=credentials.endpoint_scope)
        if await RecordStore(storage).has_submit(first):
            cap = None  # sent before: reattaching costs nothing new
    reservation = await reserve_spend(cap, storage, estimate(request).usd, namespace)
    try:
        record = await run_image_job(
            request,
            namespace=namespace,
            dest_prefix=dest_prefix,
            credentials=credentials,
            storage=storage,
            schedule=credentials.poll_schedule(options.poll_deadline_seconds),
            resubmits=options.resubmits,
            identity=identity,
        )
    except PaidJobNotStoredError as error:  # the run fails, but its bill is still shown
        await publish_job_report(error.record, key_prefix=artifact_prefix, failed=str(error))
        raise
    except SubmitRecordNotStoredError as error:  # created: shown, bill unknown, with its id
        record = submitted_job_record(error.record)
        await publish_job_report(record, key_prefix=artifact_prefix, failed=str(error))
        raise
    finally:
        await reservation.release()
    await publish_job_report(record, key_prefix=artifact_prefix)
    get_run_logger().info(
        "Done: %d image(s), estimated %s, billed %s",
        len(record.images),
        usd(record.estimated_usd),
        usd(record.billed_usd),
    )
    return record
