"""`prefect-evolink callbacks`: the callback receiver, EvoLink callbacks confirmed with the API
and turned into Prefect events (`prefect_evolink.tasks.callbacks`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from prefect_evolink.commands.outcome import (
    ENV_ASSETS_DIR,
    EXIT_INVALID,
    EXIT_OK,
    PROG,
    fail,
)
from prefect_evolink.commands.stored import storage_arguments


def add_parser(commands: Any) -> None:
    from evolink.callbacks import (
        DEFAULT_BURST,
        DEFAULT_RATE,
        DEFAULT_SOURCE_BURST,
        DEFAULT_SOURCE_RATE,
        MAX_CALLBACK_BYTES,
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_SOURCE,
        READ_TIMEOUT_SECONDS,
    )

    callbacks = commands.add_parser(
        "callbacks",
        help="the callback receiver: EvoLink callbacks, confirmed with the API, become "
        "Prefect events (evolink.task.completed / evolink.task.failed)",
        description="Serve the EvoLink callback receiver (ASGI, uvicorn) until Ctrl-C. Each "
        "callback's task id is looked up in storage (_tasks/<id>.json, written at submit; "
        "others are ignored), the task is asked for at EvoLink with the key, and an event is "
        "emitted to the Prefect API (PREFECT_API_URL) from the API's answer — never from the "
        "body. Point EvoLinkCredentials.callback_url (or EVOLINK_CALLBACK_URL) at its public "
        "https URL. The first line printed is the URL it listens on; then one line per request "
        "on stderr (outcome, source address, task id; --debug adds more).",
    )
    callbacks.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    callbacks.add_argument(
        "--port", type=int, default=8788, help="0 picks a free port (default %(default)s)"
    )
    callbacks.add_argument(
        "--path", default="/evolink/callback", help="the callback path (default %(default)s)"
    )
    storage_arguments(callbacks, runs="use")
    callbacks.add_argument(
        "--ssl-certfile", default=None, help="TLS certificate (PEM) (default: none, plain http)"
    )
    callbacks.add_argument(
        "--ssl-keyfile", default=None, help="TLS private key (PEM) (default: none)"
    )
    callbacks.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="proxies trusted for X-Forwarded-Proto/-For, comma-separated addresses or "
        "networks (default: none with --ssl-certfile, else 127.0.0.1): behind a TLS proxy, "
        "plain http from it counts as https, and X-Forwarded-For is the source address",
    )
    callbacks.add_argument(
        "--rate-limit",
        type=float,
        default=DEFAULT_RATE,
        help="EvoLink task reads/s on average, for all senders (default %(default)s)",
    )
    callbacks.add_argument(
        "--burst", type=int, default=DEFAULT_BURST, help="task reads at once (default %(default)s)"
    )
    callbacks.add_argument(
        "--source-rate-limit",
        type=float,
        default=DEFAULT_SOURCE_RATE,
        help="storage lookups/s on average per source address (default %(default)s)",
    )
    callbacks.add_argument(
        "--source-burst",
        type=int,
        default=DEFAULT_SOURCE_BURST,
        help="storage lookups at once per source address (default %(default)s)",
    )
    callbacks.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_CALLBACK_BYTES,
        help="larger bodies get 413 (default %(default)s)",
    )
    callbacks.add_argument(
        "--read-timeout",
        type=float,
        default=READ_TIMEOUT_SECONDS,
        help="seconds for a request's headers and body, in all (default %(default)s)",
    )
    callbacks.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help="open connections in all (default %(default)s)",
    )
    callbacks.add_argument(
        "--max-connections-per-source",
        type=int,
        default=MAX_CONNECTIONS_PER_SOURCE,
        help="open connections per source address; trusted proxies are exempt "
        "(default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """`callbacks`: the receiver under uvicorn until SIGINT/SIGTERM (tasks/callbacks.py)."""
    import prefect.main  # noqa: F401 - Prefect's logging setup: the audit lines reach stderr
    from prefect.settings import get_current_settings

    from evolink.urls import ENV_ALLOW_PRIVATE_URLS, private_urls_allowed
    from prefect_evolink.blocks import AssetStorage, LocalAssetStorage, load_storage
    from prefect_evolink.blocks.credentials import resolve_credentials
    from prefect_evolink.tasks.callback_server import bind, serve
    from prefect_evolink.tasks.callbacks import CallbackReceiver, ReceiverSettings

    if not get_current_settings().api.url:
        print(
            f"{PROG}: invalid input: PREFECT_API_URL is not set; the receiver's events would go "
            "to a temporary API that ends with it. Point it at your Prefect server.",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        print(
            f"{PROG}: invalid input: give --ssl-certfile and --ssl-keyfile together",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        storage: AssetStorage
        if args.storage_block is None:
            assets = args.assets_dir or os.environ.get(ENV_ASSETS_DIR) or "assets"
            storage = LocalAssetStorage(base_dir=str(Path(assets).resolve()))
        else:
            storage = load_storage(args.storage_block)
        credentials = asyncio.run(resolve_credentials(args.credentials_block))
        settings = ReceiverSettings(
            path=args.path,
            max_body_bytes=args.max_body_bytes,
            rate=args.rate_limit,
            burst=args.burst,
            source_rate=args.source_rate_limit,
            source_burst=args.source_burst,
            read_timeout=args.read_timeout,
            max_connections=args.max_connections,
            max_connections_per_source=args.max_connections_per_source,
        )
        receiver = CallbackReceiver(storage, credentials, settings)
        sock = bind(args.host, args.port)
    except Exception as error:  # noqa: BLE001 — one message and a code, as for every command
        return fail(error, args)
    scheme = "https" if args.ssl_certfile else "http"
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"{scheme}://{host}:{sock.getsockname()[1]}{args.path}"

    def ready() -> None:
        print(url, flush=True)  # the first line: where it listens (useful with --port 0)
        print(
            f"EvoLink callback receiver on {url}: tasks from {storage.uri('_tasks')}, checked "
            f"with {credentials.base_url}, events to {get_current_settings().api.url}",
            file=sys.stderr,
            flush=True,
        )
        if scheme == "http" and not private_urls_allowed():
            print(
                "Plain http: only requests a trusted proxy marks as https (X-Forwarded-Proto) "
                f"are accepted (others get 403; {ENV_ALLOW_PRIVATE_URLS}=true is for testing).",
                file=sys.stderr,
                flush=True,
            )

    try:
        serve(
            receiver,
            sock,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            forwarded_allow_ips=args.forwarded_allow_ips,
            on_ready=ready,
            log_level="debug" if args.debug else "info",
        )
    except KeyboardInterrupt:  # Ctrl-C: uvicorn shut down gracefully, then re-raised it
        pass
    except Exception as error:  # noqa: BLE001 — e.g. an unreadable certificate
        return fail(error, args)
    finally:
        sock.close()
    return EXIT_OK
