"""Catalogue scale: product images as background tasks on long-lived task workers.

A real `prefect server` on a throwaway PostgreSQL, the provider limits created as `deploy`
creates them, and two `prefect-evolink serve-products` processes (the first `--listen`s for
`marketing.asset.requested`). It shows that a batch of events becomes one `product <id>` task
run per product, spread over both workers; that the provider limit holds across them (the
simulator's peak of generating tasks is the limit, not more); that every product is billed once
and its cost artifact reports exactly the ledger's bill; that a repeated product pays nothing
new; and that code can ask for products directly (`request_products`) and wait for their
records. Every process is stopped at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness.postgres import Postgres, find_postgres
from evolink.simulator import EvoLinkSimulator, max_concurrent
from prefect_evolink.flows.asset_requested import EVENT_NAME
from tests.test_deployments import (
    Processes,
    Stack,
    _base_env,
    _emit_rest,
    _free_port,
    _start_server,
    _tail,
    _wait_for,
)

pytestmark = pytest.mark.slow

ACTIVE_JOBS = 3  # the global limit; the workers together could run 8 products at once
WORKER_LIMIT = 4
WORKERS = ("tasks-a", "tasks-b")
PRODUCTS = 16
GENERATION_SECONDS = 1.5  # long enough for the limit, not chance, to bound the overlap


@dataclass
class CatalogueStack:
    stack: Stack
    assets: Path
    logs: dict[str, Path]


@pytest.fixture(scope="module")
def catalogue() -> Iterator[CatalogueStack]:
    pg_bin = find_postgres()
    if pg_bin is None:
        pytest.skip("PostgreSQL is not installed and cannot be (apt-get install postgresql)")
    marker = uuid.uuid4().hex
    processes = Processes(marker)
    with tempfile.TemporaryDirectory(prefix="evolink-catalogue-") as tmp, ExitStack() as cleanup:
        root = Path(tmp)
        home, logs, pgdir, assets = (root / n for n in ("home", "logs", "pg", "assets"))
        for path in (home, logs, pgdir, assets):
            path.mkdir()
        root.chmod(0o755)  # the postgres user must reach its directory
        postgres = Postgres(pg_bin, pgdir, _free_port())
        cleanup.callback(postgres.stop)  # last: after the server is gone
        postgres.start()
        simulator = cleanup.enter_context(
            EvoLinkSimulator(generation_seconds=GENERATION_SECONDS, seed=21)
        )
        cleanup.callback(processes.stop_all)  # first: workers, then the server
        env = _base_env(marker, home)
        try:
            server_env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url}
            env["PREFECT_API_URL"] = _start_server(processes, server_env, logs)
            stack = Stack(env["PREFECT_API_URL"], env, simulator, "", logs)
            _create_limits(stack)
            _save_shared_storage(stack, root / "shared")
            worker_env = {
                **env,
                **SHARED_STORAGE,
                "EVOLINK_API_KEY": simulator.api_key,
                "EVOLINK_BASE_URL": simulator.base_url,
                "EVOLINK_ASSETS_DIR": str(assets),
                "EVOLINK_LIMITS_STRICT": "true",
                "EVOLINK_TASK_RETRY_DELAYS": "0.5,1",
            }
            worker_logs = {}
            for index, name in enumerate(WORKERS):
                worker_logs[name] = logs / f"{name}.log"
                command = [sys.executable, "-m", "prefect_evolink", "serve-products"]
                command += ["--limit", str(WORKER_LIMIT), *(["--listen"] if index == 0 else [])]
                processes.start(command, env=worker_env, log=worker_logs[name])
            _wait_for(
                lambda: "Listening:" in worker_logs[WORKERS[0]].read_text(errors="replace"),
                timeout=90,
                what="the event listener",
            )
            for log in worker_logs.values():
                _wait_for(
                    lambda log=log: "Subscribing to runs" in log.read_text(errors="replace"),
                    timeout=90,
                    what=f"{log.stem} to subscribe",
                )
        except BaseException:
            for log in sorted(logs.glob("*.log")):
                print(f"--- {log.name} ---\n{_tail(log, 60)}", file=sys.stderr)
            raise
        yield CatalogueStack(stack, assets, worker_logs)


SHARED_BLOCK = "local-file-system/catalogue-shared"
SHARED_STORAGE = {
    # Where background task parameters and results wait: a block every process can read (on
    # several machines, an S3 bucket block). Without it each process uses its own PREFECT_HOME.
    "PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK": SHARED_BLOCK,
    "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": SHARED_BLOCK,
}


def _save_shared_storage(stack: Stack, path: Path) -> None:
    from prefect.filesystems import LocalFileSystem

    async def save(client: Any) -> None:
        await LocalFileSystem(basepath=str(path)).save(SHARED_BLOCK.split("/")[1])

    stack.call(save)


def _create_limits(stack: Stack) -> None:
    from prefect_evolink.tasks.limits import ensure_limits

    async def create(client: Any) -> None:
        await ensure_limits(active_jobs=ACTIVE_JOBS, submits_per_minute=600, submit_burst=10)

    stack.call(create)


def _product_runs(stack: Stack, prefix: str) -> list[Any]:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async def read(client: Any) -> list[Any]:
        runs: list[Any] = await client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=f"product {prefix}"))
        )
        return runs

    return [run for run in stack.call(read) if run.name.startswith(f"product {prefix}")]


def _wait_for_products(catalogue: CatalogueStack, prefix: str, count: int) -> list[Any]:
    def finished() -> list[Any] | None:
        runs = _product_runs(catalogue.stack, prefix)
        if len(runs) >= count and all(run.state and run.state.is_final() for run in runs):
            return runs
        return None

    try:
        return _wait_for(finished, timeout=120, what=f"{count} product task runs", interval=0.5)
    except AssertionError:
        for name, log in catalogue.logs.items():
            print(f"--- {name} ---\n{_tail(log, 80)}", file=sys.stderr)
        raise


def _cost_rows(stack: Stack, task_run_id: Any, product_id: str) -> list[dict[str, Any]]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read(client: Any) -> list[Any]:
        found: list[Any] = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"evolink-product-{product_id}-cost"])
            )
        )
        return found

    artifacts = [a for a in stack.call(read) if a.task_run_id == task_run_id]
    assert len(artifacts) == 1, f"{product_id}: {len(artifacts)} cost artifacts on its task run"
    data = artifacts[0].data
    rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
    return rows


def _received_by(logs: dict[str, Path]) -> dict[str, set[str]]:
    """Which worker ran which task run, from the task workers' own log lines."""
    received = re.compile(r"Received task run: ([0-9a-f-]{36})")
    return {
        name: set(received.findall(log.read_text(errors="replace"))) for name, log in logs.items()
    }


