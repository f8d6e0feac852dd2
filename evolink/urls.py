"""Which URLs we hand to EvoLink, and which result links we fetch: public HTTPS hosts only.

EvoLink fetches `image_urls` / `mask_url` and POSTs to `callback_url` from its own network, and we
fetch result links (and their redirects) from ours. A URL naming a loopback, private, link-local
(169.254.169.254 is the cloud metadata service), unique-local, unspecified, multicast or reserved
address, or a host name that only exists inside a network (`localhost`, `*.local`, `*.internal`),
turns either fetcher into a probe of somebody's internal network (SSRF). So such URLs are refused,
as is plain http (it can be read and rewritten on the way) and any user:password in the URL (a
credential that would be logged and forwarded).

The local simulator serves its links on http://127.0.0.1, so one explicit switch,
`EVOLINK_ALLOW_PRIVATE_URLS=true` (also `1`/`yes`), allows private hosts and — for references and
downloads — http. It is read on every check, not at import, so a test or the demo can flip it.
`callback_url` stays https-only even then: the API documents it as HTTPS only.

No DNS resolution happens here, on purpose: validation must be pure, fast and deterministic (it
runs inside pydantic validators and before any money is spent), and a name that resolves to a
public address now may resolve elsewhere when EvoLink fetches it (DNS rebinding) — only the
fetcher, i.e. EvoLink, can enforce that at connect time. What we can check without the network
we check thoroughly: every literal address form an OS resolver accepts (`2130706433`, `0x7f.1`,
`0177.0.0.1`, `127.1`, `[::ffff:127.0.0.1]`, 6to4/NAT64-embedded IPv4, full-width digits) and
the well-known internal name suffixes.

Reference formats (`image_urls`, `mask_url`). EvoLink takes JPEG, PNG and WEBP references
(extensions jpeg/jpg/png/webp; a mask must be PNG). A URL is judged by the extension of its path
(percent-decoded, case-insensitive, the query ignored):
- an accepted extension passes (`.png` … for references, only `.png` for a mask);
- an extension naming another image, document or video format (`IMAGE_FORMATS`: `.gif`,
  `.svg`, `.bmp`, `.tif(f)`, `.heic`, `.heif`, `.avif`, `.pdf`, `.ico`, `.jxl`, `.psd`,
  `.mp4`, … — and `.jpg`/`.webp` for a mask) is refused, naming the format;
- a path without an extension, or with one that names no format (`/p/sku-1234?w=1200&sig=…`,
  `/image.php?id=3`, `/v2/photo.1200`), passes: CDNs and image services often serve
  references from such URLs, and only what they serve can tell. `content_type_format` and
  `sniff_format` read that (the media type a server declares, a file's first bytes);
  `tasks/references.py` uses them to check a campaign's references before anything is paid.

No Prefect imports: this is part of the API layer.
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Final
from urllib.parse import SplitResult, unquote, urlsplit

from evolink.errors import HostError

ENV_ALLOW_PRIVATE_URLS: Final = "EVOLINK_ALLOW_PRIVATE_URLS"
ALLOW_HINT: Final = f"set {ENV_ALLOW_PRIVATE_URLS}=true only for local testing"
PRIVATE_RULE: Final = "must not point to a private, loopback or link-local address"
INTERNAL_NAME_RULE: Final = "must not point to a local or internal host name"

_TRUE_VALUES: Final = frozenset({"true", "1", "yes"})
# Names that never reach the public internet. `home.arpa` is RFC 8375's home-network zone.
_INTERNAL_NAMES: Final = ("localhost",)
_INTERNAL_SUFFIXES: Final = (".localhost", ".local", ".internal", ".home.arpa")
# The NAT64 well-known prefix (RFC 6052): 64:ff9b::a.b.c.d reaches a.b.c.d.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
# IPv4-compatible IPv6 (deprecated, ::a.b.c.d); '::' and '::1' are not read as IPv4.
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_UNIQUE_LOCAL: Final = ipaddress.IPv6Network("fc00::/7")
_DECIMAL: Final = re.compile(r"[0-9]+")
_HEX: Final = re.compile(r"0[xX][0-9a-fA-F]*")
_OCTAL: Final = re.compile(r"0[0-7]+")
_SHOWN_CHARS: Final = 80

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# File extensions that name a format, by the format's name: EvoLink's (JPEG, PNG, WEBP) and the
# ones people are likely to have lying around that it does not take.
IMAGE_FORMATS: Final[dict[str, str]] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".gif": "GIF",
    ".apng": "APNG",
    ".svg": "SVG",
    ".svgz": "SVG",
    ".bmp": "BMP",
    ".dib": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".jxl": "JPEG XL",
    ".jp2": "JPEG 2000",
    ".j2k": "JPEG 2000",
    ".ico": "ICO",
    ".psd": "PSD",
    ".eps": "EPS",
    ".pdf": "PDF",
    ".tga": "TGA",
    ".exr": "EXR",
    ".dng": "DNG (raw)",
    ".cr2": "CR2 (raw)",
    ".nef": "NEF (raw)",
    ".arw": "ARW (raw)",
    ".mp4": "MP4 video",
    ".mov": "QuickTime video",
    ".webm": "WEBM video",
}
# Declared media types (Content-Type) by format; any other image/*, video/* or audio/* type is
# a format EvoLink does not take either. Anything else (octet-stream, text/html, none) says
# nothing: misconfigured servers send images under all of them.
_MEDIA_TYPE_FORMATS: Final[dict[str, str]] = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "image/x-png": "PNG",
    "image/webp": "WEBP",
}
_MEDIA_FAMILIES: Final = ("image/", "video/", "audio/")
_DOCUMENT_TYPES: Final = frozenset({"application/pdf", "application/postscript"})


def private_urls_allowed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `EVOLINK_ALLOW_PRIVATE_URLS` is on (true/1/yes), read now, not at import time."""
    value = (os.environ if environ is None else environ).get(ENV_ALLOW_PRIVATE_URLS, "")
    return value.strip().lower() in _TRUE_VALUES


