"""The Prefect UI as reviewers and managers see it: a real headless Chromium (Debian's, driven
by Playwright — tests/browser.py) looking at a real `prefect server`, with campaigns run on the
EvoLink simulator.

Everything is asserted from what the browser rendered — elements, their sizes and positions,
images that decoded — never from a page merely loading:

- the Resume dialog of a paused approval run shows every draft as a thumbnail labelled like the
  form's options, in both Prefect UIs; the reviewer fills in the form in the browser (clicks and
  option choices, as a person makes them) and submits it, and the run completes with exactly
  the drafts chosen there: each final is made from its chosen draft, the rejected asset has none;
- the cost table's headers and its Billed column fit a 1,440-px screen without sideways scrolling;
- the summary shows the spend by stage, the total and every asset's outcome and chosen draft;
- the contact sheet shows every final, and each asset's final artifact its final (the picture
  decoded, its size, the draft it came from) or why it has none;
- no artifact page of the run has anything wider than its content column or the window (a
  known-bad artifact proves the check catches the issue's data-URI line);
- the Artifacts page shows an asset that a later run rejected as having no current final.

One module-scoped stack serves every test: the server (temporary PREFECT_HOME, SQLite, its own
process group), the simulator and Chromium, all stopped at the end, also when a test fails (no
process of the browser may outlive it). Two runs of the example brief (4 assets × 4 drafts): an
automatic one, then an approval one. The default UI is at `/v2/…`; the older one (where the flow
log's "View at" link goes) at `/…`.

Screenshots land in a temporary directory printed at the end (or EVOLINK_UI_SCREENSHOTS=DIR).
Chromium is installed by the `chromium_executable` fixture when missing and possible (root with
apt-get); otherwise — or when Playwright cannot start it — these tests are skipped, saying why.
None of Playwright's own browsers is used or downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
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
from prefect_evolink.tasks.campaign_report import COST_COLUMNS, outcome_words
from prefect_evolink.tasks.recovery import manifest_key
from tests.browser import BrowserUnavailable, Chromium, Page, PrefectServer, chromium_path

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

FIELDS = """[...document.querySelectorAll('[role=dialog] .schema-form-property')]
  .filter(p => p.querySelector('.p-select-button__control'))
  .map(p => ({label: p.querySelector('.schema-form-property__label').innerText.trim(),
              value: p.querySelector('.p-select-button__value').innerText.trim()}))"""

OPTIONS = "[...document.querySelectorAll('[role=listbox] [role=option]')].map(o => o.innerText)"

TABLES = """(() => {
  const body = document.querySelector('.prose') || document.querySelector('.artifact-data-view');
  if (!body) return null;
  return {
    tables: [...body.querySelectorAll('table')].map(t => [...t.querySelectorAll('tbody tr')]
      .map(r => [...r.children].map(c => c.innerText.trim()))),
    text: body.innerText,
    sideways: [...body.querySelectorAll('table')].filter(t => t.scrollWidth > t.clientWidth + 1)
      .length,
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


def start_campaign(stack: Stack, selection: str, brief: Path = EXAMPLE, **options: Any) -> Run:
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
                    run_campaign.aio(
                        str(brief),
                        selection=selection,  # type: ignore[arg-type]
                        approval_timeout_seconds=600,
                        approval_poll_seconds=1,
                        poll_deadline_seconds=60,
                        credentials=credentials,
                        storage=LocalAssetStorage(base_dir=str(stack.assets)),
                        **options,
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
    browser = Chromium(chromium_executable)
    with ExitStack() as cleanup:
        try:
            cleanup.enter_context(browser)
        except BrowserUnavailable as why:
            pytest.skip(f"the browser tests need a Chromium that Playwright can drive: {why}")
        print(f"\nChromium {browser.version} ({chromium_executable}), driven by Playwright")
        work = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="evolink-ui-")))
        (work / "home").mkdir()
        server = cleanup.enter_context(PrefectServer(work / "home", work / "server.log"))
        simulator = cleanup.enter_context(EvoLinkSimulator(generation_seconds=0.3, seed=7))
        try:
            yield Stack(server, simulator, browser.new_page(WIDTH, HEIGHT), work / "assets", shots)
        except BaseException:
            print(f"--- prefect server log ---\n{server.tail(60)}", file=sys.stderr)
            raise
        finally:
            print(f"\nUI screenshots: {shots}", file=sys.stderr)
    assert browser.processes() == [], "browser processes outlived the tests"


@pytest.fixture(scope="module")
def earlier_run(stack: Stack) -> CampaignManifest:
    """An automatic run first: every asset gets a final, keyed artifacts and all."""
    manifest = start_campaign(stack, "auto").result()
    assert [o.status for o in manifest.assets] == [AssetStatus.FINAL] * 4
    return manifest


def wait_until_paused(stack: Stack, run: Run, timeout: float) -> Run:
    """`run` once it is paused for review (its flow run id set); fails if it ends first."""
    deadline = time.monotonic() + timeout
    while run.flow_run_id is None:
        assert run.thread.is_alive(), f"the run ended before its review: {run.outcome}"
        assert time.monotonic() < deadline, "the run never paused for review"
        paused = stack.api(
            "POST", "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}
        )
        if paused:
            run.flow_run_id = paused[0]["id"]
        else:
            time.sleep(0.3)
    return run


@pytest.fixture(scope="module")
def paused_run(stack: Stack, earlier_run: CampaignManifest) -> Iterator[Run]:
    """The approval run, paused for review (its drafts are the earlier run's: paid once)."""
    run = wait_until_paused(stack, start_campaign(stack, "approval"), 90)
    yield run
    if run.thread.is_alive():  # a test failed before submitting: end the run cleanly
        resume_from_code(stack, run, {a.replace("-", "_"): "reject" for a in ASSETS})
        run.thread.join(60)


def resume_from_code(stack: Stack, run: Run, answer: dict[str, str]) -> None:
    """In a thread of its own: Playwright's sync API marks its event loop as this thread's
    running loop, where Prefect's sync-compatible calls would not run."""
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    failure: list[BaseException] = []

    def resume() -> None:
        try:
            with temporary_settings({PREFECT_API_URL: stack.server.api_url}):
                resume_flow_run(run.flow_run_id, run_input=answer)  # type: ignore[arg-type]
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=resume, name="resume-from-code")
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and not failure, failure


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
    stack.page.click("button", text="Open menu")
    stack.page.wait_for(
        "[...document.querySelectorAll('[role=menuitem]')].some(e => e.textContent === 'Resume')",
        what="the run menu's Resume item",
    )
    stack.page.click("[role=menuitem]", text="Resume")
    return wait_for_dialog(stack)


