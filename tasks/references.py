"""Turn a brief's reference images into URLs EvoLink can fetch, before anything is paid.

- `https://…` is sent as it is;
- `s3://bucket/key` and `storage:key` become presigned GET URLs of the configured S3 storage;
- a local file is uploaded to the configured S3 storage first (under the campaign's prefix).
- On local storage, a local file or a `storage:key` object is *pending*
  (`tasks.image_delivery.PendingImage`): its plan holds a placeholder URL, and the one rule of
  `tasks.image_delivery` (an upload to EvoLink's Files API, reused while valid) makes its URL
  only when a job that needs it is really sent — a rerun whose jobs are stored uploads nothing.

Each reference also gets a stable *identity* (the URL, the object, or the file's sha256): presigned
URLs change with every signing, and job keys must not.

Formats are checked here too, before anything is paid; every refusal names the asset and the
field (`asset 'product-shot': reference_images.0: …`, `… mask: …`):

- By extension, for every kind of reference (an https URL's path, an `s3://` or `storage:` key, a
  local file's name), by the rule of `evolink/urls.py` ("Reference formats"): jpeg/jpg/png/webp
  (png for a mask) passes, so does no extension at all (`https://cdn…/p/sku-1234?w=1200&sig=…`);
  an extension naming a format EvoLink does not take (`.gif`, `.svg`, `.bmp`, `.tiff`, `.heic`,
  `.avif`, `.pdf`, …) is refused — a local `.gif` is not even uploaded.
- By content, for the https references of the brief (plain http only with
  `EVOLINK_ALLOW_PRIVATE_URLS`, for local testing), which are sent as they are: a `HEAD` request,
  and when that is refused (405, …) or its Content-Type says nothing (missing,
  `application/octet-stream`, `text/html`), a `GET` of the first 512 bytes (`Range`). A declared
  type or leading bytes of a format EvoLink does not take is refused:
  `asset 'product-shot': reference_images.0: 'https://…/p/sku-1234' is image/gif; EvoLink takes
  JPEG, PNG or WEBP`. A check that cannot be made — refused, timed out (5 s a request, 10 s a
  reference), unreachable, unresolvable, nothing recognisable, or a reserved example host such
  as `example.com` — is logged and the campaign goes on: EvoLink is the fetcher that counts.
  Presigned URLs of our own storage are not fetched: their keys were checked above.
- The content check keeps the private-URL policy of `evolink/urls.py`: every hop (redirects are
  followed by hand, at most 5) must pass the reference URL rules, and without
  `EVOLINK_ALLOW_PRIVATE_URLS` a host that resolves to a private, loopback or link-local address
  is not contacted. It sends no credentials: a client of its own, without the API key, without
  any authorization header.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx
from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from evolink.brief import CampaignBrief
from evolink.client import USER_AGENT
from evolink.errors import BriefError, HostError
from evolink.models import MASK_EXTENSIONS, REFERENCE_EXTENSIONS
from evolink.urls import (
    content_type_format,
    extension_problem,
    formats_of,
    host_problem,
    normalize_host,
    private_urls_allowed,
    reference_url_problem,
    shown_url,
    sniff_format,
    takes,
    url_problem,
)
from prefect_evolink.blocks import AssetStorage, S3AssetStorage, safe_key
from prefect_evolink.tasks.image_delivery import PRESIGN_SECONDS, PendingImage

PROBE_TIMEOUT: Final = httpx.Timeout(5.0)
PROBE_DEADLINE_SECONDS: Final = 10.0
PROBE_BYTES: Final = 512
PROBE_CONCURRENCY: Final = 8
PROBE_MAX_REDIRECTS: Final = 5
# RFC 2606 / 6761 names: placeholders by definition (the example brief uses one), never fetched.
_RESERVED_NAMES: Final = ("example.com", "example.net", "example.org")
_RESERVED_SUFFIXES: Final = (".example", ".invalid", ".test", ".localhost")


@dataclass(frozen=True, slots=True)
class ResolvedReference:
    url: str
    identity: str
    pending: PendingImage | None = None
    """Set when `url` is a placeholder: the image is delivered when its job is sent."""


@dataclass(frozen=True, slots=True)
class AssetReferences:
    """An asset's references, its mask, and the brand kit's style references (the same for
    every asset, sent after the asset's own: `evolink.adaptations`)."""

    images: list[ResolvedReference]
    mask: ResolvedReference | None
    brand: tuple[ResolvedReference, ...] = ()

    @property
    def urls(self) -> list[str]:
        """What a draft or a final sends: the asset's references, then the brand's."""
        return [ref.url for ref in (*self.images, *self.brand)]

    @property
    def brand_urls(self) -> list[str]:
        return [ref.url for ref in self.brand]

    @property
    def pending(self) -> dict[str, PendingImage]:
        """Placeholder URL → the image it stands for (`ImageDelivery.deliver_request`)."""
        refs = [*self.images, *([self.mask] if self.mask else []), *self.brand]
        return {ref.url: ref.pending for ref in refs if ref.pending is not None}

    @property
    def identities(self) -> list[str]:
        """What the job keys are made of (the brand's last: keys without a brand kit are the
        ones they always were)."""
        mask = [self.mask.identity] if self.mask else []
        return [ref.identity for ref in self.images] + mask + self.brand_identities

    @property
    def brand_identities(self) -> list[str]:
        return [ref.identity for ref in self.brand]


def _presign(storage: AssetStorage, key: str, spec: str) -> str:
    url = storage.presigned_url(key, PRESIGN_SECONDS)
    if url is None:
        raise ValueError(
            f"{spec!r} needs S3 storage to be sent to EvoLink as a presigned URL; "
            "use an S3 storage block (`storage` or a brief's storage_block) or an https URL"
        )
    return url


def _is_url(spec: str) -> bool:
    return spec.startswith(("https://", "http://"))


def format_problem(spec: str, extensions: tuple[str, ...]) -> str | None:
    """The extension rule of `evolink/urls.py`, for any kind of reference."""
    if _is_url(spec):
        try:
            path = urlsplit(spec).path
        except ValueError:
            return None  # the URL rules (check_plans) say what is wrong with it
        return extension_problem(path, shown_url(spec), extensions=extensions)
    if spec.startswith("s3://"):
        return extension_problem(spec.partition("/")[2], repr(spec), extensions=extensions)
    return extension_problem(spec.removeprefix("storage:"), repr(spec), extensions=extensions)


def reference_format_problems(brief: CampaignBrief) -> list[str]:
    """The extension rule for every reference of `brief`, without resolving anything (the CLI
    checks a brief with it before any Prefect server starts); each problem names asset and field."""
    problems: list[str] = []
    for index, spec in enumerate(_brand_references(brief)):
        problem = format_problem(spec, REFERENCE_EXTENSIONS)
        if problem:
            problems.append(f"brand: references.{index}: {problem}")
    for asset in brief.assets:
        for index, spec in enumerate(asset.reference_images):
            problem = format_problem(spec, REFERENCE_EXTENSIONS)
            if problem:
                problems.append(f"asset {asset.id!r}: reference_images.{index}: {problem}")
        mask_problem = asset.mask and format_problem(asset.mask, MASK_EXTENSIONS)
        if mask_problem:
            problems.append(f"asset {asset.id!r}: mask: {mask_problem}")
    return problems


def _brand_references(brief: CampaignBrief) -> list[str]:
    return list(brief.defaults.brand.references) if brief.defaults.brand else []


def _resolve_one(
    spec: str, brief: CampaignBrief, base_dir: Path | None, storage: AssetStorage
) -> ResolvedReference:
    if _is_url(spec):
        return ResolvedReference(spec, spec)
    if spec.startswith("storage:"):
        key = spec.removeprefix("storage:")
        if not storage.exists(key):
            raise ValueError(f"{spec!r}: no such object in the configured storage")
        url = storage.presigned_url(key, PRESIGN_SECONDS)
        if url is None:  # local storage: uploaded to the Files API when a job is sent
            data = storage.get_bytes(key) or b""
            image = PendingImage(hashlib.sha256(data).hexdigest(), storage_key=key)
            return ResolvedReference(image.url, spec, image)
        return ResolvedReference(url, spec)
    if spec.startswith("s3://"):
        if not isinstance(storage, S3AssetStorage):
            raise ValueError(
                f"{spec!r} needs an S3 storage block (`storage` or a brief's storage_block)"
            )
        bucket, _, key = spec.removeprefix("s3://").partition("/")
        url = storage.get_client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
        )
        return ResolvedReference(url, spec)
    if base_dir is None:
        raise ValueError(
            f"{spec!r} is a local path, but this brief was read from storage and has no folder "
            "on this machine; use a storage:<key>, s3:// or https:// reference"
        )
    path = (base_dir / spec).resolve()
    if not path.is_file():
        raise ValueError(
            f"{spec!r}: not an https URL, s3:// or storage: object, nor a file at {path}"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not isinstance(storage, S3AssetStorage):  # uploaded to the Files API when a job is sent
        image = PendingImage(digest, path=path)
        return ResolvedReference(image.url, f"sha256:{digest}", image)
    key = safe_key(brief.campaign, "references", f"{digest[:16]}{path.suffix.lower()}")
    if not storage.exists(key):
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        storage.put_file(key, path, content_type=content_type, metadata={"source": path.name})
    return ResolvedReference(_presign(storage, key, spec), f"sha256:{digest}")


def _resolve_checked(
    spec: str,
    extensions: tuple[str, ...],
    brief: CampaignBrief,
    base_dir: Path | None,
    storage: AssetStorage,
) -> ResolvedReference:
    problem = format_problem(spec, extensions)
    if problem:
        raise ValueError(problem)
    return _resolve_one(spec, brief, base_dir, storage)


def _resolve_all(
    brief: CampaignBrief, base_dir: Path | None, storage: AssetStorage
) -> dict[str, AssetReferences]:
    resolved: dict[str, AssetReferences] = {}
    problems: list[str] = []
    brand: list[ResolvedReference] = []
    for index, spec in enumerate(_brand_references(brief)):
        try:
            brand.append(_resolve_checked(spec, REFERENCE_EXTENSIONS, brief, base_dir, storage))
        except ValueError as error:
            problems.append(f"brand: references.{index}: {error}")
    for asset in brief.assets:
        images: list[ResolvedReference] = []
        mask = None
        for index, spec in enumerate(asset.reference_images):
            try:
                images.append(
                    _resolve_checked(spec, REFERENCE_EXTENSIONS, brief, base_dir, storage)
                )
            except ValueError as error:
                problems.append(f"asset {asset.id!r}: reference_images.{index}: {error}")
        if asset.mask is not None:
            try:
                mask = _resolve_checked(asset.mask, MASK_EXTENSIONS, brief, base_dir, storage)
            except ValueError as error:
                problems.append(f"asset {asset.id!r}: mask: {error}")
        resolved[asset.id] = AssetReferences(images, mask, tuple(brand))
    if problems:
        raise BriefError(problems)
    return resolved


# --- the content check ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reading:
    status: int
    content_type: str | None
    head: bytes


@dataclass(frozen=True, slots=True)
class _Verdict:
    """`problem`: why EvoLink cannot use the reference; `unchecked`: why no verdict was reached
    (logged, and the run goes on). Both None: it serves a format EvoLink takes."""

    problem: str | None = None
    unchecked: str | None = None


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


async def _guard(url: str, allow_private: bool) -> str | None:
    """Why we may not connect to `url` under the private-URL policy, None when we may."""
    problem = url_problem(url, allow_private=allow_private, http_for_testing=True)
    if problem:
        return f"not fetched: it {problem}"
    parts = urlsplit(url)
    host = normalize_host(parts.hostname or "")
    if host in _RESERVED_NAMES or host.endswith(_RESERVED_SUFFIXES + _dotted(_RESERVED_NAMES)):
        return f"{host} is a reserved example host (RFC 2606), a placeholder"
    if allow_private:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        return f"{host} does not resolve ({error.strerror or error})"
    for *_, sockaddr in infos:
        try:
            problem = host_problem(str(sockaddr[0]))
        except HostError as error:
            problem = f"{sockaddr[0]!r} {error}"
        if problem:
            return f"{host} resolves to an address we do not contact: {problem}"
    return None


def _dotted(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f".{name}" for name in names)


async def _read(client: httpx.AsyncClient, method: str, url: str) -> _Reading | str:
    """One HEAD, or a GET of the first `PROBE_BYTES`, following redirects by hand (each hop is
    guarded first); a string says why it could not be made. No more of a body is read."""
    allow_private = private_urls_allowed()
    headers = {"Range": f"bytes=0-{PROBE_BYTES - 1}"} if method == "GET" else {}
    current = url
    for _ in range(PROBE_MAX_REDIRECTS + 1):
        refused = await _guard(current, allow_private)
        if refused:
            return refused
        async with client.stream(method, current, headers=headers) as response:
            if response.has_redirect_location:
                current = str(response.url.join(response.headers["location"]))
                continue
            head = b""
            if method == "GET" and response.status_code in (200, 206):
                async for chunk in response.aiter_bytes():
                    head += chunk
                    if len(head) >= PROBE_BYTES:
                        break
            return _Reading(response.status_code, response.headers.get("content-type"), head)
    return f"more than {PROBE_MAX_REDIRECTS} redirects"


def _declared(reading: _Reading, shown: str, accepted: tuple[str, ...]) -> _Verdict:
    found = content_type_format(reading.content_type)
    if found is None or found in accepted:
        return _Verdict()
    media = (reading.content_type or "").split(";", 1)[0].strip().lower()
    return _Verdict(problem=f"{shown} is {media}; {takes(accepted)}")


async def _content_verdict(
    client: httpx.AsyncClient, url: str, extensions: tuple[str, ...]
) -> _Verdict:
    """HEAD first; its Content-Type decides when it names a format. Otherwise (refused, 405,
    octet-stream, text/html, none) the first bytes, by a ranged GET."""
    accepted, shown = formats_of(extensions), shown_url(url)
    answer = await _read(client, "HEAD", url)
    if isinstance(answer, str):
        return _Verdict(unchecked=answer)
    if 200 <= answer.status < 300 and content_type_format(answer.content_type) is not None:
        return _declared(answer, shown, accepted)
    got = await _read(client, "GET", url)
    if isinstance(got, str):
        return _Verdict(unchecked=got)
    if got.status not in (200, 206):
        return _Verdict(unchecked=f"HTTP {answer.status} to HEAD and {got.status} to GET")
    if content_type_format(got.content_type) is not None:
        return _declared(got, shown, accepted)
    sniffed = sniff_format(got.head)
    if sniffed is None:
        media = got.content_type or "no Content-Type"
        return _Verdict(unchecked=f"neither its Content-Type ({media}) nor its first bytes tell")
    if sniffed in accepted:
        return _Verdict()
    return _Verdict(problem=f"{shown} is a {sniffed} file (by its first bytes); {takes(accepted)}")


async def _check_one(
    client: httpx.AsyncClient,
    slots: asyncio.Semaphore,
    url: str,
    extensions: tuple[str, ...],
) -> str | None:
    """The problem with what `url` serves, or None — also when no verdict could be reached
    (then the reason is logged: a check that cannot be made must not stop the run)."""
    async with slots:
        try:
            verdict = await asyncio.wait_for(
                _content_verdict(client, url, extensions), PROBE_DEADLINE_SECONDS
            )
        except TimeoutError:
            verdict = _Verdict(unchecked=f"no answer within {PROBE_DEADLINE_SECONDS:.0f}s")
        except Exception as error:  # noqa: BLE001 — a check that fails must not stop the run
            verdict = _Verdict(unchecked=type(error).__name__)  # its text may quote the URL
    if verdict.unchecked is not None:
        reserved = "reserved example host" in verdict.unchecked
        _logger().log(
            logging.INFO if reserved else logging.WARNING,
            "Reference %s not checked (%s); EvoLink will fetch it as it is",
            shown_url(url),
            verdict.unchecked,
        )
    return verdict.problem


async def check_reference_content(brief: CampaignBrief) -> None:
    """The content check of the module docstring for every https (or test http) reference of
    `brief`; raises `BriefError` naming each refused reference's asset and field."""
    wanted: list[tuple[str, str, tuple[str, ...]]] = [  # (where, url, extensions)
        (f"brand: references.{index}", spec, REFERENCE_EXTENSIONS)
        for index, spec in enumerate(_brand_references(brief))
    ]
    for asset in brief.assets:
        for index, spec in enumerate(asset.reference_images):
            wanted.append(
                (f"asset {asset.id!r}: reference_images.{index}", spec, REFERENCE_EXTENSIONS)
            )
        if asset.mask is not None:
            wanted.append((f"asset {asset.id!r}: mask", asset.mask, MASK_EXTENSIONS))
    # A URL that breaks the URL rules is not fetched at all: planning refuses it, by name.
    wanted = [
        item
        for item in wanted
        if _is_url(item[1]) and reference_url_problem(item[1], extensions=item[2]) is None
    ]
    if not wanted:
        return
    slots = asyncio.Semaphore(PROBE_CONCURRENCY)
    async with httpx.AsyncClient(
        timeout=PROBE_TIMEOUT, follow_redirects=False, headers={"User-Agent": USER_AGENT}
    ) as client:
        checks: dict[tuple[str, tuple[str, ...]], asyncio.Task[str | None]] = {}
        for _, url, extensions in wanted:
            if (url, extensions) not in checks:
                checks[url, extensions] = asyncio.ensure_future(
                    _check_one(client, slots, url, extensions)
                )
        await asyncio.gather(*checks.values())
    problems = [
        f"{where}: {problem}"
        for where, url, extensions in wanted
        if (problem := checks[url, extensions].result())
    ]
    if problems:
        raise BriefError(problems)


async def resolve_references(
    brief: CampaignBrief, base_dir: Path | None, storage: AssetStorage
) -> dict[str, AssetReferences]:
    """Every asset's references as fetchable URLs, their formats checked (module docstring);
    raises BriefError naming asset and field."""
    resolved = await asyncio.to_thread(_resolve_all, brief, base_dir, storage)
    await check_reference_content(brief)
    return resolved
