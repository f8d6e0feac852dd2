"""The local EvoLink simulator, tested over real HTTP the way the client will use it.

Every other test of the project leans on the simulator telling the truth about the documented
API (shapes, statuses, billing) and failing exactly as scripted, so both are pinned here.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from evolink.cost import billed_cost, estimate
from evolink.models import ImageRequest
from evolink.simulator import (
    EvoLinkSimulator,
    Fault,
    LedgerEntry,
    max_concurrent,
    png,
    png_size,
    render_png,
)

ROOT = Path(__file__).resolve().parents[1]
CREATE = "/v1/images/generations"
# Everything here is plain HTTP, but each httpx.Client loads the CA bundle (~0.1 s) unless
# handed a context: one shared context keeps the whole file fast.
TLS = ssl.create_default_context()


@pytest.fixture
def sim() -> Iterator[EvoLinkSimulator]:
    with EvoLinkSimulator(generation_seconds=0.2, seed=7) as simulator:
        yield simulator


@pytest.fixture
def client(sim: EvoLinkSimulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=5.0, verify=TLS) as http:
        yield http


@pytest.fixture
def anon(sim: EvoLinkSimulator) -> Iterator[httpx.Client]:
    """No API key: for presigned result links and the admin endpoints."""
    with httpx.Client(base_url=sim.base_url, timeout=5.0, verify=TLS) as http:
        yield http


def create(
    client: httpx.Client, body: dict[str, Any] | None = None, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(CREATE, json=body or {"prompt": "a red fox in snow"}, headers=headers)


def wait_finished(client: httpx.Client, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed"):
            return task
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} did not finish in {timeout}s")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse a PNG strictly: signature, every chunk's CRC, IEND last."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


# --- auth and validation -----------------------------------------------------------------


def test_missing_or_wrong_key_is_401(sim: EvoLinkSimulator, anon: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": sim.api_key}):
        for response in (
            anon.post(CREATE, json={"prompt": "x"}, headers=headers),
            anon.get("/v1/tasks/task-unified-1-abcdefgh", headers=headers),
        ):
            assert response.status_code == 401
            error = response.json()["error"]
            assert (error["code"], error["type"]) == ("unauthorized", "authentication_error")
    assert sim.ledger() == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "size": "17:9"}, "size"),
        ({"prompt": "x", "n": 11}, "n"),
        ({"prompt": ""}, "prompt"),
        ({"size": "1:1"}, "prompt"),
        ({"prompt": "x", "quality": "ultra"}, "quality"),
        ({"prompt": "x", "size": "auto", "resolution": "2K"}, "resolution"),
    ],
)
def test_invalid_request_is_400_naming_the_field(
    sim: EvoLinkSimulator, client: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = create(client, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")
    assert sim.ledger() == []


def test_malformed_body_and_idempotency_key_are_400(client: httpx.Client) -> None:
    json_type = {"Content-Type": "application/json"}
    response = client.post(CREATE, content=b"not json", headers=json_type)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    for bad_key in ("short", "x" * 97, "has space in it 123456"):
        response = create(client, key=bad_key)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "Idempotency-Key"


def test_unknown_task_is_404(client: httpx.Client) -> None:
    response = client.get("/v1/tasks/task-unified-1757156493-zzzzzzzz")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "not_found_error",
            "message": "Task not found or expired",
            "type": "not_found_error",
        }
    }


# --- lifecycle, files, billing -----------------------------------------------------------


def test_task_moves_pending_processing_completed_with_rising_progress(
    sim: EvoLinkSimulator, client: httpx.Client
) -> None:
    sim.generation_seconds = 0.5
    created = create(client, {"prompt": "a lighthouse", "n": 2})
    assert created.status_code == 200
    task = created.json()
    assert task["id"].startswith("task-unified-")
    prefix, stamp, suffix = task["id"].rsplit("-", 2)
    assert prefix == "task-unified" and stamp.isdigit() and len(suffix) == 8 and suffix.isalnum()
    assert suffix == suffix.lower()
    assert task["object"] == "image.generation.task"
    assert (task["status"], task["progress"], task["type"], task["model"]) == (
        "pending",
        0,
        "image",
        "gpt-image-2",
    )
    assert task["task_info"] == {"can_cancel": True, "estimated_time": 1}
    assert task["usage"]["billing_rule"] == "per_token"
    assert "results" not in task

    seen = [(task["status"], task["progress"])]
    while seen[-1][0] != "completed":
        time.sleep(0.02)
        polled = client.get(f"/v1/tasks/{task['id']}").json()
        seen.append((polled["status"], polled["progress"]))
    order = {"pending": 0, "processing": 1, "completed": 2}
    statuses = [status for status, _ in seen]
    assert {"pending", "processing", "completed"} <= set(statuses)
    assert statuses == sorted(statuses, key=order.__getitem__)
    progress = [value for _, value in seen]
    assert progress == sorted(progress) and progress[-1] == 100
    assert all(0 < value < 100 for status, value in seen if status == "processing")
    assert len(polled["results"]) == 2
    assert polled["task_info"]["can_cancel"] is False


def test_result_files_are_real_pngs_of_the_requested_size(
    client: httpx.Client, anon: httpx.Client
) -> None:
    body = {"prompt": "dunes", "size": "16:9", "resolution": "1K", "n": 2}
    task_id = create(client, body).json()["id"]
    task = wait_finished(client, task_id)
    assert task["status"] == "completed"
    first, second = task["results"]
    assert first.startswith(f"{client.base_url}/files/{task_id}/0.png?expires=")
    assert "&sig=" in first

    response = anon.get(first)  # a presigned link: no API key needed
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert int(response.headers["content-length"]) == len(response.content)
    chunks = png_chunks(response.content)
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (width, height, depth, colour) == (1360, 768, 8, 2)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)

    assert anon.get(first).content == response.content  # deterministic per (task, index)
    assert anon.get(second).content != response.content


def test_4k_files_are_served_within_a_read_deadline_and_rendered_once(
    client: httpx.Client, anon: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4K file arrives inside the client's read deadline (`anon`'s 5 s, ample for the tens of
    milliseconds a render takes; a per-pixel renderer takes seconds and fails it), and a second
    download of the same link is served from the cache: one render for both."""
    renders: list[tuple[int, int]] = []

    def counted(width: int, height: int, key: str) -> bytes:
        renders.append((width, height))
        return render_png(width, height, key)

    monkeypatch.setattr(png, "render_png", counted)  # what PngCache.get calls on a miss
    task_id = create(client, {"prompt": "city", "size": "16:9", "resolution": "4K"}).json()["id"]
    url = wait_finished(client, task_id)["results"][0]
    data = anon.get(url).content  # raises httpx.ReadTimeout past the deadline
    assert png_size(data) == (3840, 2160)
    assert anon.get(url).content == data
    assert renders == [(3840, 2160)]


