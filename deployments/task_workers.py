"""Catalogue scale: long-lived task workers that make product images as background tasks.

    prefect-evolink serve-products [--limit 25] [--listen]

**Why.** The deployment `product-asset-on-request` turns every `marketing.asset.requested`
event into a flow run, and a process worker starts a new Python process for each: importing
Prefect and the flow costs ~1.3 s of CPU before any work, so a catalogue sync of 1,000 products
spends 20+ CPU-minutes starting processes. A task worker is started once and runs many
`product_image` background tasks at once in one event loop (each mostly waits on EvoLink), so a
product costs one task run, not one process.

**How it scales.** Run as many `serve-products` processes as you like, on any machines that
reach the Prefect API: the server hands each scheduled task run to exactly one of them (its
task-run subscription is a queue, not a broadcast). `--limit` caps the products one process
works on at once; the provider limits (`evolink-active-jobs`, `evolink-submits`; see
`prefect_evolink.tasks.limits`) are global concurrency limits on the server, so they hold over
all workers together. Give the workers together about a fifth more slots than
`evolink-active-jobs` has: a product keeps its worker slot while it downloads and stores, after
it gave its provider slot back, so with exactly as many EvoLink capacity goes unused (one of
the changes that took `bench/catalogue.py` from 1.87× to 1.17× the bare script's time).

**Where requests come from.**
- From your code: `product_image.apply_async(kwargs=...)` (or `request_products`) per product;
  each call is one task run the workers pick up.
- From events: exactly one process runs with `--listen`, which reads new
  `marketing.asset.requested` events from the server's event store every second and schedules
  one `product_image` run per event. Pause the deployment trigger then
  (`prefect automation pause product-asset-on-request__automation_1`; the listener warns at
  start about any enabled automation on the same event): otherwise every
  event is made twice — the second run only reattaches to the job the first paid for, so
  nothing is paid twice, but the work and the runs are doubled.

**Shared storage.** A background task's parameters wait in Prefect's task scheduling storage
until a worker picks the run up, and its result (the job record a caller's `future.result()`
reads) goes to the default result storage. Both are the local `PREFECT_HOME/storage` of each
process unless set, which only works when every submitter and worker share one PREFECT_HOME.
Otherwise point both settings, in every submitter and worker, at one storage block they can
all read, e.g. an S3 bucket block of prefect-aws:

    PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK=s3-bucket/evolink-tasks
    PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/evolink-tasks
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import prefect.task_worker
from prefect.client.orchestration import PrefectClient, get_client
from prefect.context import AsyncClientContext, SyncClientContext
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventOrder
from prefect.events.schemas.events import Event
from prefect.futures import PrefectDistributedFuture
from prefect.results import ResultStore
from prefect.task_worker import TaskWorker

from prefect_evolink.flows.asset_requested import EVENT_NAME, product_image

DEFAULT_LIMIT: Final = 25
"""Products one task worker works on at once (they mostly wait on EvoLink: cheap)."""

SCHEDULING_CONCURRENCY: Final = 8
"""Task runs the listener creates at once: a burst of 1,000 events is scheduled in seconds,
not one API round trip after another."""
SCHEDULING_RETRY_DELAYS: Final = (1.0, 2.0, 4.0)
"""Seconds between attempts to schedule one event's product while the API does not answer."""
EVENT_POLL_SECONDS: Final = 1.0
"""How often the listener reads new events from the server's event store."""
EVENT_OVERLAP_SECONDS: Final = 15.0
"""Each read goes this far behind the newest event seen: the server stores events in batches
(every 5 s by default), so one that occurred earlier may be stored later."""
EVENT_PAGE_SIZE: Final = 50
"""The most events the server returns per page."""
FORWARDED_MEMORY: Final = 100_000
"""Event ids the listener remembers, so an event delivered twice is scheduled once."""

PRODUCT_PARAMETERS: Final = frozenset(inspect.signature(product_image.fn).parameters)
"""What an event payload may set: exactly the background task's parameters."""

logger = logging.getLogger("prefect.evolink.task_workers")  # Prefect's console handler


