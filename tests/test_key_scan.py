"""Key scan (issue #5): 'the key never leaks', checked everywhere a run leaves traces.

A full campaign (the example brief, auto selection) runs with a recognisable random key held in
a saved `EvoLinkCredentials` block, with one asset failing on policy, one resubmitted after a
transient failure, and 429s, 5xx, a dropped download and a lost create response on the way —
so the error and retry paths log and raise too. Afterwards the key (and, in case something
truncates it, its random part and the middle of that) is looked for in:

- every log record of the root, prefect (also its non-propagating children), httpx, httpcore,
  evolink, boto loggers at DEBUG — formatted line, message, args, the record's dict, traceback;
- the run logs as Prefect stored them (logging to the API is switched on for this test);
- everything written to stdout/stderr during the run;
- every artifact of the runs (table, markdown, progress, image), read back through the API;
- the flow runs (parameters, state messages, state history) and their task runs as stored;
- the failed run's exception (str, repr, __dict__, notes, traceback, cause chain) and State;
- the manifest, the second run's return value, and every file under the assets directory;
- every file under PREFECT_HOME and the Prefect API's SQLite database (the block's secret is
  stored encrypted there, so plain text means a leak);
- the credentials block as read back without secrets (what the UI shows).

`test_the_scanner_finds_a_planted_key` proves the scanner (and the log capture it relies on)
would report a leak, so the main test cannot pass by looking in the wrong place.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.settings import (
    PREFECT_HOME,
    PREFECT_LOGGING_TO_API_ENABLED,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
    temporary_settings,
)
from pydantic import SecretStr

from evolink.campaign import AssetStatus, CampaignManifest
from evolink.errors import CampaignIncompleteError, EvoLinkError
from evolink.simulator import EvoLinkSimulator, Fault
from prefect_evolink.blocks import LocalAssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.flows.campaign import manifest_key, run_campaign

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "briefs" / "spring-launch.yaml"
RANDOM_PART = secrets.token_hex(20)
KEY = f"sk-LEAKCHECK-{RANDOM_PART}"
# 16 hex characters are 64 random bits: no false alarm, and any cut or mask that keeps the start,
# the middle or the end of the key still shows one of them.
NEEDLES = {
    "the key": KEY,
    "its random part": RANDOM_PART,
    "the start of its random part": RANDOM_PART[:16],
    "the middle of its random part": RANDOM_PART[12:28],
    "the end of its random part": RANDOM_PART[-16:],
    "the key in base64": base64.b64encode(KEY.encode()).decode(),
    "the key in url-safe base64": base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("="),
}
CAPTURED_LOGGERS = (
    "",
    "prefect",
    "prefect.extra",
    "prefect._internal",
    "prefect.flow_runs",
    "prefect.task_runs",
    "httpx",
    "httpcore",
    "evolink",
    "prefect_evolink",
    "botocore",
    "boto3",
    "urllib3",
)


# --- the scanner ---------------------------------------------------------------------------


def text_of(value: str | bytes) -> str:
    """Bytes as latin-1: every byte maps to one character, so an ASCII key is found in any file."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def find_leaks(corpus: dict[str, str | bytes]) -> list[str]:
    """'<where>: <which needle>' for every place a needle occurs."""
    return [
        f"{where}: {what}"
        for where, value in corpus.items()
        for what, needle in NEEDLES.items()
        if needle in text_of(value)
    ]


def kind_of(where: str) -> str:
    """Places are named '<kind> #<which>': 'log record #12', 'artifact #x-cost (table)'."""
    return where.split(" #", 1)[0]


def summarise(leaks: list[str], examples: int = 3) -> list[str]:
    """Leaks grouped by kind of place ('log record', 'artifact', 'assets', …), with examples."""
    groups: dict[str, list[str]] = {}
    for leak in leaks:
        groups.setdefault(kind_of(leak.rsplit(": ", 1)[0]), []).append(leak)
    return [
        f"{kind} ×{len(found)}, e.g. " + " | ".join(found[:examples])
        for kind, found in groups.items()
    ]


def exception_texts(error: BaseException, prefix: str) -> dict[str, str]:
    """str, repr, __dict__, notes and traceback of an exception and of its cause/context chain."""
    texts: dict[str, str] = {}
    seen: set[int] = set()
    current: BaseException | None = error
    depth = 0
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        where = f"{prefix} #{depth} {type(current).__name__}"
        texts[f"{where} str"] = str(current)
        texts[f"{where} repr"] = repr(current)
        texts[f"{where} __dict__"] = repr(vars(current))
        texts[f"{where} args"] = repr(current.args)
        texts[f"{where} notes"] = repr(getattr(current, "__notes__", None))
        texts[f"{where} traceback"] = "".join(traceback.format_exception(current))
        current = current.__cause__ or current.__context__
        depth += 1
    return texts


