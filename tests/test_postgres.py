"""Postgres and several workers: the loopback stack of tests/test_deployments.py, but with
`prefect server` on a real PostgreSQL (a throwaway cluster on a free loopback port) and two
process workers on one pool.

It shows that the provider limit holds across workers (the simulator's peak of active tasks
stays at the limit), that 30 `marketing.asset.requested` events give 30 completed runs spread
over both workers, with one billed task per product and the reported cost equal to the ledger;
that a run whose flow-run process is killed, or whose whole worker is killed (the worker's
process tree: a lost machine or container), ends Crashed and its rerun pays for nothing new.
The tests run in file order and the worker-kill test must stay last: it leaves one worker.
Every process (postgres, server, workers, flow runs) is stopped at the end, also on failure.
Skipped when PostgreSQL is not installed and cannot be installed (apt-get, as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bench.harness.postgres import Postgres, find_postgres
from evolink.simulator import EvoLinkSimulator, max_concurrent
from prefect_evolink.tasks.limits import LEASE_SECONDS
from tests.test_deployments import (
    ACTIVE_JOBS,
    BUCKET,
    EVENT_DEPLOYMENT,
    POOL,
    Processes,
    Stack,
    _artifacts,
    _base_env,
    _emit_rest,
    _flow_runs,
    _free_port,
    _save_blocks,
    _start_server,
    _start_worker,
    _tail,
    _wait_for,
)

WORKERS = ("pg-worker-a", "pg-worker-b")
EVENTS = 30
GENERATION_SECONDS = 1.0  # 30 jobs, two at a time: long enough that the two always overlap
WORKER_LIMIT = 6  # flow-run processes per worker at once (each costs ~2 s of CPU to start)
# The zombie automation's window: heartbeats come every 30 s (prefect.yaml; Prefect's minimum),
# so this is one heartbeat plus 10 s for a busy machine. Production keeps 90 s.
ZOMBIE_AFTER = 40


def _ensure_postgres() -> Path:
    found = find_postgres()
    if found is None:
        pytest.skip("PostgreSQL is not installed and cannot be (apt-get install postgresql)")
    return found


@dataclass
class PgStack:
    stack: Stack
    postgres: Postgres
    workers: dict[str, Path]  # name -> log
    worker_processes: dict[str, subprocess.Popen[bytes]]


def _deploy_and_start_workers(
    stack: Stack, processes: Processes
) -> dict[str, subprocess.Popen[bytes]]:
    _save_blocks(stack)  # before deploying, which references them
    setup = processes.start(
        [
            *(sys.executable, "dev.py", "deploy", "--active-jobs", str(ACTIVE_JOBS)),
            *("--zombie-after", str(ZOMBIE_AFTER)),
        ],
        env=stack.env,
        log=stack.logs / "setup.log",
    )
    import httpx

    def pool_exists() -> bool:
        if setup.poll() not in (None, 0):
            raise AssertionError(f"deploy failed:\n{_tail(stack.logs / 'setup.log')}")
        return httpx.get(f"{stack.api_url}/work_pools/{POOL}", timeout=5).status_code == 200

    _wait_for(pool_exists, timeout=90, what="the work pool")
    workers = {
        name: _start_worker(
            stack, processes, name, log=stack.logs / f"{name}.log", limit=WORKER_LIMIT
        )
        for name in WORKERS
    }
    code = setup.wait(timeout=180)
    assert code == 0, f"deploy failed:\n{_tail(stack.logs / 'setup.log')}"
    return workers


@pytest.fixture(scope="module")
def pg_stack() -> Iterator[PgStack]:
    from moto.server import ThreadedMotoServer

    pg_bin = _ensure_postgres()
    marker = uuid.uuid4().hex
    processes = Processes(marker)
    with tempfile.TemporaryDirectory(prefix="evolink-pg-") as tmp, ExitStack() as cleanup:
        home, logs, pgdir = Path(tmp) / "prefect-home", Path(tmp) / "logs", Path(tmp) / "pg"
        for path in (home, logs, pgdir):
            path.mkdir()
        os.chmod(tmp, 0o755)  # the postgres user must reach its directory
        if keep := os.environ.get("EVOLINK_E2E_LOGS"):
            cleanup.callback(shutil.copytree, logs, keep, dirs_exist_ok=True)
        postgres = Postgres(pg_bin, pgdir, _free_port())
        cleanup.callback(postgres.stop)  # runs last: after the server is gone
        postgres.start()
        s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        s3_server.start()
        cleanup.callback(s3_server.stop)
        simulator = cleanup.enter_context(
            EvoLinkSimulator(generation_seconds=GENERATION_SECONDS, seed=12)
        )
        cleanup.callback(processes.stop_all)  # runs first: workers, server, leftovers
        env = _base_env(marker, home)
        try:
            server_env = {**env, "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url}
            api_url = _start_server(processes, server_env, logs)
            env["PREFECT_API_URL"] = api_url
            host, port = s3_server.get_host_and_port()
            stack = Stack(api_url, env, simulator, f"http://{host}:{port}", logs)
            workers = _deploy_and_start_workers(stack, processes)
        except BaseException:
            for name in ("server.log", "setup.log", *(f"{w}.log" for w in WORKERS)):
                print(f"--- {name} ---\n{_tail(logs / name, 80)}", file=sys.stderr)
            print(f"--- postgres.log ---\n{_tail(postgres.log, 40)}", file=sys.stderr)
            raise
        logs_by_worker = {name: logs / f"{name}.log" for name in WORKERS}
        yield PgStack(stack, postgres, logs_by_worker, workers)


def _runs_by_worker(workers: dict[str, Path]) -> dict[str, set[str]]:
    """Which worker ran which flow run, from each worker's own log: both workers may pick up
    the same scheduled run, and the server lets one of them move it to Pending; the other logs
    "Aborted submission" and leaves it."""
    submitting = re.compile(r"submitting flow run '([0-9a-f-]{36})'")
    aborted = re.compile(r"Aborted submission of flow run '([0-9a-f-]{36})'")
    found = {}
    for name, log in workers.items():
        text = log.read_text(errors="replace")
        found[name] = set(submitting.findall(text)) - set(aborted.findall(text))
    return found


def _cost_rows(stack: Stack, run: Any, product_id: str) -> list[dict[str, Any]]:
    cost = _artifacts(stack, run.id)[f"evolink-product-{product_id}-cost"]
    return json.loads(cost.data) if isinstance(cost.data, str) else cost.data


@pytest.mark.slow
def test_server_runs_on_postgres(pg_stack: PgStack) -> None:
    assert pg_stack.postgres.running()
    import httpx

    # The server's schema lives in this cluster: its tables are there.
    psql = pg_stack.postgres._as_owner(
        "psql",
        "-h",
        "127.0.0.1",
        "-p",
        str(pg_stack.postgres.port),
        "-U",
        "postgres",
        "-tAc",
        "select count(*) from information_schema.tables where table_name = 'flow_run'",
    )
    out = subprocess.run(psql, capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.strip() == "1"
    assert httpx.get(f"{pg_stack.stack.api_url}/health", timeout=5).status_code == 200


@pytest.mark.slow
def test_thirty_events_two_workers_one_limit(pg_stack: PgStack) -> None:
    stack = pg_stack.stack
    before = len(stack.simulator.ledger())
    started = time.time()
    products = [f"pg-lamp-{i:02d}" for i in range(EVENTS)]
    payloads = [
        {"product_id": p, "prompt": f"desk lamp {p}, warm light", "quality": "low", "size": "1:1"}
        for p in products
    ]
    _emit_rest(stack, payloads)

    def final() -> list[Any] | None:
        runs = [
            run
            for run in _flow_runs(stack, EVENT_DEPLOYMENT)
            if run.parameters.get("product_id") in set(products)
        ]
        if len(runs) >= EVENTS and all(run.state and run.state.is_final() for run in runs):
            return runs
        return None

    try:
        runs = _wait_for(final, timeout=170, what=f"{EVENTS} finished runs", interval=1.0)
    except AssertionError:
        for name, log in pg_stack.workers.items():
            print(f"--- {name} ---\n{_tail(log, 60)}", file=sys.stderr)
        raise
    elapsed = time.time() - started

    # 30 completed runs, one per product.
    assert len(runs) == EVENTS
    assert all(run.state.is_completed() for run in runs), [
        (run.parameters["product_id"], run.state.type, run.state.message)
        for run in runs
        if not run.state.is_completed()
    ]
    assert sorted(run.parameters["product_id"] for run in runs) == sorted(products)

    # Spread over both workers, each run submitted by exactly one.
    by_worker = _runs_by_worker(pg_stack.workers)
    ids = {str(run.id) for run in runs}
    counts = {name: len(found & ids) for name, found in by_worker.items()}
    assert sum(counts.values()) == EVENTS, counts
    assert not (by_worker[WORKERS[0]] & by_worker[WORKERS[1]]), "a run submitted twice"
    assert all(count > 0 for count in counts.values()), counts

    # Ledger: one billed task per product, none for anything else; the peak within the limit.
    entries = [e for e in stack.simulator.ledger() if e.created_at >= started - 1]
    assert len(stack.simulator.ledger()) == before + EVENTS
    prompts = [e.request["prompt"] for e in entries]
    assert len(set(prompts)) == EVENTS == len(prompts), "a product was paid twice"
    assert all(e.billed for e in entries)
    now = stack.simulator.now()
    peak_submitted = max_concurrent(entries, include_pending=True, now=now)
    peak_processing = max_concurrent(entries, now=now)
    assert peak_submitted <= ACTIVE_JOBS and peak_processing <= ACTIVE_JOBS
    assert peak_processing == ACTIVE_JOBS  # the limit, not chance, was the bound

    # Billed = reported: the runs' cost artifacts against the ledger, task by task.
    ledger = {e.task_id: e for e in entries}
    reported: dict[str, Decimal] = {}
    for run in runs:
        for row in _cost_rows(stack, run, run.parameters["product_id"]):
            assert row["job"] == f"product/{run.parameters['product_id']}"
            reported[row["task_id"]] = Decimal(row["billed_usd"].lstrip("$"))
    assert set(reported) == set(ledger)
    for task_id, usd in reported.items():
        assert usd == ledger[task_id].billed_usd.quantize(Decimal("0.000001")), task_id
    total_ledger = sum((e.billed_usd for e in entries), Decimal(0))
    assert abs(sum(reported.values(), Decimal(0)) - total_ledger) <= Decimal("0.000001") * EVENTS

    print(
        f"\n{EVENTS} runs in {elapsed:.1f}s; per worker {counts}; peak submitted "
        f"{peak_submitted}, processing {peak_processing} (limit {ACTIVE_JOBS}); "
        f"billed ${total_ledger} = reported ${sum(reported.values(), Decimal(0))}",
        file=sys.stderr,
    )


@pytest.mark.slow
def test_a_killed_flow_run_crashes_and_its_rerun_pays_nothing_new(pg_stack: PgStack) -> None:
    """The flow-run process is killed while its job is at EvoLink: the worker reports the run
    crashed; rescheduled, it runs again on either worker, reattaches to the same task (its job
    record) and pays for nothing new."""

    from prefect.states import Scheduled

    from tests.test_suspend import _flow_run_pids, _read_run

    stack = pg_stack.stack
    stack.simulator.generation_seconds = 8.0  # still processing when the process is killed
    product = "pg-crash-lamp"
    payload = {"product_id": product, "prompt": "crash-test lamp, blue hour", "quality": "low"}
    _emit_rest(stack, [payload])

    paid, the_run = _paid_for(stack, payload), _product_run(stack, product)

    try:
        [entry] = _wait_for(paid, timeout=90, what="the task at EvoLink", interval=0.2)
        run = _wait_for(the_run, timeout=10, what="the flow run")
        time.sleep(1.0)  # the job record is written right after the submission answers
        pids = _wait_for(lambda: _flow_run_pids(run.id), timeout=10, what="its process")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        crashed = _wait_for(
            lambda: (r := _read_run(stack, run.id)).state.is_crashed() and r,
            timeout=60,
            what="the run to be reported crashed",
            interval=0.5,
        )
        assert crashed.state.is_crashed()
        # Two reports may come: the flow-run process's runner, then the worker seconds later
        # (which would overwrite a rerun already under way). Reschedule after the worker's.
        with contextlib.suppress(AssertionError):
            _wait_for(
                lambda: "infrastructure exited" in (_read_run(stack, run.id).state.message or ""),
                timeout=20,
                what="the worker's crash report",
                interval=0.5,
            )
        stack.simulator.generation_seconds = GENERATION_SECONDS
        result = stack.call(
            lambda client: client.set_flow_run_state(run.id, Scheduled(), force=True)
        )
        assert result.status.value == "ACCEPT", result
        rescheduled = result.state.timestamp

        def rerun_final() -> Any:
            r = _read_run(stack, run.id)
            return r.state.is_final() and r.state.timestamp > rescheduled and r

        done = _wait_for(
            rerun_final,
            timeout=120,
            what="the rerun",
            interval=0.5,
        )
    except AssertionError:
        for name, log in pg_stack.workers.items():
            print(f"--- {name} ---\n{_tail(log, 60)}", file=sys.stderr)
        raise
    finally:
        stack.simulator.generation_seconds = GENERATION_SECONDS
    assert done.state.is_completed(), f"{done.state.type}: {done.state.message}"
    assert [e.task_id for e in paid()] == [entry.task_id]  # 0 new paid tasks
    [row] = _cost_rows(stack, done, product)
    assert row["task_id"] == entry.task_id


def _paid_for(stack: Stack, payload: dict[str, Any]) -> Callable[[], list[Any]]:
    """The simulator's ledger entries of this payload's prompt (one per paid task)."""
    return lambda: [e for e in stack.simulator.ledger() if e.request["prompt"] == payload["prompt"]]


def _product_run(stack: Stack, product: str) -> Callable[[], Any]:
    """The event deployment's flow run for this product, once there is one."""

    def the_run() -> Any:
        runs = [
            run
            for run in _flow_runs(stack, EVENT_DEPLOYMENT)
            if run.parameters.get("product_id") == product
        ]
        return runs[0] if runs else None

    return the_run


