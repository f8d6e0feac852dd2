"""prefect-evolink: Prefect 3 blocks, tasks and flows for EvoLink's asynchronous GPT Image 2 API.

Everything a user's own flows need is importable from here:

    from prefect_evolink import EvoLinkCredentials, S3AssetStorage, generate_image, run_campaign

The package is laid out like other Prefect collections:

- `prefect_evolink.blocks`: `EvoLinkCredentials` and the asset storage blocks (local disk, S3);
- `prefect_evolink.tasks`: the three steps of every job (`submit_job`, `poll_job`,
  `persist_images`; `persist_image` stores one image), the provider limits and the artifacts
  they publish;
- `prefect_evolink.flows`: `generate_image` (ad hoc), `generate_product_asset` (event-triggered)
  and its background-task twin `product_image` (catalogue scale), `run_campaign` (drafts →
  selection → finals), `spend_report` (spend across runs);
- `prefect_evolink.deployments`: the work pool, limits and deployments of `prefect.yaml`, and the
  task workers of `prefect-evolink serve-products` (`request_products` schedules products);
- the Prefect-free client and domain model live in the separate top-level package `evolink`,
  and every error either raises is in `evolink.errors` (re-exported here).

Importing this package registers its block types with Prefect; the `prefect.collections` entry
point lets Prefect do that on its own (`prefect block register -m prefect_evolink` does it by
hand).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from evolink.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BriefError,
    BudgetExceededError,
    CampaignIncompleteError,
    EvoLinkError,
    HostError,
    InsufficientCreditsError,
    InvalidImageError,
    InvalidRequestError,
    MissingCredentialsError,
    NotFoundError,
    PaidJobNotStoredError,
    PermissionDeniedError,
    PollDeadlineExceeded,
    ProviderLimitsError,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    SpendCapExceededError,
    SubmitRecordNotStoredError,
    TaskFailedError,
    UnsafeResultLinkError,
)
from evolink.models import ImageRequest
from prefect_evolink.blocks import (
    AssetStorage,
    EvoLinkCredentials,
    EvoLinkSpendCap,
    LocalAssetStorage,
    S3AssetStorage,
    load_storage,
    safe_key,
)
from prefect_evolink.deployments.task_workers import arequest_products, request_products
from prefect_evolink.flows.asset_requested import generate_product_asset, product_image
from prefect_evolink.flows.campaign import run_campaign
from prefect_evolink.flows.generate import generate_image
from prefect_evolink.flows.spend import spend_report
from prefect_evolink.tasks.job import run_image_job
from prefect_evolink.tasks.persist import persist_image, persist_images
from prefect_evolink.tasks.poll import poll_job
from prefect_evolink.tasks.submit import submit_job

try:
    __version__ = version("prefect-evolink")
except PackageNotFoundError:  # pragma: no cover - only when run from a tree never installed
    __version__ = "0+unknown"

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AssetStorage",
    "AuthenticationError",
    "BadRequestError",
    "BriefError",
    "BudgetExceededError",
    "CampaignIncompleteError",
    "EvoLinkCredentials",
    "EvoLinkError",
    "EvoLinkSpendCap",
    "HostError",
    "ImageRequest",
    "InsufficientCreditsError",
    "InvalidImageError",
    "InvalidRequestError",
    "LocalAssetStorage",
    "MissingCredentialsError",
    "NotFoundError",
    "PaidJobNotStoredError",
    "PermissionDeniedError",
    "PollDeadlineExceeded",
    "ProviderLimitsError",
    "RateLimitError",
    "ResultExpiredError",
    "S3AssetStorage",
    "ServerError",
    "SpendCapExceededError",
    "SubmitRecordNotStoredError",
    "TaskFailedError",
    "UnsafeResultLinkError",
    "__version__",
    "arequest_products",
    "generate_image",
    "generate_product_asset",
    "load_storage",
    "persist_image",
    "persist_images",
    "poll_job",
    "product_image",
    "request_products",
    "run_campaign",
    "run_image_job",
    "safe_key",
    "spend_report",
    "submit_job",
]
