"""prefect-evolink: Prefect 3 blocks, tasks and flows for EvoLink's asynchronous GPT Image 2 API.

What a user's own flows need is importable from here (`__all__` is the list):

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
- `prefect_evolink.errors`: every error (defined in `evolink.errors`). Exported here are only
  the root `EvoLinkError`, the tier `APIError` (any failure of the EvoLink API itself) and the
  errors a caller of the flows handles by name: `BriefError` (fix the brief),
  `BudgetExceededError` / `SpendCapExceededError` (nothing was sent: raise the budget or cap),
  `CampaignIncompleteError` (read its manifest);
- the Prefect-free client and domain model live in the separate top-level package `evolink`.

The other names this package used to export (the rest of the errors, `safe_key`) still import
from here for one release, with a `DeprecationWarning` naming their module.

Importing this package imports neither Prefect nor any of these names: each is imported from its
module when first used (PEP 562), so `prefect-evolink` can put its Prefect settings into the
environment before Prefect reads them (`prefect_evolink/_cli_settings.py`). Prefect registers
our block types whenever it loads collections (`Block.load`, workers, its server): the
`prefect.collections` entry point names `prefect_evolink.blocks`, and importing that module
registers them (`prefect block register -m prefect_evolink.blocks` registers them with an API by
hand).
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

# Where each public name is defined: `__getattr__` imports it from there on first use.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "evolink.errors": (
        "APIError",
        "BriefError",
        "BudgetExceededError",
        "CampaignIncompleteError",
        "EvoLinkError",
        "SpendCapExceededError",
    ),
    "evolink.models": ("ImageRequest",),
    "prefect_evolink.blocks": (
        "AssetStorage",
        "EvoLinkCredentials",
        "EvoLinkSpendCap",
        "LocalAssetStorage",
        "S3AssetStorage",
        "load_storage",
    ),
    "prefect_evolink.deployments.task_workers": ("arequest_products", "request_products"),
    "prefect_evolink.flows.asset_requested": ("generate_product_asset", "product_image"),
    "prefect_evolink.flows.campaign": ("run_campaign",),
    "prefect_evolink.flows.generate": ("generate_image",),
    "prefect_evolink.flows.spend": ("spend_report",),
    "prefect_evolink.tasks.job": ("run_image_job",),
    "prefect_evolink.tasks.persist": ("persist_image", "persist_images"),
    "prefect_evolink.tasks.poll": ("poll_job",),
    "prefect_evolink.tasks.submit": ("submit_job",),
}
_MODULE_OF: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}
# Exported here before the public API was curated: importable for one more release, with a
# DeprecationWarning naming where they live. Never cached as attributes, so each use warns and
# `dir()` and `__all__` show only the names above.
_DEPRECATED: dict[str, tuple[str, ...]] = {
    "prefect_evolink.errors": (
        "APIConnectionError",
        "APIStatusError",
        "APITimeoutError",
        "AuthenticationError",
        "BadRequestError",
        "HostError",
        "InsufficientCreditsError",
        "InvalidImageError",
        "InvalidRequestError",
        "MissingCredentialsError",
        "NotFoundError",
        "PaidJobNotStoredError",
        "PermissionDeniedError",
        "PollDeadlineExceeded",
        "ProviderLimitsError",
        "RateLimitError",
        "ResultExpiredError",
        "ServerError",
        "SubmitRecordNotStoredError",
        "TaskFailedError",
        "UnsafeResultLinkError",
    ),
    "prefect_evolink.blocks": ("safe_key",),
}
_MOVED_TO: dict[str, str] = {
    name: module for module, names in _DEPRECATED.items() for name in names
}
# The subpackages, as attributes (`prefect_evolink.flows`) as well as modules.
_SUBPACKAGES = frozenset({"blocks", "deployments", "errors", "flows", "tasks"})

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from evolink.errors import (
        APIError,
        BriefError,
        BudgetExceededError,
        CampaignIncompleteError,
        EvoLinkError,
        SpendCapExceededError,
    )
    from evolink.models import ImageRequest
    from prefect_evolink.blocks import (
        AssetStorage,
        EvoLinkCredentials,
        EvoLinkSpendCap,
        LocalAssetStorage,
        S3AssetStorage,
        load_storage,
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

    __version__: str


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it as a module attribute."""
    if name == "__version__":
        from evolink.version import installed_version

        value: Any = installed_version()
    elif name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _MOVED_TO:
        module = _MOVED_TO[name]
        warnings.warn(
            f"importing {name} from {__name__} is deprecated (kept for one release); "
            f"import it from {module}: `from {module} import {name}`",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The curated names, the subpackages and the module's dunders: not the deprecated names,
    nor what this file imports for itself."""
    dunders = {name for name in globals() if name.startswith("__")}
    return sorted({*__all__, *_SUBPACKAGES, *dunders})


__all__ = [
    "APIError",
    "AssetStorage",
    "BriefError",
    "BudgetExceededError",
    "CampaignIncompleteError",
    "EvoLinkCredentials",
    "EvoLinkError",
    "EvoLinkSpendCap",
    "ImageRequest",
    "LocalAssetStorage",
    "S3AssetStorage",
    "SpendCapExceededError",
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
    "spend_report",
    "submit_job",
]