def test_billing_equals_the_cost_estimate(sim: EvoLinkSimulator, client: httpx.Client) -> None:
    body = {
        "prompt": "the same product shot, in autumn colours",
        "size": "3:2",
        "resolution": "2K",
        "quality": "high",
        "n": 3,
        "image_urls": ["https://example.com/a.png", "https://example.com/b.jpg"],
    }
    expected = estimate(ImageRequest.model_validate(body))
    created = create(client, body).json()
    assert created["usage"]["credits_reserved"] == float(expected.credits)
    task = wait_finished(client, created["id"])
    usage, billing = task["usage"], task["billing"]
    assert usage["credits_used"] == float(expected.credits)
    assert usage["cost"] == {"credits": float(expected.credits), "usd": float(expected.usd)}
    assert usage["output_tokens"] == expected.output_tokens
    assert usage["input_tokens"] == expected.image_input_tokens + expected.text_input_tokens
    assert usage["input_tokens_details"] == {
        "image_tokens": expected.image_input_tokens,
        "text_tokens": expected.text_input_tokens,
        "cached_tokens": 0,
    }
    assert billing == {
        "charge_status": "charged",
        "reserved_credits": float(expected.credits),
        "charged_credits": float(expected.credits),
        "refunded_credits": 0,
    }
    assert (billed_cost(task).usd, billed_cost(task).credits) == (expected.usd, expected.credits)

    (entry,) = sim.billed_tasks()
    assert (entry.billed_usd, entry.billed_credits) == (expected.usd, expected.credits)
    assert (entry.output_tokens, entry.image_input_tokens, entry.text_input_tokens) == (
        expected.output_tokens,
        expected.image_input_tokens,
        expected.text_input_tokens,
    )
    assert entry.request == ImageRequest.model_validate(body).to_payload()
    assert sim.request_counts["create"] == 1 and sim.request_counts["get"] >= 1


