"""Callbacks: the simulator sends them, the receiver believes only the API, events reach Prefect.

- the job key and Idempotency-Key ignore `callback_url` (a moved receiver never pays again);
- the simulator POSTs a finished task to its https `callback_url`, retrying 1/2/4 s;
- the receiver, started by `prefect-evolink callbacks` as a real uvicorn server, turns a
  completed job's callback into one `evolink.task.completed` event on the session's Prefect
  API, read back with a real events subscriber;
- forged bodies: an unknown id gets 2xx and no event (EvoLink is not even asked); a known id
  with a lying body gets the API's truth; a task not finished at the API gets 409, no event;
- guards: 413 over 64 KiB, 403 for plain http outside testing, and http or private callback
  URLs refused where they are configured; 429 from the API bucket only for what reads the API,
  from a sender's own bucket for what reads storage; malformed bodies of every kind get 400
  and one short log line; forged callbacks for an unfinished task cost one API read per TTL;
- replay memory: the "reported" marker, written before the event, stops a restarted receiver,
  a second replica and a receiver 4,096 tasks later from emitting again; `/healthz` details
  only for loopback and the key; one audit line per request, without the key;
- deployments/automations.yaml is created by `prefect automation create --from-file`, and its
  trigger (the server's own matching) covers the receiver's event for a final.

The receiver's https URL needs a certificate the simulator trusts: a throwaway CA is made here.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import ipaddress
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect import flow

from evolink.callbacks import (
    EVENT_COMPLETED,
    EVENT_FAILED,
    TaskEvent,
    reported_marker_key,
    task_event,
)
from evolink.campaign import campaign_namespace
from evolink.endpoint import endpoint_scope
from evolink.jobs import (
    JobRecord,
    TaskIndex,
    idempotency_key,
    job_key,
    job_record_key,
    submit_record_key,
    task_index_key,
)
from evolink.models import ImageRequest, parse_request
from evolink.simulator import EvoLinkSimulator, Fault
from evolink.simulator.callbacks import RETRY_DELAYS, TIMEOUT_SECONDS
from evolink.states import TaskSnapshot
from prefect_evolink.blocks import LocalAssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.callbacks import REMEMBERED_TASKS, CallbackReceiver, ReceiverSettings
from prefect_evolink.tasks.job import run_image_job
from tests.conftest import TEST_API_KEY

ROOT = Path(__file__).resolve().parents[1]
AUTOMATIONS = ROOT / "deployments" / "automations.yaml"
REQUEST = parse_request({"prompt": "hero banner: a lantern on a quiet pier", "size": "16:9"})
CALLBACK_PATH = "/evolink/callback"


# --- a throwaway CA and a certificate for 127.0.0.1 ----------------------------------------


@dataclass(frozen=True)
class Tls:
    ca: str
    cert: str
    key: str


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: Any, issuer: x509.Name | None, issuer_key: Any, ca: bool
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("evolink test CA", ca_key, None, ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate("127.0.0.1", leaf_key, ca_cert.subject, ca_key, ca=False)
    paths = Tls(
        ca=str(folder / "ca.pem"), cert=str(folder / "cert.pem"), key=str(folder / "key.pem")
    )
    Path(paths.ca).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    Path(paths.cert).write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    Path(paths.key).write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def sim(tls: Tls) -> Iterator[EvoLinkSimulator]:
    """The simulator, trusting the test CA for callback URLs."""
    with EvoLinkSimulator(
        api_key=TEST_API_KEY, generation_seconds=0.3, seed=7, callback_ca_file=tls.ca
    ) as simulator:
        yield simulator


@pytest.fixture
def storage(tmp_path: Path) -> LocalAssetStorage:
    return LocalAssetStorage(base_dir=str(tmp_path / "assets"))


def credentials_for(sim: EvoLinkSimulator, callback_url: str | None = None) -> EvoLinkCredentials:
    return EvoLinkCredentials(
        api_key=sim.api_key,
        base_url=sim.base_url,
        poll_min_interval=0.05,
        poll_max_interval=0.2,
        callback_url=callback_url,
    )


def unique_campaign() -> str:
    return f"cb-{uuid.uuid4().hex[:10]}"


# --- job identity -------------------------------------------------------------------------


def test_the_job_key_and_idempotency_key_ignore_callback_url() -> None:
    plain = REQUEST
    hooked = REQUEST.model_copy(update={"callback_url": "https://hooks.example.com/a"})
    moved = REQUEST.model_copy(update={"callback_url": "https://other.example.com/b?x=1"})
    keys = {job_key("adhoc/x", request) for request in (plain, hooked, moved)}
    assert len(keys) == 1
    assert len({idempotency_key(key) for key in keys}) == 1
    # An identity (campaign jobs) holds the request's dump, callback_url included.
    identities = [
        {"request": request.model_dump(exclude={"image_urls", "mask_url"}), "references": []}
        for request in (plain, hooked, moved)
    ]
    assert len({job_key("c/a/final", REQUEST, identity=i) for i in identities}) == 1
    # ... and keys of jobs without a callback are what they were before callbacks existed.
    assert job_key("adhoc/x", plain) == job_key_before_callbacks("adhoc/x", plain)
    assert job_key("c/a/final", REQUEST, identity=identities[0]) == job_key_before_callbacks(
        "c/a/final", REQUEST, identity=identities[0]
    )
    # What defines the job still counts.
    assert job_key("adhoc/x", REQUEST.model_copy(update={"prompt": "another"})) not in keys


def job_key_before_callbacks(
    namespace: str, request: ImageRequest, identity: dict[str, Any] | None = None
) -> str:
    import hashlib

    canonical = json.dumps(
        {
            "namespace": namespace,
            "request": request.to_payload() if identity is None else identity,
            "attempt": 1,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@flow(name="evolink-callback-test-job")
async def one_job(
    request: ImageRequest,
    namespace: str,
    credentials: EvoLinkCredentials,
    storage: LocalAssetStorage,
) -> JobRecord:
    return await run_image_job(
        request,
        namespace=namespace,
        dest_prefix="callback-test",
        credentials=credentials,
        storage=storage,
        schedule=credentials.poll_schedule(30),
    )


@pytest.mark.usefixtures("prefect_harness")
def test_a_moved_callback_url_reattaches_instead_of_paying_again(
    sim: EvoLinkSimulator, storage: LocalAssetStorage
) -> None:
    sim.service.callbacks.retry_delays = ()  # nobody listens there: one refused try each
    namespace = campaign_namespace(unique_campaign(), "hero", "final")
    first_url = "https://127.0.0.1:9/first/evolink/callback"
    first = asyncio.run(one_job(REQUEST, namespace, credentials_for(sim, first_url), storage))

    [entry] = sim.ledger()
    assert entry.request["callback_url"] == first_url  # the block's URL went with the request
    assert storage.get_json(task_index_key(first.task_id))["job_key"] == first.job_key
    # A crash after the create, before anything was recorded: only the intent is left.
    key = job_key(namespace, REQUEST, endpoint=endpoint_scope(sim.base_url))
    for record in (job_record_key(key), submit_record_key(key)):
        (Path(storage.base_dir) / record).unlink()
    moved = credentials_for(sim, "https://127.0.0.1:9/moved/evolink/callback")
    second = asyncio.run(one_job(REQUEST, namespace, moved, storage))

    assert second.job_key == first.job_key == key
    assert second.task_id == first.task_id
    assert len(sim.ledger()) == 1  # replayed by its Idempotency-Key: nothing paid twice
    submit = storage.get_json(submit_record_key(key))
    assert submit["replayed"] is True
    assert submit["request"]["callback_url"] == first_url  # the intent's bytes were resent


# --- the simulator sends callbacks ----------------------------------------------------------


class _Hook(http.server.BaseHTTPRequestHandler):
    answers: list[int]
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.bodies.append(json.loads(self.rfile.read(length)))
        status = self.answers.pop(0) if self.answers else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HeldHook(_Hook):
    """Holds every POST unanswered until `release` is set, after setting `received`: a callback
    provably in flight for as long as the test needs."""

    received: threading.Event
    release: threading.Event

    def do_POST(self) -> None:
        self.received.set()
        self.release.wait(30)  # a generous bound: the test sets it well before
        super().do_POST()


def tls_hook(
    tls: Tls, answers: list[int], hook: type[_Hook] = _Hook, **attributes: Any
) -> tuple[http.server.HTTPServer, type[_Hook]]:
    handler = type("Hook", (hook,), {"answers": list(answers), "bodies": [], **attributes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server, handler


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def create_task(sim: EvoLinkSimulator, **fields: Any) -> str:
    body = {
        "prompt": f"callback test {uuid.uuid4().hex}",
        "size": "1:1",
        "quality": "low",
        **fields,
    }
    response = httpx.post(
        f"{sim.base_url}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {sim.api_key}"},
    )
    response.raise_for_status()
    return str(response.json()["id"])


def test_the_simulator_posts_the_finished_task_and_retries_1_2_4(
    sim: EvoLinkSimulator, tls: Tls
) -> None:
    server, hook = tls_hook(tls, answers=[500, 503])
    try:
        sim.service.callbacks.retry_delays = (0.05, 0.1, 0.2)  # the shape of 1, 2, 4 s, faster
        url = f"https://127.0.0.1:{server.server_address[1]}{CALLBACK_PATH}"
        task_id = create_task(sim, callback_url=url)
        assert sim.callbacks == []  # nothing before the task is finished
        wait_until(lambda: any(a.delivered for a in sim.callbacks))
    finally:
        server.shutdown()
        server.server_close()

    assert [(a.attempt, a.http_status) for a in sim.callbacks] == [(1, 500), (2, 503), (3, 200)]
    assert len(hook.bodies) == 3
    assert hook.bodies[-1] == sim.task(task_id)  # the task object, as GET shows it
    assert hook.bodies[-1]["status"] == "completed" and "billing" in hook.bodies[-1]
    assert (TIMEOUT_SECONDS, RETRY_DELAYS) == (10.0, (1.0, 2.0, 4.0))  # the documented defaults
    assert sim.service.callbacks.timeout == TIMEOUT_SECONDS


def test_a_callback_in_flight_never_blocks_the_simulators_api(
    sim: EvoLinkSimulator, tls: Tls
) -> None:
    """While the receiver holds a callback's POST unanswered, the API and the admin routes
    answer within httpx's 5 s deadline: a sender that held the service's lock (or its own)
    while talking to the network would leave them waiting for the release, and time out."""
    received, release = threading.Event(), threading.Event()
    server, hook = tls_hook(tls, [], _HeldHook, received=received, release=release)
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}{CALLBACK_PATH}"
        task_id = create_task(sim, callback_url=url)
        assert received.wait(10), "the callback was never sent"
        headers = {"Authorization": f"Bearer {sim.api_key}"}
        assert httpx.get(f"{sim.base_url}/_sim/health").status_code == 200
        assert httpx.get(f"{sim.base_url}/_sim/callbacks").json() == []  # none finished yet
        task = httpx.get(f"{sim.base_url}/v1/tasks/{task_id}", headers=headers)
        assert task.json()["status"] == "completed"
        assert create_task(sim)  # and a new task is created meanwhile
        assert not any(a.delivered for a in sim.callbacks)  # still held: the POST in flight
        release.set()
        wait_until(lambda: any(a.delivered for a in sim.callbacks))
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert [(a.attempt, a.http_status) for a in sim.callbacks] == [(1, 200)]
    assert len(hook.bodies) == 1


def test_the_simulator_gives_up_after_three_retries(sim: EvoLinkSimulator) -> None:
    sim.service.callbacks.retry_delays = (0.05, 0.05, 0.05)
    sim.add_fault(Fault(kind="fail_task", error_code="content_policy_violation"))
    task_id = create_task(sim, callback_url="https://127.0.0.1:9/nobody-listens")  # refused
    wait_until(lambda: len(sim.callbacks) == 4)
    time.sleep(0.2)
    assert [a.attempt for a in sim.callbacks] == [1, 2, 3, 4]
    assert {a.status for a in sim.callbacks} == {"failed"}
    assert all(a.http_status is None and a.error for a in sim.callbacks)
    assert sim.task(task_id)["status"] == "failed"  # type: ignore[index]


# --- the receiver in this process (httpx ASGI transport), events on the session's API ----


def index(storage: LocalAssetStorage, task_id: str, namespace: str) -> TaskIndex:
    record = TaskIndex(
        task_id=task_id,
        job_key=job_key(namespace, REQUEST),
        namespace=namespace,
        submitted_at=datetime.datetime.now(datetime.UTC),
    )
    storage.put_json(task_index_key(task_id), record.model_dump(mode="json"))
    return record


async def post(
    receiver: CallbackReceiver, body: Any, *, scheme: str = "http", raw: bytes | None = None
) -> httpx.Response:
    transport = httpx.ASGITransport(app=receiver)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url=f"{scheme}://testserver"
        ) as http:
            content = raw if raw is not None else json.dumps(body).encode()
            return await http.post(CALLBACK_PATH, content=content)
    finally:
        await receiver.aclose()  # its API client belongs to this event loop


async def with_events(
    action: Callable[[], Awaitable[Any]], *, timeout: float = 15.0
) -> tuple[Any, list[Any]]:
    """Run `action` with a real events subscriber open, then emit a sentinel from this
    process: the `evolink.task.*` events that arrive before it are all `action` caused."""
    from prefect.events import emit_event
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    sentinel = f"evolink.test.{uuid.uuid4().hex}"
    started = datetime.datetime.now(datetime.UTC)
    names = EventFilter(event=EventNameFilter(prefix=["evolink."]))  # type: ignore[call-arg]
    seen = []
    async with get_events_subscriber(filter=names) as subscriber:
        result = await action()
        emit_event("evolink.test.sentinel", resource={"prefect.resource.id": sentinel})
        async with asyncio.timeout(timeout):
            async for event in subscriber:
                if event.resource.id == sentinel:
                    break
                if event.event.startswith("evolink.task.") and event.occurred >= started:
                    seen.append(event)
    return result, seen


@pytest.fixture
def receiver(sim: EvoLinkSimulator, storage: LocalAssetStorage) -> CallbackReceiver:
    return CallbackReceiver(storage, credentials_for(sim))


@pytest.mark.usefixtures("prefect_harness")
def test_forged_callbacks_are_checked_with_the_api(
    sim: EvoLinkSimulator, storage: LocalAssetStorage, receiver: CallbackReceiver
) -> None:
    campaign = unique_campaign()
    done = create_task(sim)
    sim.add_fault(Fault(kind="slow_task", seconds=3600))
    slow = create_task(sim)
    sim.advance_clock(1)  # `done` finishes; `slow` is still processing
    for task_id, asset in ((done, "hero"), (slow, "slow")):
        index(storage, task_id, campaign_namespace(campaign, asset, "final"))
    queries = sim.request_counts["get"]
    lie = {"status": "failed", "usage": {"credits_used": 999999}, "billing": {"charged_credits": 9}}

    async def forge() -> list[httpx.Response]:
        return [
            # an id we never submitted: 2xx at once, EvoLink not asked, nothing emitted
            await post(receiver, {"id": "task-unified-1-forged", "status": "completed"}),
            await post(receiver, {"id": "../../etc/passwd", "status": "completed"}),
            # ours, completed at the API, the body says failed and costly
            await post(receiver, {"id": done, **lie}),
            # ours, still processing at the API, the body says completed
            await post(receiver, {"id": slow, "status": "completed", "results": ["https://x/y"]}),
            # no task id at all
            await post(receiver, {"status": "completed"}),
            await post(receiver, None, raw=b"\xff not json"),
        ]

    answers, events = asyncio.run(with_events(forge))

    assert [a.status_code for a in answers] == [202, 400, 200, 409, 400, 400]
    assert answers[0].json() == {"status": "ignored"}
    assert answers[3].json() == {"status": "not_final", "task_status": "pending"}
    assert sim.request_counts["get"] == queries + 2  # only the two tasks of ours were asked for
    [event] = events
    truth = sim.task(done)
    assert truth is not None
    assert event.event == EVENT_COMPLETED
    assert event.resource.id == f"evolink.task.{done}"
    assert event.payload["status"] == "completed"
    billed = event.payload["billed"]
    assert Decimal(billed["credits"]) == Decimal(str(truth["usage"]["cost"]["credits"]))
    assert Decimal(billed["usd"]) == Decimal(str(truth["usage"]["cost"]["usd"]))
    assert not (Path(storage.base_dir) / "_tasks" / "task-unified-1-forged.json").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_a_cancelled_task_is_a_failed_event_with_its_bill_and_repeats_emit_once(
    sim: EvoLinkSimulator, storage: LocalAssetStorage, receiver: CallbackReceiver
) -> None:
    campaign = unique_campaign()
    sim.add_fault(Fault(kind="cancel_task", billed_fraction=0.5))
    task_id = create_task(sim)
    sim.advance_clock(1)
    record = index(storage, task_id, campaign_namespace(campaign, "hero", "draft"))

    async def twice() -> list[httpx.Response]:
        # the body claims completed; the API says cancelled, half charged
        return [await post(receiver, {"id": task_id, "status": "completed"}) for _ in range(2)]

    answers, events = asyncio.run(with_events(twice))

    assert [a.json()["status"] for a in answers] == ["emitted", "duplicate"]
    [event] = events
    truth = sim.task(task_id)
    assert truth is not None and truth["status"] == "cancelled"
    assert event.event == EVENT_FAILED
    assert event.resource["evolink.status"] == "cancelled"
    assert event.payload["status"] == "cancelled"
    assert Decimal(event.payload["billed"]["credits"]) == Decimal(
        str(truth["billing"]["charged_credits"])
    )
    assert Decimal(event.payload["billed"]["credits"]) > 0
    # (Prefect adds the run context's resources, if any, when an event is sent from inside one)
    roles = {r.role: r.id for r in event.related if r.id.startswith("evolink.")}
    assert roles == {
        "job": f"evolink.job.{record.job_key}",
        "campaign": f"evolink.campaign.{campaign}",
        "asset": f"evolink.asset.{campaign}/hero",
    }


def test_oversize_bodies_get_413_unread(
    sim: EvoLinkSimulator, storage: LocalAssetStorage, receiver: CallbackReceiver
) -> None:
    limit = receiver.settings.max_body_bytes
    assert limit == 64 * 1024
    padding = {"id": "task-unified-1-x", "pad": "x" * limit}

    async def stream() -> Any:
        yield json.dumps(padding).encode()

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=receiver)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            declared = await http.post(CALLBACK_PATH, json=padding)
            chunked = await http.post(CALLBACK_PATH, content=stream())  # no Content-Length
            fits = await http.post(CALLBACK_PATH, json={"id": "task-unified-1-x"})
        return [declared, chunked, fits]

    declared, chunked, fits = asyncio.run(send())
    assert declared.status_code == chunked.status_code == 413
    assert "content-length" not in chunked.request.headers
    assert fits.status_code == 202


def finished_tasks(sim: EvoLinkSimulator, storage: LocalAssetStorage, count: int) -> list[str]:
    """`count` completed tasks of ours (indexed), the clock moved past their generation."""
    ids = [create_task(sim) for _ in range(count)]
    sim.advance_clock(1)
    namespace = campaign_namespace(unique_campaign(), "hero", "final")
    for task_id in ids:
        index(storage, task_id, namespace)
    return ids


async def post_all(
    receiver: CallbackReceiver,
    bodies: list[Any],
    *,
    client: tuple[str, int] = ("127.0.0.1", 123),
    headers: dict[str, str] | None = None,
    concurrently: bool = False,
) -> list[httpx.Response]:
    """POST each body (a dict is sent as JSON, bytes as they are) on one ASGI client."""
    transport = httpx.ASGITransport(app=receiver, client=client)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:

            def one(body: Any) -> Awaitable[httpx.Response]:
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                return http.post(CALLBACK_PATH, content=content, headers=headers)

            if concurrently:
                return list(await asyncio.gather(*(one(body) for body in bodies)))
            return [await one(body) for body in bodies]
    finally:
        await receiver.aclose()


def test_the_api_bucket_charges_only_what_reads_the_api(
    sim: EvoLinkSimulator, storage: LocalAssetStorage
) -> None:
    emitted: list[TaskEvent] = []
    settings = ReceiverSettings(rate=0.5, burst=2)
    receiver = CallbackReceiver(storage, credentials_for(sim), settings, emit=emitted.append)
    first, second, third = finished_tasks(sim, storage, 3)
    reads = sim.request_counts["get"]
    junk: list[Any] = [b"{", {"status": "completed"}, {"id": "../x"}]
    junk += [{"id": f"task-unified-1-junk-{n}"} for n in range(20)]  # not ours: storage only

    answers = asyncio.run(post_all(receiver, [*junk, {"id": first}, {"id": second}, {"id": third}]))

    assert [a.status_code for a in answers[: len(junk)]] == [400] * 3 + [202] * 20
    assert [a.json()["status"] for a in answers[len(junk) :]] == [
        "emitted",
        "emitted",
        "rate_limited",  # the junk before took no token: only these reads did
    ]
    assert answers[-1].headers["retry-after"] == "2"
    assert sim.request_counts["get"] == reads + 2
    # A repeat of a reported task is free: answered from memory, the bucket still empty.
    [again] = asyncio.run(post_all(receiver, [{"id": first}]))
    assert again.json() == {"status": "duplicate", "task_status": "completed"}
    assert len(emitted) == 2 and receiver.counts["rate_limited"] == 1


def test_storage_lookups_are_charged_to_the_sender_not_to_everyone(
    sim: EvoLinkSimulator, storage: LocalAssetStorage
) -> None:
    emitted: list[TaskEvent] = []
    settings = ReceiverSettings(source_rate=0.5, source_burst=3)
    receiver = CallbackReceiver(storage, credentials_for(sim), settings, emit=emitted.append)
    [ours] = finished_tasks(sim, storage, 1)
    unknown = [{"id": f"task-unified-1-junk-{n}"} for n in range(5)]

    flood = asyncio.run(post_all(receiver, [*unknown, b"not json"], client=("203.0.113.9", 1)))
    genuine = asyncio.run(post_all(receiver, [{"id": ours}], client=("198.51.100.7", 1)))

    assert [a.status_code for a in flood] == [202, 202, 202, 429, 429, 400]
    assert flood[3].json() == {"status": "source_rate_limited"}
    assert flood[3].headers["retry-after"] == "2"
    assert genuine[0].json()["status"] == "emitted"  # another sender's bucket is full
    assert len(emitted) == 1


MALFORMED: list[tuple[str, bytes, str | None, str]] = [
    ("deep nesting: 5,000 levels in 10 KB", b'{"a":' * 5000 + b"1" + b"}" * 5000, None, "too_deep"),
    ("deep arrays", b'{"id":"task-unified-1-x","a":' + b"[" * 20000 + b"]" * 20000 + b"}", None,
     "too_deep"),
    ("a 5,000-digit integer", b'{"id":"task-unified-1-x","n":' + b"9" * 5000 + b"}", None,
     "bad_number"),
    ("a float that is infinite", b'{"id":"task-unified-1-x","n":1e999}', None, "bad_number"),
    ("NaN", b'{"id":"task-unified-1-x","n":NaN}', None, "bad_number"),
    ("duplicate keys", b'{"id":"task-unified-1-a","id":"task-unified-1-b"}', None,
     "duplicate_key"),
    ("a duplicate key deeper down", b'{"id":"task-unified-1-x","u":{"c":1,"c":2}}', None,
     "duplicate_key"),
    ("wrong content type", b'{"id":"task-unified-1-x"}', "text/plain", "content_type"),
    ("form data", b"id=task-unified-1-x", "application/x-www-form-urlencoded", "content_type"),
    ("not UTF-8", b'{"id":"task-unified-1-\xff"}', None, "not_json"),
    ("a UTF-8 byte order mark", b'\xef\xbb\xbf{"id":"task-unified-1-x"}', None, "not_json"),
    ("truncated", b'{"id":"task-unified-1-x"', None, "not_json"),
    ("an array", b'[{"id":"task-unified-1-x"}]', None, "not_an_object"),
    ("a string", b'"task-unified-1-x"', None, "not_an_object"),
    ("empty", b"", None, "not_json"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_bodies_get_400_and_one_short_log_line(
    sim: EvoLinkSimulator,
    storage: LocalAssetStorage,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    content_type: str | None,
    reason: str,
) -> None:
    receiver = CallbackReceiver(storage, credentials_for(sim))
    headers = (
        {"content-type": content_type} if content_type else {"content-type": "application/json"}
    )
    with caplog.at_level(logging.DEBUG, logger="prefect_evolink.callbacks"):
        [answer] = asyncio.run(post_all(receiver, [body], headers=headers))
    assert answer.status_code == 400
    assert answer.json() == {"status": "malformed", "reason": reason}
    [line] = [r for r in caplog.records if r.name.startswith("prefect_evolink")]
    assert line.levelno == logging.INFO and line.exc_info is None
    assert "400 malformed source=127.0.0.1 task=- " in line.getMessage()
    assert line.getMessage().endswith(f": {reason}") and len(line.getMessage()) < 200
    assert sim.request_counts["get"] == 0


def test_forged_callbacks_for_an_unfinished_task_cost_one_read_per_ttl(
    sim: EvoLinkSimulator, storage: LocalAssetStorage
) -> None:
    sim.add_fault(Fault(kind="slow_task", seconds=3600))
    slow = create_task(sim)
    index(storage, slow, campaign_namespace(unique_campaign(), "hero", "final"))
    receiver = CallbackReceiver(storage, credentials_for(sim), ReceiverSettings(not_final_ttl=0.5))
    reads = sim.request_counts["get"]
    forged = [{"id": slow, "status": "completed"}] * 40

    burst = asyncio.run(post_all(receiver, forged, concurrently=True))  # one at a time per id
    later = asyncio.run(post_all(receiver, forged))
    assert {a.status_code for a in burst + later} == {409}
    assert sim.request_counts["get"] == reads + 1
    time.sleep(0.6)  # the answer is old now: the next one reads again
    asyncio.run(post_all(receiver, forged[:5]))
    assert sim.request_counts["get"] == reads + 2


def test_the_reported_marker_survives_a_restart_a_second_replica_and_4097_tasks(
    sim: EvoLinkSimulator, storage: LocalAssetStorage
) -> None:
    emitted: list[TaskEvent] = []

    def emit(event: TaskEvent) -> None:  # the marker is there before the event leaves
        marker = storage.get_json(reported_marker_key(event.payload["task_id"]), _sync=True)
        assert marker is not None and marker["event_id"] == str(event.id)
        emitted.append(event)

    credentials = credentials_for(sim)
    first = CallbackReceiver(storage, credentials, emit=emit)
    [task_id] = finished_tasks(sim, storage, 1)
    callback = sim.task(task_id)
    [answer] = asyncio.run(post_all(first, [callback]))
    assert answer.json()["status"] == "emitted"
    [event] = emitted
    marker = storage.get_json(f"_tasks/_reported/{task_id}.json")
    assert marker == {
        "task_id": task_id,
        "status": "completed",
        "event": EVENT_COMPLETED,
        "event_id": str(event.id),
        "reported_at": marker["reported_at"],
        "state": "reported",
    }
    reads = sim.request_counts["get"]

    restarted = CallbackReceiver(storage, credentials, emit=emit)  # empty memory, same storage
    replica = CallbackReceiver(storage, credentials, emit=emit)
    replays = asyncio.run(post_all(restarted, [callback] * 3))
    replays += asyncio.run(post_all(replica, [callback], client=("198.51.100.7", 1)))
    for other in range(REMEMBERED_TASKS):  # the first receiver's memory moves on
        first._remember(f"task-unified-1-other-{other}", "completed")
    assert task_id not in first._reported
    replays += asyncio.run(post_all(first, [callback]))

    assert [a.json() for a in replays] == [{"status": "duplicate", "task_status": "completed"}] * 5
    assert len(emitted) == 1
    assert sim.request_counts["get"] == reads  # a marker costs no API read


def test_an_event_that_could_not_be_emitted_is_emitted_by_the_retry(
    sim: EvoLinkSimulator, storage: LocalAssetStorage
) -> None:
    emitted: list[TaskEvent] = []
    failures = [RuntimeError("events client down")]

    def emit(event: TaskEvent) -> None:
        if failures:
            raise failures.pop()
        emitted.append(event)

    receiver = CallbackReceiver(storage, credentials_for(sim), emit=emit)
    [task_id] = finished_tasks(sim, storage, 1)
    answers = asyncio.run(post_all(receiver, [{"id": task_id}] * 3))
    assert [a.status_code for a in answers] == [503, 200, 200]
    assert [a.json()["status"] for a in answers] == ["not_emitted", "emitted", "duplicate"]
    assert len(emitted) == 1


def test_healthz_says_ok_or_not_ok_and_details_only_to_loopback_or_the_key(
    sim: EvoLinkSimulator, storage: LocalAssetStorage
) -> None:
    receiver = CallbackReceiver(storage, credentials_for(sim))

    async def health(client: tuple[str, int], key: str | None = None) -> httpx.Response:
        transport = httpx.ASGITransport(app=receiver, client=client)  # type: ignore[arg-type]
        headers = {"authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
            return await http.get("/healthz", headers=headers)

    outside = ("203.0.113.9", 1)
    asyncio.run(post_all(receiver, [{"id": "task-unified-1-junk"}]))
    assert asyncio.run(health(outside)).json() == {"status": "ok"}
    assert asyncio.run(health(outside, key="sk-wrong")).json() == {"status": "ok"}
    for answer in (asyncio.run(health(outside, key=sim.api_key)), asyncio.run(health(("::1", 1)))):
        assert answer.json()["counts"] == {"ignored": 1}
        assert (answer.json()["storage"], answer.json()["api"]) == ("ok", "ok")

    broken = CallbackReceiver(
        storage, EvoLinkCredentials(api_key="sk-x", base_url="http://127.0.0.1:9")
    )
    index(storage, "task-unified-1-ours", campaign_namespace("c", "a", "final"))
    receiver = broken
    asyncio.run(post_all(broken, [{"id": "task-unified-1-ours"}]))
    down = asyncio.run(health(outside))
    assert (down.status_code, down.json()) == (503, {"status": "not_ok"})
    assert asyncio.run(health(("127.0.0.1", 1))).json()["api"] == "failing"


def test_every_request_leaves_one_audit_line_without_the_key(
    sim: EvoLinkSimulator, storage: LocalAssetStorage, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = CallbackReceiver(storage, credentials_for(sim), emit=lambda event: None)
    [ours] = finished_tasks(sim, storage, 1)
    bodies: list[Any] = [{"id": ours}, {"id": ours}, {"id": "task-unified-1-junk"}, b"{"]
    with caplog.at_level(logging.INFO, logger="prefect_evolink.callbacks"):
        asyncio.run(post_all(receiver, bodies, client=("203.0.113.9", 1)))
    lines = [r.getMessage() for r in caplog.records if r.name == "prefect_evolink.callbacks"]
    assert len(lines) == 4
    assert lines[0].startswith(f"POST {CALLBACK_PATH} 200 emitted source=203.0.113.9 task={ours} ")
    assert lines[1].startswith(f"POST {CALLBACK_PATH} 200 duplicate source=203.0.113.9 task={ours}")
    assert " 202 ignored source=203.0.113.9 task=task-unified-1-junk " in lines[2]
    assert " 400 malformed source=203.0.113.9 task=- " in lines[3]
    assert all(sim.api_key not in line for line in lines)


def test_plain_http_and_private_callback_urls_are_refused_outside_testing(
    sim: EvoLinkSimulator, storage: LocalAssetStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    receiver = CallbackReceiver(storage, credentials_for(sim))
    monkeypatch.setenv("EVOLINK_ALLOW_PRIVATE_URLS", "false")
    plain = asyncio.run(post(receiver, {"id": "task-unified-1-x"}))
    secure = asyncio.run(post(receiver, {"id": "task-unified-1-x"}, scheme="https"))
    assert plain.status_code == 403 and plain.json() == {"status": "https_required"}
    assert secure.status_code == 202
    # Where the URL is configured: https always; private hosts only in testing.
    for url in ("http://hooks.example.com/cb", "https://127.0.0.1:8788/cb", "https://x.internal/"):
        with pytest.raises(ValidationError, match="callback_url"):
            EvoLinkCredentials(api_key="sk-x", callback_url=url)
    monkeypatch.setenv("EVOLINK_ALLOW_PRIVATE_URLS", "true")
    assert asyncio.run(post(receiver, {"id": "task-unified-1-x"})).status_code == 202
    assert EvoLinkCredentials(api_key="sk-x", callback_url="https://127.0.0.1:8788/cb")
    with pytest.raises(ValidationError, match="https"):
        EvoLinkCredentials(api_key="sk-x", callback_url="http://127.0.0.1:8788/cb")


def test_an_api_that_cannot_answer_gets_503_so_evolink_retries(storage: LocalAssetStorage) -> None:
    emitted: list[Any] = []
    nowhere = EvoLinkCredentials(api_key="sk-x", base_url="http://127.0.0.1:9")  # refused
    receiver = CallbackReceiver(storage, nowhere, emit=emitted.append)
    index(storage, "task-unified-1-ours", campaign_namespace("c", "a", "final"))
    answer = asyncio.run(post(receiver, {"id": "task-unified-1-ours", "status": "completed"}))
    assert (answer.status_code, answer.headers["retry-after"]) == (503, "2")
    assert answer.json() == {"status": "api_unavailable"}
    assert emitted == []


def test_the_cli_refuses_to_start_without_what_it_needs(
    tls: Tls, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_evolink.cli import EXIT_CREDENTIALS, EXIT_INVALID, main

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["callbacks", "--port", "0"]) == EXIT_INVALID  # events would go nowhere
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert main(["callbacks", "--ssl-certfile", tls.cert]) == EXIT_INVALID
        assert "together" in capsys.readouterr().err
        assert main(["callbacks", "--port", "0"]) == EXIT_CREDENTIALS  # no key, no block
    assert "credentials" in capsys.readouterr().err


# --- end to end: the CLI's uvicorn server, a real job, a real subscriber -------------------


@dataclass
class Running:
    process: subprocess.Popen[str]
    url: str


def start_receiver(sim: EvoLinkSimulator, storage: LocalAssetStorage, tls: Tls) -> Running:
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
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=60)
    if not lines or not lines[0].startswith("https://"):
        process.kill()
        _, errors = process.communicate(timeout=10)
        raise AssertionError(f"the receiver did not start: {lines} {errors[-2000:]}")
    return Running(process, lines[0].strip())


def stop(running: Running) -> None:
    running.process.terminate()
    try:
        running.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait(timeout=10)


@pytest.mark.usefixtures("prefect_harness")
def test_a_completed_jobs_callback_becomes_one_event_via_the_cli_receiver(
    sim: EvoLinkSimulator, storage: LocalAssetStorage, tls: Tls
) -> None:
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    campaign = unique_campaign()
    namespace = campaign_namespace(campaign, "hero", "final")
    key = job_key(namespace, REQUEST, endpoint=endpoint_scope(sim.base_url))
    running = start_receiver(sim, storage, tls)
    try:
        assert running.url.endswith(CALLBACK_PATH)
        trusted = ssl.create_default_context(cafile=tls.ca)
        health = httpx.get(running.url.replace(CALLBACK_PATH, "/healthz"), verify=trusted)
        assert health.json()["status"] == "ok"

        async def scenario() -> tuple[JobRecord, list[Any]]:
            names = EventFilter(event=EventNameFilter(prefix=["evolink.task."]))  # type: ignore[call-arg]
            seen: list[Any] = []
            async with get_events_subscriber(filter=names) as subscriber:
                credentials = credentials_for(sim, running.url)
                record = await one_job(REQUEST, namespace, credentials, storage)

                async def collect(first_only: bool) -> None:
                    async for event in subscriber:
                        if any(r.id == f"evolink.job.{key}" for r in event.related):
                            seen.append(event)
                            if first_only:
                                return

                async with asyncio.timeout(20):
                    await collect(first_only=True)
                with pytest.raises(TimeoutError):  # listen on: a second one would show here
                    async with asyncio.timeout(1.5):
                        await collect(first_only=False)
            return record, seen

        record, events = asyncio.run(scenario())
    finally:
        stop(running)

    assert running.process.returncode is not None
    [attempt] = sim.callbacks
    assert (attempt.task_id, attempt.http_status, attempt.status) == (
        record.task_id,
        200,
        "completed",
    )
    [event] = events
    [entry] = sim.billed_tasks()
    assert event.event == EVENT_COMPLETED
    assert (
        event.id
        == task_event(
            TaskSnapshot.from_api(sim.task(record.task_id) or {}),
            TaskIndex.model_validate(storage.get_json(task_index_key(record.task_id))),
        ).id
    )  # type: ignore[union-attr]
    assert event.resource.id == f"evolink.task.{record.task_id}"
    assert event.resource["evolink.status"] == "completed"
    related = {r.role: r for r in event.related}
    assert related["job"].id == f"evolink.job.{key}"
    assert related["job"]["evolink.stage"] == "final"
    assert related["campaign"].id == f"evolink.campaign.{campaign}"
    assert related["asset"].id == f"evolink.asset.{campaign}/hero"
    assert related["flow-run"].id.startswith("prefect.flow-run.")
    payload = event.payload
    assert (payload["campaign"], payload["asset"], payload["stage"]) == (campaign, "hero", "final")
    assert payload["job_key"] == key and payload["result_count"] == 1
    assert Decimal(payload["billed"]["usd"]) == entry.billed_usd == Decimal(record.billed_usd or "")
    assert Decimal(payload["billed"]["credits"]) == entry.billed_credits


# --- the automation -------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_the_automation_file_is_created_and_its_trigger_covers_a_final(
    tmp_path: Path, storage: LocalAssetStorage
) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.server.events.schemas.automations import EventTrigger as ServerEventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.settings import get_current_settings

    block = CustomWebhookNotificationBlock(name="team", url="https://hooks.example.com/notify")
    block_id = block.save(f"evolink-team-{uuid.uuid4().hex[:8]}")
    text = AUTOMATIONS.read_text().replace("NOTIFY_BLOCK_ID", str(block_id))
    path = tmp_path / "automations.yaml"
    path.write_text(text)
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    created = subprocess.run(
        [
            str(Path(sys.executable).parent / "prefect"),
            "automation",
            "create",
            "--from-file",
            str(path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stdout + created.stderr

    names = [item["name"] for item in yaml.safe_load(text)["automations"]]
    assert names == ["evolink-final-ready", "evolink-task-failed"]

    async def read() -> list[Any]:
        async with get_client() as client:
            return [await client.read_automations_by_name(name) for name in names]

    async def delete(automations: list[Any]) -> None:  # no notification for later tests
        async with get_client() as client:
            for automation in automations:
                await client.delete_automation(automation.id)

    found = asyncio.run(read())
    asyncio.run(delete([automation for items in found for automation in items]))
    assert all(len(items) >= 1 for items in found)
    final_ready = found[0][-1]
    assert final_ready.actions[0].block_document_id == block_id

    # The server's own matching, on events shaped exactly as the receiver emits them.
    trigger = ServerEventTrigger.model_validate(final_ready.trigger.model_dump())
    snapshot = TaskSnapshot.from_api(
        {"id": "task-unified-1-done", "status": "completed", "results": ["https://r/0.png"],
         "usage": {"cost": {"credits": 1.836, "usd": 0.027}}}
    )  # fmt: skip

    def received(stage: str, campaign: bool = True) -> ReceivedEvent:
        namespace = campaign_namespace("spring", "hero", stage) if campaign else "adhoc/mug"
        record = TaskIndex(
            task_id=snapshot.id,
            job_key="k" * 32,
            namespace=namespace,
            submitted_at=datetime.datetime.now(datetime.UTC),
        )
        event = task_event(snapshot, record)
        assert event is not None
        return ReceivedEvent(
            occurred=datetime.datetime.now(datetime.UTC),
            event=event.event,
            resource=event.resource,
            related=event.related,  # type: ignore[arg-type]
            payload=event.payload,
            id=event.id,
        )

    assert trigger.covers(received("final"))
    assert not trigger.covers(received("draft"))
    assert not trigger.covers(received("final", campaign=False))
