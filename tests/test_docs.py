"""The docs run: `mkdocs build --strict`, and every Python and shell snippet of the README and of
`docs/` against the simulator.

A snippet is a fenced block tagged `python`, `bash`, `sh` or `shell`. Each is run, or is marked
right above its fence with an HTML comment that says why it is not (`<!-- not run: needs a real
S3 bucket -->`); a block with neither fails the suite, so a new snippet cannot slip in untested.

The snippets of one page run in order, in one fresh folder (a user's project), as a user would
copy them: Python with the project's interpreter, shell with bash (`set -euo pipefail`), with the
environment a reader is told to have for the simulator (docs/simulator.md): `EVOLINK_API_KEY`,
`EVOLINK_BASE_URL` and `EVOLINK_ALLOW_PRIVATE_URLS` for a simulator on 127.0.0.1, Prefect at a
temporary API, and nothing of this repository's own settings. A snippet passes when it exits 0;
what it prints is checked where the page says what it prints (the snippet asserts it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from evolink.simulator import EvoLinkSimulator
from tests.conftest import TEST_API_KEY

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_LANGUAGES = {
    "python": "python",
    "py": "python",
    "bash": "shell",
    "sh": "shell",
    "shell": "shell",
}
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*$")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.+?)\s*-->")
SNIPPET_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    kind: str  # "python" or "shell"
    code: str
    not_run: str | None  # the reason, when the page marks it as not run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def snippets_of(page: Path) -> list[Snippet]:
    """The fenced Python and shell blocks of a page (nested fences inside them are code)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Snippet] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, lang = match["indent"], match["lang"].lower()
        body: list[str] = []
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            body.append(lines[end][len(indent) :])
            end += 1
        if lang in RUN_LANGUAGES:
            above = lines[index - 1] if index else ""
            marker = NOT_RUN.search(above)
            found.append(
                Snippet(
                    page=page,
                    line=index + 1,
                    kind=RUN_LANGUAGES[lang],
                    code="\n".join(body) + "\n",
                    not_run=marker["reason"] if marker else None,
                )
            )
        index = end + 1
    return found


ALL = [snippet for page in PAGES for snippet in snippets_of(page)]


def test_the_readme_and_docs_have_snippets_to_run() -> None:
    """The collector would see a broken page layout (no snippet found) as a pass otherwise."""
    runnable = [s for s in ALL if s.not_run is None]
    assert any(s.page.name == "README.md" and s.kind == "python" for s in runnable)
    assert {s.kind for s in runnable} == {"python", "shell"}


def test_a_snippet_without_a_reason_not_to_run_is_collected_to_run(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not run: needs a real bucket -->\n```bash\naws s3 ls\n```\n\n"
        "```python\nprint('hi')\n```\n\n```text\nnot code\n```\n"
    )
    first, second = snippets_of(page)
    assert first.not_run == "needs a real bucket" and first.kind == "shell"
    assert second.not_run is None and second.code == "print('hi')\n" and second.line == 6


@pytest.fixture(scope="module")
def docs_simulator() -> Iterator[EvoLinkSimulator]:
    with EvoLinkSimulator(api_key=TEST_API_KEY, generation_seconds=0.3, seed=11) as sim:
        yield sim


def _reader_env(home: Path, simulator: EvoLinkSimulator) -> dict[str, str]:
    """A reader's shell: the project's venv on PATH, the simulator, a temporary Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("EVOLINK_", "PREFECT_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(home / ".prefect"),
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        EVOLINK_API_KEY=simulator.api_key,
        EVOLINK_BASE_URL=simulator.base_url,
        EVOLINK_ALLOW_PRIVATE_URLS="true",  # the simulator's links are http://127.0.0.1
        EVOLINK_POLL_MIN_INTERVAL="0.05",
        EVOLINK_POLL_MAX_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    return env


def _run(snippet: Snippet, number: int, cwd: Path, env: dict[str, str]) -> None:
    if snippet.kind == "python":
        script = cwd / f"snippet_{number}.py"
        script.write_text(snippet.code, encoding="utf-8")
        command = [str(BIN / "python"), str(script)]
    else:
        command = ["bash", "-c", "set -euo pipefail\n" + snippet.code]
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SNIPPET_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, (
        f"{snippet.where} exited {result.returncode}\n--- snippet\n{snippet.code}"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )
    assert "was never awaited" not in result.stderr, f"{snippet.where}: {result.stderr[-2000:]}"


PAGES_WITH_SNIPPETS = [page for page in PAGES if any(s.not_run is None for s in snippets_of(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_snippet_of_the_page_runs(
    page: Path, prefect_harness: None, docs_simulator: EvoLinkSimulator, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = _reader_env(tmp_path, docs_simulator)
    for number, snippet in enumerate(snippets_of(page)):
        if snippet.not_run is None:
            _run(snippet, number, project, env)


def test_every_snippet_runs_or_says_why_not() -> None:
    unmarked_reasons = [s.where for s in ALL if s.not_run is not None and len(s.not_run) < 8]
    assert not unmarked_reasons, f"say why a snippet is not run, in a few words: {unmarked_reasons}"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a missing page or an API name griffe cannot
    find (a moved function, a docstring parameter that no longer exists) fails the suite."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "docs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert (tmp_path / "reference" / "flows" / "index.html").is_file()
    assert sorted(p.name for p in (tmp_path / "img" / "logos").glob("*.png")) == sorted(
        p.name for p in (ROOT / "blocks" / "logos").glob("*.png")
    )
    _the_blocks_point_into_the_site(tmp_path)


def _the_blocks_point_into_the_site(site: Path) -> None:
    """Each block type's logo and documentation URL (its page in the UI) is a file of this site,
    and a documentation URL's anchor is a heading the site has: no broken image, no dead link."""
    import yaml

    from prefect_evolink.blocks import (
        EvoLinkCredentials,
        EvoLinkSpendCap,
        LocalAssetStorage,
        S3AssetStorage,
    )
    from prefect_evolink.blocks._meta import DOCS_URL

    config = yaml.safe_load(
        (ROOT / "mkdocs.yml").read_text().replace("!ENV", "")  # the one tag it uses
    )
    assert config["site_url"] == DOCS_URL
    for block in (EvoLinkCredentials, LocalAssetStorage, S3AssetStorage, EvoLinkSpendCap):
        logo = str(block._logo_url)
        assert logo.startswith(DOCS_URL) and (site / logo.removeprefix(DOCS_URL)).is_file(), logo
        page, _, anchor = str(block._documentation_url).removeprefix(DOCS_URL).partition("#")
        html = (site / page / "index.html").read_text(encoding="utf-8")
        assert not anchor or f'id="{anchor}"' in html, block._documentation_url
