"""Names resolved on first use, so the S3 block's module imports prefect-aws only when needed.

Why a module of its own: the two pieces here are the machinery behind "The credentials type"
(`blocks/s3.py`'s docstring), not part of the block: `ModuleOnFirstUse` is the reference to
`blocks/_aws.py` that the `credentials` annotation names, imported on its first attribute
access; `FieldsOfACompleteModel` makes `model_fields` complete the class before Prefect reads
it. Neither imports anything heavy (the plugin's entry point imports this module).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

__all__ = ["FieldsOfACompleteModel", "ModuleOnFirstUse"]


class ModuleOnFirstUse:
    """A module imported on its first attribute access (`_aws` in `blocks/s3.py`: prefect-aws,
    boto3, …)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # probes (copy, inspect, …) import nothing
            raise AttributeError(attribute)
        module: ModuleType = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


class FieldsOfACompleteModel:
    """`model_fields` that completes the class first ("The credentials type", `blocks/s3.py`).

    Prefect walks `model_fields` annotations for nested blocks; before the class is complete,
    `credentials` would be an unresolved forward reference there, and Prefect would miss the
    prefect-aws blocks (register the type without them, leave their secrets unmasked). Pydantic
    itself reads `__pydantic_fields__`, never this.
    """

    def __get__(self, instance: object, owner: type[BaseModel]) -> dict[str, FieldInfo]:
        if not owner.__pydantic_complete__:
            owner.model_rebuild()
        return owner.__pydantic_fields__
