"""Security items of issue #5: URL policy, download hardening, storage keys that cannot escape.

conftest.py turns EVOLINK_ALLOW_PRIVATE_URLS on for the whole suite (the simulator serves
http://127.0.0.1 links), so every test here sets it explicitly with `private_urls(...)`.
Downloads run against a real stdlib HTTP server on 127.0.0.1; the "public link redirects
inward" cases, which cannot be served from loopback with the setting off, use an httpx mock
transport that records every request the client makes.
"""

from __future__ import annotations

import ast
import asyncio
import io
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import evolink.urls as urls_module
from evolink.client import Download, EvoLinkClient
from evolink.errors import InvalidImageError, InvalidRequestError, UnsafeResultLinkError
from evolink.models import parse_request
from evolink.retry import RetryPolicy
from evolink.simulator.png import render_png
from evolink.urls import ENV_ALLOW_PRIVATE_URLS, private_urls_allowed
from prefect_evolink.blocks import LocalAssetStorage, S3AssetStorage, check_key, safe_key

HINT = "set EVOLINK_ALLOW_PRIVATE_URLS=true only for local testing"
PRIVATE_RULE = "must not point to a private, loopback or link-local address"
INTERNAL_RULE = "must not point to a local or internal host name"


Switch = Callable[[bool], None]


