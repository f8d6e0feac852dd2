"""Forms in the UI: every flow parameter is described, blocks get a picker, steps are documented.

The deployment form of a flow is built from `parameter_schema(flow.fn)`: each field's help text
is the parameter's entry in the docstring's `Args:` section, and a block-typed parameter (a
`block_type_slug` in the schema) is shown as a picker of saved blocks instead of a text box.
Flows and tasks are discovered by walking their packages, so a flow or task added later without
descriptions fails here too.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import pkgutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow, Task, flow
from prefect.client.orchestration import get_client
from prefect.utilities.callables import parameter_docstrings, parameter_schema
from prefect.utilities.schema_tools import validate

from evolink.jobs import JobRecord
from evolink.models import parse_request
from evolink.simulator import EvoLinkSimulator
from prefect_evolink.blocks import EvoLinkCredentials, LocalAssetStorage, S3AssetStorage
from prefect_evolink.flows.asset_requested import generate_product_asset
from prefect_evolink.flows.campaign import manifest_key, run_campaign
from prefect_evolink.flows.generate import generate_image

SECTIONS = ("Args:", "Returns:", "Raises:", "Example:")
"""Sections every flow and every task docstring has (Google style)."""

CREDENTIALS_SLUGS = {"evolink-credentials"}
STORAGE_SLUGS = {"evolink-local-asset-storage", "evolink-s3-asset-storage"}

REQUEST = parse_request({"prompt": "a ceramic mug of cocoa", "size": "1:1", "quality": "low"})


# --- discovery and the checks themselves -----------------------------------------------------


def defined_in(package: str, kind: type[Any]) -> dict[str, Any]:
    """Every `kind` object (Flow or Task) defined in a module of `package`, by qualified name."""
    root = importlib.import_module(package)
    modules = [root] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(root.__path__, f"{package}.")
    ]
    found: dict[str, Any] = {}
    for module in modules:
        for name, value in vars(module).items():
            if isinstance(value, kind) and value.fn.__module__ == module.__name__:
                found[f"{module.__name__}:{name}"] = value
    return found


def undescribed(fn: Any) -> list[str]:
    """Parameters without a description in the schema the deployment form is built from."""
    schema = parameter_schema(fn).model_dump()
    return [
        name
        for name, field in schema["properties"].items()
        if not (field.get("description") or "").strip()
    ]


def missing_sections(fn: Any) -> list[str]:
    """Google-style sections the docstring lacks (a summary line counts as one too)."""
    doc = inspect.getdoc(fn) or ""
    lines = [line.strip() for line in doc.splitlines()]
    missing = [section for section in SECTIONS if section not in lines]
    if not lines or not lines[0] or lines[0] in SECTIONS:
        missing.insert(0, "summary")
    return missing


def check_flow(candidate: Flow[Any, Any]) -> None:
    assert not undescribed(candidate.fn), (
        f"flow {candidate.name!r}: parameters without a description in the deployment form: "
        f"{undescribed(candidate.fn)} (describe them in the docstring's Args: section)"
    )
    assert not missing_sections(candidate.fn), (
        f"flow {candidate.name!r} docstring lacks {missing_sections(candidate.fn)}"
    )


def check_task(candidate: Task[Any, Any]) -> None:
    documented = parameter_docstrings(inspect.getdoc(candidate.fn))
    parameters = list(inspect.signature(candidate.fn).parameters)
    assert not missing_sections(candidate.fn), (
        f"task {candidate.name!r} docstring lacks {missing_sections(candidate.fn)}"
    )
    assert not [p for p in parameters if not documented.get(p, "").strip()], (
        f"task {candidate.name!r}: parameters missing from Args: "
        f"{[p for p in parameters if not documented.get(p, '').strip()]}"
    )


FLOWS = defined_in("prefect_evolink.flows", Flow)
TASKS = defined_in("prefect_evolink.tasks", Task)


def test_discovery_finds_the_flows_and_the_pipeline_steps() -> None:
    names = {f.name for f in FLOWS.values()}
    assert {"evolink-generate-image", "evolink-product-asset", "evolink-campaign"} <= names
    steps = {t.name for t in TASKS.values()}
    assert {"evolink-submit", "evolink-poll", "evolink-persist"} <= steps


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_flow_parameter_has_a_description_in_the_form(name: str) -> None:
    check_flow(FLOWS[name])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_documented_with_its_arguments(name: str) -> None:
    check_task(TASKS[name])


def test_the_checks_fail_for_a_flow_or_task_without_descriptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow added later in a module of its own is found, and an undescribed parameter fails."""
    package = tmp_path / "forms_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "later.py").write_text(
        "from prefect import flow, task\n\n\n"
        "@flow\n"
        "def later(described: int, forgotten: str = 'x') -> None:\n"
        '    """A flow someone adds later.\n\n'
        "    Args:\n"
        "        described: Has a description.\n\n"
        "    Returns:\n        Nothing.\n\n"
        "    Raises:\n        Nothing.\n\n"
        "    Example:\n        later(1)\n"
        '    """\n\n\n'
        "@task\n"
        "def bare(value: int) -> int:\n"
        '    """No sections at all."""\n'
        "    return value\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    [later] = defined_in("forms_probe", Flow).values()
    [bare] = defined_in("forms_probe", Task).values()

    assert undescribed(later.fn) == ["forgotten"]
    with pytest.raises(AssertionError, match="forgotten"):
        check_flow(later)
    with pytest.raises(AssertionError, match=r"Args:.*Returns:.*Raises:.*Example:"):
        check_task(bare)

    @flow
    def no_docstring(value: int) -> None: ...

    assert undescribed(no_docstring.fn) == ["value"]
    assert missing_sections(no_docstring.fn) == ["summary", *SECTIONS]


