"""Typed params: strict models, a YAML loader that reads `1e-06` as a number, readable errors.

Every section of params.yaml is a `Section` subclass declared next to the code that uses it;
`sftpipe.params` assembles them. Errors name the key's full path and what was expected, e.g.
`sources.dolly.split: expected a string, got 3`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sftpipe.core.errors import SftpipeError


class Section(BaseModel):
    """A params section: unknown keys and silent coercions (3 -> "3") are errors."""

    # Attribute docstrings become field descriptions: the README's params table is built from them.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


class ParamsError(SftpipeError, ValueError):
    """params.yaml does not match what the code expects; the message names the key path."""


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats and booleans, as DVC reads and writes params.yaml: PyYAML's
    1.1 rules read `1e-06` (as `dvc exp run -S` writes it) as a string, and `off`, `no`, `on`,
    `yes` as booleans (`dvc exp run -S` rewrites `"off"` unquoted, then `structured_output: off`
    would read as false)."""


# YAML 1.2 booleans only: drop PyYAML's 1.1 bool resolver (yes/no/on/off), then add true/false.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _no_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are unique: YAML itself would silently keep the last of two."""
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            mark = key_node.start_mark
            raise ParamsError(f"{mark.name}: line {mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml(path: str | Path) -> Any:
    """YAML 1.2 numbers, duplicate keys refused; a syntax error is one line with its position."""
    with open(path, encoding="utf-8") as fh:
        try:
            return yaml.load(fh, Loader=_Loader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise ParamsError(f"{path}: {where}invalid YAML: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None


_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): ")

_EXPECTED = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
    "int_from_float": "expected an integer",
}


def _describe(err: dict) -> str:
    path = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    kind = err["type"]
    if kind == "value_error":
        # A validator's own message. One that starts with a field name ("max_turn_chars: must be
        # ...") names that key. The value itself is never printed: a whole section is noise, and
        # a value a validator refused may be a secret pasted in the wrong place.
        msg = err["msg"].removeprefix("Value error, ")
        if (key := _KEY.match(msg)) and isinstance(err.get("input"), dict) and key[1] in err["input"]:
            return f"{path}.{key[1]}: {msg[key.end() :]}" if path else f"{key[1]}: {msg[key.end() :]}"
        return f"{path}: {msg}"  # the validator says what matters; the value may be a secret
    if kind in ("missing", "extra_forbidden"):
        return f"{path}: {_EXPECTED[kind]}"
    expected = _EXPECTED.get(kind) or err["msg"][0].lower() + err["msg"][1:]
    got = err.get("input")
    if kind in _EXPECTED:
        return f"{path}: {expected}, got {got!r}"
    return f"{path}: {expected} (got {got!r})"


def validate(model: type[BaseModel], data: Any, prefix: str = "") -> Any:
    """Validate `data` against `model`, turning pydantic's report into one line per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [
            _describe({**e, "loc": ((prefix,) if prefix else ()) + tuple(e["loc"])}) for e in exc.errors()
        ]
        raise ParamsError("invalid params:\n  " + "\n  ".join(lines)) from None