def test_events_become_one_product_task_run_each_over_both_workers(
    catalogue: CatalogueStack,
) -> None:
    stack = catalogue.stack
    started = time.time()
    products = [f"cat-{i:02d}" for i in range(PRODUCTS)]
    payloads = [
        {"product_id": p, "prompt": f"ceramic vase {p}, soft light", "quality": "low", "x": 1}
        for p in products
    ]
    _emit_rest(stack, payloads)
    runs = _wait_for_products(catalogue, "cat-", PRODUCTS)

    # One completed background task run per product (no flow run), named after it.
    assert sorted(run.name for run in runs) == sorted(f"product {p}" for p in products)
    assert all(run.state.is_completed() for run in runs), [
        (run.name, run.state.type, run.state.message)
        for run in runs
        if not run.state.is_completed()
    ]
    assert all(run.flow_run_id is None for run in runs)

    # Spread over both workers, each run received by exactly one.
    ids = {str(run.id) for run in runs}
    by_worker = {name: found & ids for name, found in _received_by(catalogue.logs).items()}
    assert not (by_worker[WORKERS[0]] & by_worker[WORKERS[1]]), "a run ran twice"
    assert set().union(*by_worker.values()) == ids
    assert all(by_worker.values()), {name: len(found) for name, found in by_worker.items()}

    # One billed task per product; the global limit, not the workers' 2 x 4 slots, was the bound.
    entries = [e for e in stack.simulator.ledger() if e.created_at >= started - 1]
    assert sorted(e.request["prompt"] for e in entries) == sorted(p["prompt"] for p in payloads)
    assert all(e.billed for e in entries)
    now = stack.simulator.now()
    assert max_concurrent(entries, include_pending=True, now=now) <= ACTIVE_JOBS
    assert max_concurrent(entries, now=now) == ACTIVE_JOBS

    # Billed = reported: each product's cost artifact, on its own task run, against the ledger.
    ledger = {e.task_id: e for e in entries}
    reported: dict[str, Decimal] = {}
    for run in runs:
        product = run.name.removeprefix("product ")
        for row in _cost_rows(stack, run.id, product):
            assert row["job"] == f"product/{product}"
            reported[row["task_id"]] = Decimal(row["billed_usd"].lstrip("$"))
    assert set(reported) == set(ledger)
    for task_id, usd in reported.items():
        assert usd == ledger[task_id].billed_usd.quantize(Decimal("0.000001")), task_id
    stored = list(catalogue.assets.glob("products/cat-*/*/*.png"))
    assert len(stored) == PRODUCTS


