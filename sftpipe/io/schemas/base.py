"""What every schema adapter shares: typed field access that raises `Drop` on bad fields."""

from __future__ import annotations

from typing import TypeAlias

from sftpipe.core.records import Drop, Message, message

__all__ = ["Converted", "Drop"]  # adapters import them from here

Converted: TypeAlias = (
    tuple[str | None, list[Message], dict] | tuple[str | None, list[Message], dict, list[dict] | None]
)
"""What an adapter makes of one row: `(orig_id, messages, meta)`, one per conversation, with the
record's `tools` (function schemas) fourth when the row has any."""

# Provenance fields copied into `meta` when a record carries them.
PROVENANCE = ("category", "status", "lang", "label", "license", "name")


def text_field(row: dict, field: str, required: bool = True) -> str:
    """A string field; missing -> `missing_field`, wrong type -> `wrong_type` (None reads as "")."""
    if field not in row or row[field] is None:
        if required:
            raise Drop("missing_field", f"no '{field}'")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise Drop("wrong_type", f"'{field}' is {type(value).__name__}, expected a string")
    return value


def list_field(row: dict, field: str) -> list:
    if field not in row or row[field] is None:
        raise Drop("missing_field", f"no '{field}'")
    value = row[field]
    if not isinstance(value, list):
        raise Drop("wrong_type", f"'{field}' is {type(value).__name__}, expected a list")
    return value


_SCALARS = (str, int, float, bool)


def provenance(row: dict) -> dict:
    return {k: row[k] for k in PROVENANCE if k in row and isinstance(row[k], _SCALARS)}


def orig_id(row: dict, *fields: str) -> str | None:
    for f in fields or ("id",):
        value = row.get(f)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value) != "":
            return str(value)
    return None


def exchange(prompt: str, response: str, system: str = "") -> list[Message]:
    """A single user -> assistant exchange, with an optional system prompt first."""
    msgs = [message("system", system)] if system else []
    return msgs + [message("user", prompt), message("assistant", response)]
