"""Fault soak (issue 10 item 4): random faults by rate, and a small campaign under them, 20 seeds.

First the simulator's random faults themselves (seeded, independent of how requests interleave,
bursts longer than the client's retries, task faults, the admin endpoint and the command line)
and the soak's flaky storage. Then `SUITE_SEEDS`, one test each, run one after another in the
session's Prefect harness: each runs `bench/harness/soak.py`'s campaign under that seed's
faults and fails with a report naming the seed, every broken invariant and its evidence, and
the command that replays it. `bench/soak.py` runs more seeds and prints the README's summary.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness.soak import (
    FlakyLocalAssetStorage,
    SeedResult,
    markdown_table,
    run_seed,
    storage_book,
    summary,
)
from evolink.simulator import EvoLinkSimulator, FaultRates
from evolink.simulator.__main__ import _load_chaos, parse_args
from evolink.simulator.chaos import request_key
from prefect_evolink.tasks.steps import is_retryable

CREATE = "/v1/images/generations"
TLS = ssl.create_default_context()
SUITE_SEEDS = tuple(range(1, 21))


def body(prompt: str = "a red kite over a beach", **changes: Any) -> dict[str, Any]:
    return {"model": "gpt-image-2", "prompt": prompt, "size": "1:1", "quality": "low", **changes}


def key(i: int) -> str:
    return f"soak-key-{i:016d}"


@pytest.fixture
def http() -> Iterator[Any]:
    """(simulator factory, client factory): simulators are stopped at the end."""
    sims: list[EvoLinkSimulator] = []
    clients: list[httpx.Client] = []

    def sim(**kwargs: Any) -> EvoLinkSimulator:
        started = EvoLinkSimulator(generation_seconds=0.0, **kwargs).start()
        sims.append(started)
        return started

    def client(simulator: EvoLinkSimulator) -> httpx.Client:
        headers = {"Authorization": f"Bearer {simulator.api_key}"}
        made = httpx.Client(base_url=simulator.base_url, headers=headers, timeout=5, verify=TLS)
        clients.append(made)
        return made

    yield sim, client
    for made in clients:
        made.close()
    for started in sims:
        started.stop()


def outcome(client: httpx.Client, method: str, url: str, **kwargs: Any) -> str:
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TransportError as error:
        return type(error).__name__
    return str(response.status_code)


# --- random faults by rate ---------------------------------------------------------------------


def test_fault_rates_are_validated_and_round_trip_as_json() -> None:
    rates = FaultRates(create=0.05, get=0.03, download=0.03, burst_length=6, cancel_task=0.1)
    assert FaultRates.from_dict(json.loads(json.dumps(rates.to_dict()))) == rates
    for bad in (
        {"get": 1.5},
        {"burst_length": 0},
        {"fail_task": 0.7, "cancel_task": 0.5},
        {"mix": {"meteor": 1}},
        {"mix": {"burst": 0}},
        {"gets": 0.1},
    ):
        with pytest.raises(ValueError):
            FaultRates.from_dict(bad)


def test_random_faults_follow_the_seed_whatever_the_interleaving(http: Any) -> None:
    """Per-request draws are seeded by what the request is about, not by global order."""
    make_sim, make_client = http
    rates = FaultRates(create=0.4, mix={"server_error": 1, "drop_connection": 1})
    prompts = [f"prompt number {i}" for i in range(6)]

    def run(order: list[int], seed: int) -> dict[str, list[str]]:
        sim = make_sim(seed=seed, chaos=rates)
        client = make_client(sim)
        seen: dict[str, list[str]] = {p: [] for p in prompts}
        for i in order:
            prompt = prompts[i % len(prompts)]
            seen[prompt].append(outcome(client, "POST", CREATE, json=body(prompt)))
        return seen

    forward = list(range(24))
    first, again, backward = run(forward, 5), run(forward, 5), run(forward[::-1], 5)
    assert first == again == backward
    assert any(o != "200" for results in first.values() for o in results), "nothing fired"
    assert run(forward, 6) != first, "another seed, other faults"
    # reference URLs (ports, signatures) do not change what a create is about; the prompt does
    base = body(image_urls=["http://127.0.0.1:1234/files/t/0.png?sig=abc"])
    moved = body(image_urls=["http://127.0.0.1:9999/files/t/0.png?sig=xyz"])
    assert request_key(base) == request_key(moved) != request_key(body("another prompt"))


def test_a_burst_outlasts_the_client_retries_whatever_task_it_hits(http: Any) -> None:
    make_sim, make_client = http
    sim = make_sim(seed=1)
    client = make_client(sim)
    tasks = [client.post(CREATE, json=body(f"p{i}")).json()["id"] for i in range(2)]
    sim.chaos = FaultRates(get=1.0, mix={"burst": 1}, burst_length=6)
    answers = [client.get(f"/v1/tasks/{tasks[i % 2]}").status_code for i in range(6)]
    assert len(set(answers)) == 1 and answers[0] in (500, 502, 503), answers
    assert sim.chaos_counts == {"get.burst": 1, "get.burst_5xx": 6}
    client.get(f"/v1/tasks/{tasks[0]}")  # the burst is over: a fresh draw (rate 1: a new burst)
    assert sim.chaos_counts["get.burst"] == 2
    sim.chaos = None
    assert client.get(f"/v1/tasks/{tasks[0]}").status_code == 200
    assert client.post(CREATE, json=body("p9")).status_code == 200  # other routes untouched


def test_task_faults_by_rate(http: Any) -> None:
    make_sim, make_client = http
    sim = make_sim(seed=2, chaos=FaultRates(fail_task=1.0, fail_codes=("generation_timeout",)))
    client = make_client(sim)
    failed = client.post(CREATE, json=body()).json()["id"]
    sim.chaos = FaultRates(cancel_task=1.0)
    cancelled = client.post(CREATE, json=body("c1")).json()["id"]
    sim.chaos = FaultRates(cancel_task=1.0, cancel_charged=1.0, cancel_billed_fraction=0.5)
    charged = client.post(CREATE, json=body("c2")).json()["id"]
    sim.chaos = FaultRates(slow_task=1.0, slow_seconds=30)
    slow = client.post(CREATE, json=body("s")).json()["id"]
    sim.chaos = FaultRates(lose_create_response=1.0)
    assert outcome(client, "POST", CREATE, json=body("l"), headers={"Idempotency-Key": key(1)}) in (
        "RemoteProtocolError",
        "ReadError",
    )
    replay = client.post(CREATE, json=body("l"), headers={"Idempotency-Key": key(1)})
    assert replay.headers.get("idempotency-replayed") == "true"

    entries = {e.task_id: e for e in sim.ledger()}
    assert len(entries) == 5, "the replay drew nothing and created nothing"
    assert (entries[failed].status, entries[failed].error_code) == ("failed", "generation_timeout")
    assert entries[cancelled].status == "cancelled" and not entries[cancelled].billed
    assert entries[charged].status == "cancelled" and entries[charged].billed
    assert entries[charged].billed_usd > Decimal(0)
    slow_entry = entries[slow]
    assert slow_entry.expected_finish_at - slow_entry.created_at == pytest.approx(30)
    assert slow_entry.status in ("pending", "processing")
    assert sim.chaos_counts == {
        "task.cancel_task": 2,
        "task.fail_task": 1,
        "task.lose_create_response": 1,
        "task.slow_task": 1,
    }


def test_reset_keeps_the_rates_and_replays_the_same_faults(http: Any) -> None:
    make_sim, make_client = http
    sim = make_sim(seed=9, chaos=FaultRates(create=0.5))
    client = make_client(sim)

    def round_() -> list[str]:
        return [outcome(client, "POST", CREATE, json=body(f"r{i % 3}")) for i in range(12)]

    first = round_()
    sim.reset()
    assert sim.chaos == FaultRates(create=0.5) and sim.chaos_counts == {}
    assert round_() == first


def test_chaos_admin_endpoint_and_command_line(http: Any, tmp_path: Path) -> None:
    make_sim, _ = http
    sim = make_sim(seed=3)
    with httpx.Client(base_url=sim.base_url, timeout=5, verify=TLS) as admin:
        assert admin.get("/_sim/chaos").json() == {"rates": None, "counts": {}}
        answer = admin.post("/_sim/chaos", json={"get": 0.25, "burst_length": 8})
        assert answer.status_code == 200
        assert answer.json()["rates"]["get"] == 0.25 and answer.json()["rates"]["burst_length"] == 8
        assert sim.chaos == FaultRates(get=0.25, burst_length=8)
        refused = admin.post("/_sim/chaos", json={"get": 2})
        assert refused.status_code == 400 and "get" in refused.json()["error"]["message"]
        assert admin.post("/_sim/chaos", content=b"null").json()["rates"] is None
        assert sim.chaos is None
        assert "chaos_counts" in admin.get("/_sim/stats").json()

    spec = '{"create": 0.05, "get": 0.03, "download": 0.03, "burst_length": 6}'
    args = parse_args(["--seed", "4", "--chaos", spec])
    assert _load_chaos(args.chaos) == FaultRates(create=0.05, get=0.03, download=0.03)
    path = tmp_path / "chaos.json"
    path.write_text(spec)
    assert _load_chaos(f"@{path}") == _load_chaos(spec)


def test_flaky_storage_is_seeded_and_its_errors_are_judged_by_the_retry_rule(
    tmp_path: Path,
) -> None:
    source = tmp_path / "image.png"
    source.write_bytes(b"\x89PNG fake")

    def attempts(permanent_share: float, book: str, seed: int = 1) -> list[str]:
        storage = FlakyLocalAssetStorage(
            base_dir=str(tmp_path / book),
            book=book,
            seed=seed,
            put_rate=0.5,
            permanent_share=permanent_share,
            json_rate=1.0,
        )
        seen = []
        for i in range(20):
            try:
                storage.put_file(f"a/{i % 4}.png", source, content_type="image/png", metadata={})
                seen.append("ok")
            except Exception as error:  # what was raised is the point
                seen.append(f"{type(error).__name__}:{is_retryable(error)}")
        storage.put_json("c/manifest.json", {"ok": True})  # the manifest never fails
        with pytest.raises(TimeoutError):
            storage.put_json("_jobs/x/result.json", {})  # other JSON does, with json_rate
        return seen

    transient = attempts(0.0, "t")
    assert transient == attempts(0.0, "t2"), "same seed, same failures"
    assert transient != attempts(0.0, "t3", seed=2)
    assert "ok" in transient and {o for o in transient if o != "ok"} <= {
        "ClientError:True",
        "TimeoutError:True",
    }
    permanent = [o for o in attempts(1.0, "p") if o != "ok"]
    assert permanent and set(permanent) <= {"ClientError:False", "PermissionError:False"}
    assert storage_book("p").faults["permanent"] == len(permanent)


# --- the soak ------------------------------------------------------------------------------------

_RESULTS: dict[int, SeedResult] = {}


@pytest.fixture(scope="module")
def soak_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("seed", SUITE_SEEDS)
def test_soak_seed(seed: int, soak_workdir: Path) -> None:
    result = run_seed(seed, soak_workdir)
    _RESULTS[seed] = result
    assert result.ok, "\n" + result.report()


def test_soak_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """The table of the seeds that ran in this session (all pass or fail on their own)."""
    results = [_RESULTS[seed] for seed in SUITE_SEEDS if seed in _RESULTS]
    if not results:
        pytest.skip("no soak seed ran in this session")
    with capsys.disabled():
        print("\n" + markdown_table(results) + "\n" + summary(results))
    fired = sum(r.faults_fired for r in results)
    assert len(results) < len(SUITE_SEEDS) or fired >= len(results), "the soak injected too little"
