"""Edges: reference formats (extension, declared type, first bytes) and cancelled tasks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from evolink.brief import parse_brief
from evolink.client import EvoLinkClient
from evolink.cost import billed_cost
from evolink.errors import (
    BriefError,
    CampaignIncompleteError,
    InvalidRequestError,
    PaidJobNotStoredError,
    TaskFailedError,
    resubmit_may_help,
)
from evolink.models import parse_request
from evolink.plans import check_plans
from evolink.simulator import EvoLinkSimulator, Fault
from evolink.urls import content_type_format, sniff_format
from prefect_evolink.blocks import LocalAssetStorage
from prefect_evolink.tasks import references
from prefect_evolink.tasks.references import check_reference_content, resolve_references
from tests.conftest import artifacts_with_prefix

EXTENSIONLESS = "https://images.cdn-example.net/p/sku-1234?w=1200&sig=abc"
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04" + b"\x00" * 40
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x00" * 40


# --- the extension rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        EXTENSIONLESS,
        "https://cdn.example.com/a.PNG",
        "https://cdn.example.com/render.php?id=3",
        "https://cdn.example.com/v2/photo.1200",
        "https://cdn.example.com/photos/",
    ],
)
def test_references_without_a_format_extension_are_accepted(url: str) -> None:
    assert parse_request({"prompt": "p", "image_urls": [url]}).image_urls == [url]


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://cdn.example.com/a.gif", "GIF"),
        ("https://cdn.example.com/a.svg?v=2", "SVG"),
        ("https://cdn.example.com/scan.TIFF", "TIFF"),
        ("https://cdn.example.com/IMG_0001.heic", "HEIC"),
        ("https://cdn.example.com/a.avif", "AVIF"),
        ("https://cdn.example.com/sheet.pdf", "PDF"),
        ("https://cdn.example.com/a%2Ebmp", "BMP"),
    ],
)
def test_references_naming_another_format_are_refused(url: str, name: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request({"prompt": "p", "image_urls": [url]})
    [(field, rule)] = caught.value.problems
    assert field == "image_urls"
    assert f"not a {name} file" in rule and rule.endswith("EvoLink takes JPEG, PNG or WEBP")


def test_a_mask_must_be_png_or_extensionless() -> None:
    ref = "https://cdn.example.com/a.jpg"
    parse_request({"prompt": "p", "image_urls": [ref], "mask_url": "https://cdn.example.com/m"})
    with pytest.raises(InvalidRequestError, match=r"not a JPEG file.*EvoLink takes PNG"):
        parse_request({"prompt": "p", "image_urls": [ref], "mask_url": ref})


def test_a_gif_reference_in_a_brief_is_refused_naming_asset_and_field(tmp_path: Path) -> None:
    brief = parse_brief(
        {
            "campaign": "edges",
            "budget_usd": 1,
            "assets": [
                {"id": "ok", "prompt": "p", "reference_images": [EXTENSIONLESS]},
                {
                    "id": "product-shot",
                    "prompt": "p",
                    "reference_images": ["https://cdn.example.com/x.png", "shots/case.gif"],
                    "mask": "s3://bucket/masks/m.webp",
                },
            ],
        }
    )
    with pytest.raises(BriefError) as caught:
        asyncio.run(resolve_references(brief, tmp_path, LocalAssetStorage(base_dir=str(tmp_path))))
    assert caught.value.problems == [
        "asset 'product-shot': reference_images.1: must point to a jpeg/jpg/png/webp file, "
        "not a GIF file (got 'shots/case.gif'); EvoLink takes JPEG, PNG or WEBP",
        "asset 'product-shot': mask: must point to a png file, not a WEBP file "
        "(got 's3://bucket/masks/m.webp'); EvoLink takes PNG",
    ]
    # and the extensionless one plans fine (its host does not resolve here: not checked)
    check_plans(
        brief.model_copy(update={"assets": brief.assets[:1]}), {"ok": ([EXTENSIONLESS], None)}
    )


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("image/png", "PNG"),
        ("image/jpeg; charset=binary", "JPEG"),
        ("image/gif", "image/gif"),
        ("application/pdf", "application/pdf"),
        ("application/octet-stream", None),
        ("text/html", None),
        (None, None),
    ],
)
def test_declared_types(content_type: str | None, expected: str | None) -> None:
    assert content_type_format(content_type) == expected


def test_first_bytes() -> None:
    assert sniff_format(PNG) == "PNG" and sniff_format(GIF) == "GIF"
    assert sniff_format(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"%PDF-1.7\n") == "PDF"
    assert sniff_format(b"\x00\x00\x00\x1cftypavif") == "AVIF"
    assert sniff_format(b'  <?xml version="1.0"?>\n<svg xmlns="...">') == "SVG"
    assert sniff_format(b"BMW of the year") is None


# --- the content check against a local server ----------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> bytes:
        type(self).seen.append((self.command, self.path, dict(self.headers)))
        path = self.path.split("?", 1)[0]
        status, headers, body = 404, {}, b""
        if path.startswith("/gif/"):
            status, headers, body = 200, {"Content-Type": "image/gif"}, GIF
        elif path.startswith("/png/"):
            status, headers, body = 200, {"Content-Type": "image/png"}, PNG
        elif path.startswith("/no-head/"):  # HEAD refused; a GET serves a GIF as octet-stream
            if self.command == "HEAD":
                status = 405
            else:
                status, headers, body = 200, {"Content-Type": "application/octet-stream"}, GIF
        elif path.startswith("/moved/"):
            status, headers = 302, {"Location": "/gif/after-redirect"}
        elif path.startswith("/slow/"):
            time.sleep(1.0)
            status, headers, body = 200, {"Content-Type": "image/gif"}, GIF
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return body

    def do_HEAD(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        self.wfile.write(self._answer())


@pytest.fixture
def image_host() -> Iterator[str]:
    """http://127.0.0.1:<port>: loopback references are allowed in tests (conftest)."""
    _Handler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def brief_with(*urls: str, mask: str | None = None) -> Any:
    asset: dict[str, Any] = {"id": "product-shot", "prompt": "p", "reference_images": list(urls)}
    if mask:
        asset["mask"] = mask
    return parse_brief({"campaign": "edges", "budget_usd": 1, "assets": [asset]})