# --- idempotency -------------------------------------------------------------------------


def test_idempotency_replay_returns_the_original_task(
    sim: EvoLinkSimulator, client: httpx.Client
) -> None:
    key = "job-0001.campaign_A-7f3e"
    first = create(client, {"prompt": "a", "n": 1}, key=key)
    assert first.status_code == 200 and "idempotency-replayed" not in first.headers
    replay = client.post(
        CREATE,
        content=b'{ "n": 1,  "prompt": "a" }',
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    assert replay.status_code == 200
    assert replay.headers["idempotency-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    (entry,) = sim.ledger()
    assert entry.idempotency_key == key

    conflict = create(client, {"prompt": "b", "n": 1}, key=key)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert len(sim.ledger()) == 1


def test_concurrent_creates_with_one_key_make_one_task(sim: EvoLinkSimulator) -> None:
    key = "concurrent-key-000001"

    def submit(_: int) -> str:
        with httpx.Client(
            base_url=sim.base_url, verify=TLS, headers={"Authorization": f"Bearer {sim.api_key}"}
        ) as http:
            return create(http, {"prompt": "same job"}, key=key).json()["id"]

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(submit, range(8)))
    assert len(ids) == 1 and len(sim.ledger()) == 1


def test_keep_alive_reuses_one_connection(sim: EvoLinkSimulator, client: httpx.Client) -> None:
    task_id = create(client).json()["id"]
    for _ in range(5):
        assert client.get(f"/v1/tasks/{task_id}").status_code == 200
    assert client.head(f"/v1/tasks/{task_id}").status_code == 200
    assert sim.connections_accepted == 1


# --- faults ------------------------------------------------------------------------------


def test_rate_limit_with_and_without_retry_after(
    sim: EvoLinkSimulator, client: httpx.Client
) -> None:
    sim.add_fault(Fault(kind="rate_limit", retry_after=2))
    sim.add_fault(Fault(kind="rate_limit"))
    with_hint, without_hint, passes = create(client), create(client), create(client)

    assert with_hint.status_code == 429 and with_hint.headers["retry-after"] == "2"
    error = with_hint.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
    assert error["fallback_suggestion"] == "retry after 2 seconds"

    assert without_hint.status_code == 429 and "retry-after" not in without_hint.headers
    assert without_hint.json()["error"]["fallback_suggestion"] == "retry after 60 seconds"

    assert passes.status_code == 200
    assert len(sim.ledger()) == 1
    assert sim.fault_counts == {"rate_limit": 2}
    assert [f.times for f in sim.faults] == [0, 0]


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "internal_error"), (502, "upstream_error"), (503, "service_unavailable_error")],
)
def test_server_errors(client: httpx.Client, sim: EvoLinkSimulator, status: int, code: str) -> None:
    task_id = create(client).json()["id"]
    sim.add_fault(kind="server_error", status=status, route="get", times=2)
    first, second, third = (client.get(f"/v1/tasks/{task_id}") for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (status, status, 200)
    assert first.json()["error"]["code"] == code


def test_drop_connection_raises_instead_of_hanging(
    sim: EvoLinkSimulator, client: httpx.Client
) -> None:
    task_id = create(client).json()["id"]  # also warms a keep-alive connection
    sim.add_fault(kind="drop_connection", route="get")
    with pytest.raises(httpx.TransportError) as raised:
        client.get(f"/v1/tasks/{task_id}")
    # Hung up, not left hanging: a server that held the connection open would end in the
    # client's read timeout (5 s), a TransportError too.
    assert not isinstance(raised.value, httpx.TimeoutException), raised.value
    assert sim.fault_counts["drop_connection"] == 1
    assert client.get(f"/v1/tasks/{task_id}").status_code == 200  # next request is served


def test_lost_create_response_creates_the_task_and_a_replay_returns_it(
    sim: EvoLinkSimulator, client: httpx.Client
) -> None:
    sim.add_fault(kind="lose_create_response")
    key = "lost-response-key-0001"
    with pytest.raises(httpx.TransportError):
        create(client, key=key)
    (entry,) = sim.ledger()
    assert entry.response_lost and entry.idempotency_key == key
    assert "lose_create_response" in entry.faults

    replay = create(client, key=key)
    assert replay.status_code == 200 and replay.headers["idempotency-replayed"] == "true"
    assert replay.json()["id"] == entry.task_id
    assert len(sim.ledger()) == 1


def test_fail_task_is_not_billed(sim: EvoLinkSimulator, client: httpx.Client) -> None:
    sim.add_fault(kind="fail_task", match_prompt="forbidden", error_code="content_policy_violation")
    ok_id = create(client, {"prompt": "a calm lake"}).json()["id"]
    bad = create(client, {"prompt": "something forbidden"}).json()
    assert bad["status"] == "pending"  # it fails when it would have finished
    task = wait_finished(client, bad["id"])
    assert task["status"] == "failed" and "results" not in task
    assert task["error"]["code"] == "content_policy_violation" and task["error"]["message"]
    reserved = bad["usage"]["credits_reserved"]
    assert task["billing"] == {
        "charge_status": "refunded",
        "reserved_credits": reserved,
        "charged_credits": 0,
        "refunded_credits": reserved,
    }
    assert billed_cost(task).credits == 0
    assert wait_finished(client, ok_id)["status"] == "completed"

    entries = {entry.task_id: entry for entry in sim.ledger()}
    assert entries[bad["id"]].status == "failed"
    assert entries[bad["id"]].error_code == "content_policy_violation"
    assert entries[bad["id"]].billed_usd == Decimal(0)
    assert [entry.task_id for entry in sim.billed_tasks()] == [ok_id]


def test_expired_and_tampered_links_are_403(
    sim: EvoLinkSimulator, client: httpx.Client, anon: httpx.Client
) -> None:
    sim.add_fault(kind="expire_links", ttl_seconds=0)
    expired_id = create(client).json()["id"]
    fresh_id = create(client).json()["id"]
    expired_url = wait_finished(client, expired_id)["results"][0]
    response = anon.get(expired_url)
    assert response.status_code == 403 and b"Request has expired" in response.content

    fresh_url = wait_finished(client, fresh_id)["results"][0]
    assert anon.get(fresh_url).status_code == 200
    tampered = fresh_url.replace("expires=", "expires=9")
    assert anon.get(tampered).status_code == 403
    assert anon.get(fresh_url.split("?")[0]).status_code == 403
    assert sim.request_counts["download"] == 4


def test_links_expire_after_their_ttl(
    sim: EvoLinkSimulator, client: httpx.Client, anon: httpx.Client
) -> None:
    sim.add_fault(kind="expire_links", ttl_seconds=60)
    short_url = wait_finished(client, create(client).json()["id"])["results"][0]
    normal_url = wait_finished(client, create(client).json()["id"])["results"][0]
    assert anon.get(short_url).status_code == 200
    sim.advance_clock(61)
    assert anon.get(short_url).status_code == 403
    assert anon.get(normal_url).status_code == 200
    anon.post("/_sim/clock", json={"advance": 86400}).raise_for_status()
    assert anon.get(normal_url).status_code == 403  # the documented 24 h


def test_advancing_the_clock_finishes_tasks(sim: EvoLinkSimulator, client: httpx.Client) -> None:
    sim.generation_seconds = 3600
    task_id = create(client).json()["id"]
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] == "pending"
    sim.advance_clock(1800)
    assert client.get(f"/v1/tasks/{task_id}").json()["progress"] == 50
    sim.advance_clock(1800)
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] == "completed"
    assert sim.ledger()[0].finished_at is not None


