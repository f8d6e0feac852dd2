"""Asset storage blocks: local disk and a real S3 HTTP server on loopback (moto).

No Prefect server is used here: blocks are instantiated, never saved.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import tracemalloc
import unicodedata
import uuid
from abc import ABC
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import boto3
import httpx
import pytest
from botocore.config import Config
from pydantic import ValidationError

import prefect_evolink.blocks as blocks
import prefect_evolink.blocks.keys as keys_module
import prefect_evolink.blocks.local as local_module
import prefect_evolink.blocks.lookup as lookup_module
from prefect_evolink.blocks import (
    AssetStorage,
    LocalAssetStorage,
    S3AssetStorage,
    StoredObject,
    check_key,
    default_storage,
    load_storage,
    safe_key,
)

MiB = 1024 * 1024
ACCESS_KEY_ID = "AKIA-TEST-ACCESS-KEY-ID-4f1c"
SECRET_ACCESS_KEY = "test-secret-NEVER-PRINT-9b7e2a"
BUCKET = "evolink-assets-test"

BAD_KEYS = [
    "",
    "../x",
    "/abs",
    "/etc/passwd",
    "a/../../b",
    "a/..",
    "..",
    ".",
    "a/./b",
    "a\\b",
    "..\\x",
    "C:\\Windows\\win.ini",
    "a//b",
    "a/",
    ".hidden",
    "a/.tmp-x.partial",
    "a\x00b",
    "line\nbreak",
    "x" * 256,
    "/".join(["y" * 200] * 6),
]


def _tmp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".")]


def _write_random(path: Path, size: int) -> str:
    """Write `size` random bytes in 1 MiB chunks; return their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        remaining = size
        while remaining:
            chunk = os.urandom(min(MiB, remaining))
            digest.update(chunk)
            fh.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------
# Keys
# ------------------------------------------------------------------------------------------

UNTRUSTED_PARTS = [
    "Café/../../etc",
    "ｆｕｌｌ",
    "..",
    ".",
    "",
    " ",
    "a" * 300,
    "a" * 301,
    "../../../",
    "/etc/passwd",
    "C:\\Windows\\system32",
    "..\\..\\x",
    "a\x00b",
    ".hidden",
    "...",
    "春季",
    "夏季",
    "a b",
    "a/b",
    "\u2024\u2024",  # one-dot leaders: NFKC turns them into '..'
    "\ufe52\ufe52",  # small full stops, likewise
    "%2e%2e",
]


@pytest.mark.parametrize("part", UNTRUSTED_PARTS)
def test_safe_key_always_stays_inside(part: str, tmp_path: Path) -> None:
    key = safe_key(part)
    assert check_key(key) == key
    assert "/" not in key and "\\" not in key and "\x00" not in key
    assert not key.startswith(".")
    assert 1 <= len(key) <= keys_module.MAX_PART_CHARS
    assert set(key) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    # And it really lands inside the base directory.
    base = tmp_path / "base"
    store = LocalAssetStorage(base_dir=str(base))
    full = safe_key("campaign", part, "0.png")
    stored = store.put_bytes(full, b"x", content_type="image/png")
    written = Path(url2pathname(urlparse(stored.uri).path))
    assert written.resolve().is_relative_to(base.resolve())
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == [written]


def test_safe_key_keeps_distinct_inputs_distinct_and_is_deterministic() -> None:
    # Inputs that differ after NFKC normalisation must give different keys ("\u2024\u2024"
    # and ".." are the same text to NFKC, and so are "ｆｕｌｌ" and "full").
    by_text = {unicodedata.normalize("NFKC", p): safe_key(p) for p in UNTRUSTED_PARTS}
    assert len(by_text) == len(set(by_text.values()))
    assert safe_key("\u2024\u2024") == safe_key("..")
    assert [safe_key(p) for p in UNTRUSTED_PARTS] == [safe_key(p) for p in UNTRUSTED_PARTS]


