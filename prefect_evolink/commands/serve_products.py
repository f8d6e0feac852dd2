"""`prefect-evolink serve-products`: task workers that make product images as background tasks."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from prefect_evolink.commands.outcome import (
    EXIT_INVALID,
    EXIT_OK,
    PROG,
    fail,
)


def add_parser(commands: Any) -> None:
    from prefect_evolink.deployments._defaults import DEFAULT_LIMIT  # not Prefect's task worker

    serve = commands.add_parser(
        "serve-products",
        help="a task worker making product images as background tasks (catalogue scale)",
        description="Serve the product_image background task until Ctrl-C: a long-lived "
        "worker that runs many products at once, instead of one flow-run process per product. "
        "Run as many as you need, against the Prefect API in PREFECT_API_URL; the provider "
        "limits are global, so they hold across all of them. With --listen (on exactly one "
        "process) every marketing.asset.requested event becomes a product_image task run.",
    )
    serve.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help="products this worker runs at once (default %(default)s)",
    )
    serve.add_argument(
        "--listen",
        action="store_true",
        help="also turn marketing.asset.requested events into product task runs",
    )
    serve.add_argument("--debug", action="store_true", help="print the traceback of a failure")


def run(args: argparse.Namespace) -> int:
    """`serve-products`: the product task worker (deployments/task_workers.py) until Ctrl-C."""
    from prefect.settings import (
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        get_current_settings,
        temporary_settings,
    )

    from prefect_evolink.deployments.task_workers import serve_products

    if not get_current_settings().api.url:
        print(
            f"{PROG}: invalid input: PREFECT_API_URL is not set; a task worker needs the "
            "Prefect server the product runs are scheduled on.",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if args.limit < 1:
        print(f"{PROG}: invalid input: --limit must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    print(
        f"Serving product_image (up to {args.limit} at once) for {get_current_settings().api.url}",
        file=sys.stderr,
        flush=True,
    )

    def listening() -> None:
        print(
            "Listening: every marketing.asset.requested event becomes a product_image task run",
            file=sys.stderr,
            flush=True,
        )

    # The task engine logs a line or two outside any run context (after a run ends); with no
    # flow run to file them under, the API handler would warn for each. They stay on stderr.
    quiet = temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"})
    try:
        with quiet:
            asyncio.run(serve_products(args.limit, listen=args.listen, on_listening=listening))
    except KeyboardInterrupt:
        pass
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return fail(error, args)
    return EXIT_OK
