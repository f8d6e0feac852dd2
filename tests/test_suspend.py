"""Approval by suspension: a deployed campaign run suspends for its review and holds no process.

The fast test checks the rule (`approval_wait`): a run from a deployment suspends, any other run
pauses. The slow one runs the campaign deployment on the loopback stack of
tests/test_deployments.py (real `prefect server`, process worker, simulator, moto S3): the run
suspends after its drafts and its process exits; it is resumed from code with a choice per
asset, reruns from the top, reattaches every draft (no new draft job) and sends only the chosen
finals.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun

from prefect_evolink.flows.campaign import approval_wait
from tests.test_deployments import BUCKET, CAMPAIGN_DEPLOYMENT, Stack, _tail, _wait_for
from tests.test_deployments import stack as e2e_stack  # noqa: F401 — a fixture of this module


def test_a_deployed_run_suspends_and_any_other_run_pauses() -> None:
    deployed = FlowRun(flow_id=uuid.uuid4(), deployment_id=uuid.uuid4())
    local = FlowRun(flow_id=uuid.uuid4())
    assert approval_wait(deployed) == "suspend"
    assert approval_wait(local) == "pause"
    assert approval_wait() == "pause"  # outside any flow run: nothing could restart it


def _flow_run_pids(flow_run_id: Any) -> list[int]:
    """Processes whose environment names this flow run (the worker sets PREFECT__FLOW_RUN_ID)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _read_run(stack: Stack, flow_run_id: Any) -> Any:
    return stack.call(lambda client: client.read_flow_run(flow_run_id))


def _wait_until_final(stack: Stack, flow_run_id: Any, timeout: float, what: str) -> Any:
    """The flow run once it is in a final state (completed, failed, …)."""

    def finished() -> Any:
        run = _read_run(stack, flow_run_id)
        return run if run.state.is_final() else None

    return _wait_for(finished, timeout=timeout, what=what, interval=0.5)


def _manifest(stack: Stack) -> dict[str, Any]:
    key = "evolink/aurora-spring-launch/manifest.json"
    return json.loads(stack.s3().get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _start_approval_run(stack: Stack, timeout: int) -> Any:
    async def start(client: Any) -> Any:
        deployment = await client.read_deployment_by_name(CAMPAIGN_DEPLOYMENT)
        return await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"selection": "approval", "approval_timeout_seconds": timeout},
        )

    return stack.call(start).id


def _wait_until_suspended(stack: Stack, flow_run_id: Any) -> Any:
    def suspended() -> Any:
        run = _read_run(stack, flow_run_id)
        if run.state.is_final():
            raise AssertionError(
                f"{run.state.type}: {run.state.message}\n{_tail(stack.logs / 'worker.log', 80)}"
            )
        return run if run.state.is_paused() else None

    return _wait_for(suspended, timeout=90, what="the run to suspend for review", interval=0.5)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find flow-run processes")
