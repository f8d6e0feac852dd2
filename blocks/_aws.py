"""The prefect-aws credentials blocks `S3AssetStorage.credentials` accepts.

Importing this module imports prefect-aws when it is installed (the optional extra
`prefect-evolink[aws]`), and with it boto3, botocore, aiobotocore and aiohttp: some 400 modules
and a second and a half. `blocks/s3.py` therefore never imports it when it is itself imported
(which Prefect does whenever it loads collections); it names `S3CredentialsBlock` through a
lazy reference that imports this module the first time the `credentials` field's type is needed
(see "The credentials type" in `blocks/s3.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

try:
    from prefect_aws.credentials import AwsCredentials, MinIOCredentials
except ImportError:  # the optional [aws] extra is not installed
    HAS_PREFECT_AWS = False
else:
    HAS_PREFECT_AWS = True

if TYPE_CHECKING:
    S3CredentialsBlock: TypeAlias = AwsCredentials | MinIOCredentials
elif HAS_PREFECT_AWS:
    S3CredentialsBlock = AwsCredentials | MinIOCredentials
else:  # the field accepts only None then (see `S3AssetStorage._credentials_block`)
    S3CredentialsBlock = Any

__all__ = ["HAS_PREFECT_AWS", "S3CredentialsBlock", "credentials_block_types"]


def credentials_block_types() -> tuple[type[AwsCredentials], type[MinIOCredentials]] | None:
    """The two block classes, or None without prefect-aws."""
    return (AwsCredentials, MinIOCredentials) if HAS_PREFECT_AWS else None