def normalize_host(host: str) -> str:
    """The host as a resolver or browser sees it: NFKC (full-width `１２７．０．０．１` is
    127.0.0.1 to IDNA), ideographic full stops as dots, lower case, no trailing dots
    (`localhost.` is `localhost`)."""
    host = unicodedata.normalize("NFKC", host).replace("\u3002", ".").lower()
    return host.rstrip(".")


def _ipv4_number(part: str) -> int:
    """One dotted part as inet_aton and WHATWG URLs read it: 0x hex, leading-0 octal, decimal."""
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    if _DECIMAL.fullmatch(part):
        return int(part, 10)
    raise HostError(f"{part!r} is not a number")


def _ends_in_number(host: str) -> bool:
    last = host.rsplit(".", 1)[-1]
    return bool(_DECIMAL.fullmatch(last) or _HEX.fullmatch(last))


def parse_ipv4(host: str) -> ipaddress.IPv4Address:
    """`127.0.0.1`, `127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1` … -> IPv4Address.

    Every one of these forms connects to the same address through getaddrinfo/inet_aton, so
    checking only the dotted-quad spelling would let `http://2130706433/` through.
    """
    parts = host.split(".")
    if len(parts) > 4:
        raise HostError("has more than four parts")
    try:
        numbers = [_ipv4_number(part) for part in parts]
    except HostError as error:
        raise HostError(f"is not a valid IPv4 address ({error})") from None
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise HostError("is not a valid IPv4 address (a part is out of range)")
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def literal_address(host: str) -> IPAddress | None:
    """The IP address a normalised host literally is, None for a name; HostError if malformed."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)  # accepts a %zone suffix
        except ValueError:
            raise HostError("is not a valid IPv6 address") from None
    if _ends_in_number(host):
        return parse_ipv4(host)
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one forwards to (mapped, 6to4, NAT64, compatible), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _address_kind(address: IPAddress) -> str | None:
    """Why an address is not public ('loopback', 'link-local', ...), or None when it is."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL:
        return "unique-local"
    if address.is_reserved:  # before is_private, which also covers 240.0.0.0/4
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:  # e.g. 100.64.0.0/10, the carrier-grade NAT range
        return "not publicly routable"
    return None


def host_problem(host: str) -> str | None:
    """Why `host` (a URL's host, brackets removed) is not a public host, or None when it is.

    The answer names the rule and the address, e.g. `"must not point to a private, loopback or
    link-local address (2130706433 = 127.0.0.1 is loopback)"`. Raises `HostError` for a host
    that is no valid address at all. Host names other than the internal suffixes pass: see the
    module docstring for why names are not resolved.
    """
    normal = normalize_host(host)
    if not normal:
        raise HostError("is empty")
    if "%" in normal and ":" not in normal:
        # WHATWG parsers decode `%31%32%37.0.0.1` to 127.0.0.1; no public host needs it.
        raise HostError("is percent-encoded")
    if any(ch.isspace() or not ch.isprintable() for ch in normal):
        raise HostError("contains spaces or control characters")
    if normal in _INTERNAL_NAMES or normal.endswith(_INTERNAL_SUFFIXES):
        return f"{INTERNAL_NAME_RULE} ({normal})"
    address = literal_address(normal)
    if address is None:
        return None
    shown = host if str(address) == host else f"{host} = {address}"
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ipaddress.IPv6Address(int(address)))  # without a %zone
        if embedded is not None:
            candidates.insert(0, embedded)  # the embedded address is the more telling one
            shown = f"{host} -> {embedded}"
    for candidate in candidates:
        kind = _address_kind(candidate)
        if kind is not None:
            return f"{PRIVATE_RULE} ({shown} is {kind})"
    return None