def _process_tree(pid: int) -> list[int]:
    """`pid` and every descendant, from /proc: flow-run processes may start sessions of their
    own, so the worker's process group alone would miss them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid ..."
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo.extend(children.get(current, []))
    return tree


def _kill_tree(pid: int) -> set[int]:
    """Lose a machine: stop the whole tree first, so no process in it can notice the others
    dying (and report a crash, or start a child), then SIGKILL all of it at once."""
    stopped: set[int] = set()
    while new := [p for p in _process_tree(pid) if p not in stopped]:
        for member in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGSTOP)
        stopped.update(new)
    for member in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    return stopped


def _submit_record(stack: Stack, task_id: str, since: float) -> dict[str, Any] | None:
    """The job's `_jobs/<key>/submit.json` naming `task_id`: once it is stored, a rerun finds
    the task instead of sending the job again."""
    s3 = stack.s3()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="evolink/_jobs/")
    for page in pages:
        for item in page.get("Contents", []):
            if item["Key"].endswith("/submit.json") and item["LastModified"].timestamp() >= since:
                record = json.loads(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
                if record.get("task_id") == task_id:
                    return dict(record)
    return None


@pytest.mark.slow
def test_a_killed_worker_leaves_a_crashed_run_and_its_rerun_pays_nothing_new(
    pg_stack: PgStack,
) -> None:
    """The worker that owns a run dies with its flow-run process while the job is at EvoLink,
    as when its machine or container is lost: nobody is left to report the run. The deployed
    runs' heartbeats stop, and the `evolink-crash-zombie-runs` automation that
    `prefect-evolink deploy` created marks the run Crashed (its message, not a state this test
    sets). `prefect flow-run retry`, what a user runs, schedules it again; the surviving worker
    runs it, it reattaches to the same EvoLink task, pays for nothing new, and reports what the
    ledger billed. Must run last: it leaves the module with one worker."""
    from tests.test_suspend import _flow_run_pids, _read_run

    stack = pg_stack.stack
    assert all(p.poll() is None for p in pg_stack.worker_processes.values()), "a worker is down"
    stack.simulator.generation_seconds = 8.0  # still processing when the worker is killed
    product = "pg-lost-worker-lamp"
    payload = {"product_id": product, "prompt": "lost-worker lamp, dusk", "quality": "low"}
    started = time.time()
    _emit_rest(stack, [payload])

    paid, the_run = _paid_for(stack, payload), _product_run(stack, product)

    try:
        [entry] = _wait_for(paid, timeout=90, what="the task at EvoLink", interval=0.2)
        run = _wait_for(the_run, timeout=10, what="the flow run")
        _wait_for(
            lambda: _submit_record(stack, entry.task_id, started - 5),
            timeout=20,
            what="the job's submit record",
            interval=0.2,
        )
        [owner] = [
            name for name, ids in _runs_by_worker(pg_stack.workers).items() if str(run.id) in ids
        ]
        [survivor] = [name for name in WORKERS if name != owner]
        flow_run_pids = set(_flow_run_pids(run.id))
        assert flow_run_pids, "no process runs the flow"

        worker = pg_stack.worker_processes[owner]
        killed = _kill_tree(worker.pid)
        killed_at = time.time()
        worker.wait(timeout=10)  # reaped: no zombie left behind
        assert flow_run_pids <= killed, (flow_run_pids, killed)  # the run died with its worker
        survivor_log = pg_stack.workers[survivor]
        survivor_seen = len(survivor_log.read_bytes())
        assert _read_run(stack, run.id).state.is_running()  # and nobody said so

        crashed = _wait_for(
            lambda: (r := _read_run(stack, run.id)).state.is_crashed() and r,
            timeout=ZOMBIE_AFTER + 30 + 30,  # window after the last heartbeat, + slack
            what="the zombie automation to mark the run crashed",
            interval=0.5,
        )
        crashed_at = time.time()
        assert "No heartbeat from this run" in (crashed.state.message or ""), crashed.state

        stack.simulator.generation_seconds = GENERATION_SECONDS
        retried_at = time.time()
        stack.run_cli(sys.executable, "-m", "prefect", "flow-run", "retry", str(run.id))

        def rerun_final() -> Any:
            r = _read_run(stack, run.id)
            return r.state.is_final() and r.state.timestamp.timestamp() > retried_at and r

        # A killed run keeps its `evolink-active-jobs` slot until the slot's lease runs out
        # (LEASE_SECONDS), and the previous test's killed run may hold the other; the rerun's
        # job is already at EvoLink, so it polls on without waiting for either.
        done = _wait_for(rerun_final, timeout=LEASE_SECONDS - 30, what="the rerun", interval=0.5)
    except AssertionError:
        for name, log in pg_stack.workers.items():
            print(f"--- {name} ---\n{_tail(log, 60)}", file=sys.stderr)
        raise
    finally:
        stack.simulator.generation_seconds = GENERATION_SECONDS
    assert done.state.is_completed(), f"{done.state.type}: {done.state.message}"
    # The survivor ran the rerun.
    rerun_lines = survivor_log.read_bytes()[survivor_seen:].decode(errors="replace")
    assert f"submitting flow run '{run.id}'" in rerun_lines
    assert f"Aborted submission of flow run '{run.id}'" not in rerun_lines
    # Same task, 0 new paid tasks; billed = reported.
    [billed] = paid()
    assert billed.task_id == entry.task_id and billed.billed_usd > 0
    [row] = _cost_rows(stack, done, product)
    assert row["task_id"] == entry.task_id
    assert Decimal(row["billed_usd"].lstrip("$")) == billed.billed_usd.quantize(Decimal("0.000001"))
    print(
        f"\nworker {owner} killed ({len(killed)} processes); crashed by the automation after "
        f"{crashed_at - killed_at:.1f}s; rerun on {survivor} done {time.time() - retried_at:.1f}s "
        f"after `prefect flow-run retry`; test {time.time() - started:.1f}s",
        file=sys.stderr,
    )