def test_a_repeated_product_reuses_its_paid_job(catalogue: CatalogueStack) -> None:
    stack = catalogue.stack
    payload = {"product_id": "again-01", "prompt": "linen cushion, morning light", "quality": "low"}
    _emit_rest(stack, [payload])
    [first] = _wait_for_products(catalogue, "again-01", 1)
    paid = len(stack.simulator.ledger())
    _emit_rest(stack, [payload])
    runs = _wait_for_products(catalogue, "again-01", 2)
    assert all(run.state.is_completed() for run in runs)
    assert len(stack.simulator.ledger()) == paid, "the repeated product was paid again"
    second = next(run for run in runs if run.id != first.id)
    first_rows = _cost_rows(stack, first.id, "again-01")
    second_rows = _cost_rows(stack, second.id, "again-01")
    assert [r["task_id"] for r in second_rows] == [r["task_id"] for r in first_rows]


def test_code_asks_for_products_and_waits_for_their_records(catalogue: CatalogueStack) -> None:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
        PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK,
        temporary_settings,
    )

    from evolink.jobs import JobRecord
    from prefect_evolink.deployments.task_workers import request_products

    stack = catalogue.stack
    payloads = [
        {"product_id": f"code-{i}", "prompt": f"oak stool {i}, side view", "quality": "low"}
        for i in range(3)
    ]
    settings = {
        PREFECT_API_URL: stack.api_url,
        PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK: SHARED_BLOCK,
        PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: SHARED_BLOCK,
    }
    with temporary_settings(settings):
        futures = request_products(payloads)
        try:
            records = [future.result(timeout=120) for future in futures]
        except TimeoutError:
            for name, log in catalogue.logs.items():
                print(f"--- {name} ---\n{_tail(log, 80)}", file=sys.stderr)
            raise
    assert all(isinstance(record, JobRecord) for record in records)
    ledger = {e.task_id: e for e in stack.simulator.ledger()}
    for payload, record in zip(payloads, records, strict=True):
        assert record.namespace == f"product/{payload['product_id']}"
        assert ledger[record.task_id].request["prompt"] == payload["prompt"]
        assert Path(record.images[0].uri.removeprefix("file://")).is_file()


def test_a_payload_without_product_or_prompt_is_refused_before_scheduling() -> None:
    from prefect_evolink.deployments.task_workers import product_kwargs

    with pytest.raises(ValueError, match="product_id, prompt"):
        product_kwargs({"size": "1:1"})
    kwargs = product_kwargs({"product_id": "p", "prompt": "x", "quality": "low", "extra": 1})
    assert kwargs == {"product_id": "p", "prompt": "x", "quality": "low"}


