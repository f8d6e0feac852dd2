"""The command's first run on a fresh machine, and the Prefect settings it depends on.

Prefect reads its settings once, when it is first imported; the command's defaults for them
(prefect_evolink/_cli_settings.py) must be in the environment by then. With the defaults set
after an import of Prefect, `prefect-evolink demo` on a machine that had just booted ran out of
Prefect's 20 s to start its temporary server. So:

- importing `prefect_evolink` imports no Prefect (its names load on first use), nor does
  importing the command's module;
- once Prefect is imported in the command, every default is in effect, and a user's own
  environment still wins;
- Prefect still registers our block types when it loads collections (the entry point names
  `prefect_evolink.blocks`);
- the installed `prefect-evolink demo --single` stores an image from a fresh PREFECT_HOME with
  every core kept busy (slow).

Every check that depends on what was imported first runs in a fresh interpreter.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import signal
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import prefect_evolink
from prefect_evolink import _cli_settings, cli
from prefect_evolink._cli_settings import CLI_DEFAULTS, missing_cli_defaults

ROOT = Path(__file__).resolve().parents[1]
COMMAND = Path(sys.executable).with_name("prefect-evolink")  # the installed console script
SLUGS = (
    "evolink-credentials",
    "evolink-local-asset-storage",
    "evolink-s3-asset-storage",
    "evolink-spend-cap",
)


def fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell on a fresh machine: no Prefect or EvoLink settings, an empty PREFECT_HOME
    (so no PREFECT_API_URL: Prefect starts its temporary server), none of the command's
    defaults set."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "EVOLINK_")) and key not in CLI_DEFAULTS
    }
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env.update(extra)
    return env


def run_python(tmp_path: Path, script: str, **env: str) -> str:
    """Run `script` in a fresh interpreter of this environment; return its last stdout line."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=fresh_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_importing_the_package_imports_no_prefect_until_a_name_is_used(tmp_path: Path) -> None:
    script = (
        "import sys, json\n"
        "import prefect_evolink\n"
        "before = 'prefect' in sys.modules\n"
        "version = prefect_evolink.__version__\n"
        "from prefect_evolink import run_campaign\n"
        "from prefect_evolink.flows.campaign import run_campaign as defined\n"
        "print(json.dumps([before, version, run_campaign is defined, 'prefect' in sys.modules]))\n"
    )
    before, version, same, after = json.loads(run_python(tmp_path, script))
    assert before is False, "importing prefect_evolink imported Prefect"
    assert version.startswith("0.")
    assert same is True
    assert after is True


def test_importing_the_command_imports_no_prefect(tmp_path: Path) -> None:
    script = "import sys\nimport prefect_evolink.cli\nprint('prefect' in sys.modules)\n"
    assert run_python(tmp_path, script) == "False"


SETTINGS_SCRIPT = (
    "import json, os\n"
    "import prefect_evolink.cli\n"  # as the console script and `python -m prefect_evolink` do
    "import prefect\n"  # the command's first import of Prefect
    "from prefect.settings import get_current_settings\n"
    "from prefect_evolink._cli_settings import stale_settings\n"
    "settings = get_current_settings()\n"
    "print(json.dumps({\n"
    "    'startup_timeout': settings.server.ephemeral.startup_timeout_seconds,\n"
    "    'analytics': settings.server.analytics_enabled,\n"
    "    'do_not_track': os.environ.get('DO_NOT_TRACK'),\n"
    "    'stale': stale_settings(),\n"
    "}))\n"
)


def test_the_command_s_defaults_are_in_effect_once_prefect_is_imported(tmp_path: Path) -> None:
    found = json.loads(run_python(tmp_path, SETTINGS_SCRIPT))
    assert found == {"startup_timeout": 120, "analytics": False, "do_not_track": "1", "stale": {}}


def test_a_user_s_own_environment_wins(tmp_path: Path) -> None:
    found = json.loads(
        run_python(
            tmp_path,
            SETTINGS_SCRIPT,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
            PREFECT_SERVER_ANALYTICS_ENABLED="true",
            DO_NOT_TRACK="0",
        )
    )
    assert found == {"startup_timeout": 300, "analytics": True, "do_not_track": "0", "stale": {}}


