"""The README's params table, generated from the typed params and their field docstrings.

    python -m sftpipe.paramdoc            # prints the Markdown table
    python -m sftpipe.paramdoc --write    # replaces the table in README.md

A test checks that README.md holds exactly this table, so the README stays true as params change.
"""

from __future__ import annotations

import json
import types
import typing

from pydantic import BaseModel

START, END = "<!-- params:start -->", "<!-- params:end -->"


def _type(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:  # a constrained type (e.g. int >= 1): documented as its base
        return _type(args[0])
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else _type(a) for a in args)
    if origin in (list, tuple):
        return f"list[{_type(args[0])}]" if args else "list"
    if origin is dict:
        return f"map[{_type(args[0])}, {_type(args[1])}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _model(annotation) -> tuple[type[BaseModel] | None, str]:
    """The params model inside an annotation, and how its keys are reached (`.`, `.<name>.`, `[].`)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "."
    if origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], ".<name>."
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]."
    if origin in (typing.Union, types.UnionType):
        for a in args:
            model, sep = _model(a)
            if model:
                return model, sep
    return None, ""


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    text = json.dumps(value, default=str)
    return f"`{text if len(text) <= 40 else text[:37] + '...'}`"


def rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub, sep = _model(field.annotation)
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        if sub is not None and sep == ".":
            if doc:
                out.append(f"| `{key}` | mapping | | {doc} |")
            out += rows(sub, key + sep)
            continue
        out.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | {doc} |")
        if sub is not None:
            out += rows(sub, key + sep)
    return out


def table() -> str:
    from sftpipe.params import Params

    return "\n".join(["| key | type | default | meaning |", "|---|---|---|---|", *rows(Params)])


def write(readme: str = "README.md") -> None:
    from pathlib import Path

    text = Path(readme).read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    Path(readme).write_text(f"{head}{START}\n{table()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    import sys

    write() if "--write" in sys.argv[1:] else print(table())
