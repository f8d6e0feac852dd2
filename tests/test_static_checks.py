"""Static checks run with the suite, so CI fails on them: ruff, mypy, bandit.

mypy is strict for the EvoLink client and domain modules (see [tool.mypy] in pyproject.toml).
`pip-audit` needs the network to fetch advisories, so it is documented in the README instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CODE = ["evolink", "blocks", "tasks", "flows", "deployments"]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


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


def test_mypy() -> None:
    result = run(str(BIN / "mypy"), *CODE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bandit() -> None:
    result = run(str(BIN / "bandit"), "-q", "-r", *CODE, "-c", "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