@pytest.fixture
def private_urls(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Switch the local/testing setting explicitly (the suite default is on)."""

    def switch(on: bool) -> None:
        monkeypatch.setenv(ENV_ALLOW_PRIVATE_URLS, "true" if on else "false")

    return switch


def request(**fields: Any) -> None:
    parse_request({"prompt": "a red kite", **fields})


def refusal(**fields: Any) -> dict[str, str]:
    """The (field -> rule) problems of a request that must be refused."""
    with pytest.raises(InvalidRequestError) as info:
        request(**fields)
    return dict(info.value.problems)


# --------------------------------------------------------------------------------------------
# URL policy
# --------------------------------------------------------------------------------------------

# (host as written in a URL, rule fragment): every literal form a resolver would accept.
NON_PUBLIC_HOSTS: list[tuple[str, str]] = [
    ("127.0.0.1", "127.0.0.1 is loopback"),
    ("127.8.9.10", "is loopback"),
    ("2130706433", "2130706433 = 127.0.0.1 is loopback"),  # decimal integer
    ("0x7f000001", "= 127.0.0.1 is loopback"),  # hex integer
    ("0x7f.1", "0x7f.1 = 127.0.0.1 is loopback"),  # hex, short form
    ("0177.0.0.1", "= 127.0.0.1 is loopback"),  # octal
    ("017700000001", "= 127.0.0.1 is loopback"),  # octal integer
    ("127.1", "127.1 = 127.0.0.1 is loopback"),
    ("127.0.0.1.", "is loopback"),  # trailing dot
    ("１２７．０．０．１", "= 127.0.0.1 is loopback"),  # full-width, NFKC
    ("[::1]", "::1 is loopback"),
    ("[::ffff:127.0.0.1]", "-> 127.0.0.1 is loopback"),  # IPv4-mapped IPv6
    ("[::ffff:7f00:1]", "-> 127.0.0.1 is loopback"),
    ("[::ffff:169.254.169.254]", "-> 169.254.169.254 is link-local"),
    ("[2002:7f00:1::]", "-> 127.0.0.1 is loopback"),  # 6to4
    ("[64:ff9b::a9fe:a9fe]", "-> 169.254.169.254 is link-local"),  # NAT64
    ("169.254.169.254", "169.254.169.254 is link-local"),  # cloud metadata
    ("0xa9fea9fe", "= 169.254.169.254 is link-local"),
    ("[fe80::1]", "is link-local"),
    ("[fe80::1%25eth0]", "is link-local"),  # with a zone id
    ("10.0.0.1", "is private"),
    ("172.16.5.4", "is private"),
    ("192.168.1.1", "is private"),
    ("[fd00::1]", "is unique-local"),
    ("[fc00::abcd]", "is unique-local"),
    ("0.0.0.0", "is unspecified"),
    ("0", "0 = 0.0.0.0 is unspecified"),
    ("[::]", "is unspecified"),
    ("224.0.0.1", "is multicast"),
    ("239.255.255.250", "is multicast"),
    ("[ff02::1]", "is multicast"),
    ("240.0.0.1", "is reserved"),
    ("255.255.255.255", "is reserved"),
    ("100.64.0.1", "is not publicly routable"),  # carrier-grade NAT
    ("localhost", f"{INTERNAL_RULE} (localhost)"),
    ("LOCALHOST.", "(localhost)"),
    ("ｌｏｃａｌｈｏｓｔ", "(localhost)"),  # full-width
    ("api.localhost", "(api.localhost)"),
    ("printer.local", "(printer.local)"),
    ("metadata.google.internal", "(metadata.google.internal)"),
]
HOST_IDS = [host for host, _ in NON_PUBLIC_HOSTS]

PUBLIC_URLS = [
    "https://cdn.example.com/ref.png",
    "https://CDN.Example.com:8443/a/b/ref.JPG",
    "https://bucket.s3.amazonaws.com/a/b.webp?X-Amz-Signature=abc&X-Amz-Expires=60",
    "https://8.8.8.8/ref.jpeg",
    "https://[2606:4700:4700::1111]/ref.png",
    "https://[2002:0808:0808::]/ref.png",  # 6to4 of a public address
    "https://bücher.example/ref.png",  # IDN
    "https://local.example.com/ref.png",  # 'local' as a label is fine, only the suffix is not
    "https://10.example.com/ref.png",  # a name that starts like a private address
]


@pytest.mark.parametrize(("host", "fragment"), NON_PUBLIC_HOSTS, ids=HOST_IDS)
def test_non_public_hosts_are_refused_with_the_setting_off(
    host: str, fragment: str, private_urls: Switch
) -> None:
    private_urls(False)
    url = f"https://{host}/ref.png"
    problems = refusal(image_urls=["https://cdn.example.com/ok.png", url])
    assert problems["image_urls"].startswith("item 1 must not point to a "), problems
    assert fragment in problems["image_urls"] and HINT in problems["image_urls"]
    problems = refusal(image_urls=["https://cdn.example.com/ok.png"], mask_url=url)
    assert fragment in problems["mask_url"] and HINT in problems["mask_url"]
    problems = refusal(callback_url=f"https://{host}/hook")
    assert fragment in problems["callback_url"] and HINT in problems["callback_url"]


@pytest.mark.parametrize(("host", "fragment"), NON_PUBLIC_HOSTS, ids=HOST_IDS)
def test_non_public_hosts_are_accepted_with_the_setting_on(
    host: str, fragment: str, private_urls: Switch
) -> None:
    private_urls(True)
    request(
        image_urls=[f"https://{host}/ref.png", f"http://{host}:8787/ref.webp"],
        mask_url=f"http://{host}/mask.png",
        callback_url=f"https://{host}/hook",
    )


@pytest.mark.parametrize("url", PUBLIC_URLS)
@pytest.mark.parametrize("on", [False, True], ids=["setting-off", "setting-on"])
def test_public_https_urls_are_accepted(url: str, on: bool, private_urls: Switch) -> None:
    private_urls(on)
    request(
        image_urls=[url],
        mask_url="https://cdn.example.com/mask.png",
        callback_url="https://hooks.example.com/x",
    )


def test_the_message_names_the_field_the_rule_and_the_escape_hatch(private_urls: Switch) -> None:
    private_urls(False)
    with pytest.raises(InvalidRequestError) as info:
        request(image_urls=["https://127.0.0.1/ref.png"])
    assert (
        "image_urls: item 0 must not point to a private, loopback or link-local address "
        "(127.0.0.1 is loopback); set EVOLINK_ALLOW_PRIVATE_URLS=true only for local testing"
    ) in str(info.value)


def test_http_references_only_for_local_testing(private_urls: Switch) -> None:
    private_urls(False)
    url = "http://cdn.example.com/ref.png"
    for field, problems in (
        ("image_urls", refusal(image_urls=[url])),
        ("mask_url", refusal(image_urls=["https://cdn.example.com/a.png"], mask_url=url)),
    ):
        assert "must be an absolute https URL" in problems[field]
        assert "EVOLINK_ALLOW_PRIVATE_URLS=true" in problems[field]
    private_urls(True)
    request(image_urls=["http://cdn.example.com/ref.png"], mask_url="http://127.0.0.1:8787/m.png")


@pytest.mark.parametrize("on", [False, True], ids=["setting-off", "setting-on"])
def test_callback_url_is_https_only_even_with_the_setting_on(
    on: bool, private_urls: Switch
) -> None:
    private_urls(on)
    for url in (
        "http://hooks.example.com/x",
        "http://127.0.0.1:9000/hook",
        "ftp://hooks.example.com/x",
    ):
        problems = refusal(callback_url=url)
        assert "must be an absolute https URL" in problems["callback_url"], problems
        assert "EVOLINK_ALLOW_PRIVATE_URLS" not in problems["callback_url"]  # no hatch for this one


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret-pw@cdn.example.com/ref.png",
        "https://user@cdn.example.com/ref.png",
        "https://:secret-pw@cdn.example.com/ref.png",
        "https://cdn.example.com@127.0.0.1/ref.png",  # the classic "looks like cdn.example.com"
    ],
)
@pytest.mark.parametrize("on", [False, True], ids=["setting-off", "setting-on"])
def test_userinfo_is_refused_and_not_echoed(url: str, on: bool, private_urls: Switch) -> None:
    private_urls(on)
    for problems, field in (
        (refusal(image_urls=[url]), "image_urls"),
        (refusal(callback_url=url.replace("ref.png", "hook")), "callback_url"),
    ):
        assert "must not contain a user name or password" in problems[field]
        assert "secret-pw" not in problems[field]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://999.1.1.1/ref.png", "not a valid IPv4 address"),
        ("https://1.2.3.4.5/ref.png", "more than four parts"),
        ("https://0x1g.0.0.1/ref.png", "not a valid IPv4 address"),  # ends in a number: IPv4
        ("https://1.2.3.4.example/ref.png", None),  # a name, left to DNS (EvoLink's side)
        ("https://%31%32%37.0.0.1/ref.png", "percent-encoded"),
        ("https://cdn.example.com\\@127.0.0.1/ref.png", "backslashes"),
        ("https://cdn.example.com/ref.png\n", "control characters"),
        ("https://cdn.exa mple.com/ref.png", "whitespace"),
        ("https://[::1/ref.png", "not a valid URL"),
        ("https://cdn.example.com:99999/ref.png", "not a valid URL"),
        ("https:///ref.png", "absolute https"),
    ],
)
@pytest.mark.parametrize("on", [False, True], ids=["setting-off", "setting-on"])
def test_malformed_urls_are_refused_whatever_the_setting(
    url: str, fragment: str | None, on: bool, private_urls: Switch
) -> None:
    private_urls(on)
    if fragment is None:
        request(image_urls=[url])
        return
    assert fragment in refusal(image_urls=[url])["image_urls"]


def test_extension_rules_still_apply(private_urls: Switch) -> None:
    private_urls(False)
    gif = refusal(image_urls=["https://cdn.example.com/a.gif"])
    assert "must point to a jpeg/jpg/png/webp file" in gif["image_urls"]
    mask = refusal(
        image_urls=["https://cdn.example.com/a.png"], mask_url="https://cdn.example.com/m.webp"
    )
    assert "must point to a png file" in mask["mask_url"]


def test_error_echo_drops_query_strings(private_urls: Switch) -> None:
    private_urls(False)
    problems = refusal(image_urls=["https://cdn.example.com/a.gif?X-Amz-Signature=topsecret"])
    assert "topsecret" not in problems["image_urls"]


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("1", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("", False),
        ("on", False),
        ("2", False),
    ],
)
def test_setting_values(value: str, allowed: bool) -> None:
    assert private_urls_allowed({ENV_ALLOW_PRIVATE_URLS: value}) is allowed
    assert private_urls_allowed({}) is False


def test_setting_is_read_at_validation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    url = ["http://127.0.0.1:8787/ref.png"]
    monkeypatch.delenv(ENV_ALLOW_PRIVATE_URLS)
    refusal(image_urls=url)
    monkeypatch.setenv(ENV_ALLOW_PRIVATE_URLS, "yes")
    request(image_urls=url)
    monkeypatch.setenv(ENV_ALLOW_PRIVATE_URLS, "no")
    refusal(image_urls=url)


def test_validation_never_resolves_names(
    private_urls: Switch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pure and fast: a name is judged by its spelling; resolving it is EvoLink's job (and only
    the fetcher can defend against DNS rebinding at connect time)."""
    private_urls(False)

    def no_dns(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"DNS lookup during validation: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket, "gethostbyname", no_dns)
    request(
        image_urls=["https://cdn.example.com/a.png"], callback_url="https://hooks.example.com/x"
    )
    refusal(image_urls=["https://metadata.google.internal/a.png"])


def test_url_policy_module_has_no_prefect_imports() -> None:
    tree = ast.parse(Path(urls_module.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not any(name.split(".")[0] == "prefect" for name in imported), imported


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------

PNG = render_png(64, 48, "security")
CAP = 64 * 1024  # small cap so an over-cap body is cheap to serve
BIG = PNG + b"\0" * (CAP + 1024)
HTML = b"<!doctype html><html><body>Access denied</body></html>"


class _Handler(BaseHTTPRequestHandler):
    """Routes for the download tests; counts every request per path."""

    hits: Counter[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str, *, length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.hits[self.path] += 1
        port = self.server.server_address[1]
        routes: dict[str, Callable[[], None]] = {
            "/image.png": lambda: self._send(200, PNG, "image/png"),
            "/png-as-html": lambda: self._send(200, PNG, "text/html; charset=utf-8"),
            "/html": lambda: self._send(200, HTML, "text/html"),
            "/html-as-png": lambda: self._send(200, b"<html>not an image</html>" * 10, "image/png"),
            "/loop": lambda: self._redirect("/loop"),
            "/hop-1": lambda: self._redirect("/hop-2"),
            "/hop-2": lambda: self._redirect(f"http://127.0.0.1:{port}/image.png"),  # absolute
            "/to-file": lambda: self._redirect("file:///etc/passwd"),
            "/to-ftp": lambda: self._redirect("ftp://ftp.example.com/image.png"),
            "/to-mailto": lambda: self._redirect("mailto:root@example.com"),
            "/to-data": lambda: self._redirect("data:image/png;base64,iVBORw0KGgo="),
            "/big": lambda: self._send(200, BIG, "image/png"),
            "/big-unannounced": lambda: self._send(200, BIG, "image/png", length=False),
        }
        routes.get(self.path, lambda: self._send(404, b"no", "text/plain"))()


class FileServer:
    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"hits": Counter()})
        self.hits: Counter[str] = handler.hits
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[FileServer]:
    srv = FileServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


Fetch = Callable[[str], tuple[Download, bytes]]


def make_client(**kwargs: Any) -> EvoLinkClient:
    return EvoLinkClient(
        "sk-test-security",
        base_url="http://127.0.0.1:9",  # never called here
        max_download_bytes=kwargs.pop("max_download_bytes", CAP),
        retry=kwargs.pop("retry", RetryPolicy(max_attempts=1)),
        **kwargs,
    )


async def _fetch(client: EvoLinkClient, url: str) -> tuple[Download, bytes]:
    sink = io.BytesIO()
    result = await client.download_to(url, sink, task_id="task-sec")
    return result, sink.getvalue()


@pytest.fixture(scope="module")
def fetch() -> Iterator[Fetch]:
    """Download with one client on one event loop for the whole module (a client per test
    would spend most of this file's time building TLS contexts)."""
    with asyncio.Runner() as runner:
        client = make_client()
        yield lambda url: runner.run(_fetch(client, url))
        runner.run(client.aclose())


def download(
    url: str, *, transport: httpx.MockTransport | None = None, **kwargs: Any
) -> tuple[Download, bytes]:
    """Download with a client of its own (its own retry/sleep, or a recording transport)."""

    async def main() -> tuple[Download, bytes]:
        async with make_client(**kwargs) as client:
            if transport is not None:
                # The client has no transport parameter; swap its result-link HTTP client for
                # one that records requests instead of reaching the network.
                await client._files.aclose()
                client._files = httpx.AsyncClient(transport=transport, follow_redirects=False)
            return await _fetch(client, url)

    return asyncio.run(main())


def test_a_good_image_downloads_through_redirects(
    server: FileServer, fetch: Fetch, private_urls: Switch
) -> None:
    private_urls(True)
    result, body = fetch(server.url("/hop-1"))
    assert body == PNG and (result.image.content_type, result.image.width) == ("image/png", 64)


def test_bytes_win_over_a_wrong_content_type(
    server: FileServer, fetch: Fetch, private_urls: Switch
) -> None:
    private_urls(True)
    result, body = fetch(server.url("/png-as-html"))  # served as text/html, is a PNG
    assert body == PNG and result.image.content_type == "image/png"
    with pytest.raises(InvalidImageError, match="not a PNG, JPEG or WEBP"):
        fetch(server.url("/html-as-png"))  # served as image/png, is HTML


def test_an_html_page_is_not_an_image(
    server: FileServer, fetch: Fetch, private_urls: Switch
) -> None:
    private_urls(True)
    with pytest.raises(InvalidImageError, match="not a PNG, JPEG or WEBP"):
        fetch(server.url("/html"))


def test_a_redirect_loop_is_cut_off(server: FileServer, fetch: Fetch, private_urls: Switch) -> None:
    private_urls(True)
    before = server.hits["/loop"]
    with pytest.raises(InvalidImageError, match="redirected more than 5 times"):
        fetch(server.url("/loop"))
    assert server.hits["/loop"] - before == 6  # the link and five redirects, then stop


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/to-file", "must be an http or https URL (got 'file:///etc/passwd')"),
        ("/to-ftp", "must be an http or https URL (got 'ftp://ftp.example.com/image.png')"),
        # No '//' authority: httpx itself cannot parse these as a redirect target.
        ("/to-data", "redirected to a location that is not a valid URL"),
        ("/to-mailto", "redirected to a location that is not a valid URL"),
    ],
)
def test_a_redirect_to_another_scheme_is_refused(
    path: str, fragment: str, server: FileServer, fetch: Fetch, private_urls: Switch
) -> None:
    private_urls(True)  # even when local testing is allowed
    with pytest.raises(UnsafeResultLinkError) as info:
        fetch(server.url(path))
    assert fragment in str(info.value) and "redirect" in str(info.value)
    assert not info.value.retryable


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
def test_a_body_over_the_cap_is_refused(
    path: str, server: FileServer, fetch: Fetch, private_urls: Switch
) -> None:
    private_urls(True)
    with pytest.raises(InvalidImageError, match=f"{CAP}-byte cap"):
        fetch(server.url(path))


def test_with_the_setting_off_a_loopback_link_is_refused_before_any_byte(
    server: FileServer, private_urls: Switch
) -> None:
    private_urls(False)
    before = sum(server.hits.values())
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    link = server.url("/image.png")
    for host in ("127.0.0.1", "2130706433", "localhost"):
        url = link.replace("127.0.0.1", host)
        with pytest.raises(UnsafeResultLinkError, match="must not point to a") as info:
            download(url, retry=RetryPolicy(max_attempts=3), sleep=sleep)
        assert HINT in str(info.value)
    assert sum(server.hits.values()) == before  # not even a connection
    assert sleeps == []  # and not retried: the same link would be refused again


def mock_cdn(routes: dict[str, httpx.Response], seen: list[str]) -> httpx.MockTransport:
    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(str(req.url))
        return routes.get(str(req.url), httpx.Response(404))

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://2130706433/image.png",
        "http://[::ffff:10.0.0.1]/image.png",
        "https://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_with_the_setting_off_a_redirect_inward_is_refused_before_connecting(
    target: str, private_urls: Switch
) -> None:
    private_urls(False)
    link = "https://cdn.example.com/result.png?sig=topsecret"
    seen: list[str] = []
    transport = mock_cdn({link: httpx.Response(302, headers={"Location": target})}, seen)
    with pytest.raises(UnsafeResultLinkError) as info:
        download(link, transport=transport)
    assert seen == [link]  # the inward target was never requested
    message = str(info.value)
    assert "redirect target" in message and "must not point to a" in message
    assert "topsecret" not in message


