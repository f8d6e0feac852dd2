"""The one rule for how an image of ours reaches EvoLink (tasks/image_delivery.py), against the
simulator on 127.0.0.1 with local storage: a local reference file is uploaded to the Files API
when its job is really sent, once per image (sha256), reused while valid, recorded through the
record store, deleted when the run's jobs are stored; a full quota fails the asset with the
command that frees it, never retried. (Late approvals and day two: tests/test_day_two.py.)"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from evolink.campaign import AssetStatus
from evolink.errors import CampaignIncompleteError
from evolink.records import RecordStore
from evolink.simulator import EvoLinkSimulator, render_png
from prefect_evolink.blocks import LocalAssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.cli import EXIT_BUDGET, EXIT_INVALID, EXIT_OK, _fail, main
from prefect_evolink.tasks.image_delivery import ImageDelivery, PendingImage
from tests.test_campaign import campaign, small_brief

pytestmark = pytest.mark.usefixtures("prefect_harness")


def photo_brief(tmp_path: Path) -> Path:
    photo = tmp_path / "case-photo.png"
    photo.write_bytes(render_png(64, 64, "case-photo"))
    return small_brief(
        tmp_path,
        budget_usd=1,
        assets=[
            {"id": "shot", "prompt": "the case on a lake", "reference_images": ["case-photo.png"]},
            {
                "id": "square",
                "prompt": "the case, top view",
                "reference_images": ["case-photo.png"],
            },
        ],
    )


def test_a_local_reference_file_runs_on_local_storage_uploaded_once_and_cleaned_up(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    brief = photo_brief(tmp_path)
    manifest = campaign(brief)

    assert all(o.status is AssetStatus.FINAL for o in manifest.assets)
    counts = evolink_env.file_request_counts
    assert counts["upload"] == 1  # one image (one sha256) for both assets, drafts and finals
    ledger = evolink_env.ledger()
    assert len(ledger) == 4
    uploaded = ledger[0].request["image_urls"][-1]
    assert uploaded.startswith(evolink_env.files_base_url), uploaded
    for entry in ledger:  # every request has the uploaded photo as its (last) reference
        assert entry.request["image_urls"][-1] == uploaded
    finals = [e for e in ledger if e.request["quality"] != "low"]
    assert len(finals) == 2 and all(len(e.request["image_urls"]) == 2 for e in finals)
    # Cleanup: every job that used it is stored, so it is deleted and its record forgotten.
    assert counts["delete"] == 1
    assert evolink_env.service.files.live_files() == []
    assert not list((assets_dir / "_uploads").rglob("*.json"))

    calls, files = evolink_env.request_counts, evolink_env.file_request_counts
    again = campaign(brief)  # a rerun: every job stored, nothing sent, nothing uploaded
    assert evolink_env.request_counts == calls and evolink_env.file_request_counts == files
    assert {r.task_id for r in again.jobs} == {e.task_id for e in ledger}


def delivery(assets_dir: Path) -> ImageDelivery:
    credentials = EvoLinkCredentials.from_env()
    assert credentials is not None
    return ImageDelivery(credentials, LocalAssetStorage(base_dir=str(assets_dir)), "c")


def pending_photo(tmp_path: Path) -> PendingImage:
    import hashlib

    path = tmp_path / "photo.png"
    path.write_bytes(render_png(32, 32, "photo"))
    return PendingImage(hashlib.sha256(path.read_bytes()).hexdigest(), path=path)


def test_a_valid_upload_is_reused_and_one_near_its_expiry_is_not(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    image = pending_photo(tmp_path)
    url = asyncio.run(delivery(assets_dir).pending(image, job="job-a"))
    url_again = asyncio.run(delivery(assets_dir).pending(image, job="job-b"))  # another run
    assert url_again == url
    assert evolink_env.file_request_counts["upload"] == 1
    store = RecordStore(LocalAssetStorage(base_dir=str(assets_dir)))
    [record] = asyncio.run(store.uploads())
    assert record.file_url == url and record.used_by == ["job-a", "job-b"]
    assert record.sha256 == image.sha256 and record.expires_at is not None

    # An upload gone at EvoLink (deleted, expired) is uploaded again, never sent dead.
    evolink_env.service.files.reset()
    assert asyncio.run(delivery(assets_dir).pending(image, job="job-c")) != url
    assert evolink_env.file_request_counts["upload"] == 1  # counts were reset with the files

    # Less than the 1 h margin left: not reused.
    evolink_env.file_ttl_seconds = 1800
    store_record = asyncio.run(store.uploads())[0]
    asyncio.run(store.forget_upload(store_record))
    first = asyncio.run(delivery(assets_dir).pending(image, job="job-d"))
    second = asyncio.run(delivery(assets_dir).pending(image, job="job-e"))
    assert first != second and evolink_env.file_request_counts["upload"] == 3


def test_files_list_and_prune_show_and_delete_this_projects_uploads(
    evolink_env: EvoLinkSimulator,
    assets_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(delivery(assets_dir).pending(pending_photo(tmp_path), job=None))
    assert len(evolink_env.service.files.live_files()) == 1
    assert main(["files", "list", "--assets-dir", str(assets_dir)]) == EXIT_OK
    listed = capsys.readouterr().out
    assert "1 upload(s) recorded" in listed and "file:photo.png" in listed
    assert "prunable" in listed and evolink_env.api_key not in listed
    # `report` shows a campaign's uploads too, also with no job record (a run that died early)
    assert main(["report", "c", "--assets-dir", str(assets_dir)]) == EXIT_INVALID
    reported = capsys.readouterr().out
    assert "1 upload(s) recorded" in reported and "file:photo.png" in reported
    assert main(["files", "prune", "--assets-dir", str(assets_dir)]) == EXIT_OK
    assert "1 upload(s) deleted, 0 kept" in capsys.readouterr().out
    assert evolink_env.service.files.live_files() == []
    assert not list((assets_dir / "_uploads").rglob("*.json"))


def test_a_full_quota_fails_the_asset_naming_files_prune_never_retried(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    evolink_env.file_quota = 0
    brief = photo_brief(tmp_path)
    with pytest.raises(CampaignIncompleteError) as caught:
        campaign(brief)
    manifest = caught.value.manifest
    for outcome in manifest.assets:
        assert outcome.status is AssetStatus.FAILED
        assert outcome.error_type == "FilesQuotaExceededError"
        assert "prefect-evolink files prune" in (outcome.error or "") + outcome.detail
    assert evolink_env.request_counts.get("create", 0) == 0  # nothing sent without its photo
    assert evolink_env.file_request_counts["upload"] == 2  # one try per asset, no retry
    assert _fail(caught.value, argparse.Namespace(debug=False)) == EXIT_BUDGET


def test_an_upload_whose_answer_was_lost_is_found_and_recorded_not_left_behind(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    """An outage at the worst moment: the Files API stored the file, the answer never came. The
    upload is found by its name and recorded (then used and cleaned up like any other), so the
    quota is not eaten by a file nobody knows of; when nothing was stored, the error stands."""
    from evolink.errors import FileUploadOutcomeUnknownError
    from evolink.simulator.faults import Fault

    image = pending_photo(tmp_path)
    evolink_env.service.files.lose_upload_responses = 1
    url = asyncio.run(delivery(assets_dir).pending(image, job="job-a"))
    assert evolink_env.file_request_counts["upload"] == 1  # found, not uploaded again
    [live] = evolink_env.service.files.live_files()
    store = RecordStore(LocalAssetStorage(base_dir=str(assets_dir)))
    [record] = asyncio.run(store.uploads())
    assert record.file_id == live.id and record.file_url == url
    assert record.used_by == ["job-a"]

    evolink_env.service.files.reset()  # nothing stored this time: the connection drops first
    asyncio.run(store.forget_upload(record))
    evolink_env.add_fault(Fault(kind="drop_connection", route="upload", times=1))
    with pytest.raises(FileUploadOutcomeUnknownError):
        asyncio.run(delivery(assets_dir).pending(image, job="job-b"))
    assert evolink_env.service.files.live_files() == []
    assert asyncio.run(store.uploads()) == []