def open_resume_dialog_v1(stack: Stack, run: Run) -> dict[str, Any]:
    stack.open(
        f"/runs/flow-run/{run.flow_run_id}",
        "[...document.querySelectorAll('button')].some(b => b.textContent.trim() === 'Resume')",
        "the paused run's page (older UI)",
    )
    stack.page.click("button", text="Resume")
    return wait_for_dialog(stack)


def open_choices(stack: Stack, at: int) -> list[str]:
    """Open the options of the form's `at`-th field as a person does, and list them. The older
    UI's select is a button with a pop-over list (the native `<select>` only where the pointer
    cannot hover); a mouse click in the Resume dialog focuses it but its pop-over closes again
    at once, so it is opened from the keyboard, as the UI offers (arrow down)."""
    # The last field's list must be gone first: while it closes, its options would pass for
    # this field's (and a click on them would land nowhere).
    stack.page.wait_for("!document.querySelector('[role=listbox]')", what="no open list")
    control = stack.page.tab.locator("[role=dialog] button.p-select-button__control").nth(at)
    control.click()
    control.press("ArrowDown")
    found: list[str] = stack.page.wait_for(
        f"(() => {{ const o = {OPTIONS}; return o.length > 0 && o.map(t => t.trim()); }})()",
        what=f"the options of field {at}",
    )
    return found


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
    """In the older UI, whose dialog is the narrowest (512 px): the reviewer picks in the form
    (a draft that is not the suggestion for one asset, reject for another, the suggestions for
    the rest), submits, and the run completes with exactly what the form held."""
    dialog = open_resume_dialog_v1(stack, paused_run)
    stack.shot("2-resume-dialog-v1")
    assert_dialog_shows_the_drafts(dialog)
    assert dialog["width"] <= 512

    fields = stack.page.evaluate(FIELDS)
    assert [f["label"] for f in fields] == [f"{asset} (Optional)" for asset in ASSETS]
    options = [f"image-{i}" for i in range(DRAFTS)] + ["reject"]
    suggested = {asset: f["value"] for asset, f in zip(ASSETS, fields, strict=True)}
    assert set(suggested.values()) <= set(options[:-1]), suggested  # a draft suggested each
    for at in range(len(ASSETS)):
        assert open_choices(stack, at) == options, ASSETS[at]
        stack.page.tab.keyboard.press("Escape")
    chosen = (int(suggested[ASSETS[0]].removeprefix("image-")) + 1) % DRAFTS  # not suggested
    expected = {**suggested, ASSETS[0]: f"image-{chosen}", ASSETS[1]: "reject"}
    for at, value in ((0, f"image-{chosen}"), (1, "reject")):
        open_choices(stack, at)
        stack.page.click("[role=listbox] [role=option]", text=re.compile(f"^{value}$"))
        stack.page.wait_for(
            f"{FIELDS}[{at}].value === {json.dumps(value)}", what=f"field {at} to show {value}"
        )
    form = {f["label"].removesuffix(" (Optional)"): f["value"] for f in stack.page.evaluate(FIELDS)}
    assert form == expected, "the form does not hold what was chosen"
    stack.shot("3-resume-dialog-v1-chosen")
    stack.page.click("[role=dialog] button", text="Submit")
    paused_run.outcome["submitted"] = True
    stack.page.wait_for("!document.querySelector('[role=dialog]')", what="the dialog to close")

    manifest = paused_run.result()
    outcomes = {o.asset: o for o in manifest.assets}
    for asset, choice in form.items():
        outcome = outcomes[asset]
        if choice == "reject":
            assert (outcome.status, outcome.detail) == (
                AssetStatus.REJECTED,
                "rejected by reviewer",
            ), asset
            assert outcome.final is None, asset
            continue
        assert (outcome.status, outcome.chosen_draft) == (
            AssetStatus.FINAL,
            int(choice.removeprefix("image-")),
        ), asset
        assert outcome.drafts is not None and outcome.final is not None, asset
        [draft] = [i for i in outcome.drafts.images if i.index == outcome.chosen_draft]
        # The final was generated from the chosen draft: its reference is that draft's link.
        assert outcome.final.request.image_urls, asset
        assert outcome.final.request.image_urls[0] == draft.source_url, asset
        assert outcome.final.images, asset
    assert outcomes[ASSETS[0]].chosen_draft == chosen
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
        # the default UI shows a table 10 rows a page; the example's adaptations make it longer
        shown = table["billed"]
        assert shown == expected[: len(shown)], ui
        assert len(shown) == (min(len(expected), 10) if ui == "v2" else len(expected)), ui
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
        # one row per asset: its final, then its adaptations (the example's banner has two)
        pictures = [
            (label, image)
            for o in finals
            if o.final is not None
            for label, image in [
                (o.asset, o.final.images[0]),
                *((f"{o.asset} · {a.id}", a.record.images[0]) for a in o.adaptations if a.record),
            ]
        ]
        assert sheet["images"] == sheet["loaded"] == len(pictures) == 3 + 2, ui
        assert sheet["alts"] == [label for label, _ in pictures]
        for natural, shown in sheet["sizes"]:
            assert 0 < natural <= SHEET_EDGE and 0 < shown <= natural + 1, (ui, sheet["sizes"])
        assert sheet["labels"] == [
            "launch-banner",
            "launch-banner · story",
            "launch-banner · de",
            *ASSETS[1:],
        ]
        assert "no final: rejected" in sheet["text"]
        for _, image in pictures:
            assert image.uri in sheet["text"].replace("\n", "")  # may wrap, never cut
            assert f"{image.width}x{image.height}" in sheet["text"].replace("×", "x")
        assert "Image URL" not in sheet["text"] and "data:image" not in sheet["text"]