def test_with_the_setting_off_public_redirects_still_work(private_urls: Switch) -> None:
    private_urls(False)
    link, final = "https://cdn.example.com/r.png", "https://images.example.net/r.png"
    seen: list[str] = []
    transport = mock_cdn(
        {
            link: httpx.Response(301, headers={"Location": final}),
            final: httpx.Response(200, content=PNG, headers={"Content-Type": "image/png"}),
        },
        seen,
    )
    result, body = download(link, transport=transport)
    assert body == PNG and seen == [link, final] and result.size_bytes == len(PNG)


# --------------------------------------------------------------------------------------------
# Storage keys
# --------------------------------------------------------------------------------------------

HOSTILE_PARTS = [
    "..",
    ".",
    "../../../etc/passwd",
    "a/../../b",
    "/etc/passwd",
    "/",
    "..\\..\\windows\\system32",
    "C:\\evil",
    "a\x00b",
    "\x00",
    "／etc／passwd",  # full-width solidus
    "．．",  # full-width full stops
    "．．／．．／escape",
    "‥",  # two-dot leader: NFKC gives '..'
    "﹒﹒／x",  # small full stops
    "%2e%2e%2f%2e%2e%2f",
    "~root",
    ".hidden",
    "",
    " ",
    "\u202egnp.exe",  # right-to-left override
    "\ud800",  # lone surrogate
    "a" * 5_000,
    "é" * 300,
    "../" * 400,
]


