"""`EvoLinkCredentials`: the API key as a secret, plus where and how patiently to call."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar, Final

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, field_validator

from evolink.endpoint import (
    DEFAULT_BASE_URL,
    DEFAULT_FILES_BASE_URL,
    endpoint_scope,
    normalize_base_url,
)
from evolink.errors import MissingCredentialsError
from evolink.models import MAX_CALLBACK_URL_CHARS
from evolink.polling import DEFAULT_MAX_INTERVAL, DEFAULT_MIN_INTERVAL, PollSchedule
from evolink.retry import DEFAULT_MAX_ATTEMPTS, RetryPolicy
from evolink.urls import api_base_url_problem, callback_url_problem
from prefect_evolink.blocks._meta import logo_url, reference_url

if TYPE_CHECKING:  # imported where used: Prefect imports this module whenever it loads collections
    from evolink.client import EvoLinkClient, Timeouts
    from evolink.files import EvoLinkFilesClient

ENV_API_KEY: Final = "EVOLINK_API_KEY"
ENV_BASE_URL: Final = "EVOLINK_BASE_URL"
ENV_POLL_MIN_INTERVAL: Final = "EVOLINK_POLL_MIN_INTERVAL"
ENV_POLL_MAX_INTERVAL: Final = "EVOLINK_POLL_MAX_INTERVAL"
ENV_CALLBACK_URL: Final = "EVOLINK_CALLBACK_URL"
ENV_FILES_BASE_URL: Final = "EVOLINK_FILES_BASE_URL"


class EvoLinkCredentials(CredentialsBlock):
    """Credentials and connection settings for EvoLink's GPT Image 2 API.

    The API key is stored encrypted by Prefect and shown masked in the UI, in repr() and in
    logs. `get_client()` returns the async `EvoLinkClient` (Prefect's `CredentialsBlock`
    contract).

    Attributes:
        api_key: EvoLink API key, sent as a Bearer token to the API host only.
        base_url: API base URL; change it only for a proxy or the local simulator.
        connect_timeout: Seconds to open a connection.
        read_timeout: Seconds to wait for an API response.
        download_timeout: Seconds of silence allowed while downloading a result.
        max_attempts: Tries per repeatable call.
        poll_min_interval: Fewest seconds between two status queries of one task.
        poll_max_interval: Most seconds between two status queries of one task.
        callback_url: Public HTTPS URL of the callback receiver (`prefect-evolink callbacks`),
            sent with every request that names none; not part of any job's identity.
        files_base_url: Files API base URL (uploads used as references); EvoLink serves it on
            its own host. Same rules as any URL the key is sent to: https, and a private or
            loopback host (then also http) only with EVOLINK_ALLOW_PRIVATE_URLS=true.

    Example:
        Load a saved block in a flow:
        ```python
        from prefect_evolink.blocks import EvoLinkCredentials

        credentials = EvoLinkCredentials.load("BLOCK_NAME")
        ```

        Save one (or create it in the Prefect UI), then call the API from async code:
        ```python
        from prefect_evolink.blocks import EvoLinkCredentials

        EvoLinkCredentials(api_key="sk-...").save("evolink-prod")

        credentials = await EvoLinkCredentials.aload("evolink-prod")
        async with credentials.get_client() as client:
            task = await client.get_task("task-unified-...")
        ```
    """

    _block_type_name: ClassVar[str] = "EvoLink Credentials"
    _block_type_slug: ClassVar[str] = "evolink-credentials"
    _description: ClassVar[str] = (
        "API key (secret) and connection settings for EvoLink's asynchronous GPT Image 2 API."
    )
    _logo_url = logo_url("evolink-credentials")  # type: ignore[assignment]
    _documentation_url = reference_url(  # type: ignore[assignment]
        "prefect_evolink.blocks.credentials.EvoLinkCredentials"
    )

    @classmethod
    def __dispatch_key__(cls) -> str | None:
        """The slug, without building the schema (see `AssetStorage.__dispatch_key__`)."""
        return cls.get_block_type_slug()

    api_key: SecretStr = Field(
        description="EvoLink API key, sent as a Bearer token to the API host only.",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="API base URL; change it only for a proxy or the local simulator.",
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to wait for an API response (jobs are async)."
    )
    download_timeout: float = Field(
        default=120.0, gt=0, description="Seconds of silence allowed while downloading a result."
    )
    max_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=10,
        description="Tries per repeatable call (GETs, and creates carrying an Idempotency-Key).",
    )

    poll_min_interval: float = Field(
        default=DEFAULT_MIN_INTERVAL,
        gt=0,
        description="Fewest seconds between two status queries of one task.",
    )
    poll_max_interval: float = Field(
        default=DEFAULT_MAX_INTERVAL,
        gt=0,
        description="Most seconds between two status queries of one task.",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=MAX_CALLBACK_URL_CHARS,
        description=(
            "Public HTTPS URL of the callback receiver (prefect-evolink callbacks), e.g. "
            "https://hooks.example.com/evolink/callback. EvoLink POSTs each finished task there; "
            "the receiver confirms it with the API and emits a Prefect event. Sent with every "
            "request that names none; changing it never makes a job new (or paid again)."
        ),
    )

    files_base_url: str = Field(
        default=DEFAULT_FILES_BASE_URL,
        description=(
            "Files API base URL (uploads of local images to use as references; a different "
            "host from the task API). Change it only for a proxy or the local simulator."
        ),
    )

    @field_validator("files_base_url")
    @classmethod
    def _files_base_url_rule(cls, url: str) -> str:
        """The API key is sent there: https, no private/loopback host unless testing
        (`evolink.urls.api_base_url_problem`)."""
        url = url.strip()
        problem = api_base_url_problem(url)
        if problem:
            raise ValueError(f"files_base_url {problem}")
        return url

    @field_validator("callback_url")
    @classmethod
    def _callback_rule(cls, url: str | None) -> str | None:
        """The request's rule (evolink/urls.py): HTTPS always; private hosts only for testing."""
        url = (url or "").strip() or None
        problem = url and callback_url_problem(url)
        if problem:
            raise ValueError(problem)
        return url

    @classmethod
    def from_env(cls) -> EvoLinkCredentials | None:
        """`EVOLINK_API_KEY` / `EVOLINK_BASE_URL` (poll pacing, `EVOLINK_CALLBACK_URL`), or None
        when no key is set."""
        key = os.environ.get(ENV_API_KEY, "").strip()
        if not key:
            return None
        return cls(
            api_key=SecretStr(key),
            base_url=os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL,
            poll_min_interval=float(os.environ.get(ENV_POLL_MIN_INTERVAL) or DEFAULT_MIN_INTERVAL),
            poll_max_interval=float(os.environ.get(ENV_POLL_MAX_INTERVAL) or DEFAULT_MAX_INTERVAL),
            callback_url=os.environ.get(ENV_CALLBACK_URL) or None,
            files_base_url=os.environ.get(ENV_FILES_BASE_URL) or DEFAULT_FILES_BASE_URL,
        )

    @property
    def endpoint(self) -> str:
        """The normalized base URL: where records made with these credentials belong."""
        return normalize_base_url(self.base_url)

    @property
    def endpoint_scope(self) -> str:
        """What job keys add for this endpoint ("" for EvoLink's own API): `evolink.endpoint`."""
        return endpoint_scope(self.base_url)

    def poll_schedule(self, deadline_seconds: float) -> PollSchedule:
        return PollSchedule(
            min_interval=self.poll_min_interval,
            max_interval=max(self.poll_min_interval, self.poll_max_interval),
            deadline_seconds=deadline_seconds,
        )

    def timeouts(self) -> Timeouts:
        from evolink.client import Timeouts

        return Timeouts(
            connect=self.connect_timeout,
            read=self.read_timeout,
            download_read=self.download_timeout,
        )

    def get_client(self, *, retry: RetryPolicy | None = None) -> EvoLinkClient:
        """A new async client; use it with `async with` so its connections are closed."""
        from evolink.client import EvoLinkClient

        return EvoLinkClient(
            self.api_key,
            base_url=self.base_url,
            timeouts=self.timeouts(),
            retry=retry or RetryPolicy(max_attempts=self.max_attempts),
        )

    def get_files_client(self, *, retry: RetryPolicy | None = None) -> EvoLinkFilesClient:
        """A new async Files API client (uploads, list, delete, quota) for `files_base_url`;
        use it with `async with`."""
        from evolink.files import EvoLinkFilesClient

        return EvoLinkFilesClient(
            self.api_key,
            base_url=self.files_base_url,
            timeouts=self.timeouts(),
            retry=retry or RetryPolicy(max_attempts=self.max_attempts),
        )


async def resolve_credentials(block_name: str | None) -> EvoLinkCredentials:
    """The named block, else the environment; a clear error when neither exists."""
    if block_name:
        try:
            loaded = await EvoLinkCredentials.aload(block_name)
        except ValueError as error:  # Prefect: "Unable to find block document named …"
            raise MissingCredentialsError(
                f"no EvoLink credentials: no EvoLinkCredentials block named {block_name!r} "
                f"could be loaded ({error}); save one first "
                f"(EvoLinkCredentials(api_key=...).save({block_name!r})) or set {ENV_API_KEY}"
            ) from error
        if not isinstance(loaded, EvoLinkCredentials):
            raise TypeError(f"block {block_name!r} is not an EvoLinkCredentials block")
        return loaded
    from_env = EvoLinkCredentials.from_env()
    if from_env is None:
        raise MissingCredentialsError(
            f"no EvoLink credentials: name an EvoLinkCredentials block or set {ENV_API_KEY} "
            "(or run `python3 dev.py demo`, which uses the local simulator)"
        )
    return from_env