def test_summary_shows_the_spend_and_the_chosen_drafts(
    stack: Stack, finished_run: tuple[Run, CampaignManifest]
) -> None:
    run, manifest = finished_run
    artifact = artifact_of(stack, run, f"{CAMPAIGN}-summary")
    totals = manifest.totals
    outcomes = [
        [o.asset, o.status.value, "-" if o.chosen_draft is None else f"image-{o.chosen_draft}"]
        for o in manifest.assets
    ]
    for ui, prefix in (("v2", "/v2"), ("v1", "")):
        stack.open(
            f"{prefix}/artifacts/artifact/{artifact['id']}",
            "document.querySelectorAll('tbody tr').length > 0",
            f"the summary ({ui})",
        )
        stack.shot(f"5-summary-{ui}")
        summary = stack.page.evaluate(TABLES)
        assert summary is not None and len(summary["tables"]) == 2, (ui, summary)
        spend, assets = summary["tables"]
        money = {row[0]: row[1] for row in spend}
        assert {stage: money.get(stage) for stage in totals.by_stage} == {
            stage: usd(amount) for stage, amount in totals.by_stage.items()
        }, ui
        billed = f"{usd(totals.billed_usd)} ({totals.billed_credits} credits)"
        assert money["total billed"] == billed, ui
        assert money["budget"].startswith(usd(manifest.budget_usd)), ui
        assert [row[:3] for row in assets] == outcomes, ui
        assert f"Run: {manifest.run_state}" in summary["text"], ui
        assert summary["sideways"] == 0, ui


