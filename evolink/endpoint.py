"""Which EvoLink API a job was made against: the one rule that scopes records and reuse.

A job's records (`evolink.jobs`) say "this job is done, here is its image and its bill". That is
only true of the API the job was sent to: a task of the bundled simulator is a synthetic test
pattern that nobody paid for, and a task id of one server means nothing to another. So:

- a job's key covers the endpoint (`endpoint_scope`): the same request sent to another base URL
  is another job, with its own records, its own Idempotency-Key and its own bill;
- EvoLink's own API (`DEFAULT_BASE_URL`) has the empty scope, so keys of jobs made against it are
  what they were before endpoints were scoped: no real job is ever paid again for this rule;
- records say where they were made (`SubmitRecord.endpoint`, `.simulator`, copied into the job
  record), so a record is reused only against its own endpoint (`reusable_here`), and spend
  reports keep simulator bills apart from real ones.

The scope is the normalized base URL, never the API key or anything derived from it: the key is
a secret, and switching keys on one account must not make finished jobs new.

Records written before endpoints were recorded carry no `endpoint`; one whose images came from a
loopback or private host was made against a local server (in practice, the simulator) and is
never taken for a job of a public API (`record_endpoint`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

DEFAULT_BASE_URL: Final = "https://api.evolink.ai"
"""EvoLink's own API; `evolink.client` re-exports it."""

DEFAULT_FILES_BASE_URL: Final = "https://files-api.evolink.ai"
"""EvoLink's Files API (uploads to use as `image_urls`): a different host from the task API;
`evolink.files` re-exports it."""

SIMULATOR_HEADER: Final = "x-evolink-simulator"
"""Response header the bundled simulator sends on every reply: records made against it are
marked `simulator`, and the CLI announces it as the simulator, not as the real API."""

LEGACY_LOCAL: Final = "local (before endpoints were recorded)"
"""What `record_endpoint` says of an old record whose images came from a local server."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def normalize_base_url(base_url: str) -> str:
    """`scheme://host[:port][/path]`, lower-case scheme and host, no default port, no trailing
    slash, no query: how two spellings of one endpoint compare equal."""
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a number: keep what was written, it cannot match anything else
        port = None
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


DEFAULT_ENDPOINT: Final = normalize_base_url(DEFAULT_BASE_URL)


def endpoint_scope(base_url: str) -> str:
    """What a job key adds for this endpoint: "" for EvoLink's own API (keys unchanged), else
    the normalized base URL."""
    normalized = normalize_base_url(base_url)
    return "" if normalized == DEFAULT_ENDPOINT else normalized


def _local_host(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def record_endpoint(record: Mapping[str, Any]) -> str:
    """The normalized endpoint a stored submit or job record was made against.

    Records carry it (`endpoint`). An older record does not: it was made against EvoLink's own
    API unless one of its images came from a loopback or private host, which only a local
    server (the simulator) hands out — then `LEGACY_LOCAL`, which matches no endpoint.
    """
    endpoint = record.get("endpoint")
    if isinstance(endpoint, str) and endpoint:
        return normalize_base_url(endpoint)
    images = record.get("images")
    for image in images if isinstance(images, list) else []:
        source = image.get("source_url") if isinstance(image, Mapping) else None
        if isinstance(source, str) and _local_host(source):
            return LEGACY_LOCAL
    return DEFAULT_ENDPOINT


def reusable_here(record: Mapping[str, Any], base_url: str) -> bool:
    """Whether a stored record may stand for a job sent to `base_url`: only its own endpoint's."""
    return record_endpoint(record) == normalize_base_url(base_url)


def made_on_simulator(record: Mapping[str, Any]) -> bool:
    """A record of the bundled simulator: marked by it, or (older records) by local images."""
    if record.get("simulator") is True:
        return True
    return "endpoint" not in record and record_endpoint(record) == LEGACY_LOCAL