def test_the_guard_sees_defaults_set_after_prefect_was_imported(tmp_path: Path) -> None:
    """The bug as it was: Prefect imported first, the defaults set afterwards."""
    script = (
        "import json\n"
        "import prefect\n"
        "import prefect_evolink.cli\n"
        "from prefect_evolink._cli_settings import stale_settings\n"
        "print(json.dumps(stale_settings()))\n"
    )
    stale = json.loads(run_python(tmp_path, script))
    assert stale["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == [20, 120]
    assert stale["PREFECT_SERVER_ANALYTICS_ENABLED"] == [True, False]


def test_missing_cli_defaults_leaves_what_is_set_alone() -> None:
    assert missing_cli_defaults({}) == CLI_DEFAULTS
    mine = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "5", "DO_NOT_TRACK": ""}
    assert missing_cli_defaults(mine) == {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def test_every_default_names_a_prefect_setting() -> None:
    """A misspelt PREFECT_ name would be ignored by Prefect without a word."""
    from prefect import settings

    for name in CLI_DEFAULTS:
        if name.startswith("PREFECT_"):
            assert getattr(settings, name).name == name


def test_the_package_face_exports_the_same_objects_as_their_modules() -> None:
    names = set(prefect_evolink.__all__)
    assert names == {*_lazy_table(), "__version__"}
    assert names <= set(dir(prefect_evolink))
    for name, module in _lazy_table().items():
        assert getattr(prefect_evolink, name) is getattr(importlib.import_module(module), name)
    assert prefect_evolink.__version__ != "0+unknown"
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = prefect_evolink.no_such_name


# The curated public API (issue 19): blocks, flows, tasks, the request model, the error root,
# the API tier and the errors a caller of the flows handles by name.
CURATED = {
    "EvoLinkCredentials",
    "EvoLinkSpendCap",
    "LocalAssetStorage",
    "S3AssetStorage",
    "AssetStorage",
    "load_storage",
    "generate_image",
    "generate_product_asset",
    "product_image",
    "run_campaign",
    "spend_report",
    "submit_job",
    "poll_job",
    "persist_images",
    "persist_image",
    "run_image_job",
    "request_products",
    "arequest_products",
    "ImageRequest",
    "__version__",
    "EvoLinkError",
    "APIError",
    "BriefError",
    "BudgetExceededError",
    "SpendCapExceededError",
    "CampaignIncompleteError",
}
# What 0.2.0 exported besides: importable for one more release, each with a warning.
MOVED = {
    **{
        name: "prefect_evolink.errors"
        for name in (
            "APIConnectionError",
            "APIStatusError",
            "APITimeoutError",
            "AuthenticationError",
            "BadRequestError",
            "HostError",
            "InsufficientCreditsError",
            "InvalidImageError",
            "InvalidRequestError",
            "MissingCredentialsError",
            "NotFoundError",
            "PaidJobNotStoredError",
            "PermissionDeniedError",
            "PollDeadlineExceeded",
            "ProviderLimitsError",
            "RateLimitError",
            "ResultExpiredError",
            "ServerError",
            "SubmitRecordNotStoredError",
            "TaskFailedError",
            "UnsafeResultLinkError",
        )
    },
    "safe_key": "prefect_evolink.blocks",
}


def test_the_package_face_is_the_curated_api() -> None:
    assert set(prefect_evolink.__all__) == CURATED
    public = {name for name in dir(prefect_evolink) if not name.startswith("_")}
    assert public == (CURATED - {"__version__"}) | {
        "blocks",
        "deployments",
        "errors",
        "flows",
        "tasks",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in CURATED:
            getattr(prefect_evolink, name)


@pytest.mark.parametrize("name", sorted(MOVED))
def test_an_old_export_still_imports_with_a_warning_naming_its_module(name: str) -> None:
    home = MOVED[name]
    with pytest.warns(DeprecationWarning, match=f"`from {home} import {name}`") as caught:
        value = getattr(prefect_evolink, name)
    assert value is getattr(importlib.import_module(home), name)
    assert name in importlib.import_module(home).__all__
    assert {warning.filename for warning in caught} == {__file__}  # points at the caller
    assert name not in dir(prefect_evolink) and name not in prefect_evolink.__all__
    with pytest.warns(DeprecationWarning):  # not cached: every use warns
        getattr(prefect_evolink, name)


def test_a_from_import_of_an_old_export_warns_at_the_import() -> None:
    with pytest.warns(DeprecationWarning, match="prefect_evolink.errors") as caught:
        from prefect_evolink import TaskFailedError
    from prefect_evolink.errors import TaskFailedError as defined

    assert TaskFailedError is defined
    assert {warning.filename for warning in caught} == {__file__}


def test_the_type_checkers_imports_match_the_lazy_table() -> None:
    """`if TYPE_CHECKING:` in prefect_evolink/__init__.py repeats the table for type checkers."""
    tree = ast.parse(Path(prefect_evolink.__file__).read_text())
    [block] = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    imported = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == _lazy_table()


def _lazy_table() -> Mapping[str, str]:
    return prefect_evolink._MODULE_OF


def test_the_command_s_environment_variables_are_the_blocks() -> None:
    from prefect_evolink.blocks import credentials, lookup

    assert cli.ENV_API_KEY == credentials.ENV_API_KEY
    assert cli.ENV_BASE_URL == credentials.ENV_BASE_URL
    assert cli.ENV_ASSETS_DIR == lookup.ENV_ASSETS_DIR


def test_prefect_registers_our_block_types_when_it_loads_collections(tmp_path: Path) -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["prefect.collections"] == {"prefect_evolink": "prefect_evolink.blocks"}
    script = (
        "import json, sys\n"
        "from importlib.metadata import entry_points\n"
        "from prefect.blocks.core import Block\n"
        "from prefect.plugins import load_prefect_collections\n"
        "from prefect.utilities.dispatch import get_registry_for_type\n"
        f"slugs = {SLUGS!r}\n"
        "before = [s for s in slugs if s in get_registry_for_type(Block)]\n"
        "loaded = load_prefect_collections()\n"
        "print(json.dumps({\n"
        "    'entry_points': [e.value for e in entry_points(group='prefect.collections',\n"
        "                                                   name='prefect_evolink')],\n"
        "    'before': before,\n"
        "    'loaded': getattr(loaded.get('prefect_evolink'), '__name__', None),\n"
        "    'after': [s for s in slugs if s in get_registry_for_type(Block)],\n"
        "    'flows_imported': 'prefect_evolink.flows.campaign' in sys.modules,\n"
        "}))\n"
    )
    found = json.loads(run_python(tmp_path, script))
    assert found == {
        "entry_points": ["prefect_evolink.blocks"],  # the installed metadata, as declared
        "before": [],
        "loaded": "prefect_evolink.blocks",
        "after": list(SLUGS),
        "flows_imported": False,  # Prefect's server loads collections too: only the blocks
    }


def test_the_settings_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(_cli_settings.__file__).read_text())
    top_level = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}, top_level