def test_safe_key_leaves_safe_parts_alone_and_normalises_unicode() -> None:
    assert safe_key("summer", "asset_42", "draft", "0.png") == "summer/asset_42/draft/0.png"
    assert safe_key("ｆｕｌｌ") == "full"  # NFKC: fullwidth letters are the same name
    assert safe_key("Café").startswith("Caf-")
    assert safe_key("a" * 80) == "a" * 80
    truncated = safe_key("a" * 300)
    assert len(truncated) == 80 and truncated.startswith("a" * 60)


def test_safe_key_needs_str_parts() -> None:
    with pytest.raises(ValueError):
        safe_key()
    with pytest.raises(TypeError):
        safe_key("a", 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_key_rejects_and_names_the_key(key: str) -> None:
    with pytest.raises(ValueError) as info:
        check_key(key)
    assert repr(key) in str(info.value)


# ------------------------------------------------------------------------------------------
# Local storage
# ------------------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalAssetStorage:
    return LocalAssetStorage(base_dir=str(tmp_path / "assets"))


def test_local_put_file_is_atomic_and_streams(local: LocalAssetStorage, tmp_path: Path) -> None:
    src = tmp_path / "image.png"
    digest = _write_random(src, 20 * MiB)
    tracemalloc.start()
    try:
        stored = local.put_file(
            "camp/asset/draft/0.png", src, content_type="image/png", metadata={"prompt": "é"}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"put_file held {peak / MiB:.1f} MiB in memory"
    dest = local.root() / "camp/asset/draft/0.png"
    assert stored == StoredObject(
        key="camp/asset/draft/0.png",
        uri=dest.as_uri(),
        size_bytes=20 * MiB,
        content_type="image/png",
    )
    assert stored.uri.startswith("file:///")
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert _tmp_leftovers(local.root()) == []
    assert oct(dest.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(AttributeError):
        stored.key = "other"  # type: ignore[misc]


def test_local_failed_write_keeps_old_content_and_leaves_no_temp(
    local: LocalAssetStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.put_bytes("a/b.png", b"old", content_type="image/png")
    src = tmp_path / "new.png"
    src.write_bytes(b"new" * 1000)

    def broken_replace(*args: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(local_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        local.put_file("a/b.png", src, content_type="image/png", metadata={})
    monkeypatch.undo()
    assert local.get_bytes("a/b.png") == b"old"
    assert _tmp_leftovers(local.root()) == []

    with pytest.raises(FileNotFoundError):
        local.put_file("a/c.png", tmp_path / "missing.png", content_type="image/png", metadata={})
    assert not local.exists("a/c.png")
    assert _tmp_leftovers(local.root()) == []


def test_local_bytes_json_exists_missing(local: LocalAssetStorage) -> None:
    assert local.get_bytes("nope/x.bin") is None
    assert local.get_json("nope/x.json") is None
    assert not local.exists("nope/x.bin")

    stored = local.put_bytes("r/data.bin", b"\x00\x01", content_type="application/octet-stream")
    assert stored.size_bytes == 2
    assert local.get_bytes("r/data.bin") == b"\x00\x01"
    assert local.exists("r/data.bin")
    assert not local.exists("r")  # a directory is not an object
    assert local.get_bytes("r") is None

    record = {"b": 1, "a": {"prompt": "Café ☕", "n": [1, 2]}}
    stored = local.put_json("r/record.json", record)
    assert stored.content_type == "application/json"
    assert local.get_json("r/record.json") == record
    raw = local.get_bytes("r/record.json")
    assert raw is not None
    assert "Café ☕".encode() in raw  # UTF-8, not \u escapes
    assert raw.index(b'"a"') < raw.index(b'"b"')  # sorted keys: same record, same bytes
    local.put_json("r/record.json", {"a": {"n": [1, 2], "prompt": "Café ☕"}, "b": 1})
    assert local.get_bytes("r/record.json") == raw

    local.put_bytes("r/bad.json", b"{not json", content_type="application/json")
    with pytest.raises(ValueError):
        local.get_json("r/bad.json")


def test_local_list_keys_and_uri(local: LocalAssetStorage) -> None:
    assert local.list_keys() == []  # base dir not even created yet
    for key in ["c/2.png", "c/1.png", "c/sub/3.png", "cat/x.json", "d.json"]:
        local.put_bytes(key, b"x", content_type="image/png")
    # An in-progress write of another process must never be listed.
    (local.root() / "c" / ".tmp-abc.partial").write_bytes(b"half")
    assert local.list_keys() == ["c/1.png", "c/2.png", "c/sub/3.png", "cat/x.json", "d.json"]
    assert local.list_keys("c/") == ["c/1.png", "c/2.png", "c/sub/3.png"]
    assert local.list_keys("c") == ["c/1.png", "c/2.png", "c/sub/3.png", "cat/x.json"]
    assert local.list_keys("c/sub/") == ["c/sub/3.png"]
    assert local.list_keys("c/1") == ["c/1.png"]
    assert local.list_keys("zzz/") == []
    assert local.uri("c/1.png") == (local.root() / "c" / "1.png").as_uri()
    assert local.presigned_url("c/1.png") is None
    for bad in ["../", "/c", "c/../..", "..\\"]:
        with pytest.raises(ValueError):
            local.list_keys(bad)


def test_local_relative_base_dir_resolves_against_cwd_at_use_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalAssetStorage(base_dir="rel-assets")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    store.put_bytes("k.txt", b"1", content_type="text/plain")
    monkeypatch.chdir(tmp_path / "two")
    assert store.get_bytes("k.txt") is None
    assert (tmp_path / "one" / "rel-assets" / "k.txt").read_bytes() == b"1"


@pytest.mark.parametrize("key", BAD_KEYS)
def test_local_rejects_escaping_keys_everywhere(key: str, tmp_path: Path) -> None:
    base = tmp_path / "inner" / "assets"
    store = LocalAssetStorage(base_dir=str(base))
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    calls = [
        lambda: store.put_file(key, src, content_type="image/png", metadata={}),
        lambda: store.put_bytes(key, b"payload", content_type="image/png"),
        lambda: store.put_json(key, {"a": 1}),
        lambda: store.get_bytes(key),
        lambda: store.get_json(key),
        lambda: store.exists(key),
        lambda: store.uri(key),
        lambda: store.presigned_url(key),
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        assert repr(key) in str(info.value)
    # Nothing was written anywhere, inside or outside the base directory.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["src.bin"]


def test_local_refuses_symlinks_that_leave_the_base_dir(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    store = LocalAssetStorage(base_dir=str(tmp_path / "assets"))
    store.root().mkdir()
    (store.root() / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        store.get_bytes("link/secret.txt")
    with pytest.raises(ValueError, match="outside"):
        store.put_bytes("link/new.txt", b"x", content_type="text/plain")
    assert not (outside / "new.txt").exists()
    assert store.list_keys() == []


# ------------------------------------------------------------------------------------------
# S3 on loopback
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        admin = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )
        admin.create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_base(s3_endpoint: str) -> S3AssetStorage:
    block = S3AssetStorage(
        bucket=BUCKET,
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        addressing_style="path",
    )
    block.get_client()  # built once (about 0.2 s); the per-test copies share it
    return block


@pytest.fixture
def s3(s3_base: S3AssetStorage) -> S3AssetStorage:
    """The block with its own prefix per test, so tests never see each other's objects."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    block = s3_base.model_copy(update={"prefix": prefix})
    assert block.prefix == prefix and block._client is s3_base._client
    return block


def test_s3_put_file_multipart_with_metadata(s3: S3AssetStorage, tmp_path: Path) -> None:
    src = tmp_path / "big.png"
    digest = _write_random(src, 20 * MiB)
    metadata = {
        "Prompt": "Café ☕ on a red kite, 100% sharp",
        "asset_id": "asset-1",
        "long": "x" * 5000,
    }
    stored = s3.put_file("camp/asset/final/0.png", src, content_type="image/png", metadata=metadata)
    assert stored == StoredObject(
        key="camp/asset/final/0.png",
        uri=f"s3://{BUCKET}/{s3.prefix}/camp/asset/final/0.png",
        size_bytes=20 * MiB,
        content_type="image/png",
    )
    head = s3.get_client().head_object(Bucket=BUCKET, Key=f"{s3.prefix}/camp/asset/final/0.png")
    assert head["ContentLength"] == 20 * MiB
    assert head["ContentType"] == "image/png"
    assert head["ETag"].strip('"').endswith("-3")  # 8 + 8 + 4 MiB parts: it was multipart
    assert unquote(head["Metadata"]["prompt"]) == metadata["Prompt"]
    assert head["Metadata"]["asset_id"] == "asset-1"
    assert head["Metadata"]["long"] == "x" * 256
    assert all(v.isascii() for v in head["Metadata"].values())
    data = s3.get_bytes("camp/asset/final/0.png")
    assert data is not None and hashlib.sha256(data).hexdigest() == digest


def test_s3_bytes_json_exists_missing(s3: S3AssetStorage) -> None:
    assert s3.get_bytes("none.bin") is None
    assert s3.get_json("none.json") is None
    assert not s3.exists("none.bin")
    record = {"z": None, "a": ["Café ☕", 1.5]}
    stored = s3.put_json("c/record.json", record, metadata={"kind": "record"})
    assert stored.size_bytes > 0
    assert stored.uri == f"s3://{BUCKET}/{s3.prefix}/c/record.json"
    assert s3.exists("c/record.json")
    assert s3.get_json("c/record.json") == record
    head = s3.get_client().head_object(Bucket=BUCKET, Key=f"{s3.prefix}/c/record.json")
    assert head["ContentType"] == "application/json"
    assert head["Metadata"] == {"kind": "record"}


def test_s3_list_keys_with_prefix(s3: S3AssetStorage) -> None:
    for key in ["c/2.png", "c/1.png", "c/sub/3.png", "cat/x.json", "d.json"]:
        s3.put_bytes(key, b"x", content_type="image/png")
    # Another tool wrote a name no storage method could address: it is not listed.
    s3.get_client().put_object(Bucket=BUCKET, Key=f"{s3.prefix}/c//odd", Body=b"x")
    assert s3.list_keys() == ["c/1.png", "c/2.png", "c/sub/3.png", "cat/x.json", "d.json"]
    assert s3.list_keys("c/") == ["c/1.png", "c/2.png", "c/sub/3.png"]
    assert s3.list_keys("c") == ["c/1.png", "c/2.png", "c/sub/3.png", "cat/x.json"]
    assert s3.list_keys("c/1") == ["c/1.png"]
    assert s3.list_keys("zzz/") == []
    with pytest.raises(ValueError):
        s3.list_keys("../")


def test_s3_presigned_url_serves_the_bytes(s3: S3AssetStorage) -> None:
    payload = os.urandom(4096)
    s3.put_bytes("p/img.png", payload, content_type="image/png")
    url = s3.presigned_url("p/img.png", expires_seconds=120)
    assert url is not None and url.startswith(s3.endpoint_url or "")
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == payload
    assert response.headers["content-type"] == "image/png"
    with pytest.raises(ValueError):
        s3.presigned_url("p/img.png", expires_seconds=0)


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../b", "a\\b", "a//b", ".."])
def test_s3_rejects_bad_keys(s3: S3AssetStorage, key: str, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    for call in [
        lambda: s3.put_file(key, src, content_type="image/png", metadata={}),
        lambda: s3.put_bytes(key, b"x", content_type="image/png"),
        lambda: s3.get_bytes(key),
        lambda: s3.exists(key),
        lambda: s3.uri(key),
        lambda: s3.presigned_url(key),
    ]:
        with pytest.raises(ValueError) as info:
            call()
        assert repr(key) in str(info.value)
    assert s3.list_keys() == []


def test_s3_secrets_stay_out_of_repr_dumps_and_logs(
    s3: S3AssetStorage, caplog: pytest.LogCaptureFixture
) -> None:
    for text in [repr(s3), str(s3), s3.model_dump_json(), json.dumps(s3.model_dump(mode="json"))]:
        assert SECRET_ACCESS_KEY not in text
        assert ACCESS_KEY_ID not in text
    with caplog.at_level(logging.DEBUG):
        s3.put_bytes("log/x.bin", b"x", content_type="application/octet-stream")
        s3.get_bytes("log/x.bin")
        s3.presigned_url("log/x.bin")
    assert caplog.records, "expected debug logs from boto3 to check"
    assert SECRET_ACCESS_KEY not in caplog.text
    # Prefect stores these fields encrypted and masks them in the UI.
    # Prefect stores these fields encrypted and masks them in the UI, the secrets of a nested
    # prefect-aws credentials block included.
    assert set(S3AssetStorage.model_json_schema()["secret_fields"]) == {
        "aws_access_key_id",
        "aws_secret_access_key",
        "credentials.aws_secret_access_key",
        "credentials.minio_root_password",
    }


def test_s3_client_is_cached_private_and_not_copied(s3: S3AssetStorage) -> None:
    client = s3.get_client()
    assert s3.get_client() is client
    assert "_client" not in s3.model_dump()
    twin = copy.deepcopy(s3)
    assert twin.model_dump() == s3.model_dump() and twin._client is None
    restored = pickle.loads(pickle.dumps(s3))
    assert restored._client is None
    assert restored.aws_secret_access_key is not None
    assert restored.aws_secret_access_key.get_secret_value() == SECRET_ACCESS_KEY
    restored.put_bytes("copy/x.bin", b"ok", content_type="application/octet-stream")
    assert s3.get_bytes("copy/x.bin") == b"ok"


def test_s3_prefix_is_normalised_and_validated() -> None:
    assert S3AssetStorage(bucket="b", prefix="/evolink/prod/").prefix == "evolink/prod"
    assert S3AssetStorage(bucket="b").uri("a/b.png") == "s3://b/a/b.png"
    for bad in ["a/../b", "a//b", "..", "a\\b"]:
        with pytest.raises(ValidationError):
            S3AssetStorage(bucket="b", prefix=bad)
    with pytest.raises(ValidationError):
        S3AssetStorage(bucket="b", multipart_threshold_mb=1)


# ------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_cls", [LocalAssetStorage, S3AssetStorage])
def test_blocks_are_described_for_the_ui(block_cls: type[AssetStorage]) -> None:
    assert block_cls._block_type_name and block_cls._block_type_name.startswith("EvoLink ")
    assert block_cls.get_block_type_slug().startswith("evolink-")
    assert block_cls.get_description()
    example = block_cls.get_code_example()
    assert example is not None and f"{block_cls.__name__}.load(" in example
    for name, field in block_cls.model_fields.items():
        assert field.description, f"{block_cls.__name__}.{name} has no description"
    # `ABC` directly among the bases is how Prefect skips registering an interface block.
    assert ABC in AssetStorage.__bases__ and ABC not in block_cls.__bases__


def test_blocks_instantiate_without_a_prefect_server() -> None:
    assert LocalAssetStorage().base_dir == "assets"
    s3 = S3AssetStorage(bucket="b")
    assert s3.addressing_style == "auto" and s3.multipart_threshold_mb == 8
    assert s3.aws_access_key_id is None and s3.endpoint_url is None
    with pytest.raises(TypeError):
        AssetStorage()  # type: ignore[abstract]
    assert blocks.LocalAssetStorage is LocalAssetStorage
    assert blocks.safe_key is safe_key


def test_default_storage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(lookup_module.ENV_ASSETS_DIR, raising=False)
    store = default_storage()
    assert isinstance(store, LocalAssetStorage) and store.base_dir == "assets"
    monkeypatch.setenv(lookup_module.ENV_ASSETS_DIR, str(tmp_path / "a"))
    assert default_storage() == LocalAssetStorage(base_dir=str(tmp_path / "a"))
    assert load_storage(None) == default_storage()
    assert load_storage("  ") == default_storage()


def test_load_storage_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup rules, with `Block.load` replaced (no Prefect API in this file)."""
    saved: dict[str, dict[str, Any]] = {
        "evolink-local-asset-storage": {"shared": LocalAssetStorage(base_dir="/l"), "disk": None},
        "evolink-s3-asset-storage": {"shared": S3AssetStorage(bucket="s"), "cloud": None},
    }
    saved["evolink-local-asset-storage"]["disk"] = LocalAssetStorage(base_dir="/d")
    saved["evolink-s3-asset-storage"]["cloud"] = S3AssetStorage(bucket="c")

    def fake_load(cls: type, name: str, validate: bool = True, **kwargs: Any) -> Any:
        assert kwargs.get("_sync") is True
        if "/" in name:
            slug, name = name.split("/", 1)
        else:
            slug = cls.get_block_type_slug()  # type: ignore[attr-defined]
        if slug == "secret":
            return "not a storage block"
        try:
            return saved[slug][name]
        except KeyError:
            raise ValueError(f"Unable to find block document named {name}") from None

    monkeypatch.setattr(lookup_module.Block, "load", classmethod(fake_load))
    assert load_storage("disk") == LocalAssetStorage(base_dir="/d")
    assert load_storage("cloud") == S3AssetStorage(bucket="c")
    assert load_storage("evolink-s3-asset-storage/shared") == S3AssetStorage(bucket="s")
    with pytest.raises(ValueError, match="several block types"):
        load_storage("shared")
    with pytest.raises(ValueError, match="no storage block named 'missing'"):
        load_storage("missing")
    with pytest.raises(TypeError):
        load_storage("secret/x")


# ------------------------------------------------------------------------------------------
# Async twins and the sync/async dispatch rule (no Prefect run here; see test_blocks.py)
# ------------------------------------------------------------------------------------------


def test_async_twins_round_trip_locally_off_the_event_loop(
    local: LocalAssetStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "img.png"
    src.write_bytes(b"png" * 100)
    threads: set[int] = set()
    real_get = LocalAssetStorage._get_bytes

    def spy_get(self: LocalAssetStorage, key: str) -> bytes | None:
        threads.add(threading.get_ident())
        return real_get(self, key)

    monkeypatch.setattr(LocalAssetStorage, "_get_bytes", spy_get)

    async def main() -> int:
        stored = await local.aput_file("c/a/0.png", src, content_type="image/png", metadata={})
        assert stored.size_bytes == 300 and stored.uri == local.uri("c/a/0.png")
        assert (await local.aput_bytes("c/a/x.bin", b"\x01", content_type="x")).size_bytes == 1
        assert (await local.aput_json("c/a/r.json", {"b": 2, "a": 1})).content_type == (
            "application/json"
        )
        assert await local.aget_bytes("c/a/0.png") == b"png" * 100
        assert await local.aget_bytes("c/a/none.png") is None
        assert await local.aget_json("c/a/r.json") == {"a": 1, "b": 2}
        assert await local.aget_json("c/a/none.json") is None
        assert await local.aexists("c/a/x.bin") and not await local.aexists("c/a/none")
        assert await local.alist_keys("c/") == ["c/a/0.png", "c/a/r.json", "c/a/x.bin"]
        assert await local.apresigned_url("c/a/0.png") is None
        with pytest.raises(ValueError, match="invalid storage key"):
            await local.aput_bytes("../escape", b"x", content_type="x")
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads and loop_thread not in threads, "blocking reads ran on the event loop"
    # The sync twins see the same data.
    assert local.get_json("c/a/r.json") == {"a": 1, "b": 2}


def test_sync_names_follow_async_dispatch(local: LocalAssetStorage) -> None:
    """Outside a Prefect run: sync without a running loop, coroutine with one, `_sync` wins."""
    local.put_bytes("k/x.bin", b"x", content_type="x")
    assert local.get_bytes("k/x.bin") == b"x"
    assert type(local).get_bytes.aio is AssetStorage.aget_bytes  # type: ignore[attr-defined]

    async def main() -> None:
        pending = local.get_bytes("k/x.bin")
        assert inspect.iscoroutine(pending)
        assert await pending == b"x"
        # A thread without an event loop cannot await: there the sync names run sync.
        assert await asyncio.to_thread(local.get_bytes, "k/x.bin") == b"x"
        assert await asyncio.to_thread(local.put_json, "k/t.json", {"t": 1}) is not None
        # `_sync=True` forces the sync path, nested storage calls (put_json -> put_bytes) too.
        stored = local.put_json("k/s.json", {"s": 1}, _sync=True)  # type: ignore[call-arg]
        assert isinstance(stored, StoredObject)
        assert local.get_json("k/s.json", _sync=True) == {"s": 1}  # type: ignore[call-arg]

    asyncio.run(main())
    assert local.list_keys("k/") == ["k/s.json", "k/t.json", "k/x.bin"]


def test_a_subclass_overriding_a_sync_method_changes_its_async_twin(tmp_path: Path) -> None:
    """The async twins run the public sync method in the worker thread (test doubles rely on it)."""
    calls: list[str] = []

    class Counting(LocalAssetStorage):
        _block_type_slug = "test-counting-local-storage"

        def put_file(  # type: ignore[override]
            self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
        ) -> StoredObject:
            calls.append(key)
            return super().put_file(key, path, content_type=content_type, metadata=metadata)

    store = Counting(base_dir=str(tmp_path / "a"))
    src = tmp_path / "f.bin"
    src.write_bytes(b"f")
    stored = asyncio.run(store.aput_file("x/f.bin", src, content_type="x", metadata={}))
    assert calls == ["x/f.bin"] and stored.size_bytes == 1
    assert store.get_bytes("x/f.bin") == b"f"


def test_s3_async_twins(s3: S3AssetStorage, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    digest = _write_random(src, 9 * MiB)

    async def main() -> None:
        stored = await s3.aput_file("a/big.bin", src, content_type="image/png", metadata={"k": "v"})
        assert stored.uri == f"s3://{BUCKET}/{s3.prefix}/a/big.bin"
        data = await s3.aget_bytes("a/big.bin")
        assert data is not None and hashlib.sha256(data).hexdigest() == digest
        await s3.aput_json("a/r.json", {"x": [1, 2]})
        assert await s3.aget_json("a/r.json") == {"x": [1, 2]}
        assert await s3.aget_bytes("a/none") is None and not await s3.aexists("a/none")
        assert await s3.alist_keys("a/") == ["a/big.bin", "a/r.json"]
        url = await s3.apresigned_url("a/r.json", expires_seconds=60)
        assert url is not None
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).json() == {"x": [1, 2]}

    asyncio.run(main())


# ------------------------------------------------------------------------------------------
# S3 with prefect-aws credentials blocks (the optional [aws] extra)
# ------------------------------------------------------------------------------------------


def test_s3_with_aws_credentials_block(s3_endpoint: str) -> None:
    from prefect_aws import AwsClientParameters, AwsCredentials

    creds = AwsCredentials(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="eu-west-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint),
    )
    store = S3AssetStorage(
        bucket=BUCKET,
        prefix=f"aws-{uuid.uuid4().hex[:8]}",
        credentials=creds,
        addressing_style="path",
    )
    client = store.get_client()
    assert client.meta.endpoint_url == s3_endpoint
    assert client.meta.region_name == "eu-west-1"  # from the credentials block
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert client._request_signer._credentials.access_key == ACCESS_KEY_ID
    store.put_bytes("x/a.bin", b"aws", content_type="x")
    assert store.get_bytes("x/a.bin") == b"aws"
    assert httpx.get(store.presigned_url("x/a.bin") or "").content == b"aws"
    for text in [repr(store), store.model_dump_json(), json.dumps(store.model_dump(mode="json"))]:
        assert SECRET_ACCESS_KEY not in text
    # Fields set on this block win over the credentials block's.
    other = S3AssetStorage(
        bucket=BUCKET, credentials=creds, region_name="us-east-1", endpoint_url="http://127.0.0.9:1"
    )
    assert other.get_client().meta.region_name == "us-east-1"
    assert other.get_client().meta.endpoint_url == "http://127.0.0.9:1"


def test_s3_with_minio_credentials_block(s3_endpoint: str) -> None:
    from prefect_aws import AwsClientParameters, MinIOCredentials

    minio = MinIOCredentials(
        minio_root_user="minio-user",
        minio_root_password=SECRET_ACCESS_KEY,
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint),
    )
    store = S3AssetStorage(
        bucket=BUCKET, prefix="minio", credentials=minio, addressing_style="path"
    )
    client = store.get_client()
    assert client.meta.endpoint_url == s3_endpoint
    assert client._request_signer._credentials.access_key == "minio-user"
    assert client._request_signer._credentials.secret_key == SECRET_ACCESS_KEY
    stored = asyncio.run(store.aput_json("m/r.json", {"minio": True}))
    assert stored.uri == f"s3://{BUCKET}/minio/m/r.json"
    assert store.get_json("m/r.json") == {"minio": True}
    assert SECRET_ACCESS_KEY not in repr(store)


def test_s3_credentials_block_validation() -> None:
    from prefect_aws import AwsCredentials, MinIOCredentials

    with pytest.raises(ValidationError, match="not both"):
        S3AssetStorage(
            bucket="b", credentials=AwsCredentials(), aws_secret_access_key=SECRET_ACCESS_KEY
        )
    # Nested block data, as Prefect hands it over when loading, picks the class by its slug.
    minio_data = {"minio_root_user": "u", "minio_root_password": "p"}
    loaded = S3AssetStorage(
        bucket="b", credentials={**minio_data, "block_type_slug": "minio-credentials"}
    )
    assert isinstance(loaded.credentials, MinIOCredentials)
    assert isinstance(
        S3AssetStorage(bucket="b", credentials=minio_data).credentials, MinIOCredentials
    )
    aws = S3AssetStorage(bucket="b", credentials={"block_type_slug": "aws-credentials"})
    assert isinstance(aws.credentials, AwsCredentials)
    with pytest.raises(ValidationError, match="AwsCredentials or MinIOCredentials"):
        S3AssetStorage(bucket="b", credentials={"block_type_slug": "secret", "value": "x"})


def test_s3_storage_works_without_prefect_aws(s3_endpoint: str) -> None:
    """With prefect-aws absent the module imports, key fields work, `credentials` says why not."""
    script = f"""
import sys
sys.modules["prefect_aws"] = None  # as if the [aws] extra were not installed
from pydantic import ValidationError
from prefect_evolink.blocks import S3AssetStorage
from prefect_evolink.blocks import s3
assert s3.HAS_PREFECT_AWS is False
store = S3AssetStorage(
    bucket={BUCKET!r}, prefix="no-aws", endpoint_url={s3_endpoint!r}, region_name="us-east-1",
    aws_access_key_id="k", aws_secret_access_key="s", addressing_style="path",
)
store.put_bytes("x.bin", b"plain", content_type="x")
assert store.get_bytes("x.bin") == b"plain"
assert "credentials" in S3AssetStorage.model_json_schema()["properties"]
try:
    S3AssetStorage(bucket="b", credentials={{"minio_root_user": "u"}})
except ValidationError as error:
    assert "prefect-evolink[aws]" in str(error), error
else:
    raise AssertionError("credentials accepted without prefect-aws")
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
