"""Benchmark 6 (issue #12): a catalogue sync — 1,000 product images asked for at once.

    python3 dev.py run python bench/catalogue.py                      # 1,000 products (~9 min)
    python3 dev.py run python bench/catalogue.py --products 100 --generation-seconds 5  # quick
    python3 dev.py run python bench/catalogue.py --variants ours,capped   # the spend cap's cost

One invocation measures both, on the same simulator (its own process, reset in between):

- ``ours``: a real `prefect server` on a real PostgreSQL (a throwaway cluster on loopback), the
  provider limits created as in production (`evolink-active-jobs` = `--concurrency`), and
  `--workers` task workers (`prefect-evolink serve-products`, each `--limit` concurrency /
  workers; the first also `--listen`s). The clock starts before the first of `--products`
  `marketing.asset.requested` events is emitted and stops when the Prefect API counts that
  many `product …` task runs Completed — each one's image stored, its job record and cost
  artifacts written. `stored s` is the time until the last job record was stored. If the API's
  count stops moving for `--api-stall-seconds` after that, the server lost task-run events (the
  last column counts the messages its in-memory broker dropped): the stall is reported in
  place of a wall time.
- ``capped``: ``ours`` with every product under a spend cap (an `EvoLinkSpendCap` block whose
  limit is never reached, named in each event's `spend_cap_block`): each product checks the cap
  and reserves under the storage's spend cap lock before it is sent (the storage is local, so
  a file lock the workers share), and releases its reservation after (issue #19: the check
  reads the running total, not every record).
- ``bare``: one asyncio script with one `httpx.AsyncClient` and a semaphore of `--concurrency`:
  per product POST → GETs paced by the same `PollSchedule()` from the create response →
  download to a file. No Prefect, no records, no artifacts.

Reported: wall time of each and the ratio; CPU seconds of the Prefect server, of PostgreSQL
and of the task workers, per product; the simulator's ledger (one billed task per product, no
duplicates) and its peak of tasks generating at once (≤ the limit, across both workers).
A warm-up product runs first (workers subscribed, limits cached), outside the clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, SimulatorProcess, load_average, machine_line, print_table

from evolink.polling import PollSchedule

EVENT = "marketing.asset.requested"


# --- processes --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and all its live descendants."""
    total, stack = 0.0, [pid]
    ticks = os.sysconf("SC_CLK_TCK")
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            if current == pid:  # children that ended (e.g. closed database connections)
                total += (int(fields[13]) + int(fields[14])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(child) for child in children)
        except OSError:
            continue
    return total