@pytest.fixture
def busy_cores() -> Iterator[int]:
    """One CPU burner per core this process may run on, for as long as the test runs."""
    cores = len(os.sched_getaffinity(0))
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(2, cores))
    ]
    try:
        yield len(burners)
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait()


@pytest.mark.slow
def test_the_first_demo_on_a_fresh_busy_machine_stores_an_image(
    tmp_path: Path, busy_cores: int
) -> None:
    """The README's first command, as the issue ran it: a fresh PREFECT_HOME (so Prefect creates
    its database before its temporary server answers), no PREFECT_API_URL, no EVOLINK_API_KEY
    (the bundled simulator), every core busy."""
    assert COMMAND.exists(), f"{COMMAND} is not installed (pip install -e .)"
    env = fresh_env(tmp_path)
    assets = tmp_path / "assets"
    process = subprocess.Popen(
        [str(COMMAND), "demo", "--single", "--assets-dir", str(assets)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its temporary server and simulator go with it on a timeout
    )
    try:
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    report = f"exit {process.returncode}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    assert process.returncode == 0, report
    assert "Timed out" not in err, report
    assert (Path(env["PREFECT_HOME"]) / "prefect.db").exists(), "no fresh Prefect database"
    images = list(assets.rglob("image-0.png"))
    assert len(images) == 1, sorted(str(p) for p in assets.rglob("*"))
    assert images[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