@pytest.mark.parametrize("hostile", HOSTILE_PARTS, ids=[repr(p)[:30] for p in HOSTILE_PARTS])
def test_no_asset_id_or_prompt_escapes_the_campaign_prefix(hostile: str, tmp_path: Path) -> None:
    key = safe_key("campaign", hostile, hostile, "0.png")  # asset id, then a prompt-derived part
    assert check_key(key) == key
    segments = key.split("/")
    assert len(segments) == 4 and segments[0] == "campaign" and segments[3] == "0.png"
    assert all(s and not s.startswith(".") and len(s) <= 80 for s in segments)

    base = tmp_path / "assets"
    storage = LocalAssetStorage(base_dir=str(base))
    stored = storage.put_bytes(key, b"image", content_type="image/png")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 1, written  # exactly one file, nothing stray elsewhere
    assert written[0].resolve().is_relative_to((base / "campaign").resolve())
    assert stored.uri == written[0].resolve().as_uri()
    assert storage.get_bytes(key) == b"image"

    s3 = S3AssetStorage(bucket="assets", prefix="evolink")  # key construction only; no network
    assert s3._object_key(key) == f"evolink/{key}"
    assert s3.uri(key).startswith("s3://assets/evolink/campaign/")


def test_hostile_keys_given_raw_are_refused_and_write_nothing(tmp_path: Path) -> None:
    storage = LocalAssetStorage(base_dir=str(tmp_path / "assets"))
    for key in (
        "campaign/../../x.png",
        "/etc/x.png",
        "campaign\\..\\x.png",
        "campaign/a\x00/x.png",
        "campaign/../x",
    ):
        with pytest.raises(ValueError, match="invalid storage key"):
            storage.put_bytes(key, b"x", content_type="image/png")
    assert not any(tmp_path.rglob("*.png")) and not any(p.is_file() for p in tmp_path.rglob("*"))
