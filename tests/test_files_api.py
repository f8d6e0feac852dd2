"""The Files API client (`evolink.files`) against the simulator's Files API on 127.0.0.1.

Real sockets, the simulator's clock for expiry, its request counts for "was it repeated?". An
upload's `file_url` is used as a reference in a task the simulator runs; a deleted or expired one
fails such a task the way EvoLink fails a reference it cannot fetch.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import ValidationError

from evolink.client import EvoLinkClient
from evolink.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    FilesQuotaExceededError,
    FileUploadOutcomeUnknownError,
    InvalidUploadError,
    NotFoundError,
    TaskFailedError,
)
from evolink.files import (
    DEFAULT_FILES_BASE_URL,
    FILE_TTL_SECONDS,
    EvoLinkFilesClient,
    UploadedFile,
    files_error,
)
from evolink.polling import PollSchedule
from evolink.retry import RetryPolicy
from evolink.simulator import EvoLinkSimulator, Fault, render_png
from evolink.urls import api_base_url_problem
from tests.conftest import TEST_API_KEY

T = TypeVar("T")
PNG = render_png(64, 48, "files-api-test")
FAST_POLL = PollSchedule(min_interval=0.05, max_interval=0.2, deadline_seconds=10)
REQUEST = {"prompt": "the uploaded lighthouse, at dusk", "size": "1:1", "quality": "low"}


class RecordingSleep:
    """Records the delays asked for; sleeps almost nothing."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def files_client(
    sim: EvoLinkSimulator, sleep: RecordingSleep | None = None, **kwargs: Any
) -> EvoLinkFilesClient:
    return EvoLinkFilesClient(
        kwargs.pop("api_key", sim.api_key),
        base_url=kwargs.pop("base_url", sim.files_base_url),
        retry=RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05),
        sleep=sleep or RecordingSleep(),
        seed=1,
        **kwargs,
    )


