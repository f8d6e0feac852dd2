"""`evolink` — the client, the domain and the simulator — never imports Prefect.

Checked in a fresh interpreter (this one has Prefect loaded by the other tests): import every
module of the package, then look for `prefect` in `sys.modules`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Imports a package and every module in it (an import error fails loudly; `walk_packages`
# would skip it), then prints what was imported and which Prefect modules came with them.
WALK = """
import importlib, json, pkgutil, sys

def fail(name):
    raise ImportError(f"cannot import {name}")

name = sys.argv[1]
package = importlib.import_module(name)
modules = [name]
for info in pkgutil.walk_packages(package.__path__, name + ".", onerror=fail):
    importlib.import_module(info.name)
    modules.append(info.name)
prefect = sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))
print(json.dumps({"modules": modules, "prefect": prefect}))
"""


def import_everything(package: str, *, path: Path = ROOT) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", WALK, package],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, list[str]] = json.loads(result.stdout.splitlines()[-1])
    return found


def test_no_evolink_module_imports_prefect() -> None:
    found = import_everything("evolink")
    assert {"evolink.client", "evolink.simulator", "evolink.simulator.server"} <= set(
        found["modules"]
    )
    assert found["prefect"] == [], found["prefect"]


def test_the_check_catches_a_module_that_imports_prefect(tmp_path: Path) -> None:
    package = tmp_path / "leaky"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "__init__.py").write_text("")
    (package / "inner" / "deep.py").write_text("import prefect.states\n")
    found = import_everything("leaky", path=tmp_path)
    assert "leaky.inner.deep" in found["modules"]
    assert "prefect" in found["prefect"]