def test_the_listener_names_an_automation_that_would_make_each_product_twice(
    catalogue: CatalogueStack,
) -> None:
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    from prefect_evolink.deployments.task_workers import EVENT_NAME, competing_automations

    stack = catalogue.stack
    assert stack.call(lambda client: competing_automations()) == []
    trigger = EventTrigger(expect={EVENT_NAME}, posture=Posture.Reactive, threshold=1)
    automation = AutomationCore(
        name="product-asset-on-request__automation_1", trigger=trigger, actions=[DoNothing()]
    )
    automation_id = stack.call(lambda client: client.create_automation(automation))
    try:
        names = stack.call(lambda client: competing_automations())
        assert names == ["product-asset-on-request__automation_1"]
        stack.call(lambda client: client.pause_automation(automation_id))
        assert stack.call(lambda client: competing_automations()) == []
    finally:
        stack.call(lambda client: client.delete_automation(automation_id))


class _Listener:
    """`forward_events` in a thread of its own (its own event loop and Prefect settings),
    against the stack's API and shared storage, until `stop()`."""

    def __init__(self, stack: Stack, event_name: str) -> None:
        self.stack, self.event_name = stack, event_name
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.ready.wait(60), f"the listener did not start: {self.error!r}"

    def _run(self) -> None:
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
            PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK,
            temporary_settings,
        )

        from prefect_evolink.deployments.task_workers import forward_events

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            await forward_events(
                self.event_name, on_ready=self.ready.set, interval=0.2, overlap=LISTEN_OVERLAP
            )

        settings = {
            PREFECT_API_URL: self.stack.api_url,
            PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK: SHARED_BLOCK,
            PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: SHARED_BLOCK,
        }
        try:
            with temporary_settings(settings):
                asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # reported by stop()
            self.error = error
            self.ready.set()

    def stop(self) -> None:
        assert self._loop is not None and self._task is not None
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the listener did not stop"
        assert self.error is None, repr(self.error)


LISTEN_OVERLAP = 1.0  # seconds; the listener's default (15) would make this test slow


def _emit_named(stack: Stack, event_name: str, product_ids: list[str]) -> None:
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "id": str(uuid.uuid4()),
            "occurred": now,
            "event": event_name,
            "payload": {"product_id": product, "prompt": f"mug {product}", "quality": "low"},
            "resource": {"prefect.resource.id": f"marketing.product.{product}"},
        }
        for product in product_ids
    ]
    response = httpx.post(f"{stack.api_url}/events", json=events, timeout=10)
    assert response.status_code == 204, response.text


def test_a_restarted_listener_schedules_what_came_while_it_was_down_and_nothing_twice(
    catalogue: CatalogueStack,
) -> None:
    stack = catalogue.stack
    event_name = f"evolink.test.listener.{uuid.uuid4().hex[:8]}"  # only this test's listener
    prefix = f"ckpt{uuid.uuid4().hex[:6]}"
    before = [f"{prefix}-before-{i}" for i in range(2)]
    during = [f"{prefix}-down-{i}" for i in range(3)]

    def names() -> list[str]:
        return sorted(run.name.removeprefix("product ") for run in _product_runs(stack, prefix))

    first = _Listener(stack, event_name)
    try:
        _emit_named(stack, event_name, before)
        _wait_for(lambda: names() == before, timeout=60, what="the first listener", interval=0.3)
        time.sleep(1.0)  # their scheduling calls return (cut short, an event is read again)
    finally:
        first.stop()
    # While no listener runs: events older than the overlap by the time it starts again, which
    # a listener starting from "now" would never read.
    _emit_named(stack, event_name, during)
    time.sleep(LISTEN_OVERLAP + 3.0)
    second = _Listener(stack, event_name)
    try:
        wanted = sorted(before + during)
        _wait_for(
            lambda: names() == wanted, timeout=60, what="the restarted listener", interval=0.3
        )
        time.sleep(2.0)  # long enough for a second reading of the first events to show
        assert names() == wanted  # each product scheduled once: none lost, none twice
    finally:
        second.stop()


