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
the changes that took `bench/catalogue.py` from 1.87× to 1.07× the bare script's time).

**Where requests come from.**
- From your code: `product_image.apply_async(kwargs=...)` (or `request_products`) per product;
  each call is one task run the workers pick up.
- From events: exactly one process runs with `--listen`, which reads new
  `marketing.asset.requested` events from the server's event store every second and schedules
  one `product_image` run per event. It saves how far it got (`ListenerCheckpoint`), so a
  restarted listener schedules the events that arrived while it was down, and none twice.
  Pause the deployment trigger then
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

The listener's checkpoint lives in the scheduling storage too (`evolink-listener/`), so a
listener restarted on another machine resumes where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import prefect.task_worker
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import TaskRun
from prefect.context import AsyncClientContext, SyncClientContext
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventOrder
from prefect.events.schemas.events import Event
from prefect.futures import PrefectDistributedFuture
from prefect.results import ResultStore, get_or_create_default_task_scheduling_storage
from prefect.task_worker import TaskWorker
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.utilities.engine import emit_task_run_state_change_event

from prefect_evolink.deployments._defaults import DEFAULT_LIMIT
from prefect_evolink.flows.asset_requested import EVENT_NAME, product_image

SCHEDULING_CONCURRENCY: Final = 8
"""Task runs the listener creates at once: a burst of 1,000 events is scheduled in seconds,
not one API round trip after another."""
SCHEDULING_RETRY_DELAYS: Final = (1.0, 2.0, 4.0)
"""Seconds between the first attempts to schedule one event's product while the API does not
answer (or to read the checkpoint at start)."""
SCHEDULING_RETRY_MAX_SECONDS: Final = 15.0
"""Then one attempt every this many seconds, until the API answers."""
EVENT_POLL_SECONDS: Final = 1.0
"""How often the listener reads new events from the server's event store."""
EVENT_OVERLAP_SECONDS: Final = 15.0
"""Each read goes this far behind the newest event seen: the server stores events in batches
(every 5 s by default), so one that occurred earlier may be stored later."""
EVENT_PAGE_SIZE: Final = 50
"""The most events the server returns per page."""
FORWARDED_MEMORY: Final = 100_000
"""Event ids the listener remembers, so an event delivered twice is scheduled once."""
CHECKPOINT_SECONDS: Final = 2.0
"""How often the listener saves how far it got (only when that moved)."""
CHECKPOINT_DIR: Final = "evolink-listener"
"""Folder of the listeners' checkpoints in the task scheduling storage."""

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
    `prompt`, optional `size`, `quality`, ...). Every payload is checked before the first is
    scheduled. Returns the futures, in the payloads' order: `future.result()` waits for a
    product's job record. The sync twin of `arequest_products`.
    """
    futures: list[PrefectDistributedFuture[Any]] = run_coro_as_sync(
        arequest_products(list(payloads))
    )
    return futures


async def arequest_products(
    payloads: Iterable[Mapping[str, Any]],
) -> list[PrefectDistributedFuture[Any]]:
    """`request_products` for async code: one API client and `SCHEDULING_CONCURRENCY` task runs
    created at once, where `product_image.apply_async` per product would open a new client for
    each (its CA bundle load and CSRF round trip cost more than the task run itself)."""
    all_kwargs = [product_kwargs(payload) for payload in payloads]
    slots = asyncio.Semaphore(SCHEDULING_CONCURRENCY)
    async with get_client() as client:

        async def schedule(kwargs: dict[str, Any]) -> PrefectDistributedFuture[Any]:
            async with slots:
                run = await create_product_run(client, kwargs)
            return PrefectDistributedFuture(task_run_id=run.id)

        return list(await asyncio.gather(*(schedule(kwargs) for kwargs in all_kwargs)))


async def create_product_run(client: PrefectClient, kwargs: dict[str, Any]) -> TaskRun:
    """One scheduled `product_image` task run, as `apply_async` makes it (parameters stored in
    the task scheduling storage, the run created Scheduled, its SCHEDULED event emitted), but on
    the caller's client."""
    run = await product_image.create_run(client=client, parameters=kwargs, deferred=True)
    if run.state is not None:  # always Scheduled; the API's schema allows none
        emit_task_run_state_change_event(
            task_run=run, initial_state=None, validated_state=run.state
        )
    return run


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
    overlap: float = EVENT_OVERLAP_SECONDS,
) -> None:
    """Schedule a `product_image` run for every `event_name` event, until cancelled.

    The events are read from the server's event store, not from its live stream: under a burst
    of a thousand events the stream dropped some for a slow reader (measured: 261 of 400
    forwarded), while the store has every event the server accepted. Each read takes the events
    since the newest one seen minus `overlap` seconds (events are stored in batches, not
    always in order), oldest first; event ids already forwarded are skipped.

    **Restarts lose nothing.** How far the listener got is saved every `CHECKPOINT_SECONDS`
    (`ListenerCheckpoint`, in the background tasks' scheduling storage): the time before which
    every event has been scheduled, and the ids scheduled since. A listener started again, after
    a crash or a week off, reads on from there: events that arrived while none ran are
    scheduled, those scheduled before are not scheduled again (only one whose scheduling a
    crash cut short may be scheduled twice; its second run reattaches to the paid job). Without
    a checkpoint (the first start) it begins `overlap` seconds before now.
    """
    for name in await competing_automations(event_name):
        logger.warning(
            "The automation %r also acts on %s events: each product would be made twice (the "
            "second run only reattaches). Pause it: prefect automation pause %r",
            name,
            event_name,
            name,
        )
    checkpoint = await ListenerCheckpoint.open(event_name)
    progress = checkpoint.progress or _Progress(
        since=datetime.now(UTC) - timedelta(seconds=overlap)
    )
    if checkpoint.progress is not None:
        logger.info(
            "Reading %s events on from the checkpoint: %s", event_name, progress.since.isoformat()
        )
    slots = asyncio.Semaphore(SCHEDULING_CONCURRENCY)
    saved_at = time.monotonic()
    try:
        async with get_client() as client, asyncio.TaskGroup() as group:
            if on_ready is not None:
                on_ready()
            while True:
                try:
                    newest = await _read_new_events(client, event_name, progress, slots, group)
                except Exception as error:  # noqa: BLE001 — an API outage: read again later
                    logger.warning("Could not read %s events: %s", event_name, error)
                    newest = None
                if newest is not None:
                    progress.since = max(progress.since, newest - timedelta(seconds=overlap))
                if time.monotonic() - saved_at >= CHECKPOINT_SECONDS:
                    await checkpoint.save(progress)
                    saved_at = time.monotonic()
                await asyncio.sleep(interval)
    finally:
        # Scheduling cut short stays pending: the checkpoint keeps its events to be read again.
        await checkpoint.save(progress)