def test_slow_task_only_slows_the_matching_task(
    sim: EvoLinkSimulator, client: httpx.Client
) -> None:
    sim.generation_seconds = 0.1
    sim.add_fault(kind="slow_task", seconds=0.8, match_prompt="slow")
    slow = create(client, {"prompt": "a slow one"}).json()
    fast = create(client, {"prompt": "a quick one"}).json()
    assert slow["task_info"]["estimated_time"] == 1
    assert wait_finished(client, fast["id"])["status"] == "completed"
    assert client.get(f"/v1/tasks/{slow['id']}").json()["status"] == "processing"
    entries = {entry.task_id: entry for entry in sim.ledger()}
    slow_entry = entries[slow["id"]]
    assert slow_entry.expected_finish_at - slow_entry.created_at == pytest.approx(0.8)
    assert slow_entry.finished_at is None and slow_entry.status == "processing"


def test_latency_delays_the_response(sim: EvoLinkSimulator, client: httpx.Client) -> None:
    """A response held back 3 s misses a 0.5 s read deadline (what the fault is for: a client's
    read timeout); an undelayed one, milliseconds, would meet it."""
    task_id = create(client).json()["id"]
    sim.add_fault(kind="latency", seconds=3.0, route="get")
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/v1/tasks/{task_id}", timeout=httpx.Timeout(5.0, read=0.5))
    assert client.get(f"/v1/tasks/{task_id}").status_code == 200
    assert sim.fault_counts["latency"] == 1  # the second request was not delayed: fired once


