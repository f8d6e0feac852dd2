"""The blocks as a Prefect collection's blocks: Prefect's block standard suite, logos, the
credentials block contract, nested prefect-aws credentials saved and loaded through the Prefect
API, and which way the storage methods dispatch inside real flow and task runs.

Prefect's suite opens each `_logo_url` with `urlopen`. Tests run without a network, so for the
logo URLs of this collection's docs site (`blocks/_meta.py`: LOGO_BASE_URL) `urlopen` is served
from the very files the URLs publish, `blocks/logos/*.png`; any other URL is refused. Set
`EVOLINK_NETWORK_TESTS=1` to fetch the published URLs for real.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import prefect.testing.standard_test_suites.blocks as standard_blocks
import pytest
from botocore.config import Config
from PIL import Image
from prefect import flow, task
from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from prefect.client.schemas.objects import BlockType
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from evolink.client import EvoLinkClient
from prefect_evolink.blocks import (
    AssetStorage,
    EvoLinkCredentials,
    LocalAssetStorage,
    S3AssetStorage,
)
from prefect_evolink.blocks._meta import LOGO_BASE_URL, LOGO_DIR

BLOCKS: list[type[Block]] = [EvoLinkCredentials, LocalAssetStorage, S3AssetStorage]
API_KEY = "sk-evolink-NEVER-SHOW-ME-5a1e"
SECRET = "s3-secret-NEVER-SHOW-ME-77c1"
BUCKET = "evolink-blocks-test"


def _local_logo(url: str) -> Path:
    """The file in `blocks/logos/` that a logo URL of this repository publishes."""
    assert url.startswith(LOGO_BASE_URL), f"not one of our logo URLs: {url}"
    path = LOGO_DIR / url.removeprefix(LOGO_BASE_URL)
    assert path.parent == LOGO_DIR and path.is_file(), f"{url} has no file in {LOGO_DIR}"
    return path


@pytest.fixture
def logos_from_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve our logo URLs from the repository files instead of the network (see above)."""
    monkeypatch.setattr(
        standard_blocks, "urlopen", lambda url: io.BytesIO(_local_logo(str(url)).read_bytes())
    )


# ------------------------------------------------------------------------------------------
# Prefect's block standard suite, once per block
# ------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("logos_from_repository")
class TestEvoLinkCredentialsStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return EvoLinkCredentials


@pytest.mark.usefixtures("logos_from_repository")
class TestLocalAssetStorageStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return LocalAssetStorage


@pytest.mark.usefixtures("logos_from_repository")
class TestS3AssetStorageStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return S3AssetStorage


# ------------------------------------------------------------------------------------------
# Logos, documentation and the example the UI shows
# ------------------------------------------------------------------------------------------


def test_each_block_has_its_own_logo_that_prefect_can_register() -> None:
    files = set()
    for block in BLOCKS:
        url = str(block._logo_url)
        path = _local_logo(url)
        assert path.name == f"{block.get_block_type_slug()}.png"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128)
        assert path.stat().st_size < 20_000
        files.add(path.read_bytes())
        # What block registration sends: Prefect's client accepts only http(s) URLs here.
        block_type = block._to_block_type()
        assert urlparse(str(block_type.logo_url)).scheme == "https"
        assert urlparse(str(block_type.documentation_url)).scheme == "https"
    assert len(files) == len(BLOCKS), "each block type shows its own logo"
    # Why the logos are not inlined: a data: URI is refused when the block type is registered.
    with pytest.raises(ValidationError, match="URL scheme"):
        BlockType(id=uuid.uuid4(), slug="x", name="x", logo_url="data:image/png;base64,AA==")


@pytest.mark.skipif(
    os.environ.get("EVOLINK_NETWORK_TESTS") != "1", reason="set EVOLINK_NETWORK_TESTS=1 (network)"
)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.__name__)
def test_published_logo_matches_the_repository_file(block: type[Block]) -> None:
    from urllib.request import urlopen

    url = str(block._logo_url)
    with urlopen(url, timeout=30) as response:
        assert response.read() == _local_logo(url).read_bytes()


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.__name__)
def test_first_example_snippet_is_the_load_call(block: type[Block]) -> None:
    """The UI's "Paste this snippet into your flows" is the first code block of `Example:`."""
    example = block.get_code_example()
    assert example is not None
    first = example.split("```python\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(first) == 3 and first[1] == ""
    assert first[0] == f"from prefect_evolink.blocks import {block.__name__}"
    assert re.fullmatch(rf'[a-z_]+ = {block.__name__}\.load\("BLOCK_NAME"\)', first[2])
    # Every field is described in the docstring's Attributes section too (the API reference).
    doc = inspect.getdoc(block) or ""
    fields = doc.split("Attributes:", 1)[1].split("Example:", 1)[0]
    for name in block.model_fields:
        assert f"\n    {name}: " in fields, f"{block.__name__}: {name} missing from Attributes"


# ------------------------------------------------------------------------------------------
# EvoLinkCredentials is a Prefect CredentialsBlock
# ------------------------------------------------------------------------------------------


def test_credentials_block_contract_and_secret(caplog: pytest.LogCaptureFixture) -> None:
    creds = EvoLinkCredentials(api_key=SecretStr(API_KEY), base_url="http://127.0.0.1:9")
    assert isinstance(creds, CredentialsBlock)
    assert not inspect.isabstract(EvoLinkCredentials)
    client = creds.get_client()
    assert isinstance(client, EvoLinkClient)
    asyncio.run(client.aclose())
    with caplog.at_level(logging.DEBUG):
        creds.logger.info("credentials: %r / %s", creds, creds)
    texts = [
        repr(creds),
        str(creds),
        creds.model_dump_json(),
        json.dumps(creds.model_dump(mode="json")),
    ]
    for text in [*texts, caplog.text]:
        assert API_KEY not in text
    assert "api_key" in EvoLinkCredentials.model_json_schema()["secret_fields"]
    assert creds.api_key.get_secret_value() == API_KEY


# ------------------------------------------------------------------------------------------
# Through the Prefect API: nested prefect-aws credentials, and dispatch inside runs
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(s3_server: str) -> str:
    boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    ).create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
