"""The callback receiver under hostile traffic (#23): every attack against the real receiver.

`prefect-evolink callbacks` runs as it would in production — its own process, uvicorn, TLS —
on loopback, with `--read-timeout 6` (10 s by default) so that deadlines pass quickly. While
EvoLink (the simulator's callback sender, from 127.0.0.1) delivers ten genuine callbacks,
attackers, each from its own loopback address as from its own host:

- hold idle TLS connections open (64 from four addresses, reopened as soon as they are reset,
  and 64 more tried from one address: the per-source cap), connect without a TLS handshake,
  trickle headers a byte at a time (slowloris), and send half a body;
- send a 2,000-request junk flood over keep-alive connections: bad JSON, 5,000 levels of
  nesting, 5,000-digit numbers, NaN, duplicate keys, the wrong content type, no id, path
  traversal, oversized bodies and headers, unknown ids, the wrong method and path, replays of
  a reported task and forged callbacks for a task that is not finished.

It asserts outcomes and counts, never durations: the receiver stays up and `/healthz` answers
200 all along; every genuine callback is accepted on its first try and becomes one event on
the Prefect API's live stream; the API is read once per genuine callback, plus at most once per
2.5 s for the unfinished task; no request gets a 5xx, each kind of junk the answer it should;
every attacking connection is closed by the receiver; one audit line per request, no
traceback, no key. A second test restarts the receiver and starts a second replica on the same
storage: replays emit nothing.

The figures in the README's reliability section are this module's (`-s` prints them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import os
import re
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from evolink.campaign import campaign_namespace
from evolink.simulator import EvoLinkSimulator, Fault
from prefect_evolink.blocks import LocalAssetStorage
from tests import test_callbacks as base
from tests.test_callbacks import (
    CALLBACK_PATH,
    Tls,
    create_task,
    index,
    unique_campaign,
    wait_until,
)

tls, sim, storage = base.tls, base.sim, base.storage  # the fixtures, shared

T = TypeVar("T")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[1]
READ_TIMEOUT = 6.0  # the receiver's read deadline here (10 s by default)
NOT_FINAL_TTL = 2.5  # the receiver's default
GENUINE = 10
FLOOD = 2000
FLOOD_CONNECTIONS = 8
PER_SOURCE = 16  # the receiver's default cap
EVOLINK = "127.0.0.1"
HOLDERS = ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]  # 16 idle connections each
CAP_PROBE = "127.0.0.2"  # 64 tries from one address
NO_HANDSHAKE = "127.0.0.7"
SLOW = "127.0.0.8"  # slowloris and half bodies
FLOODER = "127.0.0.9"
GIVE_UP = READ_TIMEOUT + 20  # how long a test waits for the receiver to close a connection


# --- the receiver, as `prefect-evolink callbacks` ---------------------------------------------


@dataclass
class Receiver:
    process: subprocess.Popen[str]
    url: str
    port: int
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


@contextlib.contextmanager
def receiver(
    sim: EvoLinkSimulator, storage: LocalAssetStorage, tls: Tls, log: Path, *extra: str
) -> Iterator[Receiver]:
    """The CLI's receiver in its own process; stderr (the audit trail) goes to `log`."""
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "EVOLINK_API_KEY": sim.api_key,
        "EVOLINK_BASE_URL": sim.base_url,
        "EVOLINK_ALLOW_PRIVATE_URLS": "true",
    }
    command = [
        sys.executable, "-m", "prefect_evolink", "callbacks", "--port", "0",
        "--assets-dir", storage.base_dir, "--ssl-certfile", tls.cert, "--ssl-keyfile", tls.key,
        "--read-timeout", str(READ_TIMEOUT), *extra,
    ]  # fmt: skip
    with log.open("w") as errors:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT
        )
    try:
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.append(process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout=60)
        if not lines or not lines[0].startswith("https://"):
            raise AssertionError(f"the receiver did not start: {lines} {log.read_text()[-2000:]}")
        url = lines[0].strip()
        port = int(re.findall(r":(\d+)/", url)[0])
        yield Receiver(process, url, port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def health(port: int, trusted: ssl.SSLContext) -> httpx.Response:
    """GET /healthz from loopback (so with its details)."""
    return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trusted, timeout=10)