# --- block pickers -----------------------------------------------------------------------------


def block_slugs(fn: Any, parameter: str) -> set[str]:
    """The block types the form offers for a parameter (empty: a plain field)."""
    schema = parameter_schema(fn).model_dump()
    field = schema["properties"][parameter]
    refs = [item["$ref"] for item in field.get("anyOf", [field]) if "$ref" in item]
    definitions = schema["definitions"]
    return {definitions[ref.rsplit("/", 1)[1]].get("block_type_slug") for ref in refs} - {None}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flows_take_blocks_only_through_pickers(name: str) -> None:
    """One way to pass a block: a block-typed parameter (a picker in the form), never a name
    beside it. Events and the CLI carry names; they become blocks before the flow is called."""
    fn = FLOWS[name].fn
    parameters = inspect.signature(fn).parameters
    assert not [p for p in parameters if p.endswith("_block")], name
    expected = {"credentials": CREDENTIALS_SLUGS, "storage": STORAGE_SLUGS}
    expected["spend_cap"] = {"evolink-spend-cap"}
    for parameter, slugs in expected.items():
        if parameter in parameters:
            assert block_slugs(fn, parameter) == slugs, (name, parameter)
            assert parameters[parameter].default is None, (name, parameter)
    assert "storage" in parameters, name  # every flow reads or writes the assets


@pytest.mark.usefixtures("prefect_harness")
def test_a_block_picked_in_the_form_resolves_to_its_class(tmp_path: Path) -> None:
    """The form sends `{"$ref": {"block_document_id": ...}}`; validation loads the block."""
    credentials_id = EvoLinkCredentials(api_key="sk-forms-ref").save(
        "forms-ref-credentials", overwrite=True
    )
    local_id = LocalAssetStorage(base_dir=str(tmp_path)).save("forms-ref-local", overwrite=True)
    s3_id = S3AssetStorage(bucket="forms-ref").save("forms-ref-s3", overwrite=True)

    def picked(block_id: Any) -> dict[str, Any]:
        return {"$ref": {"block_document_id": str(block_id)}}

    for storage_id, kind in ((local_id, LocalAssetStorage), (s3_id, S3AssetStorage)):
        for candidate in FLOWS.values():
            if "storage" not in inspect.signature(candidate.fn).parameters:
                continue
            required = {
                "request": REQUEST.to_payload(),
                "product_id": "sku-1",
                "prompt": "a mug",
                "brief": "brief.yaml",
            }
            parameters = {
                name: value
                for name, value in required.items()
                if name in inspect.signature(candidate.fn).parameters
            }
            form = {
                **parameters,
                "credentials": picked(credentials_id),
                "storage": picked(storage_id),
            }
            # What the server checks for a deployment with enforce_parameter_schema ...
            assert validate(form, candidate.parameters.model_dump(), raise_on_error=True) == []
            # ... and what the flow run does with it before the body starts.
            validated = candidate.validate_parameters(form)
            assert type(validated["storage"]) is kind, candidate.name
            assert isinstance(validated["credentials"], EvoLinkCredentials)
            assert validated["credentials"].api_key.get_secret_value() == "sk-forms-ref"


