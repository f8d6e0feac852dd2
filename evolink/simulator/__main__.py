"""`python -m evolink.simulator`: run the simulator in the foreground until Ctrl-C or SIGTERM.

The first line printed to stdout is the base URL alone, so a script or test that starts this as a
subprocess can read where to connect (useful with --port 0).

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

from evolink.simulator.chaos import FaultRates
from evolink.simulator.faults import Fault
from evolink.simulator.server import EvoLinkSimulator
from evolink.simulator.service import DEFAULT_API_KEY
from evolink.simulator.tasks import PROGRESS_CURVES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prefect-evolink simulator", description="Local EvoLink GPT Image 2 API simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--generation-seconds", type=float, default=2.0)
    parser.add_argument("--result-ttl-seconds", type=float, default=86400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--estimate-factor",
        type=float,
        default=1.0,
        help="estimated_time reported as the true time x this (1 = exact)",
    )
    parser.add_argument(
        "--estimate-spread",
        type=float,
        default=0.0,
        help="and x a per-task draw in 1 +/- this, from --seed (0.5: +/-50 %%)",
    )
    parser.add_argument(
        "--progress-curve",
        default="linear",
        choices=sorted(PROGRESS_CURVES),
        help="how progress moves over a task's time (ease-out: front-loaded; ease-in, "
        "stall: back-loaded)",
    )
    parser.add_argument(
        "--faults",
        default=None,
        help="JSON list of fault specs to arm at start (or @FILE to read them from a file)",
    )
    parser.add_argument(
        "--chaos",
        default=None,
        help="random faults by rate, a JSON object of FaultRates fields such as "
        '\'{"create": 0.05, "get": 0.03, "burst_length": 6}\' (or @FILE); drawn from --seed',
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    sim = EvoLinkSimulator(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        generation_seconds=args.generation_seconds,
        result_ttl_seconds=args.result_ttl_seconds,
        seed=args.seed,
        chaos=_load_chaos(args.chaos) if args.chaos else None,
        callback_ca_file=args.callback_ca_file,
        estimate_factor=args.estimate_factor,
        estimate_spread=args.estimate_spread,
        progress_curve=args.progress_curve,
    )
    if args.faults:
        sim.add_faults(_load_faults(args.faults))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with sim:
        print(sim.base_url, flush=True)
        print(
            f"EvoLink simulator on {sim.base_url} (API key {sim.api_key}); "
            f"admin: {sim.base_url}/_sim/health, /_sim/ledger, /_sim/faults, /_sim/chaos, "
            "/_sim/callbacks, "
            "/_sim/reset. "
            "Ctrl-C stops.",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