def product_kwargs(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The `product_image` parameters of an event payload.

    Unknown keys are left out (a sender's extra fields must not fail the product), and a
    payload without `product_id` and `prompt` raises `ValueError` naming them: such an event
    cannot be a product job, and scheduling it would only make a failed task run.
    """
    missing = [name for name in ("product_id", "prompt") if not payload.get(name)]
    if missing:
        raise ValueError(f"event payload lacks {', '.join(missing)}")
    return {key: value for key, value in payload.items() if key in PRODUCT_PARAMETERS}


def request_products(payloads: Iterable[Mapping[str, Any]]) -> list[PrefectDistributedFuture[Any]]:
    """Schedule one `product_image` background task per payload; task workers run them.

    Each payload is what a `marketing.asset.requested` event would carry (`product_id`,
    `prompt`, optional `size`, `quality`, ...). Returns the futures: `future.result()` waits
    for a product's job record.
    """
    return [product_image.apply_async(kwargs=product_kwargs(payload)) for payload in payloads]


async def competing_automations(event_name: str = EVENT_NAME) -> list[str]:
    """Enabled automations that also act on `event_name` (such as the deployment trigger
    `product-asset-on-request__automation_1`): with the listener running too, every event would
    make its product twice — the second only reattaches, but the work is doubled."""
    async with get_client() as client:
        automations = await client.read_automations()
    return sorted(
        automation.name
        for automation in automations
        if automation.enabled and event_name in automation.trigger.model_dump_json()
    )


async def forward_events(
    event_name: str = EVENT_NAME,
    *,
    on_ready: Callable[[], None] | None = None,
    interval: float = EVENT_POLL_SECONDS,
) -> None:
    """Schedule a `product_image` run for every `event_name` event, until cancelled.

    The events are read from the server's event store, not from its live stream: under a burst
    of a thousand events the stream dropped some for a slow reader (measured: 261 of 400
    forwarded), while the store has every event the server accepted. Each read takes the events
    since the newest one seen minus `EVENT_OVERLAP_SECONDS` (events are stored in batches, not
    always in order), oldest first; event ids already forwarded are skipped. Events from the
    last `EVENT_OVERLAP_SECONDS` before the start are forwarded too, so a restart within that
    window loses nothing (a product scheduled twice only reattaches to its paid job); events
    from a longer downtime are not read back, since no checkpoint is kept.
    """
    for name in await competing_automations(event_name):
        logger.warning(
            "The automation %r also acts on %s events: each product would be made twice (the "
            "second run only reattaches). Pause it: prefect automation pause %r",
            name,
            event_name,
            name,
        )
    forwarded: OrderedDict[UUID, None] = OrderedDict()  # the latest event ids, oldest first
    slots = asyncio.Semaphore(SCHEDULING_CONCURRENCY)
    since = datetime.now(UTC) - timedelta(seconds=EVENT_OVERLAP_SECONDS)
    async with get_client() as client, asyncio.TaskGroup() as group:
        if on_ready is not None:
            on_ready()
        while True:
            try:
                newest = await _read_new_events(client, event_name, since, forwarded, slots, group)
            except Exception as error:  # noqa: BLE001 — an API outage: read again later
                logger.warning("Could not read %s events: %s", event_name, error)
                newest = None
            if newest is not None:
                since = max(since, newest - timedelta(seconds=EVENT_OVERLAP_SECONDS))
            await asyncio.sleep(interval)


async def _read_new_events(
    client: PrefectClient,
    event_name: str,
    since: datetime,
    forwarded: OrderedDict[UUID, None],
    slots: asyncio.Semaphore,
    group: asyncio.TaskGroup,
) -> datetime | None:
    """One pass over the stored events since `since`; returns when the newest one occurred."""
    event_filter = EventFilter(
        event=EventNameFilter(name=[event_name]),
        occurred=EventOccurredFilter.model_validate(
            {"since": since, "until": datetime.now(UTC) + timedelta(days=1)}
        ),
        order=EventOrder.ASC,
    )
    page = await client.read_events(filter=event_filter, limit=EVENT_PAGE_SIZE)
    newest = None
    while True:
        for event in page.events:
            newest = event.occurred if newest is None else max(newest, event.occurred)
            if event.id in forwarded:
                continue
            forwarded[event.id] = None
            if len(forwarded) > FORWARDED_MEMORY:
                forwarded.popitem(last=False)
            await slots.acquire()
            group.create_task(_schedule(event)).add_done_callback(lambda _: slots.release())
        if page.next_page is None:
            return newest
        page = await client.read_events_page(str(page.next_page))


async def _schedule(event: Event) -> None:
    """One product task run for one event; never raises, so one bad event or a short API
    outage cannot stop the listener (the event is logged with its product when given up)."""
    try:
        kwargs = product_kwargs(event.payload)
    except ValueError as error:
        logger.warning("Ignored event %s on %s: %s", event.id, event.resource.id, error)
        return
    for attempt, delay in enumerate((*SCHEDULING_RETRY_DELAYS, None), start=1):
        try:
            # apply_async is synchronous (it creates the task run through the API): off the loop
            await asyncio.to_thread(product_image.apply_async, kwargs=kwargs)
            return
        except Exception as error:  # noqa: BLE001 — logged, retried, never fatal here
            if delay is None:
                logger.error(
                    "Could not schedule product %s (event %s) after %d attempts: %s",
                    kwargs["product_id"],
                    event.id,
                    attempt,
                    error,
                )
                return
            await asyncio.sleep(delay)


async def serve_products(
    limit: int = DEFAULT_LIMIT,
    *,
    listen: bool = False,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Run a task worker for `product_image` (and, with `listen`, the event forwarder) until
    interrupted.

    Args:
        limit: Products this worker works on at once.
        listen: Also schedule a product run for every `marketing.asset.requested` event. Run
            exactly one listening process per Prefect server.
        on_listening: Called once the event subscription is open (events from then on, and
            the minute before, are forwarded).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    # One Prefect client of each kind for every run this worker makes (Prefect makes two per
    # task run otherwise, each loading the CA bundle: ~0.1 s of CPU per product).
    with _worker_settings(), SyncClientContext.get_or_create():
        async with AsyncClientContext.get_or_create():
            worker = TaskWorker(product_image, limit=limit)
            async with asyncio.TaskGroup() as group:
                if listen:
                    group.create_task(forward_events(on_ready=on_listening))
                group.create_task(worker.astart())


@contextlib.contextmanager
def _worker_settings() -> Iterator[None]:
    """Run background tasks with this worker's Prefect settings, not their submitter's.

    Prefect stores the submitting process's whole settings with every background task run and
    rebuilds them in the worker for each run: ~0.3 s of CPU per product (pydantic-settings
    re-reads the environment and the profiles), and the submitter's API URL, home and logging
    then override the worker's own. A worker on another machine must use its own; so the
    stored run context is read without its settings. (Patches the name `prefect.task_worker`
    reads them through, for the life of `serve_products`.)
    """
    original = prefect.task_worker.read_parameters

    async def read_parameters(result_store: ResultStore, identifier: UUID) -> dict[str, Any]:
        data: dict[str, Any] = await original(result_store, identifier)
        context = data.get("context")
        if isinstance(context, dict):
            context.pop("settings_context", None)
        return data

    prefect.task_worker.read_parameters = read_parameters
    try:
        yield
    finally:
        prefect.task_worker.read_parameters = original
