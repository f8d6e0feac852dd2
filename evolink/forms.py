"""How the brief's models look as a form (the Prefect UI's run form of a deployment).

One concept, shared by the brief (`evolink.brief`) and its adaptations and brand kit
(`evolink.adaptations`): the schema edits that make pydantic's schema a usable form, and the
JSON that matches them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SerializationInfo, SerializerFunctionWrapHandler

# --- how the brief looks as a form (the Prefect UI's run form of a deployment) ---------------
#
# The form is drawn from the JSON schema, and Prefect's server checks a deployment run's
# parameters against that same schema. Pydantic's own schema makes a poor form: every optional
# field an `anyOf` of its type and null (the UI shows "str | None" tabs, "None" picked), the
# Decimal budget an `anyOf` of number and string ("float | str" tabs). So the schema of those
# fields is edited here — the validation rules are not: the models accept what they always did.
# In exchange, the JSON these models dump matches the schema (an optional field left unset is
# left out, the budget is a number), so a brief object passed to `run_deployment` passes the
# server's check as the form's does.


def form_optional(schema: dict[str, Any]) -> None:
    """An optional field as a plain input: the non-null branch of `anyOf`, no null default
    (left empty in the form, the field is left out; Prefect's server check still allows null
    for an optional field without a default)."""
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        schema.update({**branches[0], **schema})
    if schema.get("default", ...) is None:
        del schema["default"]


def form_money(schema: dict[str, Any]) -> None:
    """The budget as one number input (pydantic's Decimal schema is `anyOf` number, string)."""
    number = next(b for b in schema.pop("anyOf") if b.get("type") == "number")
    schema.update({**number, **schema})


def unset_none_in_json(
    model: BaseModel, handler: SerializerFunctionWrapHandler, info: SerializationInfo
) -> Any:
    """In JSON, an optional field that is None is left out, as the form leaves it out."""
    data = handler(model)
    if info.mode_is_json() and isinstance(data, dict):
        return {key: value for key, value in data.items() if value is not None}
    return data
