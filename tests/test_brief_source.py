"""Every form of brief `run_campaign` takes (`tasks/brief_source.py`), and each way it can fail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from evolink.brief import CampaignBrief
from evolink.errors import BriefError
from prefect_evolink.blocks import LocalAssetStorage, S3AssetStorage
from prefect_evolink.tasks.brief_source import load_campaign_brief
from prefect_evolink.tasks.references import resolve_references

BRIEF = {
    "campaign": "brief-source",
    "budget_usd": "2.00",
    "assets": [
        {"id": "mug", "prompt": "a ceramic mug", "reference_images": ["shots/mug.png"]},
        {"id": "tee", "prompt": "a folded t-shirt"},
    ],
}


@pytest.fixture
def local(tmp_path: Path) -> LocalAssetStorage:
    return LocalAssetStorage(base_dir=str(tmp_path / "assets"))


def test_a_local_file_resolves_references_beside_it(
    tmp_path: Path, local: LocalAssetStorage
) -> None:
    path = tmp_path / "briefs" / "spring.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(BRIEF), encoding="utf-8")
    loaded = asyncio.run(load_campaign_brief(str(path), local))
    assert loaded.brief.campaign == "brief-source" and [a.id for a in loaded.brief.assets] == [
        "mug",
        "tee",
    ]
    assert loaded.base_dir == path.parent and loaded.source == str(path)


def test_a_missing_file_is_a_brief_error_naming_it(
    tmp_path: Path, local: LocalAssetStorage
) -> None:
    missing = tmp_path / "briefs" / "spring-launch.yaml"
    with pytest.raises(BriefError, match="no such brief file") as caught:
        asyncio.run(load_campaign_brief(str(missing), local))
    assert str(missing) in str(caught.value)


def test_an_object_and_its_dict(local: LocalAssetStorage) -> None:
    brief = CampaignBrief.model_validate(BRIEF)
    assert asyncio.run(load_campaign_brief(brief, local)).brief is brief
    from_dict = asyncio.run(load_campaign_brief(BRIEF, local))
    assert from_dict.brief == brief and from_dict.base_dir == Path.cwd()
    broken = {**BRIEF, "assets": [{"id": "mug", "prompt": ""}]}
    with pytest.raises(BriefError, match=r"asset 'mug'.*prompt"):
        asyncio.run(load_campaign_brief(broken, local))


def test_a_storage_key_reads_the_storage_block(local: LocalAssetStorage) -> None:
    local.put_bytes(
        "briefs/spring.json",
        b'{"campaign": "json-brief", "budget_usd": 1, "assets": [{"id": "a", "prompt": "p"}]}',
        content_type="application/json",
    )
    loaded = asyncio.run(load_campaign_brief("storage:briefs/spring.json", local))
    assert loaded.brief.campaign == "json-brief" and loaded.base_dir is None
    local.put_bytes("briefs/bad.yaml", b"campaign: [unclosed", content_type="text/yaml")
    with pytest.raises(BriefError, match=r"storage:briefs/bad\.yaml: not valid YAML"):
        asyncio.run(load_campaign_brief("storage:briefs/bad.yaml", local))
    with pytest.raises(BriefError, match=r"storage:briefs/none\.yaml: no such brief"):
        asyncio.run(load_campaign_brief("storage:briefs/none.yaml", local))


def test_local_references_of_a_stored_brief_are_refused_with_the_field(
    local: LocalAssetStorage,
) -> None:
    local.put_bytes("briefs/spring.yaml", yaml.safe_dump(BRIEF).encode(), content_type="text/yaml")
    loaded = asyncio.run(load_campaign_brief("storage:briefs/spring.yaml", local))
    with pytest.raises(BriefError) as caught:
        asyncio.run(resolve_references(loaded.brief, loaded.base_dir, local))
    message = str(caught.value)
    assert "asset 'mug'" in message and "reference_images.0" in message
    assert "no folder on this machine" in message


def test_an_s3_object_is_read_with_the_storage_blocks_credentials(
    s3_storage: Callable[..., S3AssetStorage], local: LocalAssetStorage
) -> None:
    storage = s3_storage("briefs-bucket", "brief-source-s3")
    storage.get_client().put_object(
        Bucket="briefs-bucket", Key="team/spring.yaml", Body=yaml.safe_dump(BRIEF).encode()
    )
    loaded = asyncio.run(load_campaign_brief("s3://briefs-bucket/team/spring.yaml", storage))
    assert loaded.brief.campaign == "brief-source" and loaded.base_dir is None
    with pytest.raises(BriefError, match="no such brief object"):
        asyncio.run(load_campaign_brief("s3://briefs-bucket/team/none.yaml", storage))
    with pytest.raises(BriefError, match="needs an S3 storage block"):
        asyncio.run(load_campaign_brief("s3://briefs-bucket/team/spring.yaml", local))
    with pytest.raises(BriefError, match=r"s3://<bucket>/<key>"):
        asyncio.run(load_campaign_brief("s3://briefs-bucket", storage))
