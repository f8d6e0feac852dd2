"""The CLI's expected failures: one short message on stderr, a documented exit code, no traceback.

Each case runs `python -m prefect_evolink …` as a subprocess, as a user would. The invalid-brief,
budget and unreachable-API cases must not involve Prefect at all: they run with a fresh
PREFECT_HOME and no PREFECT_API_URL, so starting Prefect's temporary server would leave its
database there. The cases that need a Prefect API use the session's test server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from evolink.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BriefError,
    BudgetExceededError,
    CampaignIncompleteError,
    EvoLinkError,
    InsufficientCreditsError,
    InvalidRequestError,
    MissingCredentialsError,
    PaidJobNotStoredError,
    ServerError,
    TaskFailedError,
)
from evolink.simulator import EvoLinkSimulator, Fault
from prefect_evolink import cli


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def brief_file(tmp_path: Path, name: str = "brief.yaml", **changes: Any) -> Path:
    data: dict[str, Any] = {
        "campaign": "cli-test",
        "budget_usd": 1,
        "defaults": {"drafts": 1},
        "assets": [
            {"id": "mug", "prompt": "a ceramic mug of cocoa on a wooden table"},
            {"id": "runner", "prompt": "a forbidden jogging scene at dawn"},
        ],
    }
    data.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


class Run:
    def __init__(self, result: subprocess.CompletedProcess[str], seconds: float, home: Path):
        self.code = result.returncode
        self.out = result.stdout
        self.err = result.stderr
        self.seconds = seconds
        self.home = home

    @property
    def output(self) -> str:
        return self.out + self.err

    @property
    def prefect_started(self) -> bool:
        return any(self.home.glob("*.db"))

    def __repr__(self) -> str:
        where = f"exit {self.code} after {self.seconds:.1f}s"
        return f"{where}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def run_cli(tmp_path: Path, *args: str, api_url: str | None = None, **env: str | None) -> Run:
    home = tmp_path / f"prefect-home-{time.monotonic_ns()}"
    home.mkdir()
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "EVOLINK_"))
    }
    environ.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        EVOLINK_TASK_RETRY_DELAYS="0",
        EVOLINK_POLL_MIN_INTERVAL="0.05",
        EVOLINK_POLL_MAX_INTERVAL="0.2",
    )
    if api_url is not None:
        environ["PREFECT_API_URL"] = api_url
    for key, value in env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "prefect_evolink", *args, "--assets-dir", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=240,
    )
    return Run(result, time.monotonic() - started, home)


@pytest.fixture
def harness_api_url(prefect_harness: None) -> Iterator[str]:
    """The session's Prefect test server, so a subprocess need not start its own."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url
    yield url


def assert_expected_failure(run: Run, code: int, *fragments: str) -> None:
    assert run.code == code, run
    assert "Traceback" not in run.output, run
    # Prefect's own log lines (on stderr too) may surround it: find the CLI's message.
    messages = [line for line in run.err.splitlines() if line.startswith("prefect-evolink: ")]
    assert len(messages) == 1, run
    for fragment in fragments:
        assert fragment in run.err, run


# --- no Prefect involved ---------------------------------------------------------------------


def test_invalid_brief_exits_2_before_prefect_starts(tmp_path: Path) -> None:
    brief = brief_file(
        tmp_path,
        assets=[
            {
                "id": "product-shot",
                "prompt": "p",
                "size": "17:9",
                "reference_images": ["https://cdn.example.net/shots/case.gif"],
            }
        ],
    )
    run = run_cli(tmp_path, "campaign", str(brief))
    assert_expected_failure(
        run,
        cli.EXIT_INVALID,
        "invalid input",
        "asset 'product-shot': size",
        "asset 'product-shot': reference_images.0: must point to a jpeg/jpg/png/webp file, "
        "not a GIF file",
    )
    assert not run.prefect_started, run  # no database: no Prefect server was started


