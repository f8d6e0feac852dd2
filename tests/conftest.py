"""Shared fixtures: a Prefect test harness, the EvoLink simulator, storage on disk and on S3.

Everything runs on loopback; nothing here needs the network.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Settings that must be in place before Prefect or our task modules are imported.
_PREFECT_HOME = tempfile.mkdtemp(prefix="evolink-tests-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
os.environ.setdefault("EVOLINK_TASK_RETRY_DELAYS", "0.1,0.1")
# Rows and tests create flow runs side by side on a SQLite-backed Prefect API, which answers
# some of those writes with 503 (SQLITE_BUSY); the client retries after 2, 4, 8, 16, 32 s. Five
# misses in a row were seen once (bench/fault_matrix.py, 4 rows at once), so allow more
# attempts: they cost time only when the streak happens.
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")
# The simulator serves result links on http://127.0.0.1, which production refuses as references.
os.environ["EVOLINK_ALLOW_PRIVATE_URLS"] = "true"
os.environ.pop("EVOLINK_API_KEY", None)
os.environ.pop("EVOLINK_BASE_URL", None)

import pytest  # noqa: E402

from evolink.simulator import EvoLinkSimulator  # noqa: E402
from prefect_evolink.blocks import S3AssetStorage  # noqa: E402

TEST_API_KEY = "sk-test-NEVER-LOG-THIS-0123456789abcdef"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API for the session (about 7 s to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=60),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield
        drain_events_bounded(EVENTS_DRAIN_SECONDS)


EVENTS_DRAIN_SECONDS = 30.0


def drain_events_bounded(seconds: float) -> None:
    """Stop Prefect's events workers, waiting at most `seconds` for their queues.

    Why: an `EventsWorker` is memoised without the API URL in its key, so events emitted while a
    test pointed `PREFECT_API_URL` at a server of its own (a `prefect server` of the deployment,
    suspension and UI tests) stay queued for that server after it stopped, and each costs a
    client timeout to give up on. `prefect_test_harness` drains every events worker on exit
    with no timeout: a run of the deployment, suspension and UI tests was seen waiting there,
    every test passed, until it was killed minutes later. Draining here first, with a bound,
    stops the workers and removes them, so the harness finds nothing left to wait for. The
    events given up on were for servers that are gone; the session's own API gets every event
    it is sent before this.
    """
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=seconds)  # no event loop runs here: waits, then returns


@pytest.fixture
def simulator() -> Iterator[EvoLinkSimulator]:
    """A fresh simulator per test: fast jobs, the test key, a seeded fault RNG."""
    with EvoLinkSimulator(api_key=TEST_API_KEY, generation_seconds=0.3, seed=7) as sim:
        yield sim


@pytest.fixture
def evolink_env(simulator: EvoLinkSimulator, monkeypatch: pytest.MonkeyPatch) -> EvoLinkSimulator:
    """Credentials from the environment, pointing at the simulator."""
    monkeypatch.setenv("EVOLINK_API_KEY", simulator.api_key)
    monkeypatch.setenv("EVOLINK_BASE_URL", simulator.base_url)
    monkeypatch.setenv("EVOLINK_FILES_BASE_URL", simulator.files_base_url)
    monkeypatch.setenv("EVOLINK_POLL_MIN_INTERVAL", "0.05")
    monkeypatch.setenv("EVOLINK_POLL_MAX_INTERVAL", "0.2")
    return simulator


@pytest.fixture
def assets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "assets"
    monkeypatch.setenv("EVOLINK_ASSETS_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 HTTP endpoint on loopback (moto's threaded server)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_storage(s3_server: str) -> Callable[[str, str], S3AssetStorage]:
    """Make an S3 storage block on the loopback server: a fresh bucket, saved under `name`."""

    def make(bucket: str, name: str, prefix: str = "evolink") -> S3AssetStorage:
        storage = S3AssetStorage(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=s3_server,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            addressing_style="path",
        )
        storage.get_client().create_bucket(Bucket=bucket)
        storage.save(name, overwrite=True)
        return storage

    return make


async def artifacts_with_prefix(prefix: str) -> dict[str, Any]:
    """The latest artifact of each key matching `prefix` (SQL LIKE), from the session's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix))
        )
    latest: dict[str, Any] = {}
    for artifact in sorted(found, key=lambda a: a.created):
        latest[artifact.key] = artifact
    return latest
