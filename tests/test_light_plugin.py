"""A light plugin: what Prefect's loading of collections, and `prefect-evolink --help`, import.

Prefect imports every installed collection's `prefect.collections` entry point whenever a
worker, its server or a deployed flow run starts, and on any `Block.load` of any block type. Ours
(`prefect_evolink.blocks`) registers the block types and imports nothing else: no flows, tasks
or deployments, no PIL, no boto3 (imported by the S3 methods that use it), no prefect-aws (the
S3 block's `credentials` type is resolved on first use: "The credentials type" in
blocks/s3.py), no campaign or spend model, no task worker. And the command's parser is built
without Prefect.

What stays the same: every block type registers, and the S3 block's schema — hence its
checksum, the document a save writes, the UI's form and block picker — is exactly the one of
the same class with prefect-aws imported up front, whichever way the class is first used.

Every check of what was imported runs in a fresh interpreter; none measures time (that is
`bench/import_cost.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.blocks.core import Block

from prefect_evolink.blocks import (
    EvoLinkCredentials,
    EvoLinkSpendCap,
    LocalAssetStorage,
    S3AssetStorage,
)

FORBIDDEN = (
    "prefect_evolink.flows",
    "prefect_evolink.tasks",
    "prefect_evolink.deployments",
    "PIL",
    "boto3",
    "botocore",
    "aiobotocore",
    "s3transfer",
    "prefect_aws",
    "prefect.task_worker",
    "fastapi",
    "uvicorn",
    # the Prefect-free domain beyond what the blocks validate with
    "evolink.brief",
    "evolink.campaign",
    "evolink.recovery",
    "evolink.spend",
    "evolink.previews",
)
"""Modules (and their submodules) importing the entry point must not import."""

HELP_FORBIDDEN = (
    "prefect",
    "prefect_evolink.flows",
    "prefect_evolink.tasks",
    "prefect_evolink.deployments.task_workers",
    "prefect_evolink.blocks",
    "PIL",
    "boto3",
    "prefect_aws",
    "uvicorn",
)
"""Modules (and their submodules) building the command's parser must not import."""


def find_forbidden(forbidden: tuple[str, ...]) -> str:
    """Script lines that set `found` to the modules of `forbidden` in `sys.modules`."""
    return (
        f"forbidden = {forbidden!r}\n"
        "found = sorted(m for m in sys.modules\n"
        "               if any(m == f or m.startswith(f + '.') for f in forbidden))\n"
    )


def run_python(script: str, tmp_path: Path) -> str:
    """Run `script` in a fresh interpreter of this environment; return its last stdout line."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_the_entry_point_imports_nothing_heavy_and_registers_every_block(tmp_path: Path) -> None:
    """As Prefect does it: Prefect imported, then the entry point the installed metadata names."""
    script = (
        "import json, sys\n"
        "from importlib.metadata import distribution\n"
        "[entry_point] = [e for e in distribution('prefect-evolink').entry_points\n"
        "                 if e.group == 'prefect.collections']\n"
        "import prefect\n"
        "from prefect.blocks.core import Block\n"
        "from prefect.utilities.dispatch import get_registry_for_type\n"
        "before = set(sys.modules)\n"
        "entry_point.load()\n"
        f"{find_forbidden(FORBIDDEN)}"
        "registry = get_registry_for_type(Block)\n"
        "print(json.dumps({\n"
        "    'entry_point': entry_point.value,\n"
        "    'forbidden': found,\n"
        "    'new_modules': len(set(sys.modules) - before),\n"
        "    'slugs': sorted(s for s in registry if s.startswith('evolink-')),\n"
        "}))\n"
    )
    found = json.loads(run_python(script, tmp_path))
    assert found["forbidden"] == [], f"the entry point {found['entry_point']} imported them"
    assert found["slugs"] == [
        "evolink-credentials",
        "evolink-local-asset-storage",
        "evolink-s3-asset-storage",
        "evolink-spend-cap",
    ]
    # Today 21 (our blocks and the small `evolink` modules they validate with); a jump means a
    # heavy import crept in even if it is not on the list.
    assert found["new_modules"] < 60, found


@pytest.mark.parametrize(
    "subcommand",
    [[], ["demo"], ["campaign"], ["report"], ["spend"], ["callbacks"], ["serve-products"]],
)
def test_the_command_s_help_imports_no_prefect(tmp_path: Path, subcommand: list[str]) -> None:
    """`prefect-evolink [COMMAND] --help`: the parser's defaults come from light modules."""
    script = (
        "import contextlib, io, json, sys\n"
        "from prefect_evolink.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        main({[*subcommand, '--help']!r})\n"
        "    except SystemExit as stop:\n"
        "        code = stop.code\n"
        f"{find_forbidden(HELP_FORBIDDEN)}"
        "print(json.dumps({'code': code, 'usage': out.getvalue().startswith('usage:'),\n"
        "                  'forbidden': found[:10]}))\n"
    )
    found = json.loads(run_python(script, tmp_path))
    assert found == {"code": 0, "usage": True, "forbidden": []}