def test_each_final_artifact_shows_its_final_or_why_there_is_none(
    stack: Stack, finished_run: tuple[Run, CampaignManifest]
) -> None:
    run, manifest = finished_run
    for outcome in manifest.assets:
        artifact = artifact_of(stack, run, f"{CAMPAIGN}-{outcome.asset}-final")
        for ui, prefix in (("v2", "/v2"), ("v1", "")):
            heading = json.dumps(f"{outcome.asset} — ")
            stack.open(
                f"{prefix}/artifacts/artifact/{artifact['id']}",
                f"(() => {{ const b = document.querySelector('.prose')"
                f" || document.querySelector('.artifact-data-view');"
                f" return b && b.innerText.includes({heading}); }})()",
                f"the final of {outcome.asset} ({ui})",
            )
            stack.shot(f"5-{outcome.asset}-final-{ui}")
            view = stack.page.evaluate(SHEET)
            text = view["text"].replace("\n", "").replace("×", "x")
            if outcome.status is not AssetStatus.FINAL or outcome.final is None:
                assert view["images"] == 0, (ui, outcome.asset)
                assert f"No current final — {outcome_words(outcome)}" in view["text"], ui
                continue
            image = outcome.final.images[0]
            # the final, then its adaptations (the example's banner has two)
            made = [a.id for a in outcome.adaptations if a.record is not None]
            assert view["images"] == view["loaded"] == 1 + len(made), (ui, outcome.asset)
            assert view["alts"] == [outcome.asset, *made], ui
            for natural, shown in view["sizes"]:
                assert 0 < natural <= SHEET_EDGE and 0 < shown <= natural + 1, (ui, view["sizes"])
            assert f"from draft: image-{outcome.chosen_draft}" in view["text"], ui
            assert f"size: {image.width}x{image.height}" in text, ui
            assert image.uri in text, ui


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

    # The check itself: the issue's image artifact with a data URI as its URL is caught.
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


# --- the browser itself --------------------------------------------------------------------