def test_probabilistic_faults_follow_the_seed() -> None:
    def pattern(seed: int) -> list[int]:
        with EvoLinkSimulator(seed=seed) as simulator:
            simulator.add_fault(kind="server_error", status=503, probability=0.5, times=None)
            headers = {"Authorization": f"Bearer {simulator.api_key}"}
            with httpx.Client(base_url=simulator.base_url, headers=headers, verify=TLS) as http:
                return [http.get("/v1/tasks/x").status_code for _ in range(16)]

    first, again = pattern(3), pattern(3)
    assert first == again
    assert set(first) == {404, 503}


def test_fault_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="kind"):
        Fault(kind="meteor")
    with pytest.raises(ValueError, match="route"):
        Fault(kind="fail_task", route="get")
    with pytest.raises(ValueError, match="status"):
        Fault(kind="server_error", status=504)
    with pytest.raises(ValueError, match="seconds"):
        Fault(kind="slow_task")
    with pytest.raises(ValueError, match="unknown"):
        Fault.from_dict({"kind": "rate_limit", "colour": "red"})
    assert Fault(kind="rate_limit").route == "any"
    assert Fault(kind="expire_links").route == "create"


# --- admin endpoints, ledger, CLI --------------------------------------------------------


def test_admin_endpoints(sim: EvoLinkSimulator, client: httpx.Client, anon: httpx.Client) -> None:
    admin = anon  # no API key needed
    assert admin.get("/_sim/health").json()["status"] == "ok"

    added = admin.post(
        "/_sim/faults",
        json=[
            {"kind": "rate_limit", "retry_after": 1},
            {"kind": "fail_task", "error_code": "generation_timeout"},
        ],
    )
    assert added.status_code == 200 and added.json()["added"] == 2
    assert [f["kind"] for f in admin.get("/_sim/faults").json()] == ["rate_limit", "fail_task"]
    assert admin.post("/_sim/faults", json=[{"kind": "nope"}]).status_code == 400
    assert len(sim.faults) == 2

    assert create(client).status_code == 429
    task_id = create(client, key="admin-test-key-0001").json()["id"]
    wait_finished(client, task_id)
    (entry,) = admin.get("/_sim/ledger").json()
    assert entry["task_id"] == task_id and entry["status"] == "failed"
    assert entry["error_code"] == "generation_timeout"
    assert entry["idempotency_key"] == "admin-test-key-0001"
    assert Decimal(entry["billed_usd"]) == 0 and Decimal(entry["reserved_credits"]) > 0
    json.dumps(entry)  # plain JSON all the way down

    stats = admin.get("/_sim/stats").json()
    assert stats["request_counts"]["create"] == 2
    assert stats["fault_counts"] == {"rate_limit": 1, "fail_task": 1}

    assert admin.post("/_sim/reset").json() == {"status": "reset"}
    assert admin.get("/_sim/ledger").json() == [] and sim.faults == []
    assert sim.request_counts == {"create": 0, "get": 0, "download": 0}
    assert client.get(f"/v1/tasks/{task_id}").status_code == 404