# --- flow runs with block objects ------------------------------------------------------------


def simulator_credentials(simulator: EvoLinkSimulator) -> EvoLinkCredentials:
    return EvoLinkCredentials(
        api_key=simulator.api_key,
        base_url=simulator.base_url,
        poll_min_interval=0.05,
        poll_max_interval=0.2,
    )


async def stored_parameters(state: Any) -> dict[str, Any]:
    async with get_client() as client:
        run = await client.read_flow_run(state.state_details.flow_run_id)
    return run.parameters


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_with_blocks_picked_in_the_form_uses_them(
    simulator: EvoLinkSimulator, tmp_path: Path
) -> None:
    """A run of the generate-image deployment whose form had blocks picked: the parameters hold
    `{"$ref": {"block_document_id": ...}}`, as the form (and `prefect-evolink deploy`) writes.

    There is no `EVOLINK_API_KEY` and the default `assets/` is elsewhere: the run can only
    succeed, and store its image there, with the referenced blocks.
    """
    credentials_id = simulator_credentials(simulator).save("forms-picked", overwrite=True)
    picked_dir = tmp_path / "picked"
    storage_id = LocalAssetStorage(base_dir=str(picked_dir)).save("forms-picked", overwrite=True)
    parameters: dict[str, Any] = {
        "request": REQUEST,
        "job_name": "forms-picked",
        "poll_deadline_seconds": 30,
        "credentials": {"$ref": {"block_document_id": str(credentials_id)}},
        "storage": {"$ref": {"block_document_id": str(storage_id)}},
    }

    async def run() -> tuple[JobRecord, dict[str, Any]]:
        state = await generate_image(**parameters, return_state=True)
        return await state.result(), await stored_parameters(state)

    record, stored = asyncio.run(run())

    [entry] = simulator.billed_tasks()
    assert record.task_id == entry.task_id
    [image] = record.images
    assert Path(image.uri.removeprefix("file://")).is_relative_to(picked_dir)
    assert simulator.api_key not in json.dumps(stored)


@pytest.mark.usefixtures("prefect_harness")
def test_block_objects_passed_from_python_run_the_product_flow(
    simulator: EvoLinkSimulator, tmp_path: Path
) -> None:
    """Unsaved blocks work too; the API key is not written into the run's parameters."""

    async def run() -> tuple[JobRecord, dict[str, Any]]:
        state = await generate_product_asset(
            product_id="forms-sku",
            prompt="a ceramic mug",
            quality="low",
            poll_deadline_seconds=30,
            credentials=simulator_credentials(simulator),
            storage=LocalAssetStorage(base_dir=str(tmp_path / "objects")),
            return_state=True,
        )
        return await state.result(), await stored_parameters(state)

    record, stored = asyncio.run(run())

    [image] = record.images
    assert Path(image.uri.removeprefix("file://")).is_relative_to(tmp_path / "objects")
    assert simulator.api_key not in json.dumps(stored)


@pytest.mark.usefixtures("prefect_harness")
def test_a_storage_block_object_wins_over_the_brief_storage_block(
    simulator: EvoLinkSimulator, tmp_path: Path
) -> None:
    brief = tmp_path / "brief.yaml"
    brief.write_text(
        yaml.safe_dump(
            {
                "campaign": "forms-campaign",
                "budget_usd": 1,
                "defaults": {"drafts": 1, "storage_block": "forms-no-such-storage"},
                "assets": [{"id": "mug", "prompt": "a ceramic mug of cocoa"}],
            }
        )
    )
    storage = LocalAssetStorage(base_dir=str(tmp_path / "campaign"))
    manifest = asyncio.run(
        run_campaign.aio(
            str(brief),
            poll_deadline_seconds=30,
            credentials=simulator_credentials(simulator),
            storage=storage,
        )
    )
    assert [o.status.value for o in manifest.assets] == ["final"]
    assert (tmp_path / "campaign" / manifest_key("forms-campaign")).is_file()
    assert len(simulator.billed_tasks()) == 2  # one draft, one final