class Stack:
    """PostgreSQL + `prefect server` + task workers, all children of this process (own process
    groups), stopped in reverse order by their pids."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[tuple[subprocess.Popen[bytes], int]] = []
        self.postgres: Any = None
        self.env: dict[str, str] = {}
        self.server_pid = 0
        self.postmaster_pid = 0
        self.worker_pids: list[int] = []

    def start_postgres(self) -> str:
        from bench.harness.postgres import Postgres, find_postgres

        pgdir = self.workdir / "pg"
        pgdir.mkdir()
        os.chmod(self.workdir, 0o755)  # the postgres user must reach its directory
        pg_bin = find_postgres()
        if pg_bin is None:
            raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
        self.postgres = Postgres(pg_bin, pgdir, _free_port())
        self.postgres.start()
        self.postmaster_pid = self.postgres.pid
        return self.postgres.url

    def start(
        self, args: list[str], env: dict[str, str], log: str, stop_signal: int = signal.SIGTERM
    ) -> subprocess.Popen[bytes]:
        with (self.workdir / log).open("wb") as sink:
            process = subprocess.Popen(
                args, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append((process, stop_signal))
        return process

    def stop(self) -> None:
        for process, stop_signal in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, stop_signal)  # a process worker stops on SIGINT only
        for process, _ in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self.postgres is not None:
            self.postgres.stop()


@contextlib.contextmanager
def prefect_on_postgres(workdir: Path) -> Iterator[Stack]:
    stack = Stack(workdir)
    try:
        database = stack.start_postgres()
        port = _free_port()
        env = {
            **os.environ,
            "PREFECT_API_DATABASE_CONNECTION_URL": database,
            "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "0.5",
            "PREFECT_SERVER_LOGGING_LEVEL": os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"),
        }
        env.pop("PREFECT_API_URL", None)
        server = stack.start(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env,
            "server.log",
        )
        stack.server_pid = server.pid
        api_url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError((workdir / "server.log").read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("prefect server did not start")
            time.sleep(0.5)
        stack.env = {**os.environ, "PREFECT_API_URL": api_url}
        yield stack
    finally:
        stack.stop()


# --- ours -------------------------------------------------------------------------------------


def _count_completed(api_url: str, prefix: str) -> int:
    body = {
        "task_runs": {
            "name": {"like_": prefix},
            "state": {"type": {"any_": ["COMPLETED"]}},
        }
    }
    reply = httpx.post(f"{api_url}/task_runs/count", json=body, timeout=30)
    reply.raise_for_status()
    return int(reply.json())


def _count_all(api_url: str, prefix: str) -> int:
    """Product task runs in any state: more than the products would mean a product ran twice."""
    body = {"task_runs": {"name": {"like_": prefix}}}
    reply = httpx.post(f"{api_url}/task_runs/count", json=body, timeout=30)
    reply.raise_for_status()
    return int(reply.json())


def _print_duplicates(api_url: str, prefix: str) -> None:
    """A product with more than one task run: when each was made and how it ended."""
    runs: list[dict[str, Any]] = []
    while True:
        body = {"task_runs": {"name": {"like_": prefix}}, "limit": 200, "offset": len(runs)}
        page = httpx.post(f"{api_url}/task_runs/filter", json=body, timeout=60).json()
        runs += page
        if len(page) < 200:
            break
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run["name"], []).append(run)
    twice = {name: found for name, found in by_name.items() if len(found) > 1}
    print(f"{len(twice)} products with more than one task run, e.g.:", flush=True)
    for name, found in list(twice.items())[:5]:
        for run in found:
            print(f"  {name} {run['id']} created {run['created']} {run['state_type']}", flush=True)


def _wait_records(assets: Path, tag: str, wanted: int, *, timeout: float, workdir: Path) -> None:
    """Until every product's job record is stored (its image is safe and its bill recorded)."""
    deadline = time.monotonic() + timeout
    while (done := _reported_usd(assets, tag)[0]) < wanted:
        if time.monotonic() > deadline:
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text()[-3000:]}" for p in workdir.glob("*.log")
            )
            raise RuntimeError(f"only {done}/{wanted} products stored in time\n{logs}")
        time.sleep(1.0)


def _count_failed(api_url: str, prefix: str) -> int:
    body = {
        "task_runs": {"name": {"like_": prefix}, "state": {"type": {"any_": ["FAILED", "CRASHED"]}}}
    }
    reply = httpx.post(f"{api_url}/task_runs/count", json=body, timeout=30)
    reply.raise_for_status()
    return int(reply.json())


def _emit(products: list[dict[str, Any]]) -> None:
    from prefect.events import emit_event
    from prefect.events.clients import get_events_client  # noqa: F401 — the worker's client

    for payload in products:
        emit_event(
            event=EVENT,
            resource={"prefect.resource.id": f"marketing.product.{payload['product_id']}"},
            payload=payload,
        )


def run_ours(
    sim: SimulatorProcess, args: argparse.Namespace, products: list[dict[str, Any]], tag: str
) -> dict[str, Any]:
    return _on_postgres("evolink-bench-catalogue-", _measure_ours, sim, args, products, tag)


CAP_BLOCK = "bench-catalogue-cap"


def run_capped(
    sim: SimulatorProcess, args: argparse.Namespace, products: list[dict[str, Any]], tag: str
) -> dict[str, Any]:
    """`ours` with a spend cap on every product (a limit no sync reaches)."""
    capped = [{**payload, "spend_cap_block": CAP_BLOCK} for payload in products]

    def measure(*given: Any) -> dict[str, Any]:
        from prefect_evolink.blocks import EvoLinkSpendCap

        EvoLinkSpendCap(limit_usd=Decimal(1_000_000)).save(CAP_BLOCK, overwrite=True)
        return _measure_ours(*given, cap_block=CAP_BLOCK)

    return _on_postgres("evolink-bench-capped-", measure, sim, args, capped, tag)