def test_the_serve_products_default_limit_is_the_task_worker_s() -> None:
    from prefect_evolink.deployments import _defaults, task_workers

    assert task_workers.DEFAULT_LIMIT == _defaults.DEFAULT_LIMIT
    assert task_workers.serve_products.__defaults__ == (_defaults.DEFAULT_LIMIT,)


@pytest.mark.parametrize(
    "block", [EvoLinkCredentials, LocalAssetStorage, S3AssetStorage, EvoLinkSpendCap]
)
def test_our_registry_keys_are_the_ones_prefect_would_compute(block: type[Block]) -> None:
    """Our `__dispatch_key__` skips building the schema; Prefect's builds it to read the slug."""
    prefects = Block.__dispatch_key__.__func__  # type: ignore[attr-defined]
    assert block.__dispatch_key__() == prefects(block) == block.get_block_type_slug()


# --- the S3 block's schema, with the credentials type resolved on first use -----------------

EAGER_TWIN = """
import importlib.util, shutil
from prefect_evolink.blocks import _aws, s3
shutil.copyfile(s3.__file__, "eager_twin.py")
spec = importlib.util.spec_from_file_location("eager_twin", "eager_twin.py")
twin = importlib.util.module_from_spec(spec)
twin._aws = _aws  # bound before the class statement: pydantic resolves the type at once
sys.modules["eager_twin"] = twin
spec.loader.exec_module(twin)
Twin = twin.S3AssetStorage
twin_complete_when_defined = Twin.__pydantic_complete__
"""
"""The source of blocks/s3.py, with `_aws` (hence prefect-aws) imported up front. (Its block type
replaces ours in Prefect's registry, with a warning: harmless in this throwaway interpreter.)"""

DESCRIBE = """
import json, uuid
from prefect_aws import AwsClientParameters, AwsCredentials, MinIOCredentials

def describe(cls):
    schema = cls.model_json_schema()
    minio = MinIOCredentials(minio_root_user="u", minio_root_password="p",
                             aws_client_parameters=AwsClientParameters(endpoint_url="http://x"))
    block = cls(bucket="b", prefix="p", credentials=minio, addressing_style="path")
    document = block._to_block_document(
        name="n", block_schema_id=uuid.UUID(int=1), block_type_id=uuid.UUID(int=2)
    )
    loaded = cls.model_validate({"bucket": "b", "credentials": {
        "aws_access_key_id": "k", "block_type_slug": "aws-credentials"}})
    return {
        "schema": schema,
        "checksum": cls._calculate_schema_checksum(),
        "annotation": repr(cls.model_fields["credentials"].annotation),
        "document": document.model_dump(mode="json", exclude={"id", "block_schema", "block_type"}),
        "data": document.data,
        "loaded": type(loaded.credentials).__name__,
    }
"""