def test_deployed_approval_suspends_without_a_process_and_resumes_from_the_top(
    e2e_stack: Stack,  # noqa: F811 — the imported fixture
) -> None:
    stack = e2e_stack
    stack.simulator.generation_seconds = 0.05  # the waits here are Prefect's, not EvoLink's

    before = len(stack.simulator.ledger())
    flow_run_id = _start_approval_run(stack, timeout=600)
    run = _wait_until_suspended(stack, flow_run_id)
    assert run.state.name == "Suspended" and run.state.state_details.pause_reschedule
    assert run.state.state_details.pause_key == "review"

    # The flow-run process has exited: nothing holds the worker while the reviewer decides.
    _wait_for(
        lambda: not _flow_run_pids(flow_run_id), timeout=30, what="the flow-run process to exit"
    )
    time.sleep(1)
    assert _read_run(stack, flow_run_id).state.is_paused()

    drafts = stack.simulator.ledger()[before:]
    assert len(drafts) == 4 and {e.request["quality"] for e in drafts} == {"low"}

    # The review sheet is the Resume dialog's description, as for a paused run.
    keyset = run.state.state_details.run_input_keyset
    description = stack.call(
        lambda client: client.read_flow_run_input(flow_run_id, keyset["description"])
    )
    assert "launch-banner" in description and "data:image" in description

    # The manifest left at suspension: drafts paid, no final, the timeout outcome spelled out.
    suspended_manifest = _manifest(stack)
    assert suspended_manifest["run_state"] == "running"
    assert {a["status"] for a in suspended_manifest["assets"]} == {"not_reviewed"}
    assert all("suspended for review until" in a["detail"] for a in suspended_manifest["assets"])
    assert {j["stage"] for j in suspended_manifest["jobs"]} == {"draft"}

    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    answer = {
        "launch_banner": "image-2",
        "social_square": "reject",
        "story_vertical": "image-1",
        "product_shot": "image-3",
    }
    resumed_at = time.time()
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        resume_flow_run(flow_run_id, run_input=answer)

    run = _wait_until_final(stack, flow_run_id, 90, "the resumed run to finish")
    assert run.state.is_completed(), (
        f"{run.state.type}: {run.state.message}\n{_tail(stack.logs / 'worker.log', 80)}"
    )
    states = stack.call(lambda client: client.read_flow_run_states(flow_run_id))
    names = [state.name for state in states]
    assert names.count("Running") == 2 and "Suspended" in names, names  # ran again from the top

    new = [e for e in stack.simulator.ledger()[before:] if e.created_at >= resumed_at]
    # 3 finals and the approved launch-banner's 2 adaptations (the example brief's, issue #21),
    # all high quality: 0 new drafts
    assert [e.request["quality"] for e in new] == ["high"] * 5
    assert sum("Adapt the approved" in e.request["prompt"] for e in new) == 2
    assert len(stack.simulator.ledger()) == before + 4 + 3 + 2

    manifest = _manifest(stack)
    assert manifest["run_state"] == "completed"
    assert manifest["flow_run_id"] == str(flow_run_id)
    outcomes = {a["asset"]: a for a in manifest["assets"]}
    assert outcomes["social-square"]["status"] == "rejected"
    for asset, index in (("launch-banner", 2), ("story-vertical", 1), ("product-shot", 3)):
        assert outcomes[asset]["status"] == "final", outcomes[asset]
        assert outcomes[asset]["chosen_draft"] == index
    stages = sorted(j["stage"] for j in manifest["jobs"])
    assert stages == ["adapt-de", "adapt-story"] + ["draft"] * 4 + ["final"] * 3
    draft_tasks = {j["task_id"] for j in manifest["jobs"] if j["stage"] == "draft"}
    assert draft_tasks == {e.task_id for e in drafts}  # the drafts reattached, not redone


@pytest.mark.slow
def test_a_suspended_review_that_times_out_fails_the_run_and_sends_no_final(
    e2e_stack: Stack,  # noqa: F811 — the imported fixture
) -> None:
    stack = e2e_stack
    stack.simulator.generation_seconds = 0.05
    started = time.time()
    flow_run_id = _start_approval_run(stack, timeout=1)
    _wait_until_suspended(stack, flow_run_id)

    # the server's pause-expiration service (every 5 s) fails it
    run = _wait_until_final(stack, flow_run_id, 30, "the suspension to expire")
    assert run.state.is_failed() and "never resumed" in (run.state.message or "")
    assert not _flow_run_pids(flow_run_id)
    new = [e for e in stack.simulator.ledger() if e.created_at >= started]
    assert {e.request["quality"] for e in new} <= {"low"}  # no final was sent

    manifest = _manifest(stack)  # the one written at suspension is the last word
    assert manifest["flow_run_id"] == str(flow_run_id)
    assert {a["status"] for a in manifest["assets"]} == {"not_reviewed"}
    assert {j["stage"] for j in manifest["jobs"]} == {"draft"}


ADAPT_BRIEF = {
    "campaign": "adapt-deployed",
    "budget_usd": 3,
    "defaults": {"drafts": 2, "size": "16:9"},
    "assets": [
        {
            "id": "hero",
            "prompt": "An earbuds case on a lake at dawn, headline 'Aurora'",
            "adaptations": [{"id": "story", "size": "9:16"}, {"id": "feed", "size": "1:1"}],
        },
        {"id": "square", "size": "1:1", "prompt": "The case on grey"},
    ],
}