def shown_url(url: str) -> str:
    """A URL fit for an error message: no user:password, no query (signatures), at most 80 chars."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        text = SplitResult(parts.scheme, netloc, parts.path, "", "").geturl()
    except ValueError:
        text = url.split("?", 1)[0].split("@", 1)[-1]
    return repr(text[:_SHOWN_CHARS])


def _split(url: str) -> SplitResult | str:
    """Parse `url`, or say which basic rule it breaks."""
    if not isinstance(url, str) or not url:
        return "must be a non-empty URL"
    if any(ch.isspace() or ord(ch) < 0x20 or ch in "\x7f\\" for ch in url):
        # Parsers disagree about these (WHATWG reads '\' as '/', Python strips tabs/newlines),
        # and a disagreement between our check and EvoLink's fetcher is exactly how SSRF
        # filters are bypassed.
        return "must not contain whitespace, control characters or backslashes"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError as error:
        return f"is not a valid URL ({error})"
    return parts


def _authority_problem(parts: SplitResult, *, allow_private: bool) -> str | None:
    """User info and host rules, shared by request URLs and download links."""
    if "@" in parts.netloc:
        return "must not contain a user name or password before the host (user:password@host)"
    if not parts.hostname:
        return "must name a host"
    try:
        problem = host_problem(parts.hostname)
    except HostError as error:
        return f"has an invalid host ({parts.hostname!r} {error})"
    if problem and not allow_private:
        return f"{problem}; {ALLOW_HINT}"
    return None


def url_problem(
    url: str,
    *,
    allow_private: bool,
    http_for_testing: bool,
    extensions: tuple[str, ...] = (),
) -> str | None:
    """The first rule `url` breaks, in words, or None when EvoLink may be handed it.

    - https only; plain http too when `http_for_testing` and `allow_private` are both on
      (references served by the simulator); `callback_url` passes `http_for_testing=False`;
    - no whitespace, control characters or backslashes; no user:password;
    - the host is not private/loopback/link-local/… and not an internal name, unless
      `allow_private`;
    - with `extensions` given, the path's extension is one of them, or none that names a
      format (see "Reference formats" in the module docstring).
    """
    parts = _split(url)
    if isinstance(parts, str):
        return parts
    schemes = ("https", "http") if (http_for_testing and allow_private) else ("https",)
    if parts.scheme not in schemes or not parts.netloc:
        problem = f"must be an absolute {' or '.join(schemes)} URL (got {shown_url(url)})"
        if parts.scheme == "http" and http_for_testing:
            problem += (
                f"; http is accepted only with {ENV_ALLOW_PRIVATE_URLS}=true, for local testing"
            )
        return problem
    authority = _authority_problem(parts, allow_private=allow_private)
    if authority:
        return authority
    if extensions:
        return extension_problem(parts.path, shown_url(url), extensions=extensions)
    return None


def formats_of(extensions: tuple[str, ...]) -> tuple[str, ...]:
    """The format names accepted extensions stand for, in order: ('.jpeg', '.jpg', …) ->
    ('JPEG', 'PNG', 'WEBP')."""
    names: list[str] = []
    for extension in extensions:
        name = IMAGE_FORMATS.get(extension, extension.lstrip(".").upper())
        if name not in names:
            names.append(name)
    return tuple(names)


def takes(formats: tuple[str, ...]) -> str:
    """'EvoLink takes JPEG, PNG or WEBP' — the end of every format refusal."""
    shown = formats[0] if len(formats) == 1 else f"{', '.join(formats[:-1])} or {formats[-1]}"
    return f"EvoLink takes {shown}"


def extension_format(path: str) -> str | None:
    """The format a path's extension names (`IMAGE_FORMATS`), None without a known extension."""
    return IMAGE_FORMATS.get(PurePosixPath(unquote(path)).suffix.lower())


def extension_problem(path: str, shown: str, *, extensions: tuple[str, ...]) -> str | None:
    """Why a reference at `path` (a URL's path, an object key or a file name) is refused by its
    extension, or None: see "Reference formats" in the module docstring."""
    if PurePosixPath(unquote(path)).suffix.lower() in extensions:
        return None
    found = extension_format(path)
    if found is None:
        return None  # no extension, or none that names a format: what is served decides
    accepted = formats_of(extensions)
    return (
        f"must point to a {'/'.join(e[1:] for e in extensions)} file, not a {found} file "
        f"(got {shown}); {takes(accepted)}"
    )


