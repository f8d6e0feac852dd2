"""The Prefect UI as reviewers and managers see it: a real headless Chromium looking at a real
`prefect server`, with campaigns run on the EvoLink simulator.

Everything is asserted from what the browser rendered — elements, their sizes and positions,
images that decoded — never from a page merely loading:

- the Resume dialog of a paused approval run shows every draft as a thumbnail labelled like the
  form's options, in both Prefect UIs, and a choice made in the dialog is the one the run uses;
- the cost table's headers and its Billed column fit a 1,440-px screen without sideways scrolling;
- the contact sheet shows every final;
- no artifact page of the run has anything wider than its content column or the window (a
  known-bad artifact proves the check catches the issue's data-URI line);
- the Artifacts page shows an asset that a later run rejected as having no current final.

One module-scoped stack serves every test: the server (temporary PREFECT_HOME, SQLite, its own
process group), the simulator and Chromium, all stopped at the end, also when a test fails. Two
runs of the example brief (4 assets × 4 drafts): an automatic one, then an approval one. The
default UI is at `/v2/…`; the older one (where the flow log's "View at" link goes) at `/…`.

Screenshots land in a temporary directory printed at the end (or EVOLINK_UI_SCREENSHOTS=DIR).
Chromium is installed by the `chromium_executable` fixture when missing and possible (root with
apt-get); otherwise these tests are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from evolink.campaign import AssetStatus, CampaignManifest
from evolink.cost import usd
from evolink.previews import REVIEW_EDGE, SHEET_EDGE, thumbnail_data_uri
from evolink.simulator import EvoLinkSimulator, render_png
from prefect_evolink.blocks import LocalAssetStorage
from prefect_evolink.blocks.credentials import EvoLinkCredentials
from prefect_evolink.tasks.campaign_report import COST_COLUMNS
from tests.browser import Chromium, Page, PrefectServer, chromium_path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "briefs" / "spring-launch.yaml"
CAMPAIGN = "aurora-spring-launch"
ASSETS = ["launch-banner", "social-square", "story-vertical", "product-shot"]
DRAFTS = 4
WIDTH, HEIGHT = 1440, 900
DESCRIPTION_LIMIT = 400_000  # the largest description seen stored and rendered (prefect-notes)


# --- JavaScript run in the page ------------------------------------------------------------

DIALOG = """(() => {
  const dialog = document.querySelector('[role=dialog]');
  if (!dialog) return null;
  const images = [...dialog.querySelectorAll('img')];
  const card = dialog.querySelector('.p-modal__card') || dialog;  // the older UI's box
  const box = card.getBoundingClientRect();
  return {
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    sizes: images.map(i => [i.naturalWidth, Math.round(i.getBoundingClientRect().width)]),
    alts: images.map(i => i.alt),
    labels: [...dialog.querySelectorAll('th')].map(t => t.innerText.trim()),
    text: dialog.innerText,
    width: Math.round(box.width),
    sideways: [...dialog.querySelectorAll('*')]
      .filter(e => e.clientWidth > 1 && e.scrollWidth > e.clientWidth + 1)  // sr-only: 1 px
      .map(e => `${e.tagName}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`),
    outside: images.filter(i => i.getBoundingClientRect().right > box.right + 1).length,
  };
})()"""

OVERFLOW = """(() => {
  const column = document.querySelector('.p-layout-well__content')
    || [...document.querySelectorAll('main .min-w-0')]
         .find(e => e.getBoundingClientRect().width > 300);
  if (!column) return ['no content column found'];
  const limit = column.getBoundingClientRect().right + 1;
  const name = e => `${e.tagName.toLowerCase()}.${String(e.className).split(' ')[0]} `
    + JSON.stringify((e.innerText || e.getAttribute('src') || '').slice(0, 50));
  const bad = [];
  const page = document.scrollingElement;
  if (page.scrollWidth > innerWidth) bad.push(`the page scrolls sideways: ${page.scrollWidth}px`);
  for (const e of document.body.querySelectorAll('*')) {
    const r = e.getBoundingClientRect();
    if (!r.width || !r.height) continue;
    if (r.right > innerWidth + 1) bad.push(`${name(e)} ends at ${Math.round(r.right)}px`);
    else if (column.contains(e) && r.right > limit)
      bad.push(`${name(e)} ends at ${Math.round(r.right)}px, past the column (${limit}px)`);
    if (e.clientWidth > 1 && e.scrollWidth > e.clientWidth + 1)  // sr-only text is 1 px
      bad.push(`${name(e)} holds ${e.scrollWidth}px in ${e.clientWidth}px`);
  }
  return bad.slice(0, 10);
})()"""

COST_TABLE = """(() => {
  const table = document.querySelector('table');
  if (!table) return null;
  let box = table.parentElement;
  while (box && getComputedStyle(box).overflowX === 'visible') box = box.parentElement;
  const right = Math.min(innerWidth, box ? box.getBoundingClientRect().right : innerWidth) + 1;
  const headers = [...table.querySelectorAll('thead th')];
  const names = headers.map(h => h.innerText.trim());
  const billed = names.indexOf('Billed');
  const cells = billed < 0 ? [] : [...table.querySelectorAll('tbody tr')]
    .map(row => row.children[billed]).filter(Boolean);
  const seen = e => {
    const r = e.getBoundingClientRect();
    return r.left >= 0 && r.right <= right && r.top >= 0 && r.bottom <= innerHeight;
  };
  return {
    headers: names,
    billed: cells.map(c => c.innerText.trim()),
    hidden: [...headers, ...cells].filter(e => !seen(e)).map(e => e.innerText.trim()),
    box: box ? [box.scrollWidth, box.clientWidth] : null,
    page: [document.scrollingElement.scrollWidth, innerWidth],
  };
})()"""

SHEET = """(() => {
  const body = document.querySelector('.prose') || document.querySelector('.artifact-data-view');
  if (!body) return null;
  const images = [...body.querySelectorAll('img')];
  return {
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    sizes: images.map(i => [i.naturalWidth, Math.round(i.getBoundingClientRect().width)]),
    alts: images.map(i => i.alt),
    labels: [...body.querySelectorAll('th')].map(t => t.innerText.trim()),
    text: document.body.innerText,
  };
})()"""

IMAGES_DONE = "[...document.images].every(i => i.complete)"


# --- the stack -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's Chromium; installed with apt-get when missing and this is root with apt-get."""
    found = chromium_path()
    if found:
        return found
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        pytest.skip(
            "Chromium is not installed and cannot be installed here (needs root and apt-get); "
            "run `apt-get install -y chromium` to run the browser tests"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    attempts: list[str] = []
    for command in (
        ["apt-get", "install", "-y", "chromium"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "chromium"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        attempts.append(f"$ {' '.join(command)} → {done.returncode}\n{done.stderr[-1500:]}")
        if command[1] == "install" and done.returncode == 0 and chromium_path():
            return str(chromium_path())
    pytest.fail("apt-get could not install Chromium:\n" + "\n".join(attempts))


@dataclass
class Stack:
    server: PrefectServer
    simulator: EvoLinkSimulator
    page: Page
    assets: Path
    shots: Path

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.server.api_url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None

    def open(self, path: str, ready: str, what: str, timeout: float = 45) -> None:
        """Load a UI page and wait until `ready` (JavaScript) holds and its images decoded."""
        self.page.goto(f"{self.server.url}{path}")
        self.page.wait_for(ready, timeout=timeout, what=what)
        self.page.wait_for(IMAGES_DONE, timeout=15, what=f"the images of {what}")
        time.sleep(0.3)  # the last layout pass after the images

    def shot(self, name: str) -> Path:
        return self.page.screenshot(self.shots / f"{name}.png")

    def artifacts(self, flow_run_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api(
            "POST",
            "/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        )
        return found


@dataclass
class Run:
    """A campaign run in a thread of this process, against the stack's server."""

    thread: threading.Thread
    outcome: dict[str, Any]
    flow_run_id: str | None = None

    def result(self, timeout: float = 120) -> CampaignManifest:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the campaign run did not finish"
        assert "error" not in self.outcome, repr(self.outcome.get("error"))
        manifest: CampaignManifest = self.outcome["manifest"]
        return manifest


def start_campaign(stack: Stack, selection: str) -> Run:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    from prefect_evolink.flows.campaign import run_campaign

    credentials = EvoLinkCredentials(
        api_key=stack.simulator.api_key,
        base_url=stack.simulator.base_url,
        poll_min_interval=0.05,
        poll_max_interval=0.2,
    )
    outcome: dict[str, Any] = {}

    def target() -> None:
        settings = {PREFECT_API_URL: stack.server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        try:
            with temporary_settings(settings):
                outcome["manifest"] = asyncio.run(
                    run_campaign(
                        str(EXAMPLE),
                        selection=selection,  # type: ignore[arg-type]
                        approval_timeout_seconds=600,
                        approval_poll_seconds=1,
                        poll_deadline_seconds=60,
                        credentials=credentials,
                        storage=LocalAssetStorage(base_dir=str(stack.assets)),
                    )
                )
        except BaseException as error:  # reported by Run.result
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True, name=f"campaign-{selection}")
    thread.start()
    return Run(thread, outcome)


@pytest.fixture(scope="module")
def stack(chromium_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    shots = Path(os.environ.get("EVOLINK_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        work = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="evolink-ui-")))
        (work / "home").mkdir()
        server = cleanup.enter_context(PrefectServer(work / "home", work / "server.log"))
        simulator = cleanup.enter_context(EvoLinkSimulator(generation_seconds=0.3, seed=7))
        browser = cleanup.enter_context(Chromium(chromium_executable))
        try:
            yield Stack(server, simulator, browser.new_page(WIDTH, HEIGHT), work / "assets", shots)
        except BaseException:
            print(f"--- prefect server log ---\n{server.tail(60)}", file=sys.stderr)
            raise
        finally:
            print(f"\nUI screenshots: {shots}", file=sys.stderr)


@pytest.fixture(scope="module")
def earlier_run(stack: Stack) -> CampaignManifest:
    """An automatic run first: every asset gets a final, keyed artifacts and all."""
    manifest = start_campaign(stack, "auto").result()
    assert [o.status for o in manifest.assets] == [AssetStatus.FINAL] * 4
    return manifest


@pytest.fixture(scope="module")
def paused_run(stack: Stack, earlier_run: CampaignManifest) -> Iterator[Run]:
    """The approval run, paused for review (its drafts are the earlier run's: paid once)."""
    run = start_campaign(stack, "approval")
    deadline = time.monotonic() + 90
    while run.flow_run_id is None:
        assert run.thread.is_alive(), f"the approval run ended: {run.outcome}"
        assert time.monotonic() < deadline, "the approval run never paused"
        paused = stack.api(
            "POST", "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}
        )
        if paused:
            run.flow_run_id = paused[0]["id"]
        else:
            time.sleep(0.3)
    yield run
    if run.thread.is_alive():  # a test failed before submitting: end the run cleanly
        resume_from_code(stack, run, {a.replace("-", "_"): "reject" for a in ASSETS})
        run.thread.join(60)


def resume_from_code(stack: Stack, run: Run, answer: dict[str, str]) -> None:
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.server.api_url}):
        resume_flow_run(run.flow_run_id, run_input=answer)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def finished_run(stack: Stack, paused_run: Run) -> tuple[Run, CampaignManifest]:
    """The approval run after its review (submitted in the browser by the dialog test)."""
    if paused_run.thread.is_alive() and "submitted" not in paused_run.outcome:
        resume_from_code(stack, paused_run, {"launch_banner": "image-1", "social_square": "reject"})
    return paused_run, paused_run.result()


# --- the Resume dialog ---------------------------------------------------------------------


def wait_for_dialog(stack: Stack) -> dict[str, Any]:
    found: dict[str, Any] = stack.page.wait_for(
        f"(() => {{ const d = {DIALOG}; return d && d.images && d.loaded === d.images && d; }})()",
        what="the Resume dialog with its thumbnails decoded",
    )
    return found


def open_resume_dialog_v2(stack: Stack, run: Run) -> dict[str, Any]:
    stack.open(
        f"/v2/runs/flow-run/{run.flow_run_id}",
        "document.body.innerText.includes('Paused') && [...document.querySelectorAll('button')]"
        ".some(b => b.textContent.includes('Open menu'))",
        "the paused run's page (default UI)",
    )
    stack.page.evaluate(
        """(() => {
          const menu = [...document.querySelectorAll('button')]
            .find(b => b.textContent.includes('Open menu'));
          menu.dispatchEvent(new PointerEvent('pointerdown', {bubbles: true}));
        })()"""
    )
    stack.page.wait_for(
        "[...document.querySelectorAll('[role=menuitem]')].some(e => e.textContent === 'Resume')",
        what="the run menu's Resume item",
    )
    stack.page.click_text("[role=menuitem]", "Resume")
    return wait_for_dialog(stack)


def open_resume_dialog_v1(stack: Stack, run: Run) -> dict[str, Any]:
    stack.open(
        f"/runs/flow-run/{run.flow_run_id}",
        "[...document.querySelectorAll('button')].some(b => b.textContent.trim() === 'Resume')",
        "the paused run's page (older UI)",
    )
    stack.page.click_text("button", "Resume")
    return wait_for_dialog(stack)


def assert_dialog_shows_the_drafts(dialog: dict[str, Any]) -> None:
    labels = [f"image-{i}" for i in range(DRAFTS)]
    assert dialog["images"] == dialog["loaded"] == len(ASSETS) * DRAFTS, dialog["sizes"]
    assert dialog["labels"] == labels * len(ASSETS)  # exactly the form's options
    assert dialog["alts"] == labels * len(ASSETS)
    for natural, shown in dialog["sizes"]:
        assert 0 < natural <= REVIEW_EDGE and 0 < shown <= natural + 1  # never stretched
    for asset in ASSETS:
        assert f"{asset} — final ≈ $" in dialog["text"]
    assert dialog["outside"] == 0 and dialog["sideways"] == [], dialog["sideways"]


def test_resume_dialog_shows_the_drafts_in_the_default_ui(stack: Stack, paused_run: Run) -> None:
    description = httpx.get(
        f"{stack.server.api_url}/flow_runs/{paused_run.flow_run_id}/input/"
        "paused-review-description",
        timeout=10,
    )
    assert description.status_code == 200
    size = len(description.content)
    print(f"\nResume dialog description: {size:,} bytes for {len(ASSETS)}×{DRAFTS} drafts")
    assert 0 < size < DESCRIPTION_LIMIT

    dialog = open_resume_dialog_v2(stack, paused_run)
    stack.shot("1-resume-dialog-v2")
    assert_dialog_shows_the_drafts(dialog)
    assert "Choose one draft per asset" in dialog["text"]


def test_reviewer_chooses_in_the_resume_dialog_and_the_run_resumes(
    stack: Stack, paused_run: Run
) -> None:
    """In the older UI, whose dialog is the narrowest (512 px): pick, submit, and the run
    uses exactly what was picked."""
    dialog = open_resume_dialog_v1(stack, paused_run)
    stack.shot("2-resume-dialog-v1")
    assert_dialog_shows_the_drafts(dialog)
    assert dialog["width"] <= 512

    selects = stack.page.evaluate(
        """[...document.querySelectorAll('[role=dialog] select')]
             .filter(s => s.options.length > 1)
             .map(s => ({value: s.value, options: [...s.options].map(o => o.value)}))"""
    )
    options = [f"image-{i}" for i in range(DRAFTS)] + ["reject"]
    assert [s["options"] for s in selects] == [options] * len(ASSETS)
    suggested = int(selects[0]["value"].removeprefix("image-"))
    chosen = (suggested + 1) % DRAFTS  # not the suggestion: the form really carried it
    stack.page.evaluate(
        f"""(() => {{
          const selects = [...document.querySelectorAll('[role=dialog] select')]
            .filter(s => s.options.length > 1);
          const pick = (select, value) => {{
            select.value = value;
            select.dispatchEvent(new Event('input', {{bubbles: true}}));
            select.dispatchEvent(new Event('change', {{bubbles: true}}));
          }};
          pick(selects[0], 'image-{chosen}');
          pick(selects[1], 'reject');
        }})()"""
    )
    stack.shot("3-resume-dialog-v1-chosen")
    stack.page.click_text("[role=dialog] button", "Submit")
    paused_run.outcome["submitted"] = True
    stack.page.wait_for("!document.querySelector('[role=dialog]')", what="the dialog to close")

    manifest = paused_run.result()
    outcomes = {o.asset: o for o in manifest.assets}
    banner, square = outcomes["launch-banner"], outcomes["social-square"]
    assert (banner.status, banner.chosen_draft) == (AssetStatus.FINAL, chosen)
    assert (square.status, square.detail) == (AssetStatus.REJECTED, "rejected by reviewer")
    for asset in ("story-vertical", "product-shot"):
        assert outcomes[asset].status is AssetStatus.FINAL
    run = stack.api("GET", f"/flow_runs/{paused_run.flow_run_id}")
    assert run["state_type"] == "COMPLETED"


# --- artifacts -----------------------------------------------------------------------------


def artifact_of(stack: Stack, run: Run, key: str) -> dict[str, Any]:
    assert run.flow_run_id is not None
    [found] = [a for a in stack.artifacts(run.flow_run_id) if a["key"] == key]
    return found


def test_cost_table_fits_a_1440_px_screen(
    stack: Stack, finished_run: tuple[Run, CampaignManifest]
) -> None:
    run, manifest = finished_run
    artifact = artifact_of(stack, run, f"{CAMPAIGN}-cost")
    expected = [usd(row.billed_usd) for row in manifest.jobs] + ["—"]  # + the rejected asset
    for ui, prefix in (("v2", "/v2"), ("v1", "")):
        stack.open(
            f"{prefix}/artifacts/artifact/{artifact['id']}",
            "document.querySelectorAll('tbody tr').length > 0",
            f"the cost table ({ui})",
        )
        stack.shot(f"4-cost-table-{ui}")
        table = stack.page.evaluate(COST_TABLE)
        assert table["headers"] == list(COST_COLUMNS), ui
        assert table["billed"] == expected, ui
        assert table["hidden"] == [], f"{ui}: off screen at {WIDTH}px: {table['hidden']}"
        scroll, client = table["box"]
        assert scroll <= client + 1, f"{ui}: the table scrolls sideways ({scroll} > {client})"
        assert table["page"][0] <= WIDTH, f"{ui}: the page scrolls sideways"


def test_contact_sheet_shows_every_final(
    stack: Stack, finished_run: tuple[Run, CampaignManifest]
) -> None:
    run, manifest = finished_run
    finals = [o for o in manifest.assets if o.status is AssetStatus.FINAL and o.final]
    artifact = artifact_of(stack, run, f"{CAMPAIGN}-finals")
    for ui, prefix in (("v2", "/v2"), ("v1", "")):
        stack.open(
            f"{prefix}/artifacts/artifact/{artifact['id']}",
            "document.querySelectorAll('th').length > 0",
            f"the contact sheet ({ui})",
        )
        stack.shot(f"5-contact-sheet-{ui}")
        sheet = stack.page.evaluate(SHEET)
        assert sheet["images"] == sheet["loaded"] == len(finals) == 3, ui
        assert sheet["alts"] == [o.asset for o in finals]
        for natural, shown in sheet["sizes"]:
            assert 0 < natural <= SHEET_EDGE and 0 < shown <= natural + 1, (ui, sheet["sizes"])
        assert sheet["labels"] == ASSETS
        assert "no final: rejected" in sheet["text"]
        for outcome in finals:
            assert outcome.final is not None
            image = outcome.final.images[0]
            assert image.uri in sheet["text"].replace("\n", "")  # may wrap, never cut
            assert f"{image.width}x{image.height}" in sheet["text"].replace("×", "x")
        assert "Image URL" not in sheet["text"] and "data:image" not in sheet["text"]


def test_no_artifact_page_is_wider_than_its_column(
    stack: Stack, finished_run: tuple[Run, CampaignManifest]
) -> None:
    run, _ = finished_run
    assert run.flow_run_id is not None
    artifacts = sorted(stack.artifacts(run.flow_run_id), key=lambda a: a["key"])
    assert {a["key"] for a in artifacts} >= {
        f"{CAMPAIGN}-{name}"
        for name in ("cost", "cost-details", "summary", "progress", "review", "finals")
    } | {f"{CAMPAIGN}-{asset}-final" for asset in ASSETS}
    assert all(a["type"] != "image" for a in artifacts)

    # The check itself: the image artifact with a data URI as its URL is caught.
    control = stack.api(
        "POST",
        "/artifacts/",
        {
            "key": "ui-test-overflow-control",
            "type": "image",
            "data": thumbnail_data_uri(render_png(320, 240, "control"), 160),
        },
    )
    stack.open(
        f"/v2/artifacts/artifact/{control['id']}",
        "document.body.innerText.includes('ui-test-overflow-control')",
        "the known-bad control",
    )
    assert stack.page.evaluate(OVERFLOW), "the overflow check misses a data-URI line"

    problems: dict[str, list[str]] = {}
    for artifact in artifacts:
        key = artifact["key"]
        for ui, prefix in (("v2", "/v2"), ("v1", "")):
            stack.open(
                f"{prefix}/artifacts/artifact/{artifact['id']}",
                f"document.body.innerText.includes({json.dumps(artifact['description'][:30])})",
                f"artifact {key} ({ui})",
            )
            if key.endswith(("-review", "-summary", "-cost-details", "social-square-final")):
                stack.shot(f"6-{key.removeprefix(CAMPAIGN + '-')}-{ui}")
            found = stack.page.evaluate(OVERFLOW)
            if found:
                problems[f"{key} ({ui})"] = found
    assert problems == {}, json.dumps(problems, indent=1)


def test_artifacts_page_does_not_show_a_rejected_final_as_current(
    stack: Stack, earlier_run: CampaignManifest, finished_run: tuple[Run, CampaignManifest]
) -> None:
    """The earlier run made social-square's final; the approval run rejected it."""
    key = f"{CAMPAIGN}-social-square-final"
    card = f"""(() => {{
      const text = document.body.innerText;
      const at = text.indexOf({json.dumps(key)});
      return at >= 0 && text.slice(at, at + 400);
    }})()"""
    for ui, prefix in (("v2", "/v2"), ("v1", "")):
        stack.open(f"{prefix}/artifacts", f"document.body.innerText.includes('{key}')", ui)
        stack.shot(f"7-artifacts-page-{ui}")
        text = stack.page.evaluate(card)
        assert "No current final of social-square — rejected" in text, (ui, text)
        banner = stack.page.evaluate(card.replace("social-square", "launch-banner"))
        assert "Current final of launch-banner" in banner, (ui, banner)
