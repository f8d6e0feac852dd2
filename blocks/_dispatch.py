"""Sync/async twins for the storage blocks, on top of Prefect's `async_dispatch`.

Every storage operation has an async method (`aput_file`, `aget_bytes`, …) and a sync twin
(`put_file`, `get_bytes`, …), as prefect-aws's `S3Bucket` has `aread_path` / `read_path`. The sync
twin is decorated with `storage_dispatch(async_twin)`, which decides per call:

1. `_sync=True` / `_sync=False` passed by the caller wins (Prefect's own rule);
2. inside the body of a sync storage call, nested storage calls run sync (so `put_json` can call
   `put_bytes` even when the outer call was forced with `_sync=True` from async code);
3. in a thread with no running event loop the call runs sync: nothing there could await a
   coroutine. This covers sync code run with `asyncio.to_thread` inside an async flow or task,
   where Prefect's rule alone would return a coroutine (the copied run context says "async");
4. otherwise Prefect's `async_dispatch` decides: inside a flow or task run, async when that flow
   or task is async; outside any run, async (an event loop is running in this thread).

When the call is async, the sync name returns the async twin's coroutine, so
`await storage.get_bytes(key)` works in async code; prefer calling `aget_bytes` there, which is
what the type hints describe (the sync names are typed as their sync result).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar, cast

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.utilities.asyncutils import run_sync_in_worker_thread

__all__ = ["in_worker_thread", "storage_dispatch"]

P = ParamSpec("P")
R = TypeVar("R")

_IN_SYNC_CALL: ContextVar[bool] = ContextVar("evolink_storage_in_sync_call", default=False)


def _event_loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def storage_dispatch(
    async_impl: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a sync method the twin of `async_impl` (see the module docstring for the rule)."""

    def decorator(sync_fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(sync_fn)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> R:
            token = _IN_SYNC_CALL.set(True)
            try:
                return sync_fn(*args, **kwargs)
            finally:
                _IN_SYNC_CALL.reset(token)

        dispatched = async_dispatch(async_impl)(run_sync)

        @functools.wraps(sync_fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if "_sync" not in kwargs and (_IN_SYNC_CALL.get() or not _event_loop_running_here()):
                kwargs["_sync"] = True
            return cast(R, dispatched(*args, **kwargs))

        wrapper.aio = async_impl  # type: ignore[attr-defined]  # as Prefect's async_dispatch
        return wrapper

    return decorator


async def in_worker_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run blocking `fn` in Prefect's worker threads so the event loop never blocks.

    The thread carries a copy of the caller's context (Prefect's run logger works there) and has
    no event loop, so storage calls made inside it run sync (rule 3). As with
    `asyncio.to_thread`, a cancelled caller stops waiting; the thread finishes its call.
    """
    return await run_sync_in_worker_thread(fn, *args, **kwargs)
