"""Flows and tasks that work from sync and async code alike, decided per call.

The pipeline is async (it waits on EvoLink, storage and Prefect's API at once), but users call it
from three kinds of places, and each must get what it expects:

- a plain script (`record = generate_image(...)`): no event loop runs, so the call runs to the
  end and returns the result;
- a sync `@flow` or `@task`: the call runs as a real subflow or task run of its parent and
  returns the result;
- async code (`await generate_image(...)`, also inside an async flow): the call returns the
  coroutine Prefect's engine made, to be awaited.

The rule: **async when the caller can await**, that is, when an event loop runs in the calling
thread and the caller is not the body of a sync flow or task. Prefect's own `async_dispatch` asks
only the run context, which says "async" inside a sync helper that an async flow runs with
`asyncio.to_thread`; that thread has no loop, so nothing there could await the coroutine, and
returning it would lose the call (`coroutine ... was never awaited`). The loop alone is not
enough either: Prefect runs a sync task called from an async flow in the flow's own thread, where
the flow's loop runs but the task's body cannot await. The storage blocks follow the same rule
(`blocks/_dispatch.py`).

`SyncOrAsyncFlow` and `SyncOrAsyncTask` are Prefect's `Flow` and `Task` with only `__call__`
changed, so deployments, `.serve()`, `.with_options()`, `.submit()` and `.map()` keep working.
The sync path hands the engine's coroutine to Prefect's `run_coro_as_sync`, which runs it on
Prefect's event-loop thread with the caller's context: the flow run context of a sync parent
travels along, so the run is recorded as its child.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from prefect import Flow, Task
from prefect.context import FlowRunContext, TaskRunContext
from prefect.utilities.asyncutils import run_coro_as_sync

__all__ = [
    "SyncOrAsyncFlow",
    "SyncOrAsyncTask",
    "caller_can_await",
    "event_loop_running_here",
    "sync_or_async_flow",
    "sync_or_async_task",
]

P = ParamSpec("P")
R = TypeVar("R")


def event_loop_running_here() -> bool:
    """Whether the calling thread runs an event loop, i.e. whether it could await a result."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _inside_a_sync_run() -> bool:
    """Whether the caller is the body of a sync flow or task run (innermost run first)."""
    context: Any = TaskRunContext.get() or FlowRunContext.get()
    if context is None:
        return False
    run = getattr(context, "task", None) or getattr(context, "flow", None)
    return run is not None and not getattr(run, "isasync", True)


def caller_can_await() -> bool:
    """The rule of the module docstring: a running loop here, and not a sync run's body."""
    return event_loop_running_here() and not _inside_a_sync_run()


def _finish(result: Any) -> Any:
    """Run the engine's coroutine to its end when the caller cannot await it."""
    if inspect.iscoroutine(result) and not caller_can_await():
        return run_coro_as_sync(result)
    return result


class SyncOrAsyncFlow(Flow[P, R]):
    """An async Prefect flow that a sync caller can call too (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _finish(super().__call__(*args, **kwargs))

    @property
    def aio(self) -> Callable[P, Coroutine[Any, Any, R]]:
        """The call that always returns the coroutine, wherever it is made from.

        For code that runs its own event loop from sync code: `asyncio.run(flow.aio(...))`
        (a plain `asyncio.run(flow(...))` gets the result, not a coroutine, since there the call
        already ran to its end).
        """
        return functools.partial(Flow.__call__, self)  # type: ignore[return-value]

    def with_options(self, *args: Any, **kwargs: Any) -> SyncOrAsyncFlow[P, R]:
        copy = super().with_options(*args, **kwargs)
        copy.__class__ = SyncOrAsyncFlow  # Prefect builds a plain Flow; keep the call rule
        return copy  # type: ignore[return-value]


class SyncOrAsyncTask(Task[P, R]):
    """An async Prefect task that a sync caller can call too (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _finish(super().__call__(*args, **kwargs))

    @property
    def aio(self) -> Callable[P, Coroutine[Any, Any, R]]:
        """The call that always returns the coroutine (see `SyncOrAsyncFlow.aio`)."""
        return functools.partial(Task.__call__, self)

    def with_options(self, *args: Any, **kwargs: Any) -> SyncOrAsyncTask[P, R]:
        # Prefect builds a plain Task; keep the call rule (and only it: a subclass's own
        # behaviour, such as `EvoLinkStep`'s retries read per run, is what `with_options` fixes)
        copy = super().with_options(*args, **kwargs)
        copy.__class__ = SyncOrAsyncTask
        return copy  # type: ignore[return-value]


def sync_or_async_flow(
    **options: Any,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], SyncOrAsyncFlow[P, R]]:
    """`@flow(**options)` for an async function, callable from sync and async code."""

    def decorate(fn: Callable[P, Coroutine[Any, Any, R]]) -> SyncOrAsyncFlow[P, R]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{fn.__qualname__} must be async; sync callers are served anyway")
        return SyncOrAsyncFlow(fn, **options)

    return decorate


def sync_or_async_task(
    **options: Any,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], SyncOrAsyncTask[P, R]]:
    """`@task(**options)` for an async function, callable from sync and async code."""

    def decorate(fn: Callable[P, Coroutine[Any, Any, R]]) -> SyncOrAsyncTask[P, R]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{fn.__qualname__} must be async; sync callers are served anyway")
        return SyncOrAsyncTask(fn, **options)  # type: ignore[arg-type]

    return decorate
