"""Shared helpers of the benchmarks in `bench/` (issue #5): environment, servers, RSS, tables.

Import this module before Prefect or any project module: `configure_environment()` runs on
import and sets what must be in place before Prefect reads its settings (a temporary
PREFECT_HOME, no analytics, the simulator's loopback links allowed as references).

Every server a benchmark starts listens on 127.0.0.1 only, and every one is stopped by the
process that started it (by its own pid, never by name).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the project root
    sys.path.insert(0, str(ROOT))

_PREFECT_HOME = tempfile.mkdtemp(prefix="evolink-bench-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)


def configure_environment(*, logging_to_api: bool = True) -> None:
    """Settings read once by Prefect at import: call before importing prefect (done on import).

    `logging_to_api` stays at Prefect's default (on), because that is what production runs pay;
    a benchmark may switch it off to measure its share.
    """
    os.environ["PREFECT_HOME"] = _PREFECT_HOME
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "true" if logging_to_api else "false"
    # Run logs stay at INFO (so the API handler gets what production sends); only the console
    # handler is quieted (errors only), so the result tables are readable.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "ERROR")
    os.environ["EVOLINK_ALLOW_PRIVATE_URLS"] = "true"  # simulator links are http://127.0.0.1
    os.environ.setdefault("EVOLINK_TASK_RETRY_DELAYS", "1,1")
    # SQLITE_BUSY → 503 streaks on concurrent flow-run creation: see tests/conftest.py
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")
    for name in ("EVOLINK_API_KEY", "EVOLINK_BASE_URL", "PREFECT_API_URL", "PREFECT_API_KEY"):
        os.environ.pop(name, None)
    # Loopback only: nothing in a benchmark may go through a proxy or leave the machine.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


configure_environment(
    logging_to_api=os.environ.get("BENCH_PREFECT_LOGGING_TO_API", "true") != "false"
)


# --- Prefect API ------------------------------------------------------------------------------


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """A temporary Prefect API (`prefect_test_harness`: SQLite in a temp dir, a uvicorn
    subprocess on 127.0.0.1) with the flow-run heartbeat off; yields the API URL."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield str(PREFECT_API_URL.value())


# --- The simulator in its own process ---------------------------------------------------------