@dataclass
class _Progress:
    """How far the listener got: `since` is where the next read starts; `done` holds the events
    whose scheduling ended (run created, payload refused, or given up), `pending` those still
    being scheduled — both by id, with when each occurred."""

    since: datetime
    done: OrderedDict[UUID, datetime] = field(default_factory=OrderedDict)
    pending: dict[UUID, datetime] = field(default_factory=dict)

    def seen(self, event_id: UUID) -> bool:
        return event_id in self.done or event_id in self.pending

    def finished(self, event_id: UUID) -> None:
        occurred = self.pending.pop(event_id, None)
        if occurred is not None:
            self.done[event_id] = occurred
            if len(self.done) > FORWARDED_MEMORY:
                self.done.popitem(last=False)

    def resume_point(self) -> datetime:
        """Before this, every event has been scheduled (or settled): a pending one holds it
        back, so an event whose scheduling a crash interrupted is read again."""
        return min([self.since, *self.pending.values()])

    def to_json(self) -> dict[str, Any]:
        start = self.resume_point()
        return {
            "since": start.isoformat(),
            "done": [str(event_id) for event_id, at in self.done.items() if at >= start],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Progress:
        since = datetime.fromisoformat(data["since"])
        done = OrderedDict((UUID(event_id), since) for event_id in data.get("done", ()))
        return cls(since=since, done=done)


class ListenerCheckpoint:
    """Where a listener resumes: `evolink-listener/<event>.json` in the storage Prefect keeps
    background task parameters in (`PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK`, or the
    local `PREFECT_HOME/storage`), so a listener restarted on any machine that can run the
    product tasks also finds its checkpoint.

    Saving never stops the listener (a failed save is logged and tried again next time);
    reading a checkpoint that exists but cannot be read does (after `SCHEDULING_RETRY_DELAYS`):
    starting from "now" instead would silently skip the events of the downtime.
    """

    def __init__(self, storage: Any, path: str, progress: _Progress | None) -> None:
        self.storage = storage
        self.path = path
        self.progress = progress
        self._saved: dict[str, Any] | None = progress.to_json() if progress else None

    @classmethod
    async def open(cls, event_name: str) -> ListenerCheckpoint:
        storage: Any = await get_or_create_default_task_scheduling_storage()
        path = f"{CHECKPOINT_DIR}/{event_name}.json"
        for delay in (*SCHEDULING_RETRY_DELAYS, None):
            try:
                raw = await storage.read_path(path)
                break
            except Exception as error:  # absent, or storage unavailable
                if _is_missing(error):
                    return cls(storage, path, None)
                if delay is None:
                    raise RuntimeError(
                        f"could not read the listener checkpoint {path}: {error}"
                    ) from error
                await asyncio.sleep(delay)
        return cls(storage, path, _Progress.from_json(json.loads(raw)))

    async def save(self, progress: _Progress) -> None:
        data = progress.to_json()
        if data == self._saved:
            return
        try:
            await self.storage.write_path(self.path, json.dumps(data).encode())
        except Exception as error:  # noqa: BLE001 — the next save tries again
            logger.warning("Could not save the listener checkpoint %s: %s", self.path, error)
            return
        self._saved = data


def _is_missing(error: Exception) -> bool:
    """A storage's way of saying "no such file": LocalFileSystem's ValueError, a
    FileNotFoundError, S3's NoSuchKey / 404."""
    text = str(error)
    return (
        isinstance(error, FileNotFoundError)
        or (isinstance(error, ValueError) and "does not exist" in text)
        or "NoSuchKey" in text
        or "404" in text
    )


async def _read_new_events(
    client: PrefectClient,
    event_name: str,
    progress: _Progress,
    slots: asyncio.Semaphore,
    group: asyncio.TaskGroup,
) -> datetime | None:
    """One pass over the stored events since `progress.since`; returns when the newest one
    occurred."""
    event_filter = EventFilter(
        event=EventNameFilter(name=[event_name]),
        occurred=EventOccurredFilter.model_validate(
            {"since": progress.since, "until": datetime.now(UTC) + timedelta(days=1)}
        ),
        order=EventOrder.ASC,
    )
    page = await client.read_events(filter=event_filter, limit=EVENT_PAGE_SIZE)
    newest = None
    while True:
        for event in page.events:
            newest = event.occurred if newest is None else max(newest, event.occurred)
            if progress.seen(event.id):
                continue
            progress.pending[event.id] = event.occurred
            await slots.acquire()
            group.create_task(_schedule(client, event)).add_done_callback(
                _settle(progress, event.id, slots)
            )
        if page.next_page is None:
            return newest
        page = await client.read_events_page(str(page.next_page))


def _settle(
    progress: _Progress, event_id: UUID, slots: asyncio.Semaphore
) -> Callable[[object], None]:
    """The callback of one scheduling task: its event is done, its slot free."""

    def settle(_: object) -> None:
        progress.finished(event_id)
        slots.release()

    return settle


async def _schedule(client: PrefectClient, event: Event) -> None:
    """One product task run for one event; never raises, so one bad event or an API outage
    cannot stop the listener. A refused payload is logged and settled; an API that does not
    answer is tried again, `SCHEDULING_RETRY_DELAYS` apart and then every
    `SCHEDULING_RETRY_MAX_SECONDS`, for as long as it takes: giving up would lose the product,
    and while it waits the checkpoint stays behind the event, so even a restart reads it again.
    """
    try:
        kwargs = product_kwargs(event.payload)
    except ValueError as error:
        logger.warning("Ignored event %s on %s: %s", event.id, event.resource.id, error)
        return
    attempt = 0
    while True:
        attempt += 1
        try:
            await create_product_run(client, kwargs)
            return
        except Exception as error:  # noqa: BLE001 — logged, retried, never fatal here
            if attempt > len(SCHEDULING_RETRY_DELAYS):
                logger.warning(
                    "Could not schedule product %s (event %s, attempt %d), trying again: %s",
                    kwargs["product_id"],
                    event.id,
                    attempt,
                    error,
                )
            delays = SCHEDULING_RETRY_DELAYS
            await asyncio.sleep(
                delays[attempt - 1] if attempt <= len(delays) else SCHEDULING_RETRY_MAX_SECONDS
            )


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
        on_listening: Called once the listener reads events (from its checkpoint on, or from
            `EVENT_OVERLAP_SECONDS` before its first start).
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