def _on_postgres(
    prefix: str,
    measure: Any,
    sim: SimulatorProcess,
    args: argparse.Namespace,
    products: list[dict[str, Any]],
    tag: str,
) -> dict[str, Any]:
    """`measure(sim, args, products, tag, stack, workdir)` on a fresh PostgreSQL-backed server."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        with prefect_on_postgres(workdir) as stack:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}):
                # The events worker of this process is bound to the API it first sent to: a
                # second variant's events must go to that variant's own server.
                from prefect.events.worker import EventsWorker

                EventsWorker.drain_all()
                result: dict[str, Any] = measure(sim, args, products, tag, stack, workdir)
                return result


def _measure_ours(
    sim: SimulatorProcess,
    args: argparse.Namespace,
    products: list[dict[str, Any]],
    tag: str,
    stack: Stack,
    workdir: Path,
    *,
    cap_block: str | None = None,
) -> dict[str, Any]:
    api_url = stack.env["PREFECT_API_URL"]
    from prefect_evolink.tasks.limits import ensure_limits

    asyncio.run(
        ensure_limits(
            active_jobs=args.concurrency,
            submits_per_minute=args.concurrency * 600.0,
            submit_burst=args.concurrency,
        )
    )
    worker_env = {
        **stack.env,
        "EVOLINK_API_KEY": sim.api_key,
        "EVOLINK_BASE_URL": sim.base_url,
        "EVOLINK_ASSETS_DIR": str(workdir / "assets"),
        "EVOLINK_LIMITS_STRICT": "true",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    }
    # A product keeps its worker slot while it downloads and stores, after it gave its provider
    # slot back: the workers together get a fifth more slots than the provider limit.
    per_worker = -(-(args.concurrency * 6 // 5) // args.workers)
    for index in range(args.workers):
        listen = ["--listen"] if index == 0 else []
        command = [
            sys.executable,
            "-m",
            "prefect_evolink",
            "serve-products",
            "--limit",
            str(per_worker),
            *listen,
        ]
        if profile := os.environ.get("BENCH_WORKER_PROFILER"):
            command = [sys.executable, profile, str(per_worker), *listen]
        worker = stack.start(
            command,
            worker_env,
            f"worker-{index}.log",
        )
        stack.worker_pids.append(worker.pid)
    _wait_for_line(workdir / "worker-0.log", "Listening:", timeout=120)
    time.sleep(2.0)  # the task workers' subscriptions open (no line to wait for)
    warm = {"product_id": f"{tag}-warmup", "prompt": "warm-up", "quality": "low"}
    if cap_block:
        warm["spend_cap_block"] = cap_block
    _emit([warm])
    if _wait_count(api_url, f"product {tag}-warmup", 1, stall=120, workdir=workdir) < 1:
        raise RuntimeError("the warm-up product's task run never completed")
    sim.reset()

    cpu_before = {
        "server": _tree_cpu_seconds(stack.server_pid),
        "postgres": _tree_cpu_seconds(stack.postmaster_pid),
        "workers": sum(_tree_cpu_seconds(pid) for pid in stack.worker_pids),
    }
    started, started_at = time.monotonic(), time.time()
    _emit(products)
    emitted = time.monotonic() - started
    _wait_records(workdir / "assets", tag, len(products), timeout=3600, workdir=workdir)
    stored_seconds = time.monotonic() - started
    api_completed = _wait_count(
        api_url, f"product {tag}-p%", len(products), stall=args.api_stall_seconds, workdir=workdir
    )
    seconds = time.monotonic() - started if api_completed == len(products) else None
    task_runs = _count_all(api_url, f"product {tag}-p%")
    if task_runs > len(products):
        _print_duplicates(api_url, f"product {tag}-p")
    cpu = {
        "server": _tree_cpu_seconds(stack.server_pid) - cpu_before["server"],
        "postgres": _tree_cpu_seconds(stack.postmaster_pid) - cpu_before["postgres"],
        "workers": sum(_tree_cpu_seconds(pid) for pid in stack.worker_pids) - cpu_before["workers"],
    }
    failed = _count_failed(api_url, f"product {tag}-p%")
    records, reported = _reported_usd(workdir / "assets", tag)
    if keep := os.environ.get("BENCH_KEEP_LOGS"):
        shutil.copytree(
            workdir, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("pg", "assets")
        )
    return {
        "seconds": seconds,
        "stored_seconds": stored_seconds,
        "api_completed": api_completed,
        "events_dropped": _server_dropped_events(workdir / "server.log"),
        "started_at": started_at,
        "emit_seconds": emitted,
        "cpu": cpu,
        "failed": failed,
        "records": records,
        "reported_usd": str(reported),
        "task_runs": task_runs,
    }


def run_flows(
    sim: SimulatorProcess, args: argparse.Namespace, products: list[dict[str, Any]], tag: str
) -> dict[str, Any]:
    """The deployment path for comparison: `prefect-evolink deploy`, `--workers` process
    workers, one `product-asset-on-request` flow run (one Python process) per event."""
    return _on_postgres("evolink-bench-flows-", _measure_flows, sim, args, products, tag)


def _measure_flows(
    sim: SimulatorProcess,
    args: argparse.Namespace,
    products: list[dict[str, Any]],
    tag: str,
    stack: Stack,
    workdir: Path,
) -> dict[str, Any]:
    from prefect_evolink.blocks import LocalAssetStorage
    from prefect_evolink.blocks.credentials import EvoLinkCredentials

    api_url = stack.env["PREFECT_API_URL"]
    EvoLinkCredentials(api_key=sim.api_key, base_url=sim.base_url).save("evolink", overwrite=True)
    LocalAssetStorage(base_dir=str(workdir / "assets")).save("evolink-assets", overwrite=True)
    deploy = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect_evolink",
            "deploy",
            "--active-jobs",
            str(args.concurrency),
            "--submits-per-minute",
            str(args.concurrency * 600),
        ],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if deploy.returncode != 0:
        raise RuntimeError(f"deploy failed:\n{deploy.stdout[-2000:]}\n{deploy.stderr[-3000:]}")
    worker_env = {**stack.env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    per_worker = -(-args.concurrency // args.workers)
    for index in range(args.workers):
        worker = stack.start(
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                "evolink-process",
                "--name",
                f"bench-{index}",
                "--limit",
                str(per_worker),
            ],
            worker_env,
            f"worker-{index}.log",
            stop_signal=signal.SIGINT,
        )
        stack.worker_pids.append(worker.pid)
    warm = {"product_id": f"{tag}-fwarmup", "prompt": "warm-up", "quality": "low"}
    _emit([warm])
    _wait_flow_runs(api_url, f"product {tag}-fwarmup", 1, timeout=300)
    sim.reset()
    cpu_before = _stack_cpu(stack)
    started, started_at = time.monotonic(), time.time()
    _emit(products)
    _wait_flow_runs(api_url, f"product {tag}-p%", len(products), timeout=7200)
    seconds = time.monotonic() - started
    cpu = {name: value - cpu_before[name] for name, value in _stack_cpu(stack).items()}
    records, reported = _reported_usd(workdir / "assets", tag)
    return {
        "seconds": seconds,
        "started_at": started_at,
        "cpu": cpu,
        "records": records,
        "reported_usd": str(reported),
    }


def _stack_cpu(stack: Stack) -> dict[str, float]:
    return {
        "server": _tree_cpu_seconds(stack.server_pid),
        "postgres": _tree_cpu_seconds(stack.postmaster_pid),
        "workers": sum(_tree_cpu_seconds(pid) for pid in stack.worker_pids),
    }


def _wait_flow_runs(api_url: str, prefix: str, wanted: int, *, timeout: float) -> None:
    body = {"flow_runs": {"name": {"like_": prefix}, "state": {"type": {"any_": ["COMPLETED"]}}}}
    bad = {
        "flow_runs": {"name": {"like_": prefix}, "state": {"type": {"any_": ["FAILED", "CRASHED"]}}}
    }
    deadline = time.monotonic() + timeout
    while True:
        done = httpx.post(f"{api_url}/flow_runs/count", json=body, timeout=30).json()
        if done >= wanted:
            return
        if httpx.post(f"{api_url}/flow_runs/count", json=bad, timeout=30).json():
            raise RuntimeError("a product flow run failed")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done}/{wanted} product flow runs completed in time")
        time.sleep(2.0)


def _wait_for_line(log: Path, text: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log.name} never said {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _wait_count(api_url: str, prefix: str, wanted: int, *, stall: float, workdir: Path) -> int:
    """Until the API counts `wanted` product task runs Completed; the count it reached.

    The server records a background task run's states from the events its worker sends. When
    the count stops moving for `stall` seconds (every job record is already stored by then),
    the server has lost those events (`_server_dropped_events`): the count is returned as it is
    and the bench reports the stall instead of a wall time.
    """
    last, moved = -1, time.monotonic()
    while True:
        done = _count_completed(api_url, prefix)
        if done >= wanted:
            return done
        if _count_failed(api_url, prefix):
            logs = "\n".join(p.read_text()[-2000:] for p in workdir.glob("worker-*.log"))
            raise RuntimeError(f"a product task run failed:\n{logs}")
        if done != last:
            last, moved = done, time.monotonic()
        elif time.monotonic() - moved > stall:
            print(f"the API's count stalled at {done}/{wanted} for {stall:.0f} s", flush=True)
            return done
        time.sleep(1.0)


def _server_dropped_events(log: Path) -> int:
    """Messages the server's in-memory broker dropped because a subscriber's queue (10,000
    messages) was full: each one a lost event, e.g. a task run's Completed state."""
    if not log.exists():
        return 0
    return log.read_text(errors="replace").count("Subscription queue is full")