class SimulatorProcess:
    """`python -m evolink.simulator --port 0` as a child process: the "remote" API.

    A separate process keeps the simulator's request handling and PNG rendering off our GIL, as
    the real service would be; admin calls (`/_sim/*`) read its ledger and request counts.
    """

    def __init__(self, *, generation_seconds: float, seed: int = 0) -> None:
        self.generation_seconds = generation_seconds
        self.seed = seed
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.api_key = ""

    def __enter__(self) -> SimulatorProcess:
        from evolink.simulator import DEFAULT_API_KEY

        self.api_key = DEFAULT_API_KEY
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "evolink.simulator",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--generation-seconds",
                str(self.generation_seconds),
                "--seed",
                str(self.seed),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()  # the first line is the base URL alone
        if not line.startswith("http://127.0.0.1:"):
            self.__exit__(None, None, None)
            raise RuntimeError(f"simulator did not start (printed {line!r})")
        self.base_url = line
        return self

    def __exit__(self, *exc: object) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)  # our own child, by pid
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def admin(self, method: str, path: str, json: Any = None) -> Any:
        response = httpx.request(method, f"{self.base_url}/_sim/{path}", json=json, timeout=30)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self.admin("POST", "reset")

    def ledger(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin("GET", "ledger")
        return result

    def request_counts(self) -> dict[str, int]:
        result: dict[str, int] = self.admin("GET", "stats")["request_counts"]
        return result


# --- Peak RSS -------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size now (VmRSS of /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssSampler:
    """Samples VmRSS in a thread every `interval` s; `peak - baseline` is the growth.

    `ru_maxrss` cannot be used for a phase: it is the high-water mark of the whole process
    life, so a warm-up spike would hide everything after it. The baseline is taken at `start`.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


# --- CPU time -------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int | None = None) -> float:
    """user + system CPU seconds of a process (all its threads); this one when pid is None."""
    with open(f"/proc/{pid or 'self'}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds per live Python thread of this process, by thread name."""
    result: dict[str, float] = {}
    for thread in threading.enumerate():
        tid = thread.native_id
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            continue
        name = thread.name
        result[name] = result.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICKS
    return result


def prefect_server_pid() -> int | None:
    """The pid of the temporary Prefect API's uvicorn subprocess (inside `prefect_api()`)."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    process = getattr(server, "server_process", None)
    return None if process is None else int(process.pid)


# --- Prefect client retries -----------------------------------------------------------------


class PrefectRetryCounter(logging.Handler):
    """Counts the Prefect client's automatic retries (and the seconds it slept before them).

    A SQLite-backed Prefect API answers 503 when a write transaction finds the database locked
    ("SQLITE_BUSY"); the client then sleeps (about 2 s, with jitter, growing) and tries again.
    Those sleeps are invisible in a CPU profile but sit on the flow's critical path.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.retries = 0
        self.sleep_seconds = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        marker = "Another attempt will be made in "
        if marker in message:
            self.retries += 1
            with contextlib.suppress(ValueError):
                self.sleep_seconds += float(message.split(marker, 1)[1].split("s.", 1)[0])

    def __enter__(self) -> PrefectRetryCounter:
        client_logger = logging.getLogger("prefect.client")
        self._level = client_logger.level
        client_logger.setLevel(logging.DEBUG)
        client_logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        client_logger = logging.getLogger("prefect.client")
        client_logger.removeHandler(self)
        client_logger.setLevel(self._level)


class PrefectApiCounter:
    """Counts the requests this process sends to the Prefect API (every thread: the engine's
    clients, the log and event workers) by method and path, ids folded to `{id}`, and the
    `PrefectClient`s it opens (`get_client()` … `async with`), and the run log lines handed to
    Prefect's API log handler (each one a row the API stores), while in use.

    It wraps `PrefectHttpxAsyncClient.send` and `PrefectClient.__aenter__` at class level and
    restores both on exit; nothing else changes.
    """

    _ID = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.clients = 0
        self.log_lines = 0

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def __enter__(self) -> PrefectApiCounter:
        from prefect.client.base import PrefectHttpxAsyncClient
        from prefect.client.orchestration import PrefectClient
        from prefect.logging.handlers import APILogHandler

        counter = self
        self._send = send = PrefectHttpxAsyncClient.send
        self._aenter = aenter = PrefectClient.__aenter__
        self._emit = emit = APILogHandler.emit

        def counted_emit(handler: Any, record: logging.LogRecord) -> None:
            counter.log_lines += 1
            emit(handler, record)

        async def counted_send(client: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            path = counter._ID.sub("/{id}", request.url.path.split("/api", 1)[-1])
            name = f"{request.method} {path}"
            counter.requests[name] = counter.requests.get(name, 0) + 1
            return await send(client, request, *args, **kwargs)

        async def counted_aenter(client: Any) -> Any:
            counter.clients += 1
            return await aenter(client)

        PrefectHttpxAsyncClient.send = counted_send  # type: ignore[method-assign]
        PrefectClient.__aenter__ = counted_aenter  # type: ignore[method-assign]
        APILogHandler.emit = counted_emit  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from prefect.client.base import PrefectHttpxAsyncClient
        from prefect.client.orchestration import PrefectClient
        from prefect.logging.handlers import APILogHandler

        PrefectHttpxAsyncClient.send = self._send  # type: ignore[method-assign]
        PrefectClient.__aenter__ = self._aenter  # type: ignore[method-assign]
        APILogHandler.emit = self._emit  # type: ignore[method-assign]


# --- Reporting ------------------------------------------------------------------------------


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    return (
        f"machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"load average {load_average()} (1/5/15 min) at {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A markdown table (pastes into the README as is)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()


def mib(n_bytes: float) -> str:
    return f"{n_bytes / (1024 * 1024):.1f}"
