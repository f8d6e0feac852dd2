"""Where a campaign brief comes from: an object, a local file, an S3 object or the storage block.

A scheduled or UI-started campaign runs on a worker, where a repository-relative file may not
exist. So `run_campaign` takes its brief in any of these forms, told apart here and nowhere else:

- a `CampaignBrief` (or its dict, e.g. the deployment form's): used as it is;
- `storage:<key>`: an object in the run's storage block (local or S3), e.g.
  `storage:briefs/spring-launch.yaml`;
- `s3://<bucket>/<key>`: an S3 object, read with the S3 storage block's credentials;
- anything else: a local file path, relative to the run's working directory.

`.json` objects are read as JSON, everything else as YAML. A brief that is missing or broken is
a `BriefError` naming where it was looked for, before anything is paid.

Local reference images in a brief (`reference_images: [shots/mug.png]`) resolve against the
folder of a local brief file, and against the working directory for a brief object (a Python
caller's relative paths mean what they mean in its script). A brief read from storage or S3 has
no folder on this machine: its local paths are refused by the reference step, which names the
asset and field and says to use `storage:`, `s3://` or `https://` references instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, WithJsonSchema

from evolink.brief import CampaignBrief, load_brief, parse_brief, parse_brief_text
from evolink.errors import BriefError
from prefect_evolink.blocks import AssetStorage, S3AssetStorage
from prefect_evolink.blocks._dispatch import in_worker_thread

__all__ = [
    "STORAGE_SCHEME",
    "BriefSource",
    "CampaignBriefParameter",
    "LoadedBrief",
    "load_campaign_brief",
]

STORAGE_SCHEME: Final = "storage:"
S3_SCHEME: Final = "s3://"

BriefSource = CampaignBrief | Mapping[str, Any] | str | Path
"""What `load_campaign_brief` takes: a brief, its data, or where to read it."""


def _brief_from_data(value: Any) -> Any:
    """Brief data (a dict, e.g. from Python or an API call) is validated by the brief's own rules,
    so every problem names the asset and the field, as for a brief file."""
    if isinstance(value, Mapping):
        return parse_brief(dict(value))
    return value


BriefLocation = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "title": "Brief file",
            "description": "storage:<key>, s3://<bucket>/<key> or a path on the worker.",
        }
    ),
]
"""A brief's location; its schema only titles the form's tab ("Brief file")."""

CampaignBriefParameter = Annotated[CampaignBrief | BriefLocation, BeforeValidator(_brief_from_data)]
"""`run_campaign`'s `brief`: a brief (the run form in the UI renders its fields), or its location.

A union of the two, so the deployment form offers both, as two tabs: "Brief" (the brief's own
fields: campaign name, budget, defaults, assets) and "Brief file" (`storage:<key>`, `s3://…` or
a path). A brief given as a dict is checked by `parse_brief`.
"""


@dataclass(frozen=True)
class LoadedBrief:
    """A validated brief, where it came from, and where its local references resolve."""

    brief: CampaignBrief
    source: str  # shown in logs: a path, `storage:<key>`, `s3://…` or "the brief object"
    base_dir: Path | None  # None: the brief has no folder here, so local references are refused


async def load_campaign_brief(source: BriefSource, storage: AssetStorage) -> LoadedBrief:
    """Validate the brief `source` names (see the module docstring for the forms).

    Raises:
        BriefError: The brief is missing, unreadable, not valid YAML/JSON, or breaks a rule;
            every problem names where the brief came from or the asset and field.
    """
    if isinstance(source, CampaignBrief):
        return LoadedBrief(source, "the brief object", Path.cwd())
    if isinstance(source, Mapping):
        return LoadedBrief(parse_brief(dict(source)), "the brief object", Path.cwd())
    location = str(source)
    if location.startswith(STORAGE_SCHEME):
        key = location.removeprefix(STORAGE_SCHEME).lstrip("/")
        data = await storage.aget_bytes(key)
        if data is None:
            raise BriefError([f"{location}: no such brief in the storage ({storage.uri(key)})"])
        return LoadedBrief(parse_brief_text(_text(data, location), location), location, None)
    if location.startswith(S3_SCHEME):
        text = await in_worker_thread(_read_s3, location, storage)
        return LoadedBrief(parse_brief_text(text, location), location, None)
    path = Path(location)
    brief = await in_worker_thread(load_brief, path)
    return LoadedBrief(brief, str(path), path.resolve().parent)


def _text(data: bytes, location: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BriefError([f"{location}: not UTF-8 text: {error}"]) from None


def _read_s3(location: str, storage: AssetStorage) -> str:
    """One S3 object, with the storage block's credentials (the only S3 credentials a run has)."""
    bucket, _, key = location.removeprefix(S3_SCHEME).partition("/")
    if not bucket or not key:
        raise BriefError([f"{location}: an S3 brief is s3://<bucket>/<key>"])
    if not isinstance(storage, S3AssetStorage):
        raise BriefError(
            [
                f"{location}: reading a brief from S3 needs an S3 storage block for the run "
                "(its credentials read the object); or use storage:<key> or a local path"
            ]
        )
    from botocore.exceptions import BotoCoreError, ClientError  # S3 storage means boto3 is here

    client = storage.get_client()
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        raise BriefError([f"{location}: no such brief object"]) from None
    except (BotoCoreError, ClientError) as error:  # denied, no bucket, unreachable: say which
        raise BriefError([f"{location}: cannot read the brief: {error}"]) from None
    return _text(body, location)