def _entry(
    task_id: str, start: float, end: float | None, created: float | None = None
) -> LedgerEntry:
    return LedgerEntry(
        task_id=task_id,
        idempotency_key=None,
        request={},
        created_at=start - 1 if created is None else created,
        started_at=start,
        finished_at=end,
        expected_finish_at=end or 99.0,
        status="completed",
        output_tokens=0,
        image_input_tokens=0,
        text_input_tokens=0,
        reserved_credits=Decimal(0),
        billed_usd=Decimal(0),
        billed_credits=Decimal(0),
        error_code=None,
    )


def test_max_concurrent_from_intervals() -> None:
    entries = [_entry("a", 0, 10), _entry("b", 2, 5), _entry("c", 5, 9.5), _entry("d", 9, None)]
    assert max_concurrent(entries, now=20) == 3  # a, c, d overlap at 9; b ends as c starts
    assert max_concurrent(entries, now=4) == 2  # d has not started yet
    assert max_concurrent([_entry("x", 3, 4), _entry("y", 4, 6)], now=10) == 1
    waiting = [_entry("x", 3, 4), _entry("y", 5, 6, created=3.5)]
    assert max_concurrent(waiting, now=10) == 1
    assert max_concurrent(waiting, now=10, include_pending=True) == 2
    assert max_concurrent([], now=1) == 0


def test_max_concurrent_from_the_simulator(sim: EvoLinkSimulator, client: httpx.Client) -> None:
    sim.generation_seconds = 0.2
    # two tasks at a time, in two waves: the ledger must show a peak of 2, never 4
    for _ in range(2):
        ids = [create(client).json()["id"] for _ in range(2)]
        for task_id in ids:
            wait_finished(client, task_id)
    assert len(sim.ledger()) == 4
    assert sim.max_concurrent() == 2