def test_every_browser_process_stops_also_when_a_test_fails(chromium_executable: str) -> None:
    """The `Chromium` block ends every process of its browser, also when its body raises. (In a
    thread of its own: the module's browser may still be open in this one.)"""
    if not Path("/proc").is_dir():
        pytest.skip("finds the browser's processes in /proc (Linux)")
    seen: dict[str, Any] = {}

    def failing_test() -> None:
        try:
            with Chromium(chromium_executable) as browser:
                seen["browser"] = browser
                page = browser.new_page(WIDTH, HEIGHT)
                page.tab.set_content("<p style='width: 100%'>a page</p>")
                seen["width"] = page.evaluate("document.querySelector('p').offsetWidth")
                seen["pids"] = browser.processes()
                raise RuntimeError("a failing test")
        except BaseException as error:
            seen["error"] = error

    thread = threading.Thread(target=failing_test, name="failing-browser-test")
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    if isinstance(seen.get("error"), BrowserUnavailable):
        pytest.skip(f"the browser tests need a Chromium that Playwright can drive: {seen['error']}")
    assert str(seen.get("error")) == "a failing test", repr(seen.get("error"))
    assert 0 < seen["width"] <= WIDTH
    assert len(seen["pids"]) > 1, "the browser and its helpers were not found"
    assert seen["browser"].processes() == []
    assert [pid for pid in seen["pids"] if Path(f"/proc/{pid}").exists()] == []


def test_a_review_of_many_assets_is_made_with_two_pick_lists_in_the_dialog(
    stack: Stack, finished_run: tuple[Run, CampaignManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `REVIEW_FIELDS_MAX` assets (lowered so the example's 4 count as many) the default
    UI's Resume dialog shows two pick lists instead of a field per asset: the reviewer rejects
    one asset and picks another draft for a second, and every other asset gets its suggested
    draft."""
    from prefect_evolink.flows import campaign_review_form

    monkeypatch.setattr(campaign_review_form, "REVIEW_FIELDS_MAX", 1)
    run = wait_until_paused(stack, start_campaign(stack, "approval"), 90)
    try:
        dialog = open_resume_dialog_v2(stack, run)
        assert_dialog_shows_the_drafts(dialog)
        text = stack.page.evaluate("document.querySelector('[role=dialog]').innerText")
        assert "Every asset's suggested draft becomes its final unless" in text
        suggested = dict(re.findall(r"(\S+) — final ≈ \$[\d.]+ · suggested: (image-\d)", text))
        assert set(suggested) == set(ASSETS), text[:1500]
        rejected, changed = ASSETS[1], ASSETS[0]
        other = (int(suggested[changed].removeprefix("image-")) + 1) % DRAFTS
        pick(stack, "Reject: no final", rejected)
        pick(stack, "Use another draft", f"{changed}: image-{other}")
        stack.shot("4-resume-dialog-v2-many")
        stack.page.click("[role=dialog] button", text="Resume")
        run.outcome["submitted"] = True
        stack.page.wait_for("!document.querySelector('[role=dialog]')", what="the dialog to close")
    finally:
        if run.thread.is_alive() and "submitted" not in run.outcome:
            resume_from_code(stack, run, {"reject": list(ASSETS), "use_instead": []})
    outcomes = {o.asset: o for o in run.result().assets}
    assert outcomes[rejected].status is AssetStatus.REJECTED
    assert (outcomes[changed].status, outcomes[changed].chosen_draft) == (AssetStatus.FINAL, other)
    for asset in set(ASSETS) - {rejected, changed}:
        assert outcomes[asset].status is AssetStatus.FINAL, asset
        assert outcomes[asset].chosen_draft == int(suggested[asset].removeprefix("image-"))


def pick(stack: Stack, field: str, option: str) -> None:
    """Open a pick list of the default UI's Resume form and choose one option, by clicks."""
    stack.page.tab.locator(f"[role=dialog] button[aria-label='Select {field}']").click()
    stack.page.tab.locator("[role=option]", has_text=re.compile(f"^{re.escape(option)}$")).click()
    stack.page.tab.keyboard.press("Escape")  # the list stays open for more picks
    stack.page.wait_for("!document.querySelector('[role=listbox]')", what=f"{field} to close")


# --- a campaign started from the deployment's run form --------------------------------------

FORM_DEPLOYMENT = "campaign-from-form"
FORM_CAMPAIGN = "form-autumn-teaser"
FORM_BUDGET = 3.5
FORM_ASSETS = [
    ("teaser-square", "A pearl-white earbud case on moss, autumn light, product photo.", None),
    ("teaser-wide", "Autumn forest at dawn, earbuds case on a stone, room for a headline.", "3:2"),
]
FORM_DRAFTS = 2

SERVE = """
import json, sys
from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect_evolink.flows.campaign import run_campaign

serve(run_campaign.to_deployment(
    name=sys.argv[1],
    entrypoint_type=EntrypointType.MODULE_PATH,
    parameters=json.loads(sys.argv[2]),
))
"""


def off_the_browser_thread(call: Any, server: PrefectServer) -> Any:
    """Run a Prefect sync-compatible call in a thread of its own, against `server` (Playwright's
    sync API marks its loop as this thread's running loop)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                outcome["value"] = call()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, name="prefect-call")
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and "error" not in outcome, outcome
    return outcome["value"]


@pytest.fixture(scope="module")
def form_deployment(stack: Stack) -> Iterator[tuple[str, Path]]:
    """`run_campaign` served as a deployment with no brief (`serve` in a process of its own, as
    `python -c` would): its credentials point at the simulator and its storage is a local
    directory the test reads, both saved blocks that the deployment references, as
    `prefect-evolink deploy` does. Yields the deployment's id and the storage directory."""
    assets = stack.assets.parent / "form-assets"
    credentials = EvoLinkCredentials(
        api_key=stack.simulator.api_key,
        base_url=stack.simulator.base_url,
        poll_min_interval=0.05,
        poll_max_interval=0.2,
    )
    storage = LocalAssetStorage(base_dir=str(assets))
    ids = off_the_browser_thread(
        lambda: (
            credentials.save("ui-form-simulator", overwrite=True),
            storage.save("ui-form-assets", overwrite=True),
        ),
        stack.server,
    )
    defaults = {
        "credentials": {"$ref": {"block_document_id": str(ids[0])}},
        "storage": {"$ref": {"block_document_id": str(ids[1])}},
        "poll_deadline_seconds": 120,
    }
    home = stack.assets.parent / "serve-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EVOLINK_"))}
    env.update(
        PREFECT_API_URL=stack.server.api_url,
        PREFECT_HOME=str(home),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        EVOLINK_ALLOW_PRIVATE_URLS="true",  # the simulator's result links are on loopback
    )
    log = stack.assets.parent / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, FORM_DEPLOYMENT, json.dumps(defaults)],
            cwd=home,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"serve exited:\n{log.read_text()[-3000:]}"
            found = httpx.get(
                f"{stack.server.api_url}/deployments/name/evolink-campaign/{FORM_DEPLOYMENT}",
                timeout=10,
            )
            if found.status_code == 200:
                break
            assert time.monotonic() < deadline, f"no deployment:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert found.json()["parameters"] == defaults  # no brief: the form must give one
        yield found.json()["id"], assets
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # the runner stops on Ctrl-C
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # its flow-run processes too
        process.wait(timeout=10)
        if sys.exc_info()[0] is not None:
            print(f"--- serve log ---\n{log.read_text()[-4000:]}", file=sys.stderr)


