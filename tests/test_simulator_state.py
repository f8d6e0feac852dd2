"""The simulator as a service: it forgets like EvoLink, survives restarts, and says what it is.

Scripts and workers pointed at a long-running simulator hold task ids, Idempotency-Keys and
result links across its restarts, and code that is tested against it must meet the real API's
forgetting (404 "Task not found or expired", expired links, keys that stop replaying) — while the
ledger, the billing record, forgets nothing. All over real HTTP on 127.0.0.1; ageing moves the
simulator's clock, so nothing here waits for hours or asserts on the wall clock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from evolink.simulator import (
    DEFAULT_API_KEY,
    SIMULATOR_HEADER,
    STATE_FILE_NAME,
    EvoLinkSimulator,
    SimulatorStateError,
)
from evolink.simulator.__main__ import banner

ROOT = Path(__file__).resolve().parents[1]
CREATE = "/v1/images/generations"
KEY = "state-test-key-0000001"
TLS = ssl.create_default_context()  # one CA bundle load for the whole file (plain HTTP anyway)
DEADLINE_SECONDS = 30.0  # generous: the machine is shared


@contextmanager
def api(sim: EvoLinkSimulator, *, auth: bool = True) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sim.api_key}"} if auth else {}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=10.0, verify=TLS) as http:
        yield http


def create(
    http: httpx.Client, prompt: str = "a lighthouse", key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return http.post(CREATE, json={"prompt": prompt}, headers=headers)


def wait_finished(http: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        task: dict[str, Any] = http.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} did not finish in {DEADLINE_SECONDS}s")


def path_of(url: str) -> str:
    """A result link without its scheme and host: the same link on whatever port serves it."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def saved(state_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((state_dir / STATE_FILE_NAME).read_text())
    return document


# --- restarts -------------------------------------------------------------------------------


def test_a_task_its_link_and_its_key_survive_a_restart(tmp_path: Path) -> None:
    with EvoLinkSimulator(generation_seconds=0.2, state_dir=tmp_path) as first:
        with api(first) as http:
            task = wait_finished(http, create(http, key=KEY).json()["id"])
            link = path_of(task["results"][0])
            image = http.get(link).content
            first.generation_seconds = 3600
            running = create(http, "a slow one").json()["id"]  # still running at the restart
        ledger = first.ledger()
    assert len(ledger) == 2 and ledger[0].billed_usd > 0 and ledger[1].status == "pending"
    assert (tmp_path / STATE_FILE_NAME).is_file()

    # A different seed and generation time: what the tasks are is in the file, not the options.
    with EvoLinkSimulator(generation_seconds=9, seed=99, state_dir=tmp_path) as second:
        assert second.ledger() == ledger
        with api(second) as http:
            again = http.get(f"/v1/tasks/{task['id']}")
            assert again.status_code == 200
            assert again.json()["status"] == "completed"
            assert [path_of(url) for url in again.json()["results"]] == [link]
            # the link issued before the restart: its signature still verifies, same image
            download = http.get(link)
            assert download.status_code == 200 and download.content == image
            replay = create(http, key=KEY)
            assert replay.headers.get("idempotency-replayed") == "true"
            assert replay.json()["id"] == task["id"]
            second.age(3600)  # its own hour, not the 9 s of this simulator's new tasks
            assert http.get(f"/v1/tasks/{running}").json()["status"] == "completed"
        assert [entry.task_id for entry in second.ledger()] == [task["id"], running]
        assert second.ledger()[1].finished_at == ledger[1].expected_finish_at


def test_the_clock_and_a_reset_are_saved_too(tmp_path: Path) -> None:
    with EvoLinkSimulator(generation_seconds=0.2, state_dir=tmp_path) as first:
        first.advance_clock(1000)
        with api(first) as http:
            create(http)
    with EvoLinkSimulator(state_dir=tmp_path) as second, api(second, auth=False) as admin:
        health = admin.get("/_sim/health").json()
        assert health["clock_offset_seconds"] == 1000 and health["tasks"] == 1
        assert admin.post("/_sim/reset").status_code == 200
    with EvoLinkSimulator(state_dir=tmp_path) as third, api(third, auth=False) as admin:
        health = admin.get("/_sim/health").json()
        assert health["clock_offset_seconds"] == 0 and health["tasks"] == 0
        assert third.ledger() == []


