"""The simulator as a real HTTP/1.1 server on loopback, and its start/stop handle.

A real socket matters: the client's timeouts, keep-alive pool, retries on dropped connections and
streamed downloads are only tested when bytes really cross one. The standard library's
ThreadingHTTPServer is enough (tests make tens of requests, not thousands) and adds no dependency.

Every reply — API, download, admin, error, even the standard library's own 400/501 — carries
`X-EvoLink-Simulator: 1`, so nothing that talks to it can mistake it for the real EvoLink API,
and a fresh `X-Request-Id`: the header the client keeps as EvoLink's request id (on API errors
and submit records).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from evolink.simulator.account import (
    DEFAULT_API_KEY,
    DEFAULT_IDEMPOTENCY_TTL_SECONDS,
    DEFAULT_TASK_TTL_SECONDS,
)
from evolink.simulator.callbacks import CallbackAttempt
from evolink.simulator.chaos import FaultRates
from evolink.simulator.faults import Fault
from evolink.simulator.files import DEFAULT_FILE_QUOTA, DEFAULT_FILE_TTL_SECONDS
from evolink.simulator.ledger import LedgerEntry, max_concurrent
from evolink.simulator.replies import Reply, error_reply, invalid_request
from evolink.simulator.service import SimulatorService
from evolink.simulator.state import StateFile, WriteBehind

log = logging.getLogger("evolink.simulator")

CHUNK_SIZE: Final = 64 * 1024
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
IDLE_TIMEOUT_SECONDS: Final = 60.0
SIMULATOR_HEADER: Final = "X-EvoLink-Simulator"
"""On every reply: this is the simulator, not the real EvoLink API."""
REQUEST_ID_HEADER: Final = "X-Request-Id"
"""On every reply, a fresh id (`req_sim_…`) where EvoLink sends its request id."""


class _Server(ThreadingHTTPServer):
    """Daemon handler threads, plus a registry of open sockets so stop() can hang them up."""

    daemon_threads = True
    # SO_REUSEADDR: a simulator restarted at once gets its port back even while the old
    # socket lingers in TIME_WAIT (it never lets two live listeners share a port on Linux).
    allow_reuse_address = True
    # listen() backlog: socketserver's default of 5 resets connections when a catalogue
    # benchmark opens 50-100 at once; a real API's load balancer accepts them.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], service: SimulatorService) -> None:
        self.service = service
        self.open_connections: set[socket.socket] = set()
        self.connections_accepted = 0
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-reply (a cancelled download, a test's timeout) is routine
        for a test server: one DEBUG line, not a traceback on stderr. Anything else is a bug in
        the simulator and still gets the full traceback."""
        if isinstance(sys.exception(), (ConnectionError, TimeoutError)):
            log.debug("client %s went away: %s", client_address, sys.exception())
            return
        super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, asks the service, writes the reply (or hangs up without one)."""

    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    server_version = "EvoLinkSimulator/1.0"
    timeout = IDLE_TIMEOUT_SECONDS  # an idle keep-alive connection is closed after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle's algorithm holds
        # the second one until the client's delayed ACK (~40 ms on Linux) — per request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)
            self.server.connections_accepted += 1

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.open_connections.discard(self.connection)

    def end_headers(self) -> None:
        """Every reply says it comes from the simulator — ours and the standard library's
        own error pages alike, since both end their headers here."""
        self.send_header(SIMULATOR_HEADER, "1")
        self.send_header(REQUEST_ID_HEADER, f"req_sim_{uuid.uuid4().hex[:20]}")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _handle(self) -> None:
        length_header = self.headers.get("Content-Length")
        try:
            length = int(length_header) if length_header else 0
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._write(invalid_request("Request body too large", status=413))
            return
        body = self.rfile.read(length) if length else b""
        loopback = self.client_address[0] in LOOPBACK
        try:
            service = self.server.service
            reply = service.dispatch(self.command, self.path, self.headers, body, loopback)
        except Exception:  # a simulator bug must show as a 500, not as a hung client
            log.exception("simulator error on %s %s", self.command, self.path)
            reply = error_reply(500, "internal_error", "simulator bug, see its log", "api_error")
        if reply.drop:
            # Nothing is written: the server closes the socket (FIN) once this returns, so the
            # client reads EOF where a status line should be — a RemoteProtocolError in httpx.
            self.close_connection = True
            return
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        view = memoryview(reply.body)
        for start in range(0, len(view), CHUNK_SIZE):
            self.wfile.write(view[start : start + CHUNK_SIZE])

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class EvoLinkSimulator:
    """A local EvoLink API on 127.0.0.1 with scriptable faults and a ledger of every task.

    with EvoLinkSimulator(generation_seconds=0.3) as sim:
        client = httpx.Client(base_url=sim.base_url,
                              headers={"Authorization": f"Bearer {sim.api_key}"})
        sim.add_fault(Fault(kind="rate_limit", retry_after=1))
        ...
        assert len(sim.ledger()) == 1

    Random faults by rate, for soak tests (see `evolink.simulator.chaos`):
    `EvoLinkSimulator(seed=3, chaos=FaultRates(create=0.05, get=0.03, download=0.03))`.

    A request with a `callback_url` gets the finished task POSTed there, in the background
    (`evolink.simulator.callbacks`; `sim.callbacks` lists the attempts). The URL is https-only,
    so `callback_ca_file` names the CA a local receiver's certificate is signed by.

    Like the real API it forgets, by its clock: a task `task_ttl_seconds` after it finished, an
    Idempotency-Key `idempotency_ttl_seconds` after its task was created; result links expire
    after `result_ttl_seconds`. `sim.age()` (POST /_sim/age) moves the clock past all of it at
    once. The ledger keeps every task ever billed.

    With `state_dir`, the simulator keeps its state in `<state_dir>/simulator-state.json`
    (`evolink.simulator.state`): a new simulator on the same directory carries on where the last
    one stopped — tasks, links, keys, ledger, clock — on the same port when `port=0` and that
    port is free. A corrupt file raises `SimulatorStateError` from the constructor.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        generation_seconds: float = 2.0,
        result_ttl_seconds: float = 86400,
        task_ttl_seconds: float = DEFAULT_TASK_TTL_SECONDS,
        idempotency_ttl_seconds: float = DEFAULT_IDEMPOTENCY_TTL_SECONDS,
        seed: int = 0,
        png_cache_bytes: int = 128 * 1024 * 1024,
        chaos: FaultRates | None = None,
        callback_ca_file: str | None = None,
        estimate_factor: float = 1.0,
        estimate_spread: float = 0.0,
        progress_curve: str = "linear",
        state_dir: str | os.PathLike[str] | None = None,
        file_ttl_seconds: float = DEFAULT_FILE_TTL_SECONDS,
        file_quota: int = DEFAULT_FILE_QUOTA,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.service = SimulatorService(
            api_key=api_key,
            generation_seconds=generation_seconds,
            result_ttl_seconds=result_ttl_seconds,
            task_ttl_seconds=task_ttl_seconds,
            idempotency_ttl_seconds=idempotency_ttl_seconds,
            seed=seed,
            png_cache_bytes=png_cache_bytes,
            chaos=chaos,
            callback_ca_file=callback_ca_file,
            estimate_factor=estimate_factor,
            estimate_spread=estimate_spread,
            progress_curve=progress_curve,
        )
        self.service.files.ttl_seconds = file_ttl_seconds
        self.service.files.quota = file_quota
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._saved_port: int | None = None  # the port the state file remembers
        self._state: StateFile | None = None
        self._saver: WriteBehind | None = None
        if state_dir is not None:
            self._state = StateFile(state_dir)
            self._saver = WriteBehind(self._state, lambda: self.service.changes, self._document)
            self._load_state(self._state)

    # --- the state file -------------------------------------------------------------------

    def _load_state(self, state: StateFile) -> None:
        """Carry on from the saved state, if any; a file that cannot be used is an error, not
        an empty start (that would silently lose every task it holds)."""
        document = state.load()
        if document is None:
            return
        try:
            self.service.restore_state(document)
            port = document.get("port")
            if port is not None and (isinstance(port, bool) or not 0 < int(port) < 65536):
                raise ValueError(f"port: {port!r} is not a TCP port")
        except (KeyError, IndexError, TypeError, ValueError) as error:
            problem = f"{type(error).__name__}: {error}"
            raise state.error(f"is not a simulator state this version can read ({problem})") from (
                error
            )
        self._saved_port = None if port is None else int(port)

    def _document(self) -> dict[str, Any]:
        return {**self.service.snapshot_state(), "port": self._saved_port}

    @property
    def state_file(self) -> Path | None:
        """Where the state is kept (None: in memory only, a restart forgets every task)."""
        return None if self._state is None else self._state.path

    def save_state(self) -> None:
        """Write the state file now (it is also written within ~0.25 s of every change, and
        when the simulator stops); a no-op without a state dir."""
        if self._saver is not None:
            self._saver.save_now()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> EvoLinkSimulator:
        """Bind and serve in a daemon thread; returns self. Port 0 picks a free port — with a
        state dir, the port saved there if it is free, so clients keep their base URL."""
        if self._server is not None:
            return self
        server = None
        if self._requested_port == 0 and self._saved_port:
            try:
                server = _Server((self.host, self._saved_port), self.service)
            except OSError as error:
                log.info("saved port %s is not free (%s): picking another", self._saved_port, error)
        if server is None:
            server = _Server((self.host, self._requested_port), self.service)
        self._server = server
        self.service.base_url = self.base_url
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"evolink-simulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        if self._saver is not None:
            self._saved_port = self.port
            try:
                self._saver.save_now()  # the port, and a file from the first second
            except BaseException:
                self._shut_down()
                raise
            self._saver.start()
        log.info("EvoLink simulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop accepting, hang up open keep-alive connections, release the port; with a
        state dir, save the state one last time."""
        if not self._shut_down():
            return
        if self._saver is not None:
            self._saver.stop()
            self._saver.save_now()

    def _shut_down(self) -> bool:
        """Stop serving and release the port; False if it was not running."""
        server, self._server = self._server, None
        if server is None:
            return False
        self.service.close()  # callbacks not yet sent are dropped
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        return True

    def __enter__(self) -> EvoLinkSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """e.g. http://127.0.0.1:54321 (a wildcard bind address is shown as 127.0.0.1)."""
        # Only the displayed address: a wildcard bind is reachable on loopback.
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # nosec B104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # --- configuration --------------------------------------------------------------------

    @property
    def api_key(self) -> str:
        return self.service.api_key

    @property
    def generation_seconds(self) -> float:
        """Default generation time of new tasks (a slow_task fault overrides it per task)."""
        return self.service.generation_seconds

    @generation_seconds.setter
    def generation_seconds(self, seconds: float) -> None:
        self.service.generation_seconds = seconds

    @property
    def bill_multiplier(self) -> float:
        """New tasks bill this many times their estimated tokens (1 = exactly the estimate);
        how tests make reality pricier than the pre-flight estimate."""
        return self.service.bill_multiplier

    @bill_multiplier.setter
    def bill_multiplier(self, factor: float) -> None:
        self.service.bill_multiplier = factor

    @property
    def estimate_factor(self) -> float:
        """New tasks report `estimated_time` = their true time × this (1 = exact); how tests
        and `bench/polling.py` make EvoLink's estimate wrong."""
        return self.service.estimate_factor

    @estimate_factor.setter
    def estimate_factor(self, factor: float) -> None:
        self.service.estimate_factor = factor

    @property
    def estimate_spread(self) -> float:
        """On top of `estimate_factor`, a seeded draw per task in 1 ± this (0.5: ±50 %)."""
        return self.service.estimate_spread

    @estimate_spread.setter
    def estimate_spread(self, spread: float) -> None:
        self.service.estimate_spread = spread

    @property
    def progress_curve(self) -> str:
        """How new tasks' progress moves over their time: "linear" (default), "ease-out"
        (front-loaded), "ease-in" or "stall" (back-loaded); see `tasks.PROGRESS_CURVES`."""
        return self.service.progress_curve

    @progress_curve.setter
    def progress_curve(self, name: str) -> None:
        self.service.progress_curve = name

    @property
    def result_ttl_seconds(self) -> float:
        return self.service.result_ttl_seconds

    @result_ttl_seconds.setter
    def result_ttl_seconds(self, seconds: float) -> None:
        self.service.result_ttl_seconds = seconds

    def now(self) -> float:
        """The simulator's Unix time (real time plus any `advance_clock`)."""
        return self.service.now()

    def advance_clock(self, seconds: float) -> None:
        """Move the simulator's clock forward: tasks finish and links expire without waiting."""
        self.service.advance_clock(seconds)

    def age(self, seconds: float | None = None) -> float:
        """Age the simulator by `seconds` (same as POST /_sim/age), or with None far enough
        that every task, link and Idempotency-Key that exists now has expired: GET answers
        404, links are refused, keys create new tasks — and the ledger still has every bill.
        Returns the seconds aged."""
        return self.service.age(seconds)

    @property
    def task_ttl_seconds(self) -> float:
        """New tasks are forgotten by the API (GET → 404) this long after they finish."""
        return self.service.task_ttl_seconds

    @task_ttl_seconds.setter
    def task_ttl_seconds(self, seconds: float) -> None:
        self.service.task_ttl_seconds = seconds

    @property
    def idempotency_ttl_seconds(self) -> float:
        """New tasks' Idempotency-Keys replay them this long after their creation; after
        that the same key makes (and bills) a new task."""
        return self.service.idempotency_ttl_seconds

    @idempotency_ttl_seconds.setter
    def idempotency_ttl_seconds(self, seconds: float) -> None:
        self.service.idempotency_ttl_seconds = seconds

    # --- the Files API (evolink/simulator/files.py) ------------------------------------------

    @property
    def files_base_url(self) -> str:
        """Where the Files API is served: the same server (EvoLink uses another host)."""
        return self.base_url

    @property
    def file_ttl_seconds(self) -> float:
        """New uploads expire this long after they were made (EvoLink: 72 h)."""
        return self.service.files.ttl_seconds

    @file_ttl_seconds.setter
    def file_ttl_seconds(self, seconds: float) -> None:
        self.service.files.ttl_seconds = seconds

    @property
    def file_quota(self) -> int:
        """How many live uploads the account may hold (EvoLink: 100)."""
        return self.service.files.quota

    @file_quota.setter
    def file_quota(self, files: int) -> None:
        self.service.files.quota = files

    @property
    def file_request_counts(self) -> dict[str, int]:
        """Files API requests per route: {"upload", "list", "quota", "delete", "fetch"}."""
        return self.service.files.request_counts()

    # --- faults ---------------------------------------------------------------------------

    def add_fault(self, fault: Fault | dict[str, Any] | None = None, **fields: Any) -> Fault:
        """Arm a fault, given as `Fault(...)`, as a dict, or as keyword fields (`kind=...`)."""
        if fault is None:
            fault = Fault(**fields)
        elif isinstance(fault, dict):
            fault = Fault.from_dict({**fault, **fields})
        return self.service.fault_book.add(fault)

    def add_faults(self, faults: Iterable[Fault | dict[str, Any]]) -> list[Fault]:
        return [self.add_fault(fault) for fault in faults]

    @property
    def faults(self) -> list[Fault]:
        """Copies of every fault added, with `times` left and `fired` so far."""
        return self.service.fault_book.snapshot()

    @property
    def fault_counts(self) -> dict[str, int]:
        """How many times each fault kind fired."""
        return self.service.fault_book.counts()

    @property
    def chaos(self) -> FaultRates | None:
        """Random faults by rate per endpoint (None: off); settable while running, like
        POST /_sim/chaos. See `evolink.simulator.chaos`."""
        return self.service.chaos.rates

    @chaos.setter
    def chaos(self, rates: FaultRates | None) -> None:
        self.service.chaos.rates = rates

    @property
    def chaos_counts(self) -> dict[str, int]:
        """What the random faults did: {"<route>.<kind>": n, "task.<kind>": n}."""
        return self.service.chaos.counts()

    def reset(self) -> None:
        """Forget tasks, keys, counts, faults and clock offset (same as POST /_sim/reset); the
        chaos rates stay, their draws restart."""
        self.service.reset()

    # --- the books ------------------------------------------------------------------------

    def ledger(self) -> list[LedgerEntry]:
        """Every task created, in creation order, evaluated now — forgotten ones too."""
        return self.service.ledger()

    def billed_tasks(self) -> list[LedgerEntry]:
        """The entries that were charged (completed tasks)."""
        return [entry for entry in self.ledger() if entry.billed]

    def max_concurrent(self, *, include_pending: bool = False) -> int:
        """Peak number of tasks processing at once (see `ledger.max_concurrent`)."""
        entries = self.ledger()
        return max_concurrent(entries, include_pending=include_pending, now=self.service.now())

    @property
    def request_counts(self) -> dict[str, int]:
        """Requests received per route: {"create": .., "get": .., "download": ..}."""
        return self.service.request_counts()

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far: shows whether a client reuses keep-alive connections."""
        return self._server.connections_accepted if self._server else 0

    @property
    def callbacks(self) -> list[CallbackAttempt]:
        """Every callback POST so far (also GET /_sim/callbacks), in the order they were made:
        task id, URL without its query, attempt number, HTTP status or error."""
        return self.service.callbacks.attempts()

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The task object as GET /v1/tasks/{id} would show it now (None if unknown or
        forgotten)."""
        return self.service.task_object(task_id)