def test_command_line_runs_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "evolink.simulator",
        "--port",
        "0",
        "--api-key",
        "sk-cli-test-key",
        "--generation-seconds",
        "0.1",
        "--seed",
        "1",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    ) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            with httpx.Client(base_url=base_url, verify=TLS) as http:
                assert http.get("/_sim/health").json()["status"] == "ok"
                response = http.post(
                    CREATE,
                    json={"prompt": "x"},
                    headers={"Authorization": "Bearer sk-cli-test-key"},
                )
            assert response.status_code == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_a_client_hanging_up_is_one_debug_line_and_a_bug_is_a_traceback(
    sim: EvoLinkSimulator, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    server = sim._server
    assert server is not None
    caplog.set_level("DEBUG", logger="evolink.simulator")
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        server.handle_error(None, ("127.0.0.1", 5))
    assert "Traceback" not in capfd.readouterr().err
    assert any("went away" in r.getMessage() for r in caplog.records)
    try:
        raise KeyError("a simulator bug")
    except KeyError:
        server.handle_error(None, ("127.0.0.1", 5))
    assert "KeyError: 'a simulator bug'" in capfd.readouterr().err


# --- a wrong estimate, non-linear progress (issue #12: pacing under realistic timing) --------


def test_estimate_factor_makes_estimated_time_wrong_on_purpose(
    sim: EvoLinkSimulator, client: httpx.Client
) -> None:
    sim.generation_seconds = 20
    assert create(client).json()["task_info"]["estimated_time"] == 20  # default: exact
    sim.estimate_factor = 0.5
    task_id = create(client, {"prompt": "under"}).json()["id"]
    assert client.get(f"/v1/tasks/{task_id}").json()["task_info"]["estimated_time"] == 10
    sim.estimate_factor = 1.5
    created = create(client, {"prompt": "over"}).json()
    assert created["task_info"]["estimated_time"] == 30
    # the truth is unchanged: the task still ends after 20 s
    entry = next(e for e in sim.ledger() if e.task_id == created["id"])
    assert entry.expected_finish_at - entry.created_at == pytest.approx(20)


def test_estimate_spread_is_drawn_per_task_from_the_seed() -> None:
    def estimates(seed: int) -> list[int]:
        with EvoLinkSimulator(generation_seconds=100, seed=seed, estimate_spread=0.5) as sim:
            headers = {"Authorization": f"Bearer {sim.api_key}"}
            with httpx.Client(base_url=sim.base_url, headers=headers, verify=TLS) as http:
                ids = [create(http, {"prompt": f"job {i}"}).json()["id"] for i in range(8)]
                return [
                    http.get(f"/v1/tasks/{i}").json()["task_info"]["estimated_time"] for i in ids
                ]

    first = estimates(3)
    assert first == estimates(3)  # the same seed, the same estimates
    assert first != estimates(4)
    assert all(50 <= e <= 150 for e in first) and len(set(first)) > 4
    assert min(first) < 90 and max(first) > 110  # really spread, both ways


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        # progress at 20 %, 50 %, 80 %, 95 % of a 100 s task
        ("linear", [20, 50, 80, 95]),
        ("ease-out", [36, 75, 96, 99]),
        ("ease-in", [4, 25, 64, 90]),
        ("stall", [5, 5, 80, 95]),
    ],
)
def test_progress_curves(
    sim: EvoLinkSimulator, client: httpx.Client, curve: str, expected: list[int]
) -> None:
    sim.generation_seconds = 100
    sim.progress_curve = curve
    task_id = create(client).json()["id"]
    seen = []
    for share in (20, 30, 30, 15):  # to 20, 50, 80, 95 % of the time
        sim.advance_clock(share)
        seen.append(client.get(f"/v1/tasks/{task_id}").json()["progress"])
    assert [abs(a - b) <= 1 for a, b in zip(seen, expected, strict=True)] == [True] * 4, seen
    sim.advance_clock(5)
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] == "completed"


def test_progress_curve_is_validated_and_settable_at_start() -> None:
    with pytest.raises(ValueError, match="progress_curve"):
        EvoLinkSimulator(progress_curve="zigzag")
    sim = EvoLinkSimulator(progress_curve="ease-in", estimate_factor=1.5)
    assert (sim.progress_curve, sim.estimate_factor) == ("ease-in", 1.5)