def test_changes_are_written_behind_while_running_and_atomically(tmp_path: Path) -> None:
    with EvoLinkSimulator(generation_seconds=0.2, state_dir=tmp_path) as sim, api(sim) as http:
        assert saved(tmp_path)["port"] == sim.port  # written as soon as it listens
        task_id = create(http).json()["id"]
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not any(t["id"] == task_id for t in saved(tmp_path)["tasks"]):
            assert time.monotonic() < deadline, "the new task never reached the state file"
            time.sleep(0.05)
        if os.name == "posix":
            mode = (tmp_path / STATE_FILE_NAME).stat().st_mode & 0o777
            assert mode == 0o600  # it holds the secret that signs result links
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE_NAME]  # no temp file left behind


def test_without_a_state_dir_nothing_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with EvoLinkSimulator(generation_seconds=0.2) as sim, api(sim) as http:
        for _ in range(3):
            create(http)
        savers = [t for t in threading.enumerate() if t.name == "evolink-sim-state"]
        assert sim.state_file is None and savers == []
    assert list(tmp_path.iterdir()) == []


def test_a_restart_takes_the_saved_port_or_a_free_one_if_it_is_taken(tmp_path: Path) -> None:
    with EvoLinkSimulator(state_dir=tmp_path) as first, api(first) as http:
        create(http)  # a served connection, so the old port has sockets in TIME_WAIT
        port = first.port
    with EvoLinkSimulator(state_dir=tmp_path) as second:
        assert second.port == port

    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with EvoLinkSimulator(state_dir=tmp_path) as third, api(third, auth=False) as admin:
            assert third.port != port
            assert admin.get("/_sim/health").json()["tasks"] == 1
            assert saved(tmp_path)["port"] == third.port  # remembered for next time
    finally:
        blocker.close()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"format": "evolink-simulator-state", "version": 1, "tasks": [', "not valid JSON"),
        ("[]", "not an object"),
        ('{"format": "something-else"}', "not a simulator state"),
    ],
)
def test_a_corrupt_state_file_is_a_clear_error(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / STATE_FILE_NAME
    path.write_text(content)
    with pytest.raises(SimulatorStateError) as raised:
        EvoLinkSimulator(state_dir=tmp_path)
    assert str(path) in str(raised.value) and problem in str(raised.value)
    assert path.read_text() == content  # left for a person to look at, not overwritten


def test_a_malformed_task_in_the_state_file_is_a_clear_error(tmp_path: Path) -> None:
    with EvoLinkSimulator(generation_seconds=0.2, state_dir=tmp_path) as sim, api(sim) as http:
        create(http)
    document = saved(tmp_path)
    del document["tasks"][0]["estimate"]
    (tmp_path / STATE_FILE_NAME).write_text(json.dumps(document))
    with pytest.raises(SimulatorStateError, match="estimate") as raised:
        EvoLinkSimulator(state_dir=tmp_path)
    assert str(tmp_path / STATE_FILE_NAME) in str(raised.value)


# --- forgetting -----------------------------------------------------------------------------


def test_age_forgets_the_task_and_its_link_but_not_the_bill(tmp_path: Path) -> None:
    with EvoLinkSimulator(generation_seconds=0.2, state_dir=tmp_path) as sim, api(sim) as http:
        task = wait_finished(http, create(http).json()["id"])
        link = task["results"][0]
        assert http.get(link).status_code == 200
        before = sim.ledger()
        billed = sim.service.stats()["billed_usd"]

        aged = sim.age()
        assert aged > 86400  # past the 24 h TTLs of tasks, links and keys

        gone = http.get(f"/v1/tasks/{task['id']}")
        assert gone.status_code == 404
        assert gone.json()["error"] == {
            "code": "not_found_error",
            "message": "Task not found or expired",
            "type": "not_found_error",
        }
        assert http.get(link).status_code in (403, 404)
        assert sim.task(task["id"]) is None
        after = sim.ledger()
        assert [entry.forgotten for entry in before] == [False]
        assert [entry.forgotten for entry in after] == [True]
        assert [dataclasses.replace(entry, forgotten=False) for entry in after] == before
        assert Decimal(sim.service.stats()["billed_usd"]) == Decimal(billed) > 0
        (entry,) = http.get("/_sim/ledger").json()
        assert entry["task_id"] == task["id"] and entry["forgotten"] is True
    with EvoLinkSimulator(state_dir=tmp_path) as again, api(again) as http:
        assert http.get(f"/v1/tasks/{task['id']}").status_code == 404  # the age was saved
        assert len(again.ledger()) == 1


def test_a_task_is_forgotten_task_ttl_after_it_finished_even_with_a_live_link() -> None:
    with EvoLinkSimulator(generation_seconds=0.2, task_ttl_seconds=60) as sim, api(sim) as http:
        task = wait_finished(http, create(http).json()["id"])
        link = task["results"][0]
        sim.age(30)
        assert http.get(f"/v1/tasks/{task['id']}").status_code == 200
        assert http.get(link).status_code == 200
        sim.age(31)
        assert http.get(f"/v1/tasks/{task['id']}").status_code == 404
        refused = http.get(link)  # still signed and in date, but the object is gone
        assert refused.status_code == 404 and b"NoSuchKey" in refused.content
        assert len(sim.ledger()) == 1


def test_an_idempotency_key_replays_until_its_ttl_then_makes_a_new_task() -> None:
    with EvoLinkSimulator(generation_seconds=0.2, idempotency_ttl_seconds=100) as sim:
        with api(sim) as http:
            first = create(http, key=KEY)
            assert first.status_code == 200 and "idempotency-replayed" not in first.headers
            sim.age(99)
            replay = create(http, key=KEY)
            assert replay.headers.get("idempotency-replayed") == "true"
            assert replay.json()["id"] == first.json()["id"]
            assert len(sim.ledger()) == 1

            sim.age(2)
            fresh = create(http, key=KEY)
            assert fresh.status_code == 200 and "idempotency-replayed" not in fresh.headers
            assert fresh.json()["id"] != first.json()["id"]
            # the task outlives its key: the first one is still there
            assert http.get(f"/v1/tasks/{first.json()['id']}").status_code == 200
            # and the key now replays the new task
            assert create(http, key=KEY).json()["id"] == fresh.json()["id"]
        ids = [entry.task_id for entry in sim.ledger()]
        assert ids == [first.json()["id"], fresh.json()["id"]]
        assert {entry.idempotency_key for entry in sim.ledger()} == {KEY}


def test_the_same_key_after_age_is_a_new_request_and_a_new_bill() -> None:
    with EvoLinkSimulator(generation_seconds=0.2) as sim, api(sim) as http:
        first = wait_finished(http, create(http, key=KEY).json()["id"])
        sim.age()
        second = create(http, key=KEY)
        assert second.status_code == 200 and "idempotency-replayed" not in second.headers
        assert second.json()["id"] != first["id"]
        wait_finished(http, second.json()["id"])
        assert [entry.task_id for entry in sim.billed_tasks()] == [first["id"], second.json()["id"]]


def test_running_tasks_finish_by_the_aged_clock() -> None:
    with EvoLinkSimulator(generation_seconds=3600) as sim, api(sim) as http:
        task_id = create(http).json()["id"]
        assert http.get(f"/v1/tasks/{task_id}").json()["status"] == "pending"
        sim.age(3600)
        assert http.get(f"/v1/tasks/{task_id}").json()["status"] == "completed"
        sim.age()
        (entry,) = sim.ledger()
        assert entry.status == "completed" and entry.forgotten and entry.billed


def test_the_age_endpoint() -> None:
    with EvoLinkSimulator(generation_seconds=0.2) as sim:
        with api(sim) as http:
            task_id = wait_finished(http, create(http).json()["id"])["id"]
        with api(sim, auth=False) as admin:
            by_ten = admin.post("/_sim/age", json={"seconds": 10})
            assert by_ten.status_code == 200
            assert by_ten.json()["aged_seconds"] == 10
            assert by_ten.json()["clock_offset_seconds"] == 10
            assert by_ten.json()["forgotten_tasks"] == 0
            for bad in ({"seconds": -1}, {"seconds": "1"}, {"expire": True, "seconds": 1}, [1]):
                assert admin.post("/_sim/age", json=bad).status_code == 400
            expired = admin.post("/_sim/age", json={"expire": True}).json()
            assert expired["aged_seconds"] > 86400 and expired["forgotten_tasks"] == 1
            assert expired["clock_offset_seconds"] == 10 + expired["aged_seconds"]
            assert admin.post("/_sim/age", content=b"").json()["forgotten_tasks"] == 1
        assert sim.task(task_id) is None
    # loopback-only, like every /_sim/ route
    refused = sim.service.dispatch("POST", "/_sim/age", {}, b"{}", loopback=False)
    assert refused.status == 403


# --- it says what it is ---------------------------------------------------------------------


def test_every_reply_says_it_comes_from_the_simulator() -> None:
    with EvoLinkSimulator(generation_seconds=0.2) as sim, api(sim) as http:
        created = create(http)
        link = wait_finished(http, created.json()["id"])["results"][0]
        replies = {
            "api": created,
            "error": http.get("/v1/tasks/task-unified-1-nosuchid"),
            "unauthorized": http.get("/v1/tasks/x", headers={"Authorization": "Bearer no"}),
            "download": http.get(link),
            "refused link": http.get(link.replace("sig=", "sig=0")),
            "admin": http.get("/_sim/health"),
            "stdlib error": http.request("OPTIONS", "/"),
        }
        assert [r.status_code for r in replies.values()] == [200, 404, 401, 200, 403, 200, 501]
        missing = [name for name, r in replies.items() if r.headers.get(SIMULATOR_HEADER) != "1"]
        assert missing == []
        assert replies["admin"].json()["simulator"] is True


def test_the_banner_never_shows_a_key_that_is_not_the_public_test_key() -> None:
    with EvoLinkSimulator(api_key="sk-looks-real-0123456789abcdef") as sim:
        text = "\n".join(banner(sim))
    assert "sk-looks-real-0123456789abcdef" not in text
    assert "SIMULATOR" in text and "state in memory only" in text
    with EvoLinkSimulator() as sim:
        text, base_url = "\n".join(banner(sim)), sim.base_url
    assert f"EVOLINK_API_KEY={DEFAULT_API_KEY}" in text
    assert f"EVOLINK_BASE_URL={base_url} EVOLINK_ALLOW_PRIVATE_URLS=true" in text


# --- the command line -----------------------------------------------------------------------


def run_cli(*options: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "evolink.simulator", "--port", "0", *options]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def stop_cli(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then its stderr; it must exit cleanly (that is when it saves for the last time)."""
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=DEADLINE_SECONDS)
    assert process.returncode == 0, stderr
    return stderr


def test_the_command_line_keeps_its_state_across_a_restart(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    auth = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    process = run_cli(
        "--generation-seconds", "0.1", "--state-dir", state_dir, "--task-ttl-seconds", "1000"
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url, headers=auth, verify=TLS, timeout=10) as http:
            task_id = create(http, key=KEY).json()["id"]
        stderr = stop_cli(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert "EvoLink SIMULATOR (not the real EvoLink API" in stderr
    assert f"state in {state_dir}" in stderr
    assert f"EVOLINK_BASE_URL={base_url} EVOLINK_ALLOW_PRIVATE_URLS=true" in stderr

    process = run_cli("--state-dir", state_dir)
    try:
        assert process.stdout is not None
        again = process.stdout.readline().strip()
        assert again == base_url  # the saved port, free again
        with httpx.Client(base_url=again, headers=auth, verify=TLS, timeout=10) as http:
            task = http.get(f"/v1/tasks/{task_id}")
            assert task.status_code == 200 and task.json()["id"] == task_id
            assert create(http, key=KEY).json()["id"] == task_id  # the key too
            # the TTL it was created with (--task-ttl-seconds 1000) came along
            http.post("/_sim/age", json={"seconds": 1001}).raise_for_status()
            assert http.get(f"/v1/tasks/{task_id}").status_code == 404
        stop_cli(process)
    finally:
        if process.poll() is None:
            process.kill()


def test_the_command_line_refuses_a_corrupt_state_file(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE_NAME).write_text("{half a file")
    process = run_cli("--state-dir", str(tmp_path))
    try:
        stdout, stderr = process.communicate(timeout=DEADLINE_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2 and stdout == ""
    assert str(tmp_path / STATE_FILE_NAME) in stderr and "not valid JSON" in stderr