# --- bare -------------------------------------------------------------------------------------


async def run_bare(
    sim: SimulatorProcess, concurrency: int, products: list[dict[str, Any]]
) -> float:
    """POST → paced GETs → download per product, `concurrency` at a time; no Prefect."""
    schedule = PollSchedule()
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    timeout = httpx.Timeout(60.0)
    limits = httpx.Limits(max_connections=concurrency * 2)
    with tempfile.TemporaryDirectory(prefix="evolink-bench-bare-") as out:
        async with (
            httpx.AsyncClient(
                base_url=sim.base_url, headers=headers, timeout=timeout, limits=limits
            ) as api,
            httpx.AsyncClient(timeout=timeout, limits=limits) as files,
        ):
            slots = asyncio.Semaphore(concurrency)

            async def product(payload: dict[str, Any]) -> None:
                body = {k: payload[k] for k in ("prompt", "size", "quality")} | {"n": 1}
                async with slots:
                    created = await api.post("/v1/images/generations", json=body)
                    created.raise_for_status()
                    task = created.json()
                    begun = time.monotonic()
                    while task["status"] not in ("completed", "failed", "cancelled"):
                        estimated = (task.get("task_info") or {}).get("estimated_time")
                        await asyncio.sleep(
                            schedule.next_delay(
                                time.monotonic() - begun, task["progress"], estimated
                            )
                        )
                        reply = await api.get(f"/v1/tasks/{task['id']}")
                        reply.raise_for_status()
                        task = reply.json()
                if task["status"] != "completed":
                    raise RuntimeError(f"task {task['id']} {task['status']}")
                dest = Path(out) / f"{payload['product_id']}.png"
                async with files.stream("GET", task["results"][0]) as response:
                    response.raise_for_status()
                    with dest.open("wb") as sink:
                        async for chunk in response.aiter_bytes(256 * 1024):
                            sink.write(chunk)

            started = time.monotonic()
            await asyncio.gather(*(product(p) for p in products))
            return time.monotonic() - started


