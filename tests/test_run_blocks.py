"""`RunBlocks`: the blocks of a run, resolved once — objects as given, names loaded (only at the
edges that carry names), the documented fallback for what is missing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from evolink.errors import MissingCredentialsError
from prefect_evolink.blocks import (
    EvoLinkCredentials,
    EvoLinkSpendCap,
    LocalAssetStorage,
    S3AssetStorage,
)
from prefect_evolink.flows.run_blocks import RunBlocks, named_blocks

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_objects_are_used_as_given_and_nothing_is_loaded(tmp_path: Path) -> None:
    credentials = EvoLinkCredentials(api_key="sk-run-blocks-object")
    storage = LocalAssetStorage(base_dir=str(tmp_path))
    cap = EvoLinkSpendCap(limit_usd=5)

    blocks = asyncio.run(RunBlocks.resolve(credentials, storage, cap))

    assert blocks == RunBlocks(credentials, storage, cap)
    assert blocks.credentials is credentials and blocks.storage is storage
    assert blocks.spend_cap is cap
    with pytest.raises(AttributeError):  # frozen: a step cannot swap a block for the others
        blocks.storage = storage  # type: ignore[misc]


def test_names_load_the_saved_blocks(tmp_path: Path) -> None:
    EvoLinkCredentials(api_key="sk-run-blocks-named").save("run-blocks", overwrite=True)
    LocalAssetStorage(base_dir=str(tmp_path)).save("run-blocks", overwrite=True)
    S3AssetStorage(bucket="run-blocks").save("run-blocks", overwrite=True)  # same name: ambiguous
    EvoLinkSpendCap(limit_usd=7).save("run-blocks", overwrite=True)

    blocks = asyncio.run(
        RunBlocks.resolve("run-blocks", "evolink-local-asset-storage/run-blocks", "run-blocks")
    )

    assert blocks.credentials.api_key.get_secret_value() == "sk-run-blocks-named"
    assert isinstance(blocks.storage, LocalAssetStorage)
    assert blocks.storage.base_dir == str(tmp_path)
    assert blocks.spend_cap is not None and blocks.spend_cap.limit_usd == 7
    assert "credentials 'run-blocks'" in blocks.describe()
    with pytest.raises(ValueError, match="several block types"):
        asyncio.run(RunBlocks.resolve("run-blocks", "run-blocks"))


def test_what_is_missing_falls_back_to_the_environment_and_no_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EVOLINK_API_KEY", raising=False)
    monkeypatch.setenv("EVOLINK_ASSETS_DIR", str(tmp_path / "fallback"))
    with pytest.raises(MissingCredentialsError, match="EVOLINK_API_KEY"):
        asyncio.run(RunBlocks.resolve())

    monkeypatch.setenv("EVOLINK_API_KEY", "sk-run-blocks-from-env")
    blocks = asyncio.run(RunBlocks.resolve())

    assert blocks.credentials.api_key.get_secret_value() == "sk-run-blocks-from-env"
    assert isinstance(blocks.storage, LocalAssetStorage)
    assert Path(blocks.storage.base_dir) == tmp_path / "fallback"
    assert blocks.spend_cap is None
    assert blocks.describe().endswith("spend cap none")
    assert "sk-run-blocks-from-env" not in blocks.describe()


def test_named_blocks_loads_only_what_was_named_so_the_flow_keeps_its_fallbacks() -> None:
    EvoLinkSpendCap(limit_usd=3).save("run-blocks-named", overwrite=True)

    assert asyncio.run(named_blocks()) == {}
    found = asyncio.run(named_blocks(spend_cap="run-blocks-named"))
    assert list(found) == ["spend_cap"] and found["spend_cap"].limit_usd == 3
    with pytest.raises(MissingCredentialsError, match="no-such-run-blocks"):
        asyncio.run(named_blocks(credentials="no-such-run-blocks"))