def names() -> Iterator[str]:
    yield f"t-{uuid.uuid4().hex[:10]}"


def test_s3_block_with_a_saved_aws_credentials_block(
    prefect_harness: None, s3_server: str, bucket: str, names: str
) -> None:
    from prefect_aws import AwsClientParameters, AwsCredentials

    AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_server),
    ).save(f"{names}-aws")
    creds = AwsCredentials.load(f"{names}-aws")
    S3AssetStorage(bucket=bucket, prefix=names, credentials=creds, addressing_style="path").save(
        f"{names}-s3"
    )

    loaded = S3AssetStorage.load(f"{names}-s3")
    assert isinstance(loaded.credentials, AwsCredentials)
    assert loaded.credentials._block_document_name == f"{names}-aws"  # a reference, not a copy
    assert loaded.credentials.aws_secret_access_key is not None
    assert loaded.credentials.aws_secret_access_key.get_secret_value() == SECRET
    assert loaded.get_client().meta.endpoint_url == s3_server
    loaded.put_bytes("a/x.bin", b"via aws block", content_type="x")
    assert loaded.get_bytes("a/x.bin") == b"via aws block"
    # What the API serves without include_secrets: the nested secret is masked.
    from prefect.client.orchestration import get_client

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_block_document_by_name(
                f"{names}-aws", "aws-credentials", include_secrets=False
            )

    document = asyncio.run(read())
    assert SECRET not in json.dumps(document.data, default=str)


def test_s3_block_with_a_nested_minio_credentials_block(
    prefect_harness: None, s3_server: str, bucket: str, names: str
) -> None:
    from prefect_aws import AwsClientParameters, MinIOCredentials

    minio = MinIOCredentials(
        minio_root_user="minio-user",
        minio_root_password=SECRET,
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_server),
    )
    S3AssetStorage(bucket=bucket, prefix=names, credentials=minio, addressing_style="path").save(
        f"{names}-minio"
    )

    async def round_trip() -> Any:
        loaded = await S3AssetStorage.aload(f"{names}-minio")
        assert isinstance(loaded, S3AssetStorage)
        await loaded.aput_json("m/r.json", {"ok": True})
        return loaded, await loaded.aget_json("m/r.json")

    loaded, record = asyncio.run(round_trip())
    assert record == {"ok": True}
    assert isinstance(loaded.credentials, MinIOCredentials)
    assert loaded.credentials.minio_root_user == "minio-user"
    assert loaded.credentials.minio_root_password.get_secret_value() == SECRET
    assert loaded.get_client()._request_signer._credentials.access_key == "minio-user"
    assert SECRET not in repr(loaded)


def test_storage_dispatch_inside_flow_and_task_runs(prefect_harness: None, tmp_path: Path) -> None:
    """Async flows/tasks get coroutines; sync tasks, sync flows and worker threads get values."""
    storage = LocalAssetStorage(base_dir=str(tmp_path))
    storage.put_bytes("k.bin", b"v", content_type="x")
    seen: dict[str, Any] = {}

    def _sync_read(where: str) -> None:
        seen[where] = storage.get_bytes("k.bin")

    @task
    def sync_task() -> None:
        _sync_read("sync task in async flow")

    @task
    async def async_task() -> None:
        pending = storage.get_bytes("k.bin")
        seen["async task"] = inspect.iscoroutine(pending) and await pending
        await asyncio.to_thread(_sync_read, "to_thread in async task")

    @flow
    async def async_flow() -> None:
        pending = storage.get_bytes("k.bin")
        seen["async flow"] = inspect.iscoroutine(pending) and await pending
        seen["aget_bytes"] = await storage.aget_bytes("k.bin")
        await asyncio.to_thread(_sync_read, "to_thread in async flow")
        sync_task()
        await async_task()

    @flow
    def sync_flow() -> None:
        _sync_read("sync flow")

    asyncio.run(async_flow())
    sync_flow()
    assert seen == {
        "async flow": b"v",
        "aget_bytes": b"v",
        "to_thread in async flow": b"v",
        "sync task in async flow": b"v",
        "async task": b"v",
        "to_thread in async task": b"v",
        "sync flow": b"v",
    }


def test_asset_storage_interface_is_not_a_block_type() -> None:
    assert AssetStorage.__abstractmethods__ >= {"_put_file", "_get_bytes", "uri"}
    with pytest.raises(TypeError):
        AssetStorage()  # type: ignore[abstract]