async def events_during(
    action: Callable[[], Awaitable[T]], watch: set[str], expected: set[str], settle: float = 3.0
) -> tuple[T, list[Any]]:
    """Run `action` with a live events subscriber open; return the `evolink.task.*` events for
    the resources in `watch`: once the `expected` ones have come (within 60 s), and all that
    come `settle` seconds after. (The receiver's events come from another process: a sentinel
    from this one could overtake them.) Events from before — the subscriber's backfill — are
    left out."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    names = EventFilter(event=EventNameFilter(prefix=["evolink.task."]))  # type: ignore[call-arg]
    seen: list[Any] = []
    started = datetime.datetime.now(datetime.UTC)
    async with get_events_subscriber(filter=names) as subscriber:
        result = await action()

        async def collect(until_expected: bool) -> None:
            async for event in subscriber:
                if event.resource.id in watch and event.occurred >= started:
                    seen.append(event)
                if until_expected and {e.resource.id for e in seen} >= expected:
                    return

        if expected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await collect(until_expected=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settle):
                await collect(until_expected=False)
    return result, seen


def resources(task_ids: Iterable[str]) -> set[str]:
    return {f"evolink.task.{task_id}" for task_id in task_ids}


# --- attacking connections ----------------------------------------------------------------------


def open_tls(port: int, source: str, trusted: ssl.SSLContext) -> ssl.SSLSocket | None:
    """A TLS connection from `source` that has finished its handshake; None when refused."""
    try:  # a reset at accept (the per-source or total cap) can beat connect() itself
        raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    except ConnectionResetError:
        return None
    try:
        return trusted.wrap_socket(raw, server_hostname="127.0.0.1")
    except OSError:
        raw.close()
        return None


def closed_by_peer(sock: socket.socket) -> bool:
    """Without blocking: whether the receiver ended this connection (EOF or reset)."""
    try:
        data = sock.recv(4096)
    except (ssl.SSLWantReadError, BlockingIOError, TimeoutError):
        return False
    except OSError:  # reset, or EOF in violation of the TLS protocol
        return True
    return not data or data.startswith(b"HTTP/1.1 408")


def wait_closed(socks: list[socket.socket], within: float) -> int:
    """How many of `socks` the receiver closed within `within` seconds (a bounded wait)."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + within
    while closed < len(socks) and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(timeout=min(left, 0.5)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if closed_by_peer(sock):
                closed += 1
                selector.unregister(sock)
    selector.close()
    for sock in socks:
        sock.close()
    return closed


@dataclass
class Holder:
    """Keeps `per_source` idle TLS connections open from each source, reopening every one the
    receiver resets, until `stop` (and never longer than `limit` seconds)."""

    port: int
    trusted: ssl.SSLContext
    sources: list[str]
    per_source: int
    limit: float
    stop: threading.Event = field(default_factory=threading.Event)
    opened: int = 0
    refused: int = 0
    reset: int = 0
    left_open: list[socket.socket] = field(default_factory=list)
    most_open: int = 0

    def run(self) -> None:
        slots: list[ssl.SSLSocket | None] = [None] * (len(self.sources) * self.per_source)
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            for n, sock in enumerate(slots):
                if sock is not None and closed_by_peer(sock):
                    self.reset += 1
                    sock.close()
                    slots[n] = sock = None
                if sock is None:
                    sock = open_tls(self.port, self.sources[n // self.per_source], self.trusted)
                    if sock is None:
                        self.refused += 1
                    else:
                        sock.setblocking(False)
                        self.opened += 1
                    slots[n] = sock
            self.most_open = max(self.most_open, sum(s is not None for s in slots))
            self.stop.wait(0.2)
        self.left_open = [sock for sock in slots if sock is not None]


def slowloris(port: int, trusted: ssl.SSLContext) -> bool:
    """Headers one byte every 0.5 s; True when the receiver cut it off before we gave up."""
    sock = open_tls(port, SLOW, trusted)
    assert sock is not None
    try:
        sock.sendall(b"POST /evolink/callback HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for _ in range(int(GIVE_UP / 0.5)):
            time.sleep(0.5)
            sock.sendall(b"a")
        return False
    except OSError:
        return True
    finally:
        sock.close()


def half_body(port: int, trusted: ssl.SSLContext) -> ssl.SSLSocket:
    """Headers for 1,000 bytes of body, then 10 of them, then nothing."""
    sock = open_tls(port, SLOW, trusted)
    assert sock is not None
    sock.sendall(
        b"POST /evolink/callback HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"id":"tas'
    )
    return sock


# --- the junk flood ------------------------------------------------------------------------------

JSON = {"content-type": "application/json"}


def junk_kinds(done: dict[str, Any], slow: str) -> list[tuple[str, str, str, Any, set[Any]]]:
    """(kind, method, path, body or a function of n, the answers it may get)."""
    return [
        ("bad JSON", "POST", CALLBACK_PATH, b'{"id": "task-', {400}),
        ("5,000 levels of nesting (10 KB)", "POST", CALLBACK_PATH,
         b"[" * 5000 + b"]" * 5000, {400}),
        ("a 5,000-digit number", "POST", CALLBACK_PATH,
         b'{"id":"task-unified-1-x","n":' + b"9" * 5000 + b"}", {400}),
        ("NaN", "POST", CALLBACK_PATH, b'{"id":"task-unified-1-x","n":NaN}', {400}),
        ("duplicate keys", "POST", CALLBACK_PATH,
         f'{{"id":"task-unified-1-x","id":"{slow}"}}'.encode(), {400}),
        ("wrong content type", "POST", CALLBACK_PATH, ("text/plain", b'{"id":"x"}'), {400}),
        ("no task id", "POST", CALLBACK_PATH, b'{"status":"completed"}', {400}),
        ("path traversal", "POST", CALLBACK_PATH, b'{"id":"../../_tasks/x"}', {400}),
        ("a body over 64 KiB", "POST", CALLBACK_PATH, b'{"pad":"' + b"x" * 66000 + b'"}', {413}),
        # h11 reads it when it comes at once (202 from the app), refuses it in pieces (400)
        ("a 20 KB header", "POST", CALLBACK_PATH, ("huge", b'{"id":"task-unified-1-huge"}'),
         {202, 400, "RemoteProtocolError", "ReadError", "WriteError"}),
        ("an unknown task id", "POST", CALLBACK_PATH,
         lambda n: f'{{"id":"task-unified-1-junk-{n}"}}'.encode(), {202, 429}),
        ("a replay of a reported task", "POST", CALLBACK_PATH, json.dumps(done).encode(), {200}),
        ("a forged callback for an unfinished task", "POST", CALLBACK_PATH,
         json.dumps({"id": slow, "status": "completed"}).encode(), {409}),
        ("the wrong method", "GET", CALLBACK_PATH, None, {405}),
        ("another path", "POST", "/evolink/../etc/passwd", b"{}", {404}),
    ]  # fmt: skip


async def flood(
    port: int, trusted: ssl.SSLContext, kinds: list[Any], on_sent: Callable[[int], None]
) -> list[tuple[str, int | str]]:
    """`FLOOD` requests, the kinds in turn, over `FLOOD_CONNECTIONS` keep-alive connections."""
    transport = httpx.AsyncHTTPTransport(
        verify=trusted,
        local_address=FLOODER,
        limits=httpx.Limits(max_connections=FLOOD_CONNECTIONS),
    )
    answers: list[tuple[str, int | str]] = []
    sent = iter(range(FLOOD))
    async with httpx.AsyncClient(
        transport=transport, base_url=f"https://127.0.0.1:{port}", timeout=30
    ) as http:

        async def worker() -> None:
            for n in sent:
                kind, method, path, body, _ = kinds[n % len(kinds)]
                headers = dict(JSON)
                if callable(body):
                    body = body(n)
                if isinstance(body, tuple):
                    what, body = body
                    if what == "huge":
                        headers["x-pad"] = "x" * 20_000
                    else:
                        headers["content-type"] = what
                try:
                    response = await http.request(method, path, content=body, headers=headers)
                    answers.append((kind, response.status_code))
                except httpx.HTTPError as error:
                    answers.append((kind, type(error).__name__))
                on_sent(n)

        await asyncio.gather(*(worker() for _ in range(FLOOD_CONNECTIONS)))
    return answers


# --- the tests -----------------------------------------------------------------------------------


def test_the_receiver_holds_under_hostile_traffic(
    sim: EvoLinkSimulator, storage: LocalAssetStorage, tls: Tls, tmp_path: Path
) -> None:
    trusted = ssl.create_default_context(cafile=tls.ca)
    figures: dict[str, Any] = {}
    with receiver(sim, storage, tls, tmp_path / "receiver.log") as running:
        namespace = campaign_namespace(unique_campaign(), "hero", "final")
        # Ten genuine tasks that finish when the clock is moved, mid-flood; one that never
        # does (forged callbacks target it); one finished and reported before the flood.
        sim.add_fault(Fault(kind="slow_task", seconds=600, times=GENUINE))
        genuine = [create_task(sim, callback_url=running.url) for _ in range(GENUINE)]
        sim.add_fault(Fault(kind="slow_task", seconds=10**6))
        slow = create_task(sim)
        done = create_task(sim)
        wait_until(lambda: (sim.task(done) or {}).get("status") == "completed")
        for task_id in (*genuine, slow, done):
            index(storage, task_id, namespace)
        done_body = sim.task(done) or {}
        first = httpx.post(running.url, json=done_body, verify=trusted, timeout=30)
        assert first.json()["status"] == "emitted"
        reads_before = sim.request_counts["get"]

        def attack() -> None:
            # One address tries 64 connections: the per-source cap admits 16.
            probes = [open_tls(running.port, CAP_PROBE, trusted) for _ in range(64)]
            admitted = [sock for sock in probes if sock is not None]
            holder = Holder(running.port, trusted, HOLDERS, PER_SOURCE, limit=120)
            holding = threading.Thread(target=holder.run, daemon=True)
            holding.start()
            bare = [
                socket.create_connection(
                    ("127.0.0.1", running.port), timeout=10, source_address=(NO_HANDSHAKE, 0)
                )
                for _ in range(8)
            ]
            halves = [half_body(running.port, trusted) for _ in range(4)]
            loris: list[bool] = []
            lorises = [
                threading.Thread(
                    target=lambda: loris.append(slowloris(running.port, trusted)), daemon=True
                )
                for _ in range(4)
            ]
            for thread in lorises:
                thread.start()
            wait_until(lambda: holder.most_open >= 64, timeout=30)

            during: list[int] = []
            most_open = 0
            flood_done = threading.Event()
            answers: list[tuple[str, int | str]] = []

            def on_sent(n: int) -> None:
                if n == 300:  # EvoLink's ten callbacks arrive in the middle of the flood
                    sim.advance_clock(601)

            def run_flood() -> None:
                try:
                    kinds = junk_kinds(done_body, slow)
                    answers.extend(asyncio.run(flood(running.port, trusted, kinds, on_sent)))
                finally:
                    flood_done.set()

            started = time.monotonic()
            flooding = threading.Thread(target=run_flood, daemon=True)
            flooding.start()
            for _ in range(600):  # /healthz while it lasts (bounded: 600 × 0.2 s)
                if flood_done.wait(0.2):
                    break
                answer = health(running.port, trusted)
                during.append(answer.status_code)
                most_open = max(most_open, answer.json()["connections"]["open"])
            flooding.join(timeout=120)
            figures["flood seconds"] = round(time.monotonic() - started, 1)
            wait_until(lambda: sum(a.delivered for a in sim.callbacks) >= GENUINE, timeout=30)

            holder.stop.set()
            holding.join(timeout=30)
            for thread in lorises:
                thread.join(timeout=GIVE_UP + 10)
            figures.update(
                {
                    "answers": answers,
                    "healthz during": during,
                    "most open": most_open,
                    "holder": holder,
                    "cap probe admitted": len(admitted),
                    "closed": {
                        "held idle": (
                            wait_closed(holder.left_open, GIVE_UP),
                            len(holder.left_open),
                        ),
                        "cap probe": (wait_closed(admitted, GIVE_UP), len(admitted)),
                        "no handshake": (wait_closed(bare, GIVE_UP), len(bare)),  # type: ignore[arg-type]
                        "half body": (wait_closed(halves, GIVE_UP), len(halves)),  # type: ignore[arg-type]
                        "slowloris": (sum(loris), len(lorises)),
                    },
                }
            )

        async def scenario() -> None:
            await asyncio.to_thread(attack)

        watch = resources([*genuine, slow, done])
        _, events = asyncio.run(events_during(scenario, watch, resources(genuine)))
        after = health(running.port, trusted)
        reads = sim.request_counts["get"] - reads_before
        assert running.process.poll() is None  # still up
    lines = running.lines()

    # Up all along, and EvoLink got through: first tries, one event each, one read each.
    assert set(figures["healthz during"]) == {200} and len(figures["healthz during"]) >= 1
    assert after.status_code == 200 and after.json()["status"] == "ok"
    attempts = [(a.task_id, a.attempt, a.http_status) for a in sim.callbacks]
    assert sorted(attempts) == sorted((task_id, 1, 200) for task_id in genuine)
    assert sorted(event.resource.id for event in events) == sorted(resources(genuine))
    slow_reads = reads - GENUINE  # forged callbacks for the unfinished task: one per 2.5 s
    assert 1 <= slow_reads <= 1 + math.ceil(figures["flood seconds"] / NOT_FINAL_TTL)

    # Each kind of junk got its answer; nothing got a 5xx or an error.
    answers = figures["answers"]
    assert len(answers) == FLOOD
    kinds = {kind: allowed for kind, _, _, _, allowed in junk_kinds({}, "x")}
    wrong = [(kind, status) for kind, status in answers if status not in kinds[kind]]
    assert wrong == []

    # Every attacking connection was closed by the receiver; the cap held at accept.
    closed = figures["closed"]
    assert all(count == total for count, total in closed.values()), closed
    assert figures["cap probe admitted"] == PER_SOURCE
    holder = figures["holder"]
    assert holder.most_open == len(HOLDERS) * PER_SOURCE and holder.reset >= 1
    stats = after.json()["connections"]
    assert stats["refused"] >= 64 - PER_SOURCE
    assert stats["deadline_handshake"] >= 8 and stats["deadline_request"] >= 64 + PER_SOURCE + 4

    # The audit trail: a line per request the app saw, no traceback, no key.
    audit = [line for line in lines if "prefect_evolink.callbacks - " in line]
    requests = [line for line in audit if re.search(r" (POST|GET|HEAD) ", line)]
    counts = after.json()["counts"]
    assert len([line for line in requests if "/healthz" not in line]) == sum(counts.values())
    refused = sum(k == "a 20 KB header" and status != 202 for k, status in answers)  # by h11
    assert sum(f"source={FLOODER} " in line for line in requests) == FLOOD - refused
    assert any(f"task={slow} " in line and " 409 not_final " in line for line in requests)
    assert all(" 500 " not in line and " 503 " not in line for line in requests)
    text = "\n".join(lines)
    assert "Traceback" not in text and "RecursionError" not in text
    assert sim.api_key not in text

    figures.update(
        {
            "answers": dict(sorted(Counter(f"{k}: {s}" for k, s in answers).items())),
            "holder": {
                "opened": holder.opened,
                "reset by the receiver and reopened": holder.reset,
                "refused": holder.refused,
            },
            "healthz during": Counter(figures["healthz during"]),
            "genuine": f"{len(attempts)} callbacks, all first tries, {len(events)} events",
            "API reads": {"genuine": GENUINE, "unfinished task": slow_reads},
            "receiver": stats,
            "outcomes": counts,
            "audit lines": len(requests),
        }
    )
    print(json.dumps(figures, indent=1, default=str))


def test_replays_after_a_restart_and_from_a_second_replica_emit_nothing(
    sim: EvoLinkSimulator, storage: LocalAssetStorage, tls: Tls, tmp_path: Path
) -> None:
    trusted = ssl.create_default_context(cafile=tls.ca)
    namespace = campaign_namespace(unique_campaign(), "hero", "final")
    with receiver(sim, storage, tls, tmp_path / "first.log") as first:
        sim.add_fault(Fault(kind="slow_task", seconds=600, times=3))
        tasks = [create_task(sim, callback_url=first.url) for _ in range(3)]
        for task_id in tasks:
            index(storage, task_id, namespace)

        async def deliver() -> None:
            sim.advance_clock(601)
            await asyncio.to_thread(
                wait_until, lambda: sum(a.delivered for a in sim.callbacks) >= 3, 30
            )

        _, events = asyncio.run(events_during(deliver, resources(tasks), resources(tasks)))
    assert sorted(event.resource.id for event in events) == sorted(resources(tasks))
    bodies = [sim.task(task_id) for task_id in tasks]
    reads = sim.request_counts["get"]

    # A restart (a new process, empty memory) and a second replica, both on the same storage.
    with (
        receiver(sim, storage, tls, tmp_path / "restarted.log") as restarted,
        receiver(sim, storage, tls, tmp_path / "replica.log") as replica,
    ):

        async def replay() -> list[httpx.Response]:
            async with httpx.AsyncClient(verify=trusted, timeout=30) as http:
                return [
                    await http.post(target.url, json=body)
                    for target in (restarted, replica, restarted)
                    for body in bodies
                ]

        answers, replayed = asyncio.run(events_during(replay, resources(tasks), set()))
    assert [a.json() for a in answers] == [{"status": "duplicate", "task_status": "completed"}] * 9
    assert replayed == []  # nothing new on the live stream
    assert sim.request_counts["get"] == reads  # the marker answered: EvoLink not asked
    for log in (restarted.lines(), replica.lines()):
        assert sum(" 200 duplicate source=127.0.0.1 task=task-" in line for line in log) >= 3
        assert not any(" emitted " in line for line in log)