def field(stack: Stack, label: str, at: int = 0) -> Any:
    """The `at`-th input of the run form whose label is exactly `label`."""
    return stack.page.tab.get_by_label(label, exact=True).nth(at)


def test_a_campaign_started_from_the_run_form_stores_both_finals(
    stack: Stack, form_deployment: tuple[str, Path]
) -> None:
    """A marketer's Custom run of a deployment with no brief, in the default UI: the brief's
    own fields (not a file) — campaign name, budget, 2 drafts per asset in the defaults, and
    two assets added to the list, each with its id and prompt, one with its own size — typed
    in as a person types and submitted. The run completes from those parameters and both
    finals are in the deployment's storage."""
    deployment_id, assets = form_deployment
    stack.open(
        f"/v2/deployments/deployment/{deployment_id}/run",
        "document.body.innerText.includes('Campaign name')",
        "the deployment's run form",
    )
    tabs = stack.page.tab.get_by_role("tab")
    assert [t.strip() for t in tabs.all_inner_texts()][:2] == ["Brief", "Brief file"]
    assert tabs.first.get_attribute("aria-selected") == "true", "the brief's fields are shown"
    stack.shot("8-run-form-empty")

    field(stack, "Campaign name").fill(FORM_CAMPAIGN)
    field(stack, "Budget (USD)").fill(str(FORM_BUDGET))
    field(stack, "Drafts per asset (Optional)").fill(str(FORM_DRAFTS))
    add_asset = stack.page.tab.get_by_role("button", name="Add item")
    for at, (asset, prompt, size) in enumerate(FORM_ASSETS):
        add_asset.last.click()  # the list's own button comes after its items' buttons
        field(stack, "Asset id", at).fill(asset)
        field(stack, "Prompt", at).fill(prompt)
        if size is not None:
            field(stack, "Size (Optional)", 1 + at).fill(size)  # 0: the defaults' size
    assert stack.page.tab.get_by_label("Asset id", exact=True).count() == len(FORM_ASSETS)
    stack.shot("8-run-form-filled")
    stack.page.tab.screenshot(path=str(stack.shots / "8-run-form-filled-page.png"), full_page=True)

    created: list[Any] = []  # the form's POST that creates the run (after its schema check)
    stack.page.tab.on(
        "response",
        lambda r: created.append(r) if r.url.endswith("/create_flow_run") else None,
    )
    stack.page.tab.keyboard.press("Tab")  # the last field's edit is committed on leaving it
    # The temporary server is SQLite: under load it may answer a write 503 (database busy, no
    # run created), and the UI does not retry. A person clicks Submit again; so does the test,
    # up to three times, and only after a 503.
    for _ in range(3):
        created.clear()
        stack.page.click("button", text=re.compile("^Submit$"))
        deadline = time.monotonic() + 120
        while not created:
            if time.monotonic() > deadline:
                stack.page.screenshot(stack.shots / "8-run-form-not-submitted.png", full_page=True)
                raise AssertionError(
                    "Submit created no flow run (screenshot 8-run-form-not-submitted)"
                )
            stack.page.tab.wait_for_timeout(250)
        if created[-1].status != 503:
            break
        stack.page.tab.wait_for_timeout(1000)
    response = created[-1]
    assert response.status == 201, response.text()
    run = response.json()
    assert run["deployment_id"] == deployment_id

    brief = run["parameters"]["brief"]  # what the form sent
    assert brief["campaign"] == FORM_CAMPAIGN
    assert brief["budget_usd"] == FORM_BUDGET
    assert brief["defaults"]["drafts"] == FORM_DRAFTS
    sent = [(a["id"], a["prompt"], a.get("size")) for a in brief["assets"]]
    assert sent == FORM_ASSETS
    deployment = stack.api("GET", f"/deployments/{deployment_id}")
    for block in ("credentials", "storage"):  # the deployment's picks, shown in the form
        assert run["parameters"][block] == deployment["parameters"][block], block

    deadline = time.monotonic() + 300
    while True:
        run = stack.api("GET", f"/flow_runs/{run['id']}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, f"the run is still {run['state_name']}"
        time.sleep(1)
    stack.open(
        f"/v2/runs/flow-run/{run['id']}",
        "/Completed|Failed|Crashed/.test(document.body.innerText)",
        "the form's run",
    )
    stack.shot("8-run-form-run")
    if run["state_type"] != "COMPLETED":
        logs = stack.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}})
        said = "\n".join(entry["message"][:800] for entry in logs[-8:])
        state = run["state"]
        raise AssertionError(f"the run ended {state['name']}: {state['message']}\n{said}")

    manifest = CampaignManifest.model_validate_json(
        (assets / manifest_key(FORM_CAMPAIGN)).read_text()
    )
    outcomes = {o.asset: o for o in manifest.assets}
    assert list(outcomes) == [asset for asset, _, _ in FORM_ASSETS]
    for asset, prompt, size in FORM_ASSETS:
        outcome = outcomes[asset]
        assert outcome.status is AssetStatus.FINAL, (asset, outcome.detail)
        assert outcome.drafts is not None and len(outcome.drafts.images) == FORM_DRAFTS, asset
        assert outcome.final is not None and outcome.final.images, asset
        assert outcome.final.request.prompt == prompt
        assert outcome.final.request.size == (size or "1:1")
        for image in outcome.final.images:
            stored = Path(image.uri.removeprefix("file://"))
            assert stored.is_relative_to(assets) and stored.stat().st_size > 0, image.uri