def test_missing_brief_file_exits_2(tmp_path: Path) -> None:
    run = run_cli(tmp_path, "campaign", "nowhere.yaml")
    assert_expected_failure(run, cli.EXIT_INVALID, "nowhere.yaml", "no such brief file")
    assert not run.prefect_started, run


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    brief = brief_file(tmp_path, budget_usd=-1)
    run = run_cli(tmp_path, "campaign", str(brief), "--debug")
    assert run.code == cli.EXIT_INVALID, run
    assert "Traceback" in run.err and "BriefError" in run.err, run
    assert "prefect-evolink: invalid input" in run.err, run


def test_over_budget_exits_3_before_prefect_starts(tmp_path: Path) -> None:
    brief = brief_file(tmp_path, budget_usd=0.001)
    run = run_cli(tmp_path, "campaign", str(brief))
    assert_expected_failure(run, cli.EXIT_BUDGET, "budget", "over its budget", "nothing was sent")
    assert not run.prefect_started, run  # no database: no Prefect server was started


def test_unreachable_api_exits_5_before_prefect_starts(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    brief = brief_file(tmp_path)
    env = {"EVOLINK_API_KEY": "sk-test-unreachable", "EVOLINK_BASE_URL": dead}
    run = run_cli(tmp_path, "campaign", str(brief), **env)
    assert_expected_failure(run, cli.EXIT_UNREACHABLE, "EvoLink API unreachable", dead)
    assert "sk-test-unreachable" not in run.output
    assert not run.prefect_started, run  # no database: no Prefect server was started
    single = run_cli(tmp_path, "demo", "--single", **env)
    assert_expected_failure(single, cli.EXIT_UNREACHABLE, "EvoLink API unreachable")
    assert not single.prefect_started, single


def test_invalid_single_request_exits_2(tmp_path: Path) -> None:
    run = run_cli(tmp_path, "demo", "--single", "--size", "17:9")
    assert_expected_failure(run, cli.EXIT_INVALID, "invalid input", "size")
    assert not run.prefect_started, run


# --- with a Prefect API (the session's test server) --------------------------------------------


def test_missing_credentials_block_exits_4(tmp_path: Path, harness_api_url: str) -> None:
    brief = brief_file(tmp_path)
    run = run_cli(
        tmp_path, "campaign", str(brief), "--credentials-block", "nope", api_url=harness_api_url
    )
    assert_expected_failure(run, cli.EXIT_CREDENTIALS, "credentials", "'nope'")


def test_partly_failed_campaign_exits_6_with_what_failed_was_stored_and_billed(
    tmp_path: Path, harness_api_url: str, simulator: EvoLinkSimulator
) -> None:
    simulator.add_fault(
        Fault(kind="fail_task", error_code="content_policy_violation", match_prompt="forbidden")
    )
    brief = brief_file(tmp_path)
    run = run_cli(
        tmp_path,
        "campaign",
        str(brief),
        api_url=harness_api_url,
        EVOLINK_API_KEY=simulator.api_key,
        EVOLINK_BASE_URL=simulator.base_url,
        EVOLINK_ALLOW_PRIVATE_URLS="true",
    )
    assert_expected_failure(
        run, cli.EXIT_INCOMPLETE, "campaign incomplete", "runner", "content_policy_violation"
    )
    assert "manifest.json" in run.output, run
    assert simulator.request_counts["create"] == 3  # mug: draft + final; runner: one draft
    if "=== Campaign cli-test ===" in run.out:  # the manifest travels with the error
        assert "mug" in run.out and "billed" in run.out, run


# --- the mapping itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BriefError(["asset 'a': size: bad"]), cli.EXIT_INVALID),
        (InvalidRequestError([("size", "bad")]), cli.EXIT_INVALID),
        (BudgetExceededError("over"), cli.EXIT_BUDGET),
        (InsufficientCreditsError("no credits", status_code=402), cli.EXIT_BUDGET),
        (MissingCredentialsError("none"), cli.EXIT_CREDENTIALS),
        (AuthenticationError("bad key", status_code=401), cli.EXIT_CREDENTIALS),
        (APIConnectionError("refused"), cli.EXIT_UNREACHABLE),
        (APITimeoutError("slow"), cli.EXIT_UNREACHABLE),
        (CampaignIncompleteError("1 of 2"), cli.EXIT_INCOMPLETE),
        (TaskFailedError("t", None, None, cancelled=True), cli.EXIT_INCOMPLETE),
        (ServerError("down", status_code=503), cli.EXIT_UNEXPECTED),
        (RuntimeError("bug"), cli.EXIT_UNEXPECTED),
    ],
)
def test_every_failure_has_its_code_and_one_line(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli.argparse.Namespace(debug=False)
    assert cli._fail(error, args) == code
    captured = capsys.readouterr()
    assert captured.err.startswith("prefect-evolink: ") and "Traceback" not in captured.err
    if not isinstance(error, EvoLinkError):
        assert "--debug" in captured.err


def test_paid_job_not_stored_is_a_failed_job() -> None:
    assert any(
        PaidJobNotStoredError in kinds and code == cli.EXIT_INCOMPLETE
        for kinds, code, _ in cli.EXPECTED_FAILURES
    )


# --- brief put: a brief into the storage block, checked first ---------------------------------


def test_brief_put_stores_the_file_as_it_is_and_prints_its_storage_location(
    tmp_path: Path,
) -> None:
    brief = brief_file(tmp_path, "spring.yaml")
    run = run_cli(tmp_path, "brief", "put", str(brief))  # run_cli adds --assets-dir tmp/a
    assert run.code == 0, run
    stored = tmp_path / "a" / "briefs" / "spring.yaml"
    assert stored.read_bytes() == brief.read_bytes()
    assert "brief: storage:briefs/spring.yaml" in run.out, run
    assert not run.prefect_started, run  # local storage needs no Prefect API

    keyed = run_cli(tmp_path, "brief", "put", str(brief), "--key", "briefs/v2/spring.yaml")
    assert keyed.code == 0, keyed
    assert (tmp_path / "a" / "briefs" / "v2" / "spring.yaml").is_file()
    assert "brief: storage:briefs/v2/spring.yaml" in keyed.out, keyed


@pytest.mark.parametrize(
    ("changes", "code", "fragments"),
    [
        ({"budget_usd": -1}, cli.EXIT_INVALID, ("invalid input", "budget_usd")),
        (  # a brief in storage has no folder: a local reference could never be found
            {"assets": [{"id": "mug", "prompt": "a mug", "reference_images": ["shots/mug.png"]}]},
            cli.EXIT_INVALID,
            ("invalid input", "'shots/mug.png' is a local path", "storage:<key>"),
        ),
        ({"budget_usd": 0.01}, cli.EXIT_BUDGET, ("budget", "over its budget")),
    ],
    ids=["invalid", "local-reference", "over-budget"],
)
def test_brief_put_refuses_a_brief_that_would_fail_and_writes_nothing(
    tmp_path: Path, changes: dict[str, Any], code: int, fragments: tuple[str, ...]
) -> None:
    brief = brief_file(tmp_path, **changes)
    run = run_cli(tmp_path, "brief", "put", str(brief))
    assert_expected_failure(run, code, *fragments)
    assert not (tmp_path / "a").exists(), run


def test_brief_put_without_a_prefect_api_names_it_and_exits_2(tmp_path: Path) -> None:
    brief = brief_file(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "prefect_evolink", "brief", "put", str(brief)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")},
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == cli.EXIT_INVALID, done
    assert "PREFECT_API_URL is not set" in done.stderr and "Traceback" not in done.stderr


def test_brief_put_into_a_missing_block_exits_2(tmp_path: Path, harness_api_url: str) -> None:
    brief = brief_file(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "prefect_evolink", "brief", "put", f"{brief}", "--storage-block=x"],
        capture_output=True,
        text=True,
        env={**os.environ, "PREFECT_API_URL": harness_api_url},
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == cli.EXIT_INVALID, done
    assert "no storage block named 'x'" in done.stderr, done
    assert "Traceback" not in done.stderr, done


def test_brief_example_is_the_packaged_example_and_a_valid_brief(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prefect_evolink", "brief", "example"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done
    (tmp_path / "example.yaml").write_text(done.stdout)
    assert cli.load_brief(tmp_path / "example.yaml").campaign == "aurora-spring-launch"
