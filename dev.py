#!/usr/bin/env python3
"""One entry point for a fresh machine: make the pinned environment, then run a command in it.

    python3 dev.py demo        # the example campaign end to end (simulator unless a key is set)
    python3 dev.py test        # the whole test suite (what .ci/run runs)
    python3 dev.py campaign BRIEF [--selection approval]   # any campaign brief
    python3 dev.py simulator   # the local EvoLink simulator on 127.0.0.1:8787
    python3 dev.py run ARGS    # any command inside the environment, e.g. `run prefect server start`

Only the standard library is used here, so it runs on any Python 3.11+. The virtual environment
lives in `.venv/` and is rebuilt whenever `requirements.lock` changes, so every machine runs
exactly the versions the tests were run with.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / ".lock-sha256"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _lock_digest() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


def _site_packages() -> Path:
    out = subprocess.check_output(
        [str(PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    )
    return Path(out.strip())


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
    # The project itself is put on the path with a .pth file (what an editable install does),
    # so no build backend has to be fetched and the source tree is what runs.
    (_site_packages() / "prefect_evolink_project.pth").write_text(str(ROOT) + "\n")
    STAMP.write_text(_lock_digest() + "\n")


def run(argv: list[str]) -> int:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.call(argv, env=env, cwd=ROOT)


COMMANDS = {
    "demo": lambda rest: [str(PYTHON), "-m", "flows.cli", "demo", *rest],
    "campaign": lambda rest: [str(PYTHON), "-m", "flows.cli", "campaign", *rest],
    "test": lambda rest: [str(PYTHON), "-m", "pytest", *rest],
    "simulator": lambda rest: [str(PYTHON), "-m", "evolink.simulator", *rest],
    "run": lambda rest: rest,
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        return 2
    ensure_env()
    command, rest = sys.argv[1], sys.argv[2:]
    return run(COMMANDS[command](rest))


if __name__ == "__main__":
    sys.exit(main())