# --- main -------------------------------------------------------------------------------------


def _ledger_check(sim: SimulatorProcess, started_at: float) -> dict[str, Any]:
    """The simulator's side: tasks, duplicates, bill, peak, and where the wall time went.

    `first_create_s`: clock start → first create (ramp-up); `busy_share`: the provider slots'
    generating time over (limit × first create → last finish), i.e. how well slots were handed
    on; `tail_s`: last finish → clock stop (the last downloads and records).
    """
    ledger = sim.ledger()
    prompts = [entry["request"]["prompt"] for entry in ledger]
    billed = [e for e in ledger if e["status"] == "completed" or Decimal(e["billed_usd"]) > 0]
    peak = sim.admin("GET", "stats").get("max_concurrent_processing")
    timing: dict[str, Any] = {}
    finished = [e for e in ledger if e["finished_at"] is not None]
    if finished and peak:
        first = min(e["created_at"] for e in ledger)
        last = max(e["finished_at"] for e in finished)
        busy = sum(e["finished_at"] - e["started_at"] for e in finished)
        timing = {
            "first_create_s": round(first - started_at, 2),
            "busy_share": round(busy / (peak * (last - first)), 3),
            "last_finish_s": round(last - started_at, 1),
        }
    return {
        "tasks": len(ledger),
        "distinct": len(set(prompts)),
        "billed": len(billed),
        "billed_usd": str(sum((Decimal(e["billed_usd"]) for e in billed), Decimal(0))),
        "peak": peak,
        **timing,
    }


