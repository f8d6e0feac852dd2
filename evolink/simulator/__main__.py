"""`python -m evolink.simulator`: run the simulator in the foreground until Ctrl-C or SIGTERM.

Also `prefect-evolink simulator` (same options). The first line printed to stdout is the base URL
alone, so a script or test that starts this as a subprocess can read where to connect (useful
with --port 0). Then, on stderr, it says loudly that this is the simulator and not the real
EvoLink API, where its state lives, and the environment that points code and workers at it.

    python -m evolink.simulator --state-dir .evolink-sim     # survives restarts, same port
    python -m evolink.simulator --task-ttl-seconds 600 --idempotency-ttl-seconds 300

`--state-dir DIR` keeps tasks, links, Idempotency-Keys, the ledger and the clock in
DIR/simulator-state.json, so a restart carries on where the last run stopped (and, with
--port 0, on the same port if it is free); without it a restart forgets every task. Tasks are
forgotten (GET → 404) `--task-ttl-seconds` after they finish and keys `--idempotency-ttl-seconds`
after their task was created, like at EvoLink; POST /_sim/age ages past all of it at once.

    python -m evolink.simulator --seed 3 --faults '[{"kind": "rate_limit", "times": 2}]'
    python -m evolink.simulator --seed 3 --chaos '{"create": 0.05, "get": 0.03, "download": 0.03,
        "burst_length": 6, "fail_task": 0.05, "cancel_task": 0.03}'      # or --chaos @FILE

`--faults` arms scripted faults (`evolink.simulator.faults`); `--chaos` turns on random faults
by rate per endpoint, drawn from `--seed` (`evolink.simulator.chaos`; change them later with
POST /_sim/chaos).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Final

from evolink.simulator.account import (
    DEFAULT_API_KEY,
    DEFAULT_IDEMPOTENCY_TTL_SECONDS,
    DEFAULT_TASK_TTL_SECONDS,
)
from evolink.simulator.chaos import FaultRates
from evolink.simulator.faults import Fault
from evolink.simulator.files import DEFAULT_FILE_QUOTA, DEFAULT_FILE_TTL_SECONDS
from evolink.simulator.server import EvoLinkSimulator
from evolink.simulator.state import SimulatorStateError
from evolink.simulator.tasks import PROGRESS_CURVES

ADMIN_ROUTES: Final = (
    "/_sim/health",
    "/_sim/ledger",
    "/_sim/stats",
    "/_sim/faults",
    "/_sim/chaos",
    "/_sim/callbacks",
    "/_sim/clock",
    "/_sim/age",
    "/_sim/reset",
    "/_sim/files",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prefect-evolink simulator", description="Local EvoLink GPT Image 2 API simulator."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8787, help="0 picks a free port (default %(default)s)"
    )
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help="the Bearer key requests must send (default: the public test key %(default)s)",
    )
    parser.add_argument(
        "--generation-seconds",
        type=float,
        default=2.0,
        help="seconds a task takes to finish (default %(default)s)",
    )
    parser.add_argument(
        "--result-ttl-seconds",
        type=float,
        default=86400,
        help="result links expire after this (default %(default)s)",
    )
    parser.add_argument(
        "--task-ttl-seconds",
        type=float,
        default=DEFAULT_TASK_TTL_SECONDS,
        help="a task is forgotten (GET answers 404) this long after it finished (default "
        "%(default)s)",
    )
    parser.add_argument(
        "--idempotency-ttl-seconds",
        type=float,
        default=DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        help="an Idempotency-Key replays its task this long after the task was created; "
        "after that the same key creates (and bills) a new task (default %(default)s)",
    )
    parser.add_argument(
        "--file-ttl-seconds",
        type=float,
        default=DEFAULT_FILE_TTL_SECONDS,
        help="Files API uploads expire this long after they were made (EvoLink: 72 h; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--file-quota",
        type=int,
        default=DEFAULT_FILE_QUOTA,
        help="how many live uploads the Files API holds (EvoLink: 100; default %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep tasks, links, keys, ledger and clock in DIR/simulator-state.json so a "
        "restart carries on (and, with --port 0, reuses the saved port if free); default: "
        "memory only",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds task ids, random faults and estimate draws (default %(default)s)",
    )
    parser.add_argument(
        "--estimate-factor",
        type=float,
        default=1.0,
        help="estimated_time reported as the true time x this (1 = exact; default %(default)s)",
    )
    parser.add_argument(
        "--estimate-spread",
        type=float,
        default=0.0,
        help="and x a per-task draw in 1 +/- this, from --seed (0.5: +/-50 %%; default "
        "%(default)s)",
    )
    parser.add_argument(
        "--progress-curve",
        default="linear",
        choices=sorted(PROGRESS_CURVES),
        help="how progress moves over a task's time (ease-out: front-loaded; ease-in, "
        "stall: back-loaded; default %(default)s)",
    )
    parser.add_argument(
        "--faults",
        default=None,
        help="JSON list of fault specs to arm at start (or @FILE to read them from a file); "
        "default: none",
    )
    parser.add_argument(
        "--chaos",
        default=None,
        help="random faults by rate, a JSON object of FaultRates fields such as "
        '\'{"create": 0.05, "get": 0.03, "burst_length": 6}\' (or @FILE); drawn from --seed; '
        "default: none",
    )
    parser.add_argument(
        "--callback-ca-file",
        default=None,
        help="CA bundle (PEM) trusted for callback_url, e.g. the CA of a local receiver's "
        "certificate; default: the system's",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser.parse_args(argv)


def _load_faults(spec: str) -> list[Fault]:
    text = Path(spec[1:]).read_text(encoding="utf-8") if spec.startswith("@") else spec
    data = json.loads(text)
    return [Fault.from_dict(item) for item in (data if isinstance(data, list) else [data])]


def _load_chaos(spec: str) -> FaultRates:
    text = Path(spec[1:]).read_text(encoding="utf-8") if spec.startswith("@") else spec
    return FaultRates.from_dict(json.loads(text))


def _shown_key(api_key: str) -> str:
    """The key as the banner may print it: the simulator's own public test key in full; any
    other (someone may have passed a real one to --api-key) never."""
    return api_key if api_key == DEFAULT_API_KEY else "<the key given to --api-key>"


def banner(sim: EvoLinkSimulator) -> list[str]:
    """The stderr lines that say, unmistakably, what is running and how to use it."""
    state = sim.state_file
    where = (
        f"state in {state.parent}"
        if state is not None
        else "state in memory only: a restart forgets every task"
    )
    return [
        f"EvoLink SIMULATOR (not the real EvoLink API: synthetic images, nothing billed) on "
        f"{sim.base_url} — {where}",
        f"point your code and workers at it with EVOLINK_BASE_URL={sim.base_url} "
        f"EVOLINK_ALLOW_PRIVATE_URLS=true EVOLINK_API_KEY={_shown_key(sim.api_key)}",
        f"admin (loopback only): {sim.base_url}{', '.join(ADMIN_ROUTES)}. Ctrl-C stops.",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        sim = EvoLinkSimulator(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            generation_seconds=args.generation_seconds,
            result_ttl_seconds=args.result_ttl_seconds,
            task_ttl_seconds=args.task_ttl_seconds,
            idempotency_ttl_seconds=args.idempotency_ttl_seconds,
            seed=args.seed,
            chaos=_load_chaos(args.chaos) if args.chaos else None,
            callback_ca_file=args.callback_ca_file,
            estimate_factor=args.estimate_factor,
            estimate_spread=args.estimate_spread,
            progress_curve=args.progress_curve,
            state_dir=args.state_dir,
            file_ttl_seconds=args.file_ttl_seconds,
            file_quota=args.file_quota,
        )
    except (SimulatorStateError, ValueError) as error:
        print(f"prefect-evolink simulator: error: {error}", file=sys.stderr, flush=True)
        return 2
    if args.faults:
        sim.add_faults(_load_faults(args.faults))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with sim:
        print(sim.base_url, flush=True)  # first stdout line: scripts read it
        print("\n".join(banner(sim)), file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