def files_under(directory: Path, label: str) -> dict[str, bytes]:
    if not directory.is_dir():
        return {}
    return {
        f"{label} #{path.relative_to(directory)}": path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


class Capture(logging.Handler):
    """Keeps everything a record could show: formatted line, message, args, dict, traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            parts = [self.format(record), repr(record.args), repr(record.__dict__)]
            if record.exc_info and record.exc_info[1] is not None:
                parts.append("".join(traceback.format_exception(record.exc_info[1])))
        except Exception as error:  # a record that cannot be formatted still counts
            parts = [f"<unformattable record {record.name}: {error!r}>", repr(record.msg)]
        self.lines.append("\n".join(parts))


@contextmanager
def captured_logs() -> Iterator[Capture]:
    handler = Capture()
    loggers = [logging.getLogger(name) for name in CAPTURED_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_the_scanner_finds_a_planted_key(tmp_path: Path) -> None:
    """If the key leaked anywhere the main test looks, it would be reported."""
    assert find_leaks({"clean": "nothing to see", "other key": "sk-LEAKCHECK-0000"}) == []
    assert find_leaks({"t": f"Authorization: Bearer {KEY[:32]}…"}) == [
        "t: the start of its random part"
    ]
    assert find_leaks({"m": f"key ****{RANDOM_PART[11:29]}****"}) == [
        "m: the middle of its random part"
    ]
    assert find_leaks({"e": f"key …{KEY[-20:]}"}) == ["e: the end of its random part"]
    planted = tmp_path / "record.json"
    planted.write_bytes(b'{"headers": {"Authorization": "Bearer ' + KEY.encode() + b'"}}')
    assert "files #record.json: the key" in find_leaks(files_under(tmp_path, "files"))
    with captured_logs() as capture:
        logging.getLogger("evolink.client").debug("sending %s", {"Authorization": f"Bearer {KEY}"})
        logging.getLogger("httpx").info("key=%s", SecretStr(KEY).get_secret_value())
    assert len(find_leaks({f"log #{i}": line for i, line in enumerate(capture.lines)})) >= 2
    try:
        raise RuntimeError("wrapped") from ValueError(f"bad key {KEY}")
    except RuntimeError as error:
        assert any("ValueError" in leak for leak in find_leaks(exception_texts(error, "error")))
    assert "b64: the key in base64" in find_leaks({"b64": base64.b64encode(KEY.encode())})


# --- the full run --------------------------------------------------------------------------


def write_brief(tmp_path: Path, name: str, drop: str | None = None) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["defaults"]["drafts"] = 2
    if drop:
        data["assets"] = [asset for asset in data["assets"] if asset["id"] != drop]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


async def read_back(flow_run_ids: list[UUID]) -> dict[str, str]:
    """What the Prefect API stored about the runs: logs, artifacts, runs, task runs, states."""
    texts: dict[str, str] = {}
    async with get_client() as client:
        offset = 0
        while True:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)),
                limit=200,
                offset=offset,
            )
            for log in logs:
                texts[f"API log #{log.id}"] = log.model_dump_json()
            if len(logs) < 200:
                break
            offset += len(logs)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids))
        )
        for artifact in artifacts:
            texts[f"artifact #{artifact.key} {artifact.id} ({artifact.type})"] = (
                artifact.model_dump_json()
            )
        for flow_run_id in flow_run_ids:
            run = await client.read_flow_run(flow_run_id)
            texts[f"flow run #{run.name}"] = run.model_dump_json()
            texts[f"flow run parameters #{run.name}"] = repr(run.parameters)
            for state in await client.read_flow_run_states(flow_run_id):
                texts[f"flow run state #{run.name} {state.id}"] = state.model_dump_json()
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        )
        for task_run in task_runs:
            texts[f"task run #{task_run.name} {task_run.id}"] = task_run.model_dump_json()
        block = await client.read_block_document_by_name(
            "key-scan", EvoLinkCredentials.get_block_type_slug(), include_secrets=False
        )
        texts["credentials block as the UI reads it"] = block.model_dump_json()
    texts["read back"] = f"{len(artifacts)} artifacts, {len(task_runs)} task runs"
    return texts


def test_the_key_appears_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EVOLINK_API_KEY", raising=False)
    assets = tmp_path / "assets"
    storage = LocalAssetStorage(base_dir=str(assets))
    storage.save("key-scan", overwrite=True)
    corpus: dict[str, str | bytes] = {}

    with (
        EvoLinkSimulator(api_key=KEY, generation_seconds=0.3, seed=11) as sim,
        temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: True}),
        captured_logs() as capture,
    ):
        EvoLinkCredentials(
            api_key=SecretStr(KEY),
            base_url=sim.base_url,
            poll_min_interval=0.05,
            poll_max_interval=0.2,
        ).save("key-scan", overwrite=True)
        sim.add_faults(
            [
                Fault(
                    kind="fail_task", error_code="content_policy_violation", match_prompt="jogging"
                ),
                Fault(
                    kind="fail_task", error_code="generation_timeout", match_prompt="Vertical 9:16"
                ),
                Fault(kind="rate_limit", route="create", times=2, retry_after=0.1),
                Fault(kind="server_error", route="get", status=503, times=2),
                Fault(kind="drop_connection", route="download", times=1),
                Fault(kind="lose_create_response", times=1),
            ]
        )
        kwargs: dict[str, Any] = {
            "credentials": EvoLinkCredentials.load("key-scan"),
            "storage": LocalAssetStorage.load("key-scan"),
            "poll_deadline_seconds": 60,
        }
        state = asyncio.run(
            run_campaign.aio(str(write_brief(tmp_path, "brief.yaml")), return_state=True, **kwargs)
        )
        # the same campaign without the failing asset: every job is reused, the run succeeds
        returned = asyncio.run(
            run_campaign.aio(
                str(write_brief(tmp_path, "brief-ok.yaml", drop="social-square")), **kwargs
            )
        )
        APILogHandler().flush()  # send the buffered run logs before reading them back

        # the runs really went through the error paths
        assert state.is_failed()
        error = state.result(raise_on_failure=False)
        assert isinstance(error, CampaignIncompleteError), error
        assert sum(sim.fault_counts.values()) == 8, sim.fault_counts
        assert [e.status for e in sim.ledger()].count("failed") == 2
        assert isinstance(returned, CampaignManifest)
        assert {o.status for o in returned.assets} == {AssetStatus.FINAL}

        # a planted line proves the capture is live during the runs' configuration
        logging.getLogger("evolink.client").debug("capture check %s", "planted-line")

    assert any("planted-line" in line for line in capture.lines)
    assert any("Submitting campaign/aurora-spring-launch" in line for line in capture.lines)
    assert any("HTTP Request: POST" in line for line in capture.lines)  # httpx at DEBUG/INFO
    corpus.update({f"log record #{i}": line for i, line in enumerate(capture.lines)})

    out, err = capfd.readouterr()
    corpus["stdout"], corpus["stderr"] = out, err

    corpus.update(exception_texts(error, "failed run's exception"))
    corpus["failed run's state"] = repr(state) + (state.message or "") + repr(state.state_details)
    corpus["second run's return value"] = returned.model_dump_json() + repr(returned)
    manifest = storage.get_bytes(manifest_key("aurora-spring-launch"))
    assert manifest is not None
    corpus["manifest"] = manifest

    run_ids = [state.state_details.flow_run_id, UUID(str(returned.flow_run_id))]
    stored = asyncio.run(read_back([r for r in run_ids if r is not None]))
    assert any(name.startswith("API log #") for name in stored), "no run log reached the API"
    assert any(name.startswith("artifact #aurora-spring-launch-cost") for name in stored), stored[
        "read back"
    ]
    assert any("(markdown)" in name for name in stored) and any(
        "(progress)" in name for name in stored
    )
    assert any(name.startswith("task run #persist") for name in stored)
    corpus.update(stored)

    loaded = EvoLinkCredentials.load("key-scan")
    corpus["credentials block repr/str/json"] = (
        repr(loaded) + str(loaded) + loaded.model_dump_json()
    )

    files = files_under(assets, "assets")
    assert any(name.endswith("/intent.json") for name in files)
    assert any(name.endswith("/submit.json") for name in files)
    assert any(name.endswith("/result.json") for name in files)
    assert any(name.endswith("image-0.json") for name in files)  # sidecars
    corpus.update(files)
    corpus.update(files_under(Path(str(PREFECT_HOME.value())), "PREFECT_HOME"))
    database_url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value() or "")
    if database_url.startswith("sqlite"):
        database = Path(database_url.split(":///", 1)[1])
        corpus.update(
            {
                f"Prefect database #{p.name}": p.read_bytes()
                for p in database.parent.glob(database.name + "*")
                if p.is_file()
            }
        )
        assert any(name.startswith("Prefect database #") for name in corpus)

    leaks = find_leaks(corpus)
    assert not leaks, "the API key leaked into:\n  " + "\n  ".join(summarise(leaks))
    assert len(corpus) > 100, f"only {len(corpus)} places were scanned"
    kinds: dict[str, int] = {}
    for where in corpus:
        kinds[kind_of(where)] = kinds.get(kind_of(where), 0) + 1
    print(
        f"\nkey scan: 0 leaks in {len(corpus)} places, "
        f"{sum(len(text_of(value)) for value in corpus.values()):,} "
        "characters: " + ", ".join(f"{kind} ×{n}" for kind, n in sorted(kinds.items()))
    )


# --- uploads (the Files API) ---------------------------------------------------------------


def test_the_key_appears_nowhere_in_uploads(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Uploads through the credentials block's Files API client, on the happy path and through
    every error path an upload or a file call has (429 repeated, 5xx unknown outcome, a dropped
    answer, HTTP 200 `success: false`, a full quota, a 404), scanned like the campaign above:
    log records (httpx and httpcore at DEBUG too), output, the errors, the reprs of the client,
    the uploads and the block, and the simulator's state file."""
    from evolink.files import EvoLinkFilesClient
    from evolink.simulator import render_png
    from prefect_evolink.blocks import LocalAssetStorage
    from prefect_evolink.tasks.image_delivery import ImageDelivery, PendingImage

    png = render_png(32, 32, "key-scan-upload")
    corpus: dict[str, str | bytes] = {}
    errors: list[BaseException] = []
    state_dir = tmp_path / "sim-state"
    with (
        EvoLinkSimulator(api_key=KEY, seed=11, state_dir=state_dir, file_quota=2) as sim,
        captured_logs() as capture,
    ):
        credentials = EvoLinkCredentials(
            api_key=SecretStr(KEY), base_url=sim.base_url, files_base_url=sim.files_base_url
        )
        corpus["credentials block repr/str/json"] = (
            repr(credentials) + str(credentials) + credentials.model_dump_json()
        )
        sim.add_faults(
            [
                Fault(kind="rate_limit", route="upload", times=1, retry_after=0.05),
                Fault(kind="server_error", route="files", status=503, times=1),
            ]
        )

        async def uploads() -> None:
            files: EvoLinkFilesClient = credentials.get_files_client()
            async with files:
                corpus["files client repr"] = repr(files)
                first = await files.upload(png, file_name="first.png")
                corpus["upload repr"] = repr(first) + str(first)
                corpus["list repr"] = repr(await files.list_files())
                corpus["quota repr"] = repr(await files.quota())
                sim.add_fault(Fault(kind="server_error", route="upload", status=502, times=1))
                sim.add_fault(Fault(kind="drop_connection", route="upload", times=1))
                for call in (
                    files.upload(png),  # 502: outcome unknown
                    files.upload(png),  # dropped answer: outcome unknown
                    files.upload_from_url("https://example.org/x.png"),  # success: false
                    files.upload(png),  # fills the quota of 2
                    files.upload(png),  # quota full (success: false in HTTP 200)
                    files.delete_file("file_does_not_exist"),  # 404
                ):
                    try:
                        await call
                    except EvoLinkError as error:
                        errors.append(error)
                await files.delete_file(first.file_id)
            # The one rule's uploads (tasks/image_delivery.py): recorded, reused, pruned.
            delivery = ImageDelivery(credentials, LocalAssetStorage(base_dir=str(records)), "c")
            image = PendingImage(hashlib.sha256(png).hexdigest(), path=tmp_path / "ref.png")
            for job in ("job-a", "job-b"):
                corpus[f"delivered {job}"] = await delivery.pending(image, job=job)
            corpus.update(files_under(records, "upload records"))
            await delivery.cleanup()

        records = tmp_path / "records"
        (tmp_path / "ref.png").write_bytes(png)
        asyncio.run(uploads())
        sim.save_state()

    assert len(errors) == 5, errors
    assert any("retrying" in line for line in capture.lines)  # the 429 was repeated, and logged
    assert any("HTTP Request: POST" in line for line in capture.lines)
    corpus.update({f"log record #{i}": line for i, line in enumerate(capture.lines)})
    for index, error in enumerate(errors):
        corpus.update(exception_texts(error, f"upload error {index}"))
    out, err = capfd.readouterr()
    corpus["stdout"], corpus["stderr"] = out, err
    corpus.update(files_under(state_dir, "simulator state"))
    # The simulator holds the account's key; its state file is the service's, not ours, and
    # does not keep it either.
    leaks = find_leaks(corpus)
    assert not leaks, "the API key leaked into:\n  " + "\n  ".join(summarise(leaks))
    assert len(corpus) > 50, f"only {len(corpus)} places were scanned"