def test_a_reference_served_as_gif_is_refused_naming_asset_and_field(
    image_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVOLINK_API_KEY", "sk-test-must-not-travel")
    brief = brief_with(
        f"{image_host}/png/sku-1?w=1200",
        f"{image_host}/gif/sku-1234?w=1200&sig=abc",
        f"{image_host}/no-head/sku-9",
        f"{image_host}/moved/sku-7",
        mask=f"{image_host}/png/mask",
    )
    with pytest.raises(BriefError) as caught:
        asyncio.run(check_reference_content(brief))
    assert caught.value.problems == [
        f"asset 'product-shot': reference_images.1: '{image_host}/gif/sku-1234' is image/gif; "
        "EvoLink takes JPEG, PNG or WEBP",
        f"asset 'product-shot': reference_images.2: '{image_host}/no-head/sku-9' is a GIF file "
        "(by its first bytes); EvoLink takes JPEG, PNG or WEBP",
        f"asset 'product-shot': reference_images.3: '{image_host}/moved/sku-7' is image/gif; "
        "EvoLink takes JPEG, PNG or WEBP",
    ]
    assert all("authorization" not in {k.lower() for k in h} for _, _, h in _Handler.seen)
    assert "sk-test-must-not-travel" not in json.dumps(_Handler.seen)
    ranged = [h for method, _, h in _Handler.seen if method == "GET"]
    assert ranged and all(h.get("Range") == "bytes=0-511" for h in ranged)


def test_a_png_reference_without_extension_passes(image_host: str) -> None:
    asyncio.run(check_reference_content(brief_with(f"{image_host}/png/sku-1234?w=1200&sig=abc")))


def test_a_check_that_cannot_be_made_does_not_block(
    image_host: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(references, "PROBE_TIMEOUT", httpx.Timeout(0.2))
    closed = "http://127.0.0.1:9/photo"  # connection refused
    brief = brief_with(f"{image_host}/missing/x", f"{image_host}/slow/x", closed)
    with caplog.at_level("WARNING"):
        asyncio.run(check_reference_content(brief))  # no BriefError
    logged = caplog.text
    assert "HTTP 404 to HEAD and 404 to GET" in logged
    assert "ReadTimeout" in logged and "ConnectError" in logged


def test_private_hosts_behind_public_names_are_not_contacted(
    image_host: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the testing switch, a name resolving to loopback is never fetched."""
    monkeypatch.delenv("EVOLINK_ALLOW_PRIVATE_URLS")
    port = image_host.rsplit(":", 1)[1]

    def resolve(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [(2, 1, 6, "", ("127.0.0.1", int(port)))]

    monkeypatch.setattr(references.socket, "getaddrinfo", resolve)
    brief = brief_with(f"https://images.shop-cdn.net:{port}/gif/sku-1")
    with caplog.at_level("WARNING"):
        asyncio.run(check_reference_content(brief))
    assert _Handler.seen == []
    assert "resolves to an address we do not contact" in caplog.text


# --- cancelled tasks -------------------------------------------------------------------------


def test_a_cancelled_task_is_billed_as_its_body_says() -> None:
    bare = {"id": "t", "status": "cancelled"}
    assert billed_cost(bare).usd == 0 and billed_cost(bare).source == "not_charged"
    charged = {**bare, "usage": {"cost": {"credits": 6.8, "usd": 0.1}}}
    assert billed_cost(charged).usd == Decimal("0.1")
    assert billed_cost({**bare, "billing": {"charged_credits": 68}}).usd == Decimal("1.000000")


def test_the_resubmission_verdict() -> None:
    assert resubmit_may_help("generation_timeout", cancelled=False)
    assert not resubmit_may_help("generation_timeout", cancelled=True)
    assert not resubmit_may_help("content_policy_violation", cancelled=False)
    error = TaskFailedError("t-1", None, None, cancelled=True)
    assert error.code == "cancelled" and not error.resubmit_may_help and error.cancelled
    assert "was cancelled at EvoLink" in str(error) and "bill unknown" in str(error)


def test_the_simulator_cancels_and_the_client_reports_it(simulator: EvoLinkSimulator) -> None:
    simulator.add_fault(Fault(kind="cancel_task"))

    async def run() -> TaskFailedError:
        async with EvoLinkClient(simulator.api_key, base_url=simulator.base_url) as client:
            created = await client.create_task({"prompt": "a mug", "quality": "low"})
            with pytest.raises(TaskFailedError) as caught:
                await client.wait_for_task(created.task.id)
            return caught.value

    error = asyncio.run(run())
    assert error.cancelled and error.code == "cancelled" and not error.resubmit_may_help
    assert error.billed is not None and error.billed.usd == 0
    [entry] = simulator.ledger()
    assert entry.status == "cancelled" and not entry.billed and entry.finished_at is not None


@pytest.mark.usefixtures("prefect_harness")
def test_a_cancelled_job_is_not_resubmitted_and_fails_naming_it(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    from prefect_evolink.flows.generate import generate_image

    evolink_env.add_fault(Fault(kind="cancel_task"))
    request = parse_request({"prompt": "a mug of cocoa", "size": "1:1", "quality": "low"})
    with pytest.raises(TaskFailedError, match=r"was cancelled at EvoLink.*not charged") as caught:
        asyncio.run(generate_image.aio(request, job_name="cancelled", poll_deadline_seconds=30))
    assert caught.value.cancelled
    assert evolink_env.request_counts["create"] == 1 and len(evolink_env.ledger()) == 1
    assert evolink_env.billed_tasks() == []


@pytest.mark.usefixtures("prefect_harness")
def test_a_cancelled_job_that_was_charged_is_booked(
    evolink_env: EvoLinkSimulator, assets_dir: Path
) -> None:
    from prefect_evolink.flows.generate import generate_image

    evolink_env.add_fault(Fault(kind="cancel_task", billed_fraction=0.5))
    request = parse_request({"prompt": "a mug of tea", "size": "1:1", "quality": "low"})
    with pytest.raises(PaidJobNotStoredError, match=r"TaskFailedError: .* was cancelled") as caught:
        asyncio.run(
            generate_image.aio(request, job_name="cancelled-paid", poll_deadline_seconds=30)
        )
    cause = caught.value.__cause__
    assert isinstance(cause, TaskFailedError) and cause.cancelled
    [entry] = evolink_env.ledger()
    assert entry.status == "cancelled" and entry.billed_usd > 0 and entry.billed
    assert Decimal(caught.value.record.billed_usd or "nan") == entry.billed_usd
    assert evolink_env.request_counts["create"] == 1
    artifacts = asyncio.run(artifacts_with_prefix("evolink-cancelled-paid-%"))
    [row] = json.loads(artifacts["evolink-cancelled-paid-cost"].data)
    assert row["billed_usd"] == f"${entry.billed_usd:.6f}"


@pytest.mark.usefixtures("prefect_harness")
def test_a_cancelled_campaign_asset_is_reported_and_its_charge_booked(
    evolink_env: EvoLinkSimulator, assets_dir: Path, tmp_path: Path
) -> None:
    from prefect_evolink.flows.campaign import run_campaign

    evolink_env.add_fault(Fault(kind="cancel_task", billed_fraction=1.0, match_prompt="jogging"))
    brief = tmp_path / "brief.yaml"
    brief.write_text(
        json.dumps(
            {
                "campaign": "edges-cancel",
                "budget_usd": 1,
                "defaults": {"drafts": 1},
                "assets": [
                    {"id": "mug", "prompt": "a ceramic mug of cocoa"},
                    {"id": "runner", "prompt": "a woman jogging at dawn"},
                ],
            }
        )
    )
    with pytest.raises(CampaignIncompleteError, match="runner") as caught:
        asyncio.run(run_campaign.aio(str(brief), poll_deadline_seconds=30))
    assert "cancelled" in str(caught.value)
    cancelled = [e for e in evolink_env.ledger() if e.status == "cancelled"]
    assert len(cancelled) == 1 and evolink_env.request_counts["create"] == 3  # no resubmission
    manifest = getattr(caught.value, "manifest", None)
    if manifest is not None:
        billed = sum((e.billed_usd for e in evolink_env.ledger()), Decimal(0))
        assert Decimal(manifest.totals.billed_usd) == billed  # the cancellation's charge too