# --- the adaptations' review ----------------------------------------------------------------

ADAPT_CAMPAIGN = "ui-adaptations"
ADAPTATIONS = ["hero · story (9:16)", "hero · feed (1:1)"]


def test_a_reviewer_rejects_one_adaptation_and_approves_another_in_the_resume_dialog(
    stack: Stack, tmp_path: Path
) -> None:
    """adaptation_selection 'approval': after its adaptations the run pauses; the Resume
    dialog (older UI, the narrowest) shows the master and each adaptation as thumbnails and one
    approve/reject choice per adaptation. The reviewer rejects the story and approves the feed
    format by clicks; the run completes, the story marked rejected (still stored and paid), the
    feed approved, the final untouched, and nothing more sent."""
    brief = tmp_path / "adapt.yaml"
    brief.write_text(
        json.dumps(
            {
                "campaign": ADAPT_CAMPAIGN,
                "budget_usd": 3,
                "defaults": {"drafts": 1, "size": "16:9"},
                "assets": [
                    {
                        "id": "hero",
                        "prompt": "An earbuds case on a lake at dawn, headline 'Aurora'",
                        "adaptations": [
                            {"id": "story", "size": "9:16"},
                            {"id": "feed", "size": "1:1"},
                        ],
                    }
                ],
            }
        )
    )
    run = wait_until_paused(
        stack, start_campaign(stack, "auto", brief, adaptation_selection="approval"), 120
    )
    ledger = len(stack.simulator.ledger())
    try:
        dialog = open_resume_dialog_v1(stack, run)
        stack.shot("5-resume-dialog-v1-adaptations")
        assert dialog["images"] == dialog["loaded"] == 3, dialog["sizes"]  # master + 2
        assert dialog["labels"] == ["master", "story (9:16)", "feed (1:1)"]
        assert "**" not in dialog["text"] and "hero — master and adaptations" in dialog["text"]
        for natural, shown in dialog["sizes"]:
            assert 0 < natural <= REVIEW_EDGE and 0 < shown <= natural + 1
        assert dialog["outside"] == 0 and dialog["sideways"] == [], dialog["sideways"]
        fields = stack.page.evaluate(FIELDS)
        assert [f["label"] for f in fields] == [f"{a} (Optional)" for a in ADAPTATIONS]
        assert [f["value"] for f in fields] == ["approve", "approve"]
        for at, value in ((0, "reject"), (1, "approve")):
            assert open_choices(stack, at) == ["approve", "reject"]
            stack.page.click("[role=listbox] [role=option]", text=re.compile(f"^{value}$"))
            stack.page.wait_for(
                f"{FIELDS}[{at}].value === {json.dumps(value)}", what=f"field {at} to show {value}"
            )
        stack.shot("6-resume-dialog-v1-adaptations-chosen")
        stack.page.click("[role=dialog] button", text="Submit")
        run.outcome["submitted"] = True
        stack.page.wait_for("!document.querySelector('[role=dialog]')", what="the dialog to close")
    finally:
        if run.thread.is_alive() and "submitted" not in run.outcome:
            resume_from_code(stack, run, {"hero__story": "reject", "hero__feed": "reject"})
    manifest = run.result()
    assert len(stack.simulator.ledger()) == ledger  # the review sent nothing
    stored = CampaignManifest.model_validate_json(
        (stack.assets / manifest_key(ADAPT_CAMPAIGN)).read_text()
    )
    assert stored == manifest and manifest.run_state == "completed"
    [hero] = manifest.assets
    assert hero.status is AssetStatus.FINAL and hero.final is not None
    story, feed = hero.adaptations
    assert (story.id, story.status, story.detail) == (
        "story",
        AssetStatus.REJECTED,
        "rejected by reviewer",
    )
    assert (feed.id, feed.status, feed.detail) == (
        "feed",
        AssetStatus.FINAL,
        "approved by reviewer",
    )
    assert story.record is not None and story.record.images  # still stored, and on the books
    assert {j.stage for j in manifest.jobs} == {"draft", "final", "adapt-story", "adapt-feed"}
    state = stack.api("GET", f"/flow_runs/{run.flow_run_id}")
    assert state["state_type"] == "COMPLETED"
