#!/usr/bin/env python3
"""Fault soak (issue 10 item 4): a small campaign under random faults, seed after seed.

    python3 dev.py run python bench/soak.py                      # seeds 1–100, 3 assets
    python3 dev.py run python bench/soak.py --seeds 20 --quick   # what the suite runs
    python3 dev.py run python bench/soak.py --first-seed 17 --seeds 1   # replay one seed

Each seed runs the example brief (3 assets with `--quick` 2, 2 drafts each, 0.05 s generation)
against its own `EvoLinkSimulator(seed=…, chaos=SOAK_RATES)` and a seeded flaky storage, one
after another in one temporary Prefect API on 127.0.0.1, and checks the invariants of
`bench/harness/soak.py` (manifest written, billed = reported, no duplicate payment, every billed
image stored or listed lost, the documented final run state). Prints a Markdown row per seed and a
summary on stdout (progress and each failing seed's report on stderr); exits 1 when a seed broke
an invariant.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/x.py` puts bench/ first, not the project root

# Before Prefect is imported: its settings are read once.
_PREFECT_HOME = tempfile.mkdtemp(prefix="soak-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")  # seeds fail on purpose
# Prefect task retries after the client's own retries: as in the suite (tests/conftest.py).
os.environ.setdefault("EVOLINK_TASK_RETRY_DELAYS", "0.1,0.1")
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")
os.environ["EVOLINK_ALLOW_PRIVATE_URLS"] = "true"  # the simulator's links are http://127.0.0.1
for _name in (
    "EVOLINK_API_KEY",
    "EVOLINK_BASE_URL",
    "EVOLINK_ASSETS_DIR",
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "EVOLINK_LIMITS_STRICT",
):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


def main(argv: list[str] | None = None) -> int:
    from bench.harness.soak import (
        BENCH_ASSETS,
        SOAK_ASSETS,
        SOAK_RATES,
        SeedResult,
        SoakConfig,
        markdown_table,
        run_seed,
        summary,
        table_row,
    )
    from evolink.simulator import FaultRates

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help=f"only the assets {', '.join(SOAK_ASSETS)}"
    )
    parser.add_argument(
        "--rates",
        default=None,
        help="JSON object of FaultRates fields that replace the soak's (e.g. '{\"get\": 0.2}')",
    )
    parser.add_argument("--storage-put-rate", type=float, default=None)
    parser.add_argument("--storage-permanent-share", type=float, default=None)
    parser.add_argument("--storage-json-rate", type=float, default=None)
    args = parser.parse_args(argv)

    rates = SOAK_RATES
    if args.rates:
        rates = FaultRates.from_dict({**SOAK_RATES.to_dict(), **json.loads(args.rates)})
    changes: dict[str, object] = {
        "rates": rates,
        "assets": SOAK_ASSETS if args.quick else BENCH_ASSETS,
    }
    for name in ("storage_put_rate", "storage_permanent_share", "storage_json_rate"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    config = dataclasses.replace(SoakConfig(), **changes)  # type: ignore[arg-type]

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    results: list[SeedResult] = []
    started = time.monotonic()
    print("starting a temporary Prefect API on 127.0.0.1 …", file=sys.stderr, flush=True)
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        tempfile.TemporaryDirectory(prefix="soak-") as workdir,
    ):
        soak_started = time.monotonic()
        for n, seed in enumerate(seeds, 1):
            result = run_seed(seed, Path(workdir), config)
            results.append(result)
            verdict = "ok" if result.ok else "BROKE " + "; ".join(result.violations)
            print(
                f"[{n}/{len(seeds)}] seed {seed}: {result.seconds:.1f}s {verdict}",
                file=sys.stderr,
                flush=True,
            )
            if not result.ok:
                print(result.report(), file=sys.stderr, flush=True)
                print(table_row(result), file=sys.stderr, flush=True)
        soak_seconds = time.monotonic() - soak_started

    print(markdown_table(results))
    print()
    print(summary(results))
    shown = {k: v for k, v in rates.to_dict().items() if k not in ("mix", "fail_codes")}
    print(
        f"Assets {', '.join(config.assets)} × {config.drafts} drafts; chaos {json.dumps(shown)}"
        f"; storage put {config.storage_put_rate} (permanent share "
        f"{config.storage_permanent_share}), json {config.storage_json_rate}. Soak "
        f"{soak_seconds:.0f} s, total {time.monotonic() - started:.0f} s."
    )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
