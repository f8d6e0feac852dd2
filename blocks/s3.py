"""`S3AssetStorage`: generated images and sidecars in an S3 bucket or any S3-compatible store.

Credentials come from one of three places, in this order:

1. `credentials`: a prefect-aws `AwsCredentials` or `MinIOCredentials` block (needs the optional
   extra, `pip install 'prefect-evolink[aws]'`), so a team that already keeps its AWS or MinIO
   credentials in Prefect does not enter them again;
2. `aws_access_key_id` / `aws_secret_access_key` on this block;
3. neither: boto3's default chain (environment, profile, instance role).

This module imports and works without prefect-aws; only the `credentials` field needs it.

**The credentials type.** Prefect imports this module whenever it loads collections (workers, its
server, a deployed flow run's start, any `Block.load`), so importing it imports neither boto3
(imported by the methods that use it) nor prefect-aws, which alone brings boto3, botocore,
aiobotocore and aiohttp. Yet the field's type must stay `AwsCredentials | MinIOCredentials | None`:
Prefect derives the block schema from it (the two blocks' definitions, `block_schema_references`
to their slugs and checksums, the nested secret fields, the UI's block picker), and the schema's
checksum is what saved block documents point to. So the annotation names the union through
`_aws`, a reference to `blocks/_aws.py` that imports it on first attribute access, and `_aws` is
bound only after the class statement: while pydantic builds the class the name is undefined, the
field stays a forward reference, and the class is completed the first time it is needed —

- by pydantic itself when the class is first validated (created, loaded), dumped or asked for
  its schema, or when another model's schema names it (a flow's parameters);
- by `model_fields`, which Prefect reads to find nested blocks (when it registers the block
  type, collects secret fields and schema references), through `FieldsOfACompleteModel`.

Prefect's registry needs only the slug, which `AssetStorage.__dispatch_key__` returns without
building the schema. The schema, its checksum and every saved document are exactly as with the
type imported up front (tests/test_light_plugin.py compares them); the cost is that the first
use of this block type pays for the prefect-aws import instead of every Prefect process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from prefect_evolink.blocks._first_use import FieldsOfACompleteModel, ModuleOnFirstUse
from prefect_evolink.blocks._meta import STORAGE_DOCS_URL, logo_url
from prefect_evolink.blocks.keys import check_key, check_prefix
from prefect_evolink.blocks.s3_metadata import s3_metadata
from prefect_evolink.blocks.storage import AssetStorage, StoredObject

if TYPE_CHECKING:
    from typing import Self

    from prefect_evolink.blocks import _aws

    HAS_PREFECT_AWS: bool  # from the module's `__getattr__`, imported when asked for

__all__ = ["HAS_PREFECT_AWS", "S3AssetStorage"]

logger = logging.getLogger(__name__)

_MIB: Final = 1024 * 1024

_INSTALL_AWS_HINT: Final = (
    "a credentials block needs prefect-aws: pip install 'prefect-evolink[aws]' "
    "(or give aws_access_key_id / aws_secret_access_key, or leave both empty for boto3's chain)"
)


def _is_not_found(error: Exception) -> bool:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NotFound"} or status == 404


_CLIENT_LOCK = threading.Lock()
"""Guards client creation: boto3 sessions are not thread-safe, the clients they make are."""


class S3AssetStorage(AssetStorage):
    """Store generated images and sidecars in an S3 bucket or any S3-compatible store.

    Large files are uploaded with multipart transfers straight from disk. Object metadata is
    reduced to what S3 accepts (ASCII, 2 KB); keep the full record in a JSON sidecar.
    Credentials come from a prefect-aws `AwsCredentials` / `MinIOCredentials` block
    (`credentials`, needs `prefect-evolink[aws]`), or from the key fields of this block, or, with
    neither, from boto3's default chain (environment, profile, instance role). Secrets are masked
    in the UI, in repr() and in logs.

    Attributes:
        bucket: Name of the bucket that holds the assets.
        prefix: Key prefix inside the bucket; every asset key is stored under it.
        credentials: A saved prefect-aws `AwsCredentials` or `MinIOCredentials` block.
        endpoint_url: URL of an S3-compatible service; empty for AWS S3 (or the credentials
            block's `aws_client_parameters.endpoint_url`).
        region_name: Region of the bucket; empty for the credentials block's or boto3's default.
        aws_access_key_id: Access key ID, when no credentials block is given.
        aws_secret_access_key: Secret access key, when no credentials block is given.
        addressing_style: "virtual", "path" (usual for S3-compatible servers) or "auto".
        multipart_threshold_mb: Files at least this many MiB are uploaded in parts this size.

    Example:
        Load a saved block in a flow or task:
        ```python
        from prefect_evolink.blocks import S3AssetStorage

        storage = S3AssetStorage.load("BLOCK_NAME")
        ```

        Save one that reuses a prefect-aws credentials block (MinIO here; `AwsCredentials` the
        same way), then use it from async code:
        ```python
        from prefect_aws import AwsClientParameters, MinIOCredentials
        from prefect_evolink.blocks import S3AssetStorage

        minio = MinIOCredentials(
            minio_root_user="evolink",
            minio_root_password="...",
            aws_client_parameters=AwsClientParameters(endpoint_url="https://minio.example.com"),
        )
        minio.save("minio")
        S3AssetStorage(
            bucket="my-images",
            prefix="evolink",
            credentials=MinIOCredentials.load("minio"),
            addressing_style="path",
        ).save("s3-assets")

        storage = await S3AssetStorage.aload("s3-assets")
        await storage.aput_json("summer/asset-1/record.json", {"status": "approved"})
        url = await storage.apresigned_url("summer/asset-1/final/0.png", expires_seconds=600)
        ```
        Without prefect-aws, give `endpoint_url`, `aws_access_key_id` and
        `aws_secret_access_key` on this block instead of `credentials`.
    """

    _block_type_name: ClassVar[str | None] = "EvoLink S3 Asset Storage"
    _block_type_slug: ClassVar[str | None] = "evolink-s3-asset-storage"
    _description: ClassVar[str | None] = (
        "Stores EvoLink GPT Image 2 results and their JSON sidecars in an S3 bucket or any "
        "S3-compatible object store, with multipart uploads and presigned download URLs."
    )
    _logo_url = logo_url("evolink-s3-asset-storage")  # type: ignore[assignment]
    _documentation_url = STORAGE_DOCS_URL  # type: ignore[assignment]

    bucket: str = Field(min_length=1, description="Name of the bucket that holds the assets.")
    prefix: str = Field(
        default="",
        description=(
            "Key prefix inside the bucket, e.g. 'evolink/prod'; every asset key is stored "
            "under it. Leading and trailing '/' are ignored."
        ),
    )
    credentials: _aws.S3CredentialsBlock | None = Field(
        default=None,
        description=(
            "A prefect-aws AwsCredentials or MinIOCredentials block to build the S3 client "
            "from (needs prefect-evolink[aws]). Leave empty to use the key fields below or "
            "boto3's default credential chain."
        ),
    )
    endpoint_url: str | None = Field(
        default=None,
        title="Endpoint URL",
        description=(
            "URL of an S3-compatible service (MinIO, Ceph, R2, ...). Leave empty for AWS S3 or "
            "to use the credentials block's aws_client_parameters.endpoint_url."
        ),
    )
    region_name: str | None = Field(
        default=None,
        description=(
            "Region of the bucket, e.g. 'us-east-1'. Empty: the credentials block's region, "
            "else boto3's configured default."
        ),
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None,
        title="Access Key ID",
        description=(
            "Access key ID, when no credentials block is given. Empty: boto3's default "
            "credential chain is used."
        ),
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        title="Secret Access Key",
        description="Secret access key matching the access key ID. Stored encrypted.",
    )
    addressing_style: Literal["auto", "virtual", "path"] = Field(
        default="auto",
        description=(
            "How the bucket appears in URLs: 'virtual' (bucket.host), 'path' (host/bucket; "
            "usually needed for S3-compatible servers) or 'auto' (boto3 decides)."
        ),
    )
    multipart_threshold_mb: int = Field(
        default=8,
        ge=5,
        le=5120,
        title="Multipart Threshold (MB)",
        description=(
            "Files at least this many MiB are uploaded in parts of this size (S3 minimum: 5)."
        ),
    )

    _client: Any = PrivateAttr(default=None)

    model_config = ConfigDict(ignored_types=(FieldsOfACompleteModel,))
    model_fields = FieldsOfACompleteModel()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass copies our fields as they are, and its own module has no `_aws` to resolve
        `credentials` with: complete this class first (a subclass imports prefect-aws)."""
        S3AssetStorage.model_rebuild()
        super().__init_subclass__(**kwargs)

    @field_validator("prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        """Strip slashes; refuse a prefix that could not be a key (it starts every key)."""
        value = value.strip("/")
        if value:
            check_key(value)
        return value

    @field_validator("credentials", mode="before")
    @classmethod
    def _credentials_block(cls, value: Any) -> Any:
        """Nested block data -> the block class its `block_type_slug` names.

        Without this, pydantic may read MinIO data as an (all-optional) AwsCredentials block.
        """
        if value is None:
            return None
        block_types = _aws.credentials_block_types()
        if block_types is None:
            raise ValueError(_INSTALL_AWS_HINT)
        aws_credentials, minio_credentials = block_types
        if isinstance(value, dict):
            data = dict(value)
            slug = data.pop("block_type_slug", None)
            by_slug = {c.get_block_type_slug(): c for c in block_types}
            if slug is not None:
                if slug not in by_slug:
                    raise ValueError(
                        f"credentials must be an AwsCredentials or MinIOCredentials block, "
                        f"got block type {slug!r}"
                    )
                return by_slug[slug].model_validate(data)
            if "minio_root_user" in data:
                return minio_credentials.model_validate(data)
            return aws_credentials.model_validate(data)
        return value

    @model_validator(mode="after")
    def _one_source_of_keys(self) -> Self:
        if self.credentials is not None and (
            self.aws_access_key_id is not None or self.aws_secret_access_key is not None
        ):
            raise ValueError(
                "give either a credentials block or aws_access_key_id/aws_secret_access_key, "
                "not both"
            )
        return self

    # -- client

    def get_client(self) -> Any:
        """The boto3 S3 client for this block, built once and cached on the instance.

        The cache is a private attribute: it is not part of the block's data, is not saved to
        Prefect, and is dropped when the block is copied or pickled.
        """
        client = self._client
        if client is not None:
            return client
        with _CLIENT_LOCK:
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": self.addressing_style},
            retries={"mode": "standard", "max_attempts": 5},
        )
        params: dict[str, Any] = {}
        region = self.region_name
        if self.credentials is not None:
            # AwsCredentials: keys, session token, profile, assumed role; MinIOCredentials: the
            # root user and password. Their client parameters (endpoint_url, verify, use_ssl,
            # botocore config) apply too; fields set on this block win.
            session = self.credentials.get_boto3_session()
            params = self.credentials.aws_client_parameters.get_params_override()
            theirs = params.pop("config", None)
            if theirs is not None:
                config = config.merge(theirs)
            region = region or self.credentials.region_name
        else:
            session = boto3.session.Session(
                aws_access_key_id=(
                    self.aws_access_key_id.get_secret_value() if self.aws_access_key_id else None
                ),
                aws_secret_access_key=(
                    self.aws_secret_access_key.get_secret_value()
                    if self.aws_secret_access_key
                    else None
                ),
            )
        if self.endpoint_url:
            params["endpoint_url"] = self.endpoint_url
        if region:
            params["region_name"] = region
        return session.client("s3", config=config, **params)

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle without the cached client (it holds sockets and locks; it is rebuilt lazily)."""
        state = super().__getstate__()
        private = state.get("__pydantic_private__")
        if private and private.get("_client") is not None:
            state["__pydantic_private__"] = {**private, "_client": None}
        return state

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        """Deep-copy without the cached client: the copy builds its own when needed."""
        memo = {} if memo is None else memo
        if self._client is not None:
            memo[id(self._client)] = None
        return super().__deepcopy__(memo)

    # -- keys

    def _object_key(self, key: str) -> str:
        self._check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        part = self.multipart_threshold_mb * _MIB
        return TransferConfig(multipart_threshold=part, multipart_chunksize=part)

    # -- writes

    def _put_file(
        self, key: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Upload `path` with boto3's managed transfer (multipart above the threshold)."""
        object_key = self._object_key(key)
        size = path.stat().st_size
        self.get_client().upload_file(
            Filename=str(path),
            Bucket=self.bucket,
            Key=object_key,
            ExtraArgs={"ContentType": content_type, "Metadata": s3_metadata(metadata)},
            Config=self._transfer_config(),
        )
        logger.debug("uploaded %s (%d bytes) to %s", key, size, self.uri(key))
        return StoredObject(key=key, uri=self.uri(key), size_bytes=size, content_type=content_type)

    def _put_bytes(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None
    ) -> StoredObject:
        """One PUT; meant for small payloads (S3 itself caps a single PUT at 5 GB)."""
        self.get_client().put_object(
            Bucket=self.bucket,
            Key=self._object_key(key),
            Body=data,
            ContentType=content_type,
            Metadata=s3_metadata(metadata),
        )
        return StoredObject(
            key=key, uri=self.uri(key), size_bytes=len(data), content_type=content_type
        )

    # -- reads

    def _get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self.get_client().get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if _is_not_found(error):
                return None
            raise
        with response["Body"] as body:
            data: bytes = body.read()
            return data

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.get_client().head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if _is_not_found(error):
                return False
            raise
        return True

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def _delete(self, key: str) -> None:
        self.get_client().delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def _list_keys(self, prefix: str) -> list[str]:
        """Keys under the block's prefix that start with `prefix`, relative to the block prefix.

        Objects whose names are not valid keys (written by other tools, e.g. 'a//b') are skipped,
        since no other method of this block could address them.
        """
        check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self.get_client().get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(root) :]
                try:
                    check_key(key)
                except ValueError:
                    logger.debug("skipping object %r: not a valid storage key", item["Key"])
                    continue
                keys.append(key)
        return sorted(keys)

    def _presigned_url(self, key: str, expires_seconds: int) -> str | None:
        """A presigned GET URL valid for `expires_seconds` (1 s to 7 days, S3's limit)."""
        if not 1 <= expires_seconds <= 7 * 24 * 3600:
            raise ValueError(f"expires_seconds must be between 1 and 604800, got {expires_seconds}")
        url: str = self.get_client().generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._object_key(key)},
            ExpiresIn=expires_seconds,
        )
        return url


# Bound only now, after the class statement: see "The credentials type" in the module docstring.
if not TYPE_CHECKING:
    _aws = ModuleOnFirstUse("prefect_evolink.blocks._aws")


def __getattr__(name: str) -> Any:
    """`HAS_PREFECT_AWS` and `S3CredentialsBlock` (names this module had), which import
    prefect-aws to find out, only when asked for."""
    if name in {"HAS_PREFECT_AWS", "S3CredentialsBlock"}:
        return getattr(_aws, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
