#!/usr/bin/env python3
"""Fault matrix (issue #5): the example campaign under each fault, as the README's table.

    python3 dev.py run python bench/fault_matrix.py              # all rows, all 4 assets
    python3 dev.py run python bench/fault_matrix.py --quick      # the test suite's 2 assets
    python3 dev.py run python bench/fault_matrix.py --rows 5xx,expired-links --workers 1

Everything runs on 127.0.0.1: a temporary Prefect API, one EvoLink simulator per row, a moto S3
server, and (for the killed-process row) a child process. The rows, how each fault is provoked
and how each figure is measured live in `bench/harness/fault_matrix.py`, which
`tests/test_fault_matrix.py` runs too. Prints the Markdown table on stdout (progress on
stderr); exits 1 when a row misses its goal (see each row's check in that module).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/x.py` puts bench/ first, not the project root

# Before Prefect is imported: its settings are read once. The killed-process row's child
# inherits these too.
_PREFECT_HOME = tempfile.mkdtemp(prefix="fault-matrix-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")  # rows fail on purpose
# Prefect task retries after the client's own retries: production waits 10 s then 60 s; the
# matrix counts retries, it does not need to sit through them.
os.environ.setdefault("EVOLINK_TASK_RETRY_DELAYS", "0.1,0.1")
# SQLITE_BUSY → 503 streaks on concurrent flow-run creation: see tests/conftest.py
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
    from bench.harness.fault_matrix import QUICK_ASSETS, SCENARIO_IDS, SCENARIOS, Result

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        default=",".join(SCENARIO_IDS),
        help=f"comma-separated row ids (default all: {', '.join(SCENARIO_IDS)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"only the assets {', '.join(QUICK_ASSETS)} (what the tests run)",
    )
    parser.add_argument("--workers", type=int, default=4, help="rows run side by side (default 4)")
    args = parser.parse_args(argv)
    wanted = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = sorted(set(wanted) - set(SCENARIO_IDS))
    if unknown:
        parser.error(f"unknown row(s) {unknown}; known: {', '.join(SCENARIO_IDS)}")

    import logging

    from moto.server import ThreadedMotoServer
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from bench.harness.fault_matrix import check, markdown_table, run_matrix, temporary_workdir

    scenarios = [s for s in SCENARIOS if s.id in wanted]
    assets = QUICK_ASSETS if args.quick else None
    failures: list[str] = []
    done = 0

    def report(scenario: object, outcome: Result | BaseException) -> None:
        nonlocal done
        done += 1
        row_id = getattr(scenario, "id", "?")
        if isinstance(outcome, BaseException):
            failures.append(f"{row_id}: {type(outcome).__name__}: {outcome}")
            print(
                f"[{done}/{len(scenarios)}] {row_id}: ERROR {outcome!r}",
                file=sys.stderr,
                flush=True,
            )
            return
        try:
            check(outcome)
            verdict = "goal met"
        except AssertionError as error:
            failures.append(f"{row_id}: {error}")
            verdict = f"GOAL MISSED: {error}"
        print(
            f"[{done}/{len(scenarios)}] {row_id}: {outcome.seconds:.1f}s, {verdict}",
            file=sys.stderr,
            flush=True,
        )

    started = time.monotonic()
    print(
        "starting a temporary Prefect API and a moto S3 server on 127.0.0.1 …",
        file=sys.stderr,
        flush=True,
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        with (
            prefect_test_harness(server_startup_timeout=120),
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
            temporary_workdir() as workdir,
        ):
            matrix_started = time.monotonic()
            results = run_matrix(
                scenarios,
                workdir,
                s3_endpoint=f"http://{host}:{port}",
                assets=assets,
                workers=args.workers,
                on_done=report,
            )
            matrix_seconds = time.monotonic() - matrix_started
    finally:
        moto.stop()

    rows = [r.row for r in results.values() if isinstance(r, Result)]
    shape = next((r.shape for r in results.values() if isinstance(r, Result)), None)
    print(markdown_table(rows))
    if shape is not None:
        print(
            f"\n{len(rows)} rows; briefs/spring-launch.yaml with {shape.assets} assets × "
            f"{shape.drafts} drafts ({shape.jobs} paid jobs, {shape.images} images when nothing "
            f"fails); matrix {matrix_seconds:.0f} s, total {time.monotonic() - started:.0f} s "
            f"with {args.workers} rows side by side."
        )
    if failures:
        print("\nRows that missed their goal:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
