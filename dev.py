#!/usr/bin/env python3
"""One entry point for a fresh machine: make the pinned environment, then run a command in it.

    python3 dev.py demo        # the example campaign end to end (simulator unless a key is set)
    python3 dev.py test        # the whole test suite (what .ci/run runs)
    python3 dev.py campaign BRIEF [--selection approval]   # any campaign brief
    python3 dev.py simulator   # the local EvoLink simulator on 127.0.0.1:8787
    python3 dev.py docs        # the documentation site into site/ (`docs serve` to browse it)
    python3 dev.py run ARGS    # any command inside the environment, e.g. `run prefect server start`

Every command but `test`, `docs` and `run` is the installed `prefect-evolink` command
(`prefect_evolink/cli.py`): `python3 dev.py demo --single` is `prefect-evolink demo --single`.

Only the standard library is used here, so it runs on any Python 3.11+. The virtual environment
lives in `.venv/`: the pinned versions of `requirements.lock`, plus this project installed
editable (`pip install -e .`), so `prefect_evolink` and `evolink` import from this source tree
exactly as they would from a wheel. It is rebuilt whenever `requirements.lock` or
`pyproject.toml` changes, so every machine runs exactly the versions the tests were run with.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
STAMP = VENV / ".lock-sha256"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _lock_digest() -> str:
    digest = hashlib.sha256(LOCK.read_bytes())
    digest.update(PYPROJECT.read_bytes())  # packages and entry points live there
    return digest.hexdigest()


def ensure_env() -> None:
    """Create or refresh `.venv` from the lock file; a no-op when it is already current."""
    if STAMP.exists() and STAMP.read_text().strip() == _lock_digest() and PYTHON.exists():
        return
    if sys.version_info < (3, 11):  # noqa: UP036 — dev.py itself must run on any python3
        sys.exit(f"Python 3.11+ is needed, this is {sysconfig.get_python_version()}")
    print(
        f"[dev] creating {VENV.name}/ from {LOCK.name} (first run only, about a minute)", flush=True
    )
    venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.check_call([*pip, "install", "--quiet", "--require-virtualenv", "-r", str(LOCK)])
    # The project itself, editable: its `prefect-evolink` command, its `prefect.collections`
    # entry point, and `prefect_evolink.*` mapped onto this tree's folders. The build backend is
    # the pinned setuptools just installed, so nothing unpinned is fetched.
    subprocess.check_call(
        [*pip, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(ROOT)]
    )
    STAMP.write_text(_lock_digest() + "\n")


def run(argv: list[str]) -> int:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.call(argv, env=env, cwd=ROOT)


def stage_packages(target: Path) -> list[str]:
    """Lay the packages out as installed (symlinks to the source folders); return their names.

    In the repository `blocks/`, `tasks/`, … become `prefect_evolink.blocks` and so on only
    through setuptools' `package-dir` mapping, which static tools (mypy, the docs' API reference)
    cannot follow, nor the editable install's import hook. The staged tree has the same files
    under their real module names.
    """
    setuptools = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    tops = sorted({name.split(".")[0] for name in setuptools["packages"]})
    for top in tops:
        (target / top).mkdir()
        for entry in (ROOT / top).iterdir():
            if entry.name != "__pycache__":
                (target / top / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        link = target.joinpath(*package.split("."))
        link.symlink_to(ROOT / folder, target_is_directory=True)
    return tops


def docs(rest: list[str]) -> int:
    """`mkdocs build` (or `docs serve`, `docs build --strict -d DIR`) on the staged packages."""
    with tempfile.TemporaryDirectory(prefix="evolink-docs-") as staged:
        stage_packages(Path(staged))
        os.environ["EVOLINK_DOCS_PACKAGES"] = staged
        return run([str(BIN / "mkdocs"), *(rest or ["build"])])


CLI = BIN / ("prefect-evolink.exe" if os.name == "nt" else "prefect-evolink")
OWN = {
    "test": lambda rest: [str(PYTHON), "-m", "pytest", *rest],
    "run": lambda rest: rest,
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in {"-h", "--help", "help"}:
        print(__doc__)
        return 2
    ensure_env()
    command, rest = sys.argv[1], sys.argv[2:]
    if command in OWN:
        return run(OWN[command](rest))
    if command == "docs":
        return docs(rest)
    return run([str(CLI), command, *rest])  # demo, campaign, simulator, … : the package's command


if __name__ == "__main__":
    sys.exit(main())