def _wait_until_suspended_for(stack: Stack, flow_run_id: Any, key: str) -> Any:
    def suspended() -> Any:
        run = _read_run(stack, flow_run_id)
        if run.state.is_final():
            raise AssertionError(
                f"{run.state.type}: {run.state.message}\n{_tail(stack.logs / 'worker.log', 80)}"
            )
        paused = run.state.is_paused() and run.state.state_details.pause_key == key
        return run if paused else None

    return _wait_for(suspended, timeout=120, what=f"the run to suspend for {key!r}", interval=0.5)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find flow-run processes")
def test_a_deployed_run_suspends_for_its_drafts_then_its_adaptations_and_reads_both_answers(
    e2e_stack: Stack,  # noqa: F811 — the imported fixture
) -> None:
    """selection and adaptation_selection 'approval' on a deployment: two suspensions in
    sequence, each under its own pause key, the process gone each time; each rerun reattaches
    every job (0 new creates for what was made) and reads the answers it already has. The
    reviewer rejects one adaptation: it is marked rejected, stays stored and on the books."""
    import yaml
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack = e2e_stack
    stack.simulator.generation_seconds = 0.05
    stack.s3().put_object(
        Bucket=BUCKET, Key="evolink/briefs/adapt-deployed.yaml", Body=yaml.safe_dump(ADAPT_BRIEF)
    )

    async def start(client: Any) -> Any:
        deployment = await client.read_deployment_by_name(CAMPAIGN_DEPLOYMENT)
        return await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={
                "brief": "storage:briefs/adapt-deployed.yaml",
                "selection": "approval",
                "adaptation_selection": "approval",
                "approval_timeout_seconds": 600,
            },
        )

    def manifest() -> dict[str, Any]:
        key = "evolink/adapt-deployed/manifest.json"
        return json.loads(stack.s3().get_object(Bucket=BUCKET, Key=key)["Body"].read())

    before = len(stack.simulator.ledger())
    flow_run_id = stack.call(start).id
    _wait_until_suspended_for(stack, flow_run_id, "review")
    assert len(stack.simulator.ledger()) == before + 2  # drafts of both assets
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        resume_flow_run(flow_run_id, run_input={"hero": "image-1", "square": "reject"})

    run = _wait_until_suspended_for(stack, flow_run_id, "review-adaptations")
    _wait_for(
        lambda: not _flow_run_pids(flow_run_id), timeout=30, what="the flow-run process to exit"
    )
    made = stack.simulator.ledger()[before:]
    assert len(made) == 2 + 1 + 2  # drafts, hero's final, its 2 adaptations: nothing twice
    keyset = run.state.state_details.run_input_keyset
    description = stack.call(
        lambda client: client.read_flow_run_input(flow_run_id, keyset["description"])
    )
    assert "hero" in description and "story (9:16)" in description and "data:image" in description
    suspended = manifest()
    assert suspended["run_state"] == "running"
    [hero, square] = suspended["assets"]
    assert (hero["status"], hero["chosen_draft"], square["status"]) == ("final", 1, "rejected")
    assert {a["status"] for a in hero["adaptations"]} == {"not_reviewed"}
    assert all("suspended for review until" in a["detail"] for a in hero["adaptations"])

    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        resume_flow_run(flow_run_id, run_input={"hero__story": "reject"})

    run = _wait_until_final(stack, flow_run_id, 120, "the resumed run to finish")
    assert run.state.is_completed(), (
        f"{run.state.type}: {run.state.message}\n{_tail(stack.logs / 'worker.log', 80)}"
    )
    names = [s.name for s in stack.call(lambda client: client.read_flow_run_states(flow_run_id))]
    assert names.count("Running") == 3 and names.count("Suspended") == 2, names
    assert stack.simulator.ledger()[before:] == made  # the last rerun sent nothing

    done = manifest()
    assert done["run_state"] == "completed" and done["flow_run_id"] == str(flow_run_id)
    [hero, square] = done["assets"]
    assert (hero["status"], hero["chosen_draft"], square["status"]) == ("final", 1, "rejected")
    adaptations = {a["id"]: (a["status"], a["detail"]) for a in hero["adaptations"]}
    assert adaptations == {
        "story": ("rejected", "rejected by reviewer"),
        "feed": ("final", "approved by reviewer"),
    }
    assert sorted(j["stage"] for j in done["jobs"]) == [
        "adapt-feed",
        "adapt-story",
        "draft",
        "draft",
        "final",
    ]