FIRST_USES = {
    # Prefect's walks for nested blocks (registration, secret fields, schema references)
    "walk": "repr(cls.model_fields['credentials'].annotation)",
    "nested blocks": "sorted(cls._collect_nested_block_types(cls))",
    # Prefect's registration, `save` and `load`
    "checksum": "cls._calculate_schema_checksum()",
    "made in code": "cls(bucket='b').model_dump(mode='json')",
    "loaded": "cls.model_validate({'bucket': 'b', 'credentials': None}).model_dump(mode='json')",
    # another model's schema names it: a flow's parameters
    "parameters": "create_model('P', storage=(cls | None, None)).model_json_schema()",
}


@pytest.mark.parametrize("first_use", FIRST_USES)
def test_the_s3_schema_and_documents_are_those_of_the_eagerly_typed_class(
    tmp_path: Path, first_use: str
) -> None:
    """Whatever completes the class first sees, and leaves, what the eagerly typed class has."""
    script = (
        "import json, sys\n"
        "from pydantic import create_model\n"
        "from prefect_evolink.blocks import S3AssetStorage\n"
        "imported = 'prefect_aws' in sys.modules\n"
        "def use(cls):\n"
        "    return json.loads(json.dumps(eval(USE, {**globals(), 'cls': cls}), default=str))\n"
        f"USE = {FIRST_USES[first_use]!r}\n"
        "first = use(S3AssetStorage)\n"
        f"{EAGER_TWIN}\n"
        f"{DESCRIBE}\n"
        "ours, twin = describe(S3AssetStorage), describe(Twin)\n"
        "print(json.dumps({'imported': imported, 'eager': twin_complete_when_defined,\n"
        "                  'first': first, 'twin_first': use(Twin),\n"
        "                  'ours': ours, 'twin': twin}, default=str))\n"
    )
    found = json.loads(run_python(script, tmp_path))
    assert found["imported"] is False  # importing the block did not import prefect-aws
    assert found["eager"] is True  # the twin is the class as it was: typed when defined
    assert found["first"] == found["twin_first"]
    ours, twin = found["ours"], found["twin"]
    assert ours["checksum"] == twin["checksum"]
    assert ours["schema"] == twin["schema"]
    assert ours == twin
    assert ours["annotation"] == (
        "prefect_aws.credentials.AwsCredentials | prefect_aws.credentials.MinIOCredentials | None"
    )
    refs = ours["schema"]["block_schema_references"]["credentials"]
    assert [r["block_type_slug"] for r in refs] == ["aws-credentials", "minio-credentials"]
    assert {"credentials.aws_secret_access_key", "credentials.minio_root_password"} <= set(
        ours["schema"]["secret_fields"]
    )
    assert ours["loaded"] == "AwsCredentials"


def test_a_subclass_in_another_module_resolves_the_credentials_type(tmp_path: Path) -> None:
    """A subclass copies our fields; its module has no `_aws` (tests/fault_matrix.py has one)."""
    (tmp_path / "elsewhere.py").write_text(
        "from prefect_evolink.blocks import S3AssetStorage\n\n\n"
        "class Mine(S3AssetStorage):\n"
        "    _block_type_slug = 'mine-s3'\n"
        "    knob: int = 0\n"
    )
    script = (
        "import json\n"
        "from elsewhere import Mine\n"
        "from prefect_aws import MinIOCredentials\n"
        "minio = {'minio_root_user': 'u', 'minio_root_password': 'p'}\n"
        "block = Mine(bucket='b', credentials=minio)\n"
        "schema = Mine.model_json_schema()\n"
        "print(json.dumps([type(block.credentials) is MinIOCredentials,\n"
        "                  sorted(schema['block_schema_references']),\n"
        "                  'knob' in schema['properties']]))\n"
    )
    assert json.loads(run_python(script, tmp_path)) == [True, ["credentials"], True]