def _reported_usd(assets: Path, tag: str) -> tuple[int, Decimal]:
    """Job records the product runs stored, and the bill they report (the cost artifacts are
    built from the same records)."""
    records = [json.loads(path.read_text()) for path in assets.glob("_jobs/*/result.json")]
    ours = [r for r in records if r.get("namespace", "").startswith(f"product/{tag}-p")]
    return len(ours), sum((Decimal(r["billed_usd"]) for r in ours), Decimal(0))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--generation-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--api-stall-seconds",
        type=float,
        default=180.0,
        help="after every record is stored, stop waiting for the API's count when it has not "
        "moved for this long (the server lost events) and report the stall",
    )
    parser.add_argument(
        "--variants",
        default="bare,ours",
        help="bare, ours (task workers), capped (ours under a spend cap), flows (flow runs)",
    )
    parser.add_argument(
        "--flow-products",
        type=int,
        default=100,
        help="products of the flows variant (one process each: 1,000 would take ~20 min)",
    )
    args = parser.parse_args()
    print(machine_line())
    tag = f"b{int(time.time()) % 100000}"
    products = [
        {
            "product_id": f"{tag}-p{i:05d}",
            "prompt": f"catalogue product {tag}-{i:05d}, studio light",
            "size": "1:1",
            "quality": "low",
        }
        for i in range(args.products)
    ]
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    with SimulatorProcess(generation_seconds=args.generation_seconds) as sim:
        for variant in args.variants.split(","):
            sim.reset()
            print(f"running {variant} … (load {load_average()})", flush=True)
            started_at = time.time()  # before the warm-up; each variant records its own start
            if variant == "bare":
                seconds = asyncio.run(run_bare(sim, args.concurrency, products))
                results[variant] = {"seconds": seconds}
            elif variant == "ours":
                results[variant] = run_ours(sim, args, products, tag)
            elif variant == "capped":
                results[variant] = run_capped(sim, args, products, tag)
            elif variant == "flows":
                results[variant] = run_flows(sim, args, products[: args.flow_products], tag)
            else:
                raise SystemExit(f"unknown variant {variant!r}")
            started_at = results[variant].get("started_at", started_at)
            results[variant]["ledger"] = _ledger_check(sim, started_at)
            results[variant]["products"] = (
                min(args.flow_products, len(products)) if variant == "flows" else len(products)
            )
            print(json.dumps(results[variant]), flush=True)
    bare = results.get("bare", {}).get("seconds")
    uncapped = results.get("ours", {}).get("seconds")
    for variant, result in results.items():
        cpu, ledger, n = result.get("cpu"), result["ledger"], result["products"]
        same = n == len(products)
        reported = result.get("reported_usd", "")
        seconds, stored = result["seconds"], result.get("stored_seconds")
        uncapped_stored = results.get("ours", {}).get("stored_seconds")
        rows.append(
            [
                variant,
                n,
                f"{seconds:.1f}" if seconds else f"stalled at {result.get('api_completed')}",
                f"{stored:.1f}" if stored else "",
                f"{seconds / bare:.3f}" if seconds and bare and same else "",
                f"{seconds / uncapped:.3f}" if variant == "capped" and seconds and uncapped else "",
                f"{stored / uncapped_stored:.3f}"
                if variant == "capped" and stored and uncapped_stored
                else "",
                f"{cpu['server'] / n * 1000:.0f}" if cpu else "",
                f"{cpu['postgres'] / n * 1000:.0f}" if cpu else "",
                f"{cpu['workers'] / n * 1000:.0f}" if cpu else "",
                f"{ledger['tasks']}/{ledger['distinct']}/{ledger['billed']}",
                f"${ledger['billed_usd']}" + (f" / ${reported}" if reported else ""),
                ledger["peak"],
                result.get("events_dropped", ""),
            ]
        )
    print_table(
        [
            "variant",
            "products",
            "wall s",
            "stored s",
            "ratio to bare",
            "ratio to ours",
            "stored, ratio to ours",
            "server CPU ms/product",
            "postgres CPU ms/product",
            "workers CPU ms/product",
            "tasks/distinct/billed",
            "billed / reported",
            "peak generating",
            "events dropped by the server",
        ],
        rows,
    )
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