def test_an_event_still_being_scheduled_holds_the_checkpoint_back() -> None:
    from datetime import timedelta

    from prefect_evolink.deployments.task_workers import _Progress

    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    early, late, slow = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    progress = _Progress(since=start + timedelta(seconds=10))
    progress.done[early] = start + timedelta(seconds=5)
    progress.done[late] = start + timedelta(seconds=12)
    progress.pending[slow] = start  # its run is being created when the listener dies
    saved = progress.to_json()
    assert saved == {"since": start.isoformat(), "done": [str(early), str(late)]}
    resumed = _Progress.from_json(saved)
    assert resumed.since == start and not resumed.seen(slow)  # read and scheduled again
    assert resumed.seen(early) and resumed.seen(late)  # not scheduled twice

    progress.finished(slow)
    assert progress.to_json() == {
        "since": (start + timedelta(seconds=10)).isoformat(),
        "done": [str(late)],
    }


def test_scheduling_outlasts_an_api_outage_and_a_bad_payload_is_settled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An API that refuses the task run for a while delays the product, it does not lose it;
    a payload that can be no product is logged and settled at once (never retried)."""
    from prefect.events.schemas.events import Event

    from prefect_evolink.deployments import task_workers

    monkeypatch.setattr(task_workers, "SCHEDULING_RETRY_DELAYS", (0.01, 0.01))
    monkeypatch.setattr(task_workers, "SCHEDULING_RETRY_MAX_SECONDS", 0.01)
    calls: list[dict[str, Any]] = []

    async def flaky_create(client: Any, kwargs: dict[str, Any]) -> None:
        calls.append(kwargs)
        if len(calls) <= 5:  # more failures than the quick retries
            raise httpx.ConnectError("the API is down")

    monkeypatch.setattr(task_workers, "create_product_run", flaky_create)

    def event(payload: dict[str, Any]) -> Event:
        return Event(
            event=EVENT_NAME,
            resource={"prefect.resource.id": "marketing.product.x"},
            payload=payload,
        )

    asyncio.run(task_workers._schedule(None, event({"product_id": "lamp", "prompt": "a lamp"})))  # type: ignore[arg-type]
    assert calls == [{"product_id": "lamp", "prompt": "a lamp"}] * 6
    calls.clear()
    asyncio.run(task_workers._schedule(None, event({"size": "1:1"})))  # type: ignore[arg-type]
    assert calls == []


def test_a_checkpoint_that_cannot_be_read_stops_the_listener_instead_of_skipping_events(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prefect.filesystems import LocalFileSystem

    from prefect_evolink.deployments import task_workers
    from prefect_evolink.deployments.task_workers import ListenerCheckpoint

    monkeypatch.setattr(task_workers, "SCHEDULING_RETRY_DELAYS", (0.01,))
    storage = LocalFileSystem(basepath=str(tmp_path))

    async def scheduling_storage() -> Any:
        return storage

    monkeypatch.setattr(
        task_workers, "get_or_create_default_task_scheduling_storage", scheduling_storage
    )
    fresh = asyncio.run(ListenerCheckpoint.open("some.event"))  # none yet: start from now
    assert fresh.progress is None

    (tmp_path / "evolink-listener").mkdir()
    (tmp_path / "evolink-listener" / "other.event.json").mkdir()  # there, but unreadable
    with pytest.raises(RuntimeError, match="could not read the listener checkpoint"):
        asyncio.run(ListenerCheckpoint.open("other.event"))


def test_serve_products_refuses_bad_input_with_a_short_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_evolink.cli import main

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert main(["serve-products", "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    with temporary_settings({PREFECT_API_URL: None}):
        assert main(["serve-products"]) == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL is not set" in err and "Traceback" not in err