def run(sim: EvoLinkSimulator, body: Callable[[EvoLinkFilesClient], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        async with files_client(sim, **kw) as files:
            return await body(files)

    return asyncio.run(main())


# --- the round trip --------------------------------------------------------------------------


def test_upload_list_use_as_reference_then_delete(simulator: EvoLinkSimulator) -> None:
    async def job(files: EvoLinkFilesClient) -> None:
        uploaded = await files.upload(PNG, file_name="lighthouse.png", upload_path="refs")
        assert isinstance(uploaded, UploadedFile) and uploaded.simulator
        assert (uploaded.size_bytes, uploaded.mime_type) == (len(PNG), "image/png")
        assert uploaded.file_name == "lighthouse.png" and uploaded.request_id
        assert uploaded.created_at is not None and uploaded.expires_at is not None
        ttl = (uploaded.expires_at - uploaded.created_at).total_seconds()
        assert ttl == pytest.approx(FILE_TTL_SECONDS, abs=1)

        listing = await files.list_files()
        assert [info.file_id for info in listing.files] == [uploaded.file_id]
        assert listing.total == 1 and listing.files[0].size_bytes == len(PNG)
        quota = await files.quota()
        assert (quota.used_files, quota.max_files, quota.remain_files) == (1, 100, 99)

        # The file_url serves the very bytes, without the key, like EvoLink's public URLs.
        async with httpx.AsyncClient() as anonymous:
            served = await anonymous.get(uploaded.file_url)
        assert served.status_code == 200 and served.content == PNG

        # ... and the simulator's task API takes it as a reference and runs the task.
        async with EvoLinkClient(simulator.api_key, base_url=simulator.base_url) as api:
            created = await api.create_task({**REQUEST, "image_urls": [uploaded.file_url]})
            done = await api.wait_for_task(created.task.id, schedule=FAST_POLL)
            assert done.results and done.status.value == "completed"

            assert await files.delete_file(uploaded.file_id) is True
            assert (await files.list_files()).files == ()
            assert await files.find_file(uploaded.file_id) is None
            async with httpx.AsyncClient() as anonymous:
                assert (await anonymous.get(uploaded.file_url)).status_code == 404

            # A deleted upload as a reference: the task fails as EvoLink fails an unfetchable one.
            gone = await api.create_task({**REQUEST, "image_urls": [uploaded.file_url]})
            with pytest.raises(TaskFailedError) as failed:
                await api.wait_for_task(gone.task.id, schedule=FAST_POLL)
        assert failed.value.code == "resource_not_found"
        assert not failed.value.resubmit_may_help

        with pytest.raises(NotFoundError) as missing:
            await files.delete_file(uploaded.file_id)
        assert missing.value.request_id
        assert await files.delete_file(uploaded.file_id, missing_ok=True) is False

    run(simulator, job)
    assert simulator.file_request_counts["upload"] == 1
    assert simulator.file_request_counts["delete"] == 3


def test_stream_path_base64_and_url_uploads(simulator: EvoLinkSimulator, tmp_path: Path) -> None:
    on_disk = tmp_path / "reference.png"
    on_disk.write_bytes(PNG)

    async def job(files: EvoLinkFilesClient) -> list[UploadedFile]:
        stream = io.BytesIO(b"junk" + PNG)
        stream.seek(4)  # a stream is uploaded from where it stands
        from_stream = await files.upload(stream, file_name="from-stream")
        from_path = await files.upload(on_disk)
        data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
        from_base64 = await files.upload_base64(data_url, file_name="b64")
        from_url = await files.upload_from_url(from_path.file_url, file_name="copy.png")
        return [from_stream, from_path, from_base64, from_url]

    uploads = run(simulator, job)
    assert [u.file_name for u in uploads] == [
        "from-stream.png",
        "reference.png",
        "b64.png",
        "copy.png",
    ]
    async_get = httpx.Client()
    try:
        assert all(async_get.get(u.file_url).content == PNG for u in uploads)
    finally:
        async_get.close()
    assert simulator.file_request_counts["upload"] == 4


def test_what_is_not_an_image_is_refused_before_sending(
    simulator: EvoLinkSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def job(files: EvoLinkFilesClient) -> list[str]:
        monkeypatch.setenv("EVOLINK_ALLOW_PRIVATE_URLS", "false")  # production's URL rules
        problems = []
        for call in (
            files.upload(b""),
            files.upload(b"<html>not an image</html>"),
            files.upload(b"%PDF-1.7 ..."),
            files.upload_base64("not base64!"),
            files.upload_from_url("https://example.com/scan.pdf"),
            files.upload_from_url("http://169.254.169.254/latest/meta-data.png"),
        ):
            with pytest.raises(InvalidUploadError) as refused:
                await call
            assert isinstance(refused.value, ValueError)
            problems.append(str(refused.value))
        return problems

    problems = run(simulator, job, max_upload_bytes=10**6)
    assert "empty" in problems[0] and "HTML" in problems[1] and "PDF" in problems[2]
    assert simulator.file_request_counts["upload"] == 0  # nothing sent, no quota used


# --- expiry and quota ---------------------------------------------------------------------------


def test_uploads_expire_after_72_hours_of_the_simulator_s_clock(
    simulator: EvoLinkSimulator,
) -> None:
    async def upload(files: EvoLinkFilesClient) -> UploadedFile:
        return await files.upload(PNG)

    uploaded = run(simulator, upload)
    simulator.age(FILE_TTL_SECONDS - 60)
    assert run(simulator, lambda files: files.find_file(uploaded.file_id)) is not None
    simulator.age(120)
    assert run(simulator, lambda files: files.list_files()).files == ()
    assert run(simulator, lambda files: files.quota()).used_files == 0
    assert httpx.get(uploaded.file_url).status_code == 404

    # POST /_sim/age with no amount expires every upload, like every task and link.
    fresh = run(simulator, upload)
    httpx.post(f"{simulator.base_url}/_sim/age", json={"expire": True}).raise_for_status()
    assert run(simulator, lambda files: files.find_file(fresh.file_id)) is None


def test_a_full_quota_is_a_typed_error_sent_once(simulator: EvoLinkSimulator) -> None:
    simulator.file_quota = 3
    sleep = RecordingSleep()

    async def job(files: EvoLinkFilesClient) -> FilesQuotaExceededError:
        for _ in range(3):
            await files.upload(PNG)
        with pytest.raises(FilesQuotaExceededError) as full:
            await files.upload(PNG)
        assert (await files.quota()).full
        return full.value

    error = run(simulator, job, sleep=sleep)
    # The simulator says it with HTTP 200 and success: false; the code is the envelope's.
    assert (error.status_code, error.code, error.retryable) == (200, "403", False)
    assert (error.used_files, error.max_files) == (3, 3)
    assert "prefect-evolink files prune" in str(error) and error.request_id
    assert error.request_id in str(error)
    assert isinstance(error, APIError)
    assert simulator.file_request_counts["upload"] == 4  # the refused one went once
    assert sleep.delays == []


def test_success_false_with_http_200_carries_code_and_request_id(
    simulator: EvoLinkSimulator,
) -> None:
    """The simulator fetches only its own URLs; another one is refused in an HTTP 200."""

    async def job(files: EvoLinkFilesClient) -> BadRequestError:
        with pytest.raises(BadRequestError) as refused:
            await files.upload_from_url("https://images.example.com/cat.png")
        return refused.value

    error = run(simulator, job)
    assert (error.status_code, error.code) == (200, "400")
    assert "success: false" in str(error) and "Could not fetch file_url" in str(error)
    assert error.request_id and error.request_id.startswith("req_sim_")
    assert simulator.file_request_counts["upload"] == 1


def test_the_envelope_reader_on_its_own() -> None:
    quota = files_error(
        400, {"success": False, "code": 400, "msg": "Upload quota reached"}, request_id="r1"
    )
    assert isinstance(quota, FilesQuotaExceededError) and quota.request_id == "r1"
    credits = files_error(402, {"error": {"code": "insufficient_quota", "message": "no credits"}})
    assert not isinstance(credits, FilesQuotaExceededError)
    limited = files_error(200, {"success": False, "code": 429, "msg": "slow down"}, retry_after=2)
    assert limited.retryable and limited.status_code == 200
    assert files_error(200, {"success": False, "code": "E_WEIRD", "msg": "?"}).retryable is False


# --- retries -----------------------------------------------------------------------------------


def test_reads_and_deletes_are_repeated_uploads_are_not(simulator: EvoLinkSimulator) -> None:
    simulator.add_fault(Fault(kind="server_error", route="files", status=503, times=2))
    sleep = RecordingSleep()
    uploaded = run(simulator, lambda files: files.upload(PNG))
    assert run(simulator, lambda files: files.list_files(), sleep=sleep).total == 1
    assert len(sleep.delays) == 2 and simulator.file_request_counts["list"] == 3

    # A 5xx after an upload was sent: it may be stored, so it is not repeated by anyone.
    simulator.add_fault(Fault(kind="server_error", route="upload", status=502, times=1))
    with pytest.raises(FileUploadOutcomeUnknownError) as unknown:
        run(simulator, lambda files: files.upload(PNG))
    assert unknown.value.status_code == 502 and not unknown.value.retryable
    assert unknown.value.request_id and "prefect-evolink files prune" in str(unknown.value)

    # The connection dropped after the request left: the same.
    simulator.add_fault(Fault(kind="drop_connection", route="upload", times=1))
    with pytest.raises(FileUploadOutcomeUnknownError):
        run(simulator, lambda files: files.upload(PNG))
    assert simulator.file_request_counts["upload"] == 3

    # A 429 refuses before anything is stored: repeated, after the server's hint.
    simulator.add_fault(Fault(kind="rate_limit", route="upload", retry_after=1, times=1))
    sleep = RecordingSleep()
    run(simulator, lambda files: files.upload(PNG), sleep=sleep)
    assert sleep.delays == [1.0] and simulator.file_request_counts["upload"] == 5

    # A delete whose answer is lost is repeated; the 404 of the repeat means it is gone.
    simulator.add_fault(Fault(kind="drop_connection", route="files", times=1))
    assert run(simulator, lambda files: files.delete_file(uploaded.file_id)) is True
    assert simulator.file_request_counts["delete"] == 2


def test_an_upload_that_never_connected_is_repeated() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    sleep = RecordingSleep()

    async def job() -> None:
        async with EvoLinkFilesClient(
            TEST_API_KEY,
            base_url=f"http://127.0.0.1:{port}",
            retry=RetryPolicy(max_attempts=3, base_delay=0.01),
            sleep=sleep,
        ) as files:
            with pytest.raises(APIConnectionError) as refused:
                await files.upload(PNG)
            assert not isinstance(refused.value, FileUploadOutcomeUnknownError)

    asyncio.run(job())
    assert len(sleep.delays) == 2  # three attempts: nothing could have been stored


def test_a_wrong_key_is_an_authentication_error(simulator: EvoLinkSimulator) -> None:
    with pytest.raises(AuthenticationError) as refused:
        run(simulator, lambda files: files.quota(), api_key="sk-wrong-key")
    assert refused.value.status_code == 401 and refused.value.request_id


# --- the key and the base URL ------------------------------------------------------------------


def test_the_key_is_in_no_log_repr_or_error_of_uploads(
    simulator: EvoLinkSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    secret = simulator.api_key
    texts: list[str] = []
    simulator.file_quota = 1
    simulator.add_fault(Fault(kind="rate_limit", route="upload", retry_after=0, times=1))
    simulator.add_fault(Fault(kind="server_error", route="files", status=500, times=1))

    async def job(files: EvoLinkFilesClient) -> None:
        texts.append(repr(files))
        uploaded = await files.upload(PNG)
        texts.extend([repr(uploaded), str(uploaded)])
        await files.list_files()
        for call in (files.upload(PNG), files.upload_from_url("https://example.org/a.png")):
            try:
                await call
            except APIError as error:
                texts.extend([str(error), repr(error), repr(vars(error)), repr(error.args)])

    with caplog.at_level(logging.DEBUG):
        run(simulator, job)
    texts.extend(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert any("retrying" in text for text in texts)  # the retry paths logged
    assert len(texts) > 10
    for text in texts:
        assert secret not in text and secret[8:24] not in text
        assert base64.b64encode(secret.encode()).decode() not in text


@pytest.mark.parametrize(
    "url",
    [
        "http://files-api.evolink.ai",  # the key in clear text
        "https://user:pw@files-api.evolink.ai",
        "https://files-api.evolink.ai/?x=1",
        "ftp://files-api.evolink.ai",
        "https://169.254.169.254",
        "https://10.0.0.7",
        "https://localhost",
        "https://2130706433",
    ],
)
def test_base_urls_the_key_must_not_go_to(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLINK_ALLOW_PRIVATE_URLS", "false")
    assert api_base_url_problem(url) is not None
    with pytest.raises(ValueError, match="Files API base URL"):
        EvoLinkFilesClient(TEST_API_KEY, base_url=url)
    from prefect_evolink.blocks.credentials import EvoLinkCredentials

    with pytest.raises(ValidationError, match="files_base_url"):
        EvoLinkCredentials(api_key=TEST_API_KEY, files_base_url=url)


def test_loopback_only_where_the_simulator_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_evolink.blocks.credentials import EvoLinkCredentials

    assert api_base_url_problem(DEFAULT_FILES_BASE_URL, allow_private=False) is None
    assert EvoLinkCredentials(api_key=TEST_API_KEY).files_base_url == DEFAULT_FILES_BASE_URL
    monkeypatch.setenv("EVOLINK_ALLOW_PRIVATE_URLS", "true")
    local = EvoLinkCredentials(api_key=TEST_API_KEY, files_base_url="http://127.0.0.1:8787")
    assert local.get_files_client().base_url == "http://127.0.0.1:8787"
    # Even with the switch on, plain http to a public host would send the key in clear text.
    assert api_base_url_problem("http://files.example.com") is not None
    monkeypatch.setenv("EVOLINK_ALLOW_PRIVATE_URLS", "false")
    assert api_base_url_problem("http://127.0.0.1:8787") is not None


# --- the simulator's side ----------------------------------------------------------------------


def test_uploads_survive_a_restart_with_a_state_dir(tmp_path: Path) -> None:
    with EvoLinkSimulator(api_key=TEST_API_KEY, state_dir=tmp_path) as first:
        uploaded = run(first, lambda files: files.upload(PNG))
    with EvoLinkSimulator(api_key=TEST_API_KEY, state_dir=tmp_path) as second:
        assert run(second, lambda files: files.find_file(uploaded.file_id)) is not None
        assert httpx.get(f"{second.base_url}/uploads/{uploaded.file_id}/upload.png").content == PNG
        assert second.file_request_counts["upload"] == 1


def test_admin_view_and_reset(simulator: EvoLinkSimulator) -> None:
    uploaded = run(simulator, lambda files: files.upload(PNG))
    admin = httpx.get(f"{simulator.base_url}/_sim/files").json()
    assert [f["file_id"] for f in admin["files"]] == [uploaded.file_id]
    assert admin["quota"] == 100 and admin["request_counts"]["upload"] == 1
    simulator.reset()
    assert run(simulator, lambda files: files.quota()).used_files == 0


def test_the_new_errors_survive_pickling() -> None:
    """Prefect pickles the exception of a failed state; the Files API errors take other
    arguments than their base's."""
    import pickle

    samples: list[APIError] = [
        files_error(200, {"success": False, "code": 403, "msg": "quota"}, request_id="req_1"),
        FileUploadOutcomeUnknownError("upload of 'a.png' answered HTTP 502", status_code=502),
    ]
    for error in samples:
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.__dict__) == (type(error), str(error), error.__dict__)
    assert isinstance(samples[0], FilesQuotaExceededError) and samples[0].request_id == "req_1"
