"""Flow: one GPT Image 2 request, from validated input to images safely stored, with its cost."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from evolink.campaign import submitted_job_record
from evolink.cost import estimate, usd
from evolink.errors import PaidJobNotStoredError, SubmitRecordNotStoredError
from evolink.jobs import JobRecord, job_key
from evolink.models import ImageRequest
from evolink.polling import DEFAULT_DEADLINE_SECONDS
from evolink.records import RecordStore
from prefect_evolink.blocks import (
    AssetStorage,
    EvoLinkCredentials,
    EvoLinkSpendCap,
    LocalAssetStorage,
    S3AssetStorage,
    safe_key,
)
from prefect_evolink.flows.parameters import resolve_blocks
from prefect_evolink.tasks.job import run_image_job
from prefect_evolink.tasks.reporting import publish_job_report
from prefect_evolink.tasks.spend import reserve_spend, resolve_spend_cap


@flow(name="evolink-generate-image", log_prints=True)
async def generate_image(
    request: ImageRequest,
    job_name: str = "adhoc",
    credentials_block: str | None = None,
    storage_block: str | None = None,
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    resubmits: int = 1,
    credentials: EvoLinkCredentials | None = None,
    storage: LocalAssetStorage | S3AssetStorage | None = None,
    spend_cap_block: str | None = None,
    spend_cap: EvoLinkSpendCap | None = None,
) -> JobRecord:
    """Generate the images of one GPT Image 2 request, store them, and report their cost.

    `job_name` names the logical job: running the same request under the same name again
    returns the stored result instead of paying again; use a new name for new variants. The
    run publishes a cost table and a summary artifact (`evolink-<job_name>-cost`, `-summary`),
    also when a paid job's images could not all be stored, so no bill goes unseen.

    Blocks: a block object wins over a block name. Credentials come from `credentials`, else
    the `EvoLinkCredentials` block named `credentials_block`, else `EVOLINK_API_KEY`; storage
    from `storage`, else the storage block named `storage_block`, else the local `assets/`
    directory (`EVOLINK_ASSETS_DIR`).

    Args:
        request: The GPT Image 2 request: prompt, size ('auto', a ratio such as '16:9', or
            'WxH'), resolution, quality (low/medium/high), n images, optional reference images.
        job_name: Names the logical job. The same request under the same name reuses the job
            already paid for; use a new name for a new variant.
        credentials_block: Name of a saved EvoLink Credentials block. Ignored when
            `credentials` is given; with neither, `EVOLINK_API_KEY` is used.
        storage_block: Name of a saved storage block (`<name>` or `<block-type-slug>/<name>`).
            Ignored when `storage` is given; with neither, images go to local `assets/`.
        poll_deadline_seconds: Most seconds to wait for EvoLink to finish the job before the
            run fails (a rerun reattaches to the same job and pays nothing new).
        resubmits: How many times a job that failed with a code a new submission may fix is
            submitted again, each a separately keyed (and billed) job; 0 never resubmits.
        credentials: An EvoLink Credentials block (the form offers the saved ones). Wins over
            `credentials_block`.
        storage: A Local or S3 asset storage block (the form offers the saved ones). Wins over
            `storage_block`.
        spend_cap_block: Name of a saved EvoLink Spend Cap block: before the job is sent, the
            period's spend plus its estimate must fit the cap (an estimate check with
            reservations). Ignored when `spend_cap` is given; with neither, no cap.
        spend_cap: An EvoLink Spend Cap block (the form offers the saved ones). Wins over
            `spend_cap_block`.

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
        from prefect_evolink import EvoLinkCredentials, ImageRequest, generate_image

        record = asyncio.run(
            generate_image(
                ImageRequest(prompt="a ceramic mug of cocoa", size="1:1", quality="low"),
                job_name="mug-cocoa",
                credentials=EvoLinkCredentials.load("evolink"),
                storage_block="evolink-assets",
            )
        )
        print(record.images[0].uri, record.billed_usd)
        ```
    """
    return await run_and_report(
        request,
        namespace=f"adhoc/{job_name}",
        dest_prefix=safe_key("adhoc", job_name),
        artifact_prefix=f"evolink-{safe_key(job_name)}",
        credentials_block=credentials_block,
        storage_block=storage_block,
        credentials=credentials,
        storage=storage,
        poll_deadline_seconds=poll_deadline_seconds,
        resubmits=resubmits,
        spend_cap_block=spend_cap_block,
        spend_cap=spend_cap,
    )


async def run_and_report(
    request: ImageRequest,
    *,
    namespace: str,
    dest_prefix: str,
    artifact_prefix: str,
    credentials_block: str | None,
    storage_block: str | None,
    credentials: EvoLinkCredentials | None = None,
    storage: AssetStorage | None = None,
    poll_deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    resubmits: int = 1,
    identity: dict[str, Any] | None = None,
    spend_cap_block: str | None = None,
    spend_cap: EvoLinkSpendCap | None = None,
) -> JobRecord:
    """Blocks → one job → cost artifacts: the body every single-request flow shares.

    Kept outside any one flow so the ad-hoc flow and the event-triggered product flow differ
    only in how they name the job (its namespace decides when a rerun reattaches) and where
    the images go; the pipeline itself cannot drift between them. Blocks are chosen by
    `resolve_blocks`: a block object wins over a block name.

    With a spend cap the job's estimate is checked and reserved before anything is sent
    (`reserve_spend`), and the reservation released when the job ends — unless the job was
    sent before (its submit record exists): then it is paid for or on its way, and the run
    only reattaches.
    """
    credentials, storage = await resolve_blocks(
        credentials=credentials,
        credentials_block=credentials_block,
        storage=storage,
        storage_block=storage_block,
    )
    cap = await resolve_spend_cap(spend_cap, spend_cap_block)
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
            schedule=credentials.poll_schedule(poll_deadline_seconds),
            resubmits=resubmits,
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
