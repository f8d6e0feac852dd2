"""Static checks run with the suite, so CI fails on them: ruff, mypy, bandit.

mypy is strict for the EvoLink client and domain modules (see [tool.mypy] in pyproject.toml) and
checks everything else too. It reads modules by their installed names: the repository's
`blocks/`, `tasks/`, `flows/`, … folders are `prefect_evolink.blocks` and so on only through
setuptools' `package-dir` mapping, which mypy cannot follow (nor the editable install's import
hook). So the check runs on a staged tree of symlinks laid out as the wheel is — the same files,
under their real module names. `pip-audit` needs the network to fetch advisories, so it is
documented in the README instead.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dev import stage_packages

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FOLDERS = ["evolink", "prefect_evolink", "blocks", "tasks", "flows", "deployments", "briefs"]


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
    ],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(command: tuple[str, ...]) -> None:
    result = run(str(BIN / command[0]), *command[1:])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy(tmp_path: Path) -> None:
    packages = stage_packages(tmp_path)
    assert packages == ["evolink", "prefect_evolink"]
    flags = [arg for name in packages for arg in ("-p", name)]
    config = str(ROOT / "pyproject.toml")
    cache = str(tmp_path / ".mypy_cache")
    result = run(
        str(BIN / "mypy"), "--config-file", config, "--cache-dir", cache, *flags, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every module of the wheel was read, the mapped subpackages included: mypy counts each
    # .py file, and each folder without __init__.py as a namespace package.
    expected = 0
    for folder, dirs, names in os.walk(tmp_path, followlinks=True):
        dirs[:] = [d for d in dirs if d not in {"__pycache__", ".mypy_cache"}]
        expected += sum(name.endswith(".py") for name in names)
        if Path(folder) != tmp_path and "__init__.py" not in names:
            expected += 1
    assert f"in {expected} source files" in result.stdout, result.stdout


def test_bandit() -> None:
    result = run(str(BIN / "bandit"), "-q", "-r", *FOLDERS, "-c", "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr


def imported_modules(source: str) -> set[str]:
    """Every module a file imports, at any depth (inside functions too), by its full name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in {
            "importlib.import_module",
            "import_module",
            "__import__",
        }:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
    return found


def test_bench_stands_on_its_own() -> None:
    """`bench/` imports nothing from `tests/`: what both need lives in `bench/harness/`."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name
            for name in imported_modules(path.read_text())
            if name == "tests" or name.startswith("tests.")
        )
        for path in sorted((ROOT / "bench").rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_import_walk_would_see_a_stray_import() -> None:
    source = "def f():\n    from tests.soak import x\n    import tests.postgres\n"
    assert imported_modules(source) == {"tests.soak", "tests.postgres"}
    assert imported_modules("importlib.import_module('tests.fault_matrix')") == {
        "tests.fault_matrix"
    }
