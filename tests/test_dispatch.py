"""The sync-or-async call rule (`tasks/dispatch.py`) at the three kinds of call sites.

Each case checks what the caller gets (a result, or a coroutine to await) and, through Prefect's
API, that the call really ran as a flow or task run, as the child of its parent where there is
one. A sync call that returned the engine's coroutine unawaited would fail here twice: no result,
and no run recorded.
"""

from __future__ import annotations

import asyncio
import inspect
from uuid import UUID

import pytest
from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.context import FlowRunContext

from prefect_evolink.tasks.dispatch import (
    SyncOrAsyncFlow,
    SyncOrAsyncTask,
    sync_or_async_flow,
    sync_or_async_task,
)


@sync_or_async_task(name="dispatch-double")
async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@sync_or_async_flow(name="dispatch-child")
async def child(x: int) -> dict[str, object]:
    """Returns what the run knows of itself, so a test can find it in the API."""
    get_run_logger().info("child %s", x)
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    return {"value": await double(x) + 1, "flow_run_id": context.flow_run.id}


async def _parent_task_run_id(flow_run_id: UUID) -> UUID | None:
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
    return run.parent_task_run_id


def test_the_decorators_keep_prefect_objects() -> None:
    assert isinstance(child, SyncOrAsyncFlow) and isinstance(double, SyncOrAsyncTask)
    renamed = child.with_options(name="dispatch-child-renamed")
    assert isinstance(renamed, SyncOrAsyncFlow) and renamed.name == "dispatch-child-renamed"
    assert isinstance(double.with_options(retries=1), SyncOrAsyncTask)


def test_a_sync_function_is_refused() -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="must be async"):
        sync_or_async_flow()(plain)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be async"):
        sync_or_async_task()(plain)  # type: ignore[arg-type]


def test_a_plain_script_gets_the_result(prefect_harness: None) -> None:
    result = child(3)
    assert not inspect.isawaitable(result)
    assert result["value"] == 7
    assert asyncio.run(_parent_task_run_id(result["flow_run_id"])) is None  # a top-level run
    assert double(5) == 10


def test_a_sync_flow_runs_it_as_a_real_subflow(prefect_harness: None) -> None:
    @flow(name="dispatch-sync-parent")
    def parent() -> tuple[dict[str, object], int]:
        return child(4), double(6)

    result, doubled = parent()
    assert result["value"] == 9 and doubled == 12
    # a subflow's run points at the task run that stands for it in the parent
    assert asyncio.run(_parent_task_run_id(result["flow_run_id"])) is not None


def test_a_sync_task_inside_an_async_flow_gets_the_result(prefect_harness: None) -> None:
    @task(name="dispatch-sync-helper")
    def helper() -> int:
        return double(7)

    @flow(name="dispatch-async-parent-with-thread")
    async def parent() -> tuple[int, int]:
        in_thread = await asyncio.to_thread(lambda: double(8))
        return helper(), in_thread

    assert asyncio.run(parent()) == (14, 16)


def test_async_code_awaits_it(prefect_harness: None) -> None:
    async def main() -> tuple[dict[str, object], int]:
        pending = child(5)
        assert inspect.isawaitable(pending)
        return await pending, await double(2)

    result, doubled = asyncio.run(main())
    assert result["value"] == 11 and doubled == 4

    @flow(name="dispatch-async-parent")
    async def parent() -> dict[str, object]:
        return await child(1)

    nested = asyncio.run(parent())
    assert nested["value"] == 3
    assert asyncio.run(_parent_task_run_id(nested["flow_run_id"])) is not None


async def _runs_named(name: str) -> int:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    return len(runs)


def test_with_options_keeps_the_rule_for_sync_callers(prefect_harness: None) -> None:
    named = child.with_options(flow_run_name="dispatch-with-options-run")
    assert named(2)["value"] == 5
    assert asyncio.run(_runs_named("dispatch-with-options-run")) == 1