def content_type_format(content_type: str | None) -> str | None:
    """The format a declared media type names: 'JPEG', 'PNG', 'WEBP', or the type itself
    ('image/gif', 'application/pdf') for one EvoLink does not take; None when the type says
    nothing about the format (missing, application/octet-stream, text/html, …)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _MEDIA_TYPE_FORMATS:
        return _MEDIA_TYPE_FORMATS[media]
    if media.startswith(_MEDIA_FAMILIES) or media in _DOCUMENT_TYPES:
        return media
    return None


def sniff_format(head: bytes) -> str | None:
    """The format a file's first bytes show (512 are plenty), None when they show none we know."""
    start = head.lstrip()[:256].lower()
    signatures: tuple[tuple[bool, str], ...] = (
        (head.startswith(b"\xff\xd8\xff"), "JPEG"),
        (head.startswith(b"\x89PNG\r\n\x1a\n"), "PNG"),
        (head[:4] == b"RIFF" and head[8:12] == b"WEBP", "WEBP"),
        (head.startswith((b"GIF87a", b"GIF89a")), "GIF"),
        (head[:2] == b"BM" and head[6:10] == b"\0\0\0\0", "BMP"),
        (head.startswith((b"II*\x00", b"MM\x00*")), "TIFF"),
        (head.startswith(b"%PDF-"), "PDF"),
        (head[4:12] in (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1"), "HEIC"),
        (head[4:12] in (b"ftypavif", b"ftypavis"), "AVIF"),
        (head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")), "JPEG XL"),
        (head.startswith(b"\x00\x00\x01\x00"), "ICO"),
        (start.startswith(b"<svg") or (start.startswith(b"<?xml") and b"<svg" in start), "SVG"),
        (start.startswith((b"<!doctype html", b"<html")), "HTML"),
    )
    return next((name for matched, name in signatures if matched), None)


def reference_url_problem(url: str, *, extensions: tuple[str, ...]) -> str | None:
    """Rule check for `image_urls` items and `mask_url`, under the current setting."""
    allowed = private_urls_allowed()
    return url_problem(url, allow_private=allowed, http_for_testing=True, extensions=extensions)


def callback_url_problem(url: str) -> str | None:
    """Rule check for `callback_url`: HTTPS always; private hosts only with the setting on."""
    return url_problem(url, allow_private=private_urls_allowed(), http_for_testing=False)


def download_url_problem(url: str, *, allow_private: bool) -> str | None:
    """Rule check for a result link or one of its redirect targets, before we connect to it.

    http and https are both fetchable (a CDN may redirect between them); anything else
    (`file:`, `ftp:`, `data:`, …) is refused whatever the setting. Private literal addresses
    and internal names are refused unless `allow_private`.
    """
    parts = _split(url)
    if isinstance(parts, str):
        return parts
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"must be an http or https URL (got {shown_url(url)})"
    return _authority_problem(parts, allow_private=allow_private)


def _loopback_or_private(host: str) -> bool:
    """Whether a URL's host is a loopback/private literal address or an internal name: the only
    hosts an API base URL may reach over plain http (the simulator on 127.0.0.1)."""
    try:
        return host_problem(host) is not None
    except HostError:
        return False


def api_base_url_problem(url: str, *, allow_private: bool | None = None) -> str | None:
    """The first rule an API base URL breaks, or None: where we send the API key as a Bearer
    token, so stricter than a reference.

    - https, with a host; no user:password, query or fragment (a base URL is joined with paths,
      and anything after `?` or `#` would swallow them);
    - a private, loopback or link-local host (SSRF: the key and our requests steered into our
      own network) only with `EVOLINK_ALLOW_PRIVATE_URLS` on (`allow_private`, read now when
      None) — the simulator's case;
    - plain http only to such a host with the switch on: the key must never cross a public
      network in clear text.
    """
    allowed = private_urls_allowed() if allow_private is None else allow_private
    parts = _split(url)
    if isinstance(parts, str):
        return parts
    local = bool(parts.hostname) and _loopback_or_private(parts.hostname or "")
    schemes = ("https", "http") if (allowed and local) else ("https",)
    if parts.scheme not in schemes or not parts.netloc:
        problem = f"must be an absolute https URL (got {shown_url(url)})"
        if parts.scheme == "http":
            problem += (
                "; http only to a loopback or private host (the local simulator) with "
                f"{ENV_ALLOW_PRIVATE_URLS}=true: the API key must not travel in clear text"
            )
        return problem
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        return f"must not carry a query or fragment (got {shown_url(url)})"
    return _authority_problem(parts, allow_private=allowed)
