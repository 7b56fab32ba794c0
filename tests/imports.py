"""The import closure of a stage script, read with `ast` (nothing is imported): every sftpipe
module file whose code can run when the stage does."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules that run beside a stage but never shape its outputs: the stage runner (one-line errors)
# and MLflow tracking. Everything else a stage imports must be covered by its DVC deps.
NOT_SHAPING = ("sftpipe.runtime",)


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path, package: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(parts + ([mod] if mod else []))
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return {n for n in names if n == "sftpipe" or n.startswith("sftpipe.")}


def closure(script: Path) -> set[Path]:
    """Files of every sftpipe module (and parent package) `script` imports, transitively."""
    seen: set[Path] = set()
    todo = [(script, "")]
    while todo:
        path, package = todo.pop()
        for name in _imported(path, package):
            if name.startswith(NOT_SHAPING):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                sub = ".".join(parts[:i])
                f = module_file(sub)
                if f is not None and f not in seen:
                    seen.add(f)
                    pkg = sub if f.name == "__init__.py" else ".".join(parts[: i - 1])
                    todo.append((f, pkg))
    return seen


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)
