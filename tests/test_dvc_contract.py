"""The DVC contract: every module that can shape a stage's outputs is in that stage's deps, and a
fresh clone of HEAD agrees with dvc.lock (nothing but missing outputs to rebuild)."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.imports import ROOT, closure, covered


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: (spec["do"] if "foreach" in spec else spec) for name, spec in stages.items()}


def _inert(path: Path) -> bool:
    """A module holding only a docstring and constants such as __version__ runs no code that could
    shape an output (package __init__ files)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(
        isinstance(node, ast.Expr | ast.Assign) and isinstance(getattr(node, "value", None), ast.Constant)
        for node in body
    )


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_deps_cover_the_import_closure(stage):
    spec = _stages()[stage]
    deps = [str(d) for d in spec["deps"]]
    script = ROOT / "stages" / f"{stage}.py"
    assert f"stages/{stage}.py" in deps, f"{stage}: its own script is not a dep"
    missing = sorted(
        str(p.relative_to(ROOT)) for p in closure(script) if not covered(p, deps) and not _inert(p)
    )
    assert not missing, f"{stage} imports modules its dvc.yaml deps do not cover: {missing}"


def test_closure_sees_through_every_import_form(tmp_path):
    """The checker itself: `from pkg import module`, dotted imports and imports inside functions."""
    script = tmp_path / "s.py"
    script.write_text(
        "from sftpipe.data.clean import rules\n"
        "def f():\n    import sftpipe.data.split\n"
        "from sftpipe.runtime import cli\n"
    )
    files = {str(p.relative_to(ROOT)) for p in closure(script)}
    assert "sftpipe/data/clean/rules.py" in files  # a module named in `from pkg import module`
    assert "sftpipe/data/clean/textnorm.py" in files  # what rules imports, transitively
    assert "sftpipe/data/split.py" in files  # a function-level import
    assert "sftpipe/runtime/cli.py" not in files  # the runner never shapes outputs
    assert not covered(ROOT / "sftpipe/data/clean/rules.py", ["sftpipe/data/cleaner"])


def test_dvcignore_hides_bytecode():
    lines = (ROOT / ".dvcignore").read_text().split()
    assert "__pycache__" in lines and "*.pyc" in lines


@pytest.mark.slow
def test_fresh_clone_has_no_modified_dependency(tmp_path):
    """A clone of HEAD has no outputs and no cache: dvc status may only report what is missing."""
    dirty = ["git", "status", "--porcelain", "dvc.lock", "dvc.yaml", "params.yaml", "sftpipe", "stages"]
    if subprocess.run(dirty, cwd=ROOT, capture_output=True, text=True).stdout.strip():
        pytest.skip("the working tree differs from HEAD in code or DVC files")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # bytecode, as any import leaves it, must not change a folder dep's hash
    junk = clone / "sftpipe" / "io" / "schemas" / "__pycache__"
    junk.mkdir()
    (junk / "base.cpython-311.pyc").write_bytes(b"not hashed")
    out = subprocess.run(["dvc", "status", "--json"], cwd=clone, capture_output=True, text=True, check=True)
    status = json.loads(out.stdout or "{}")
    problems = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):  # "changed checksum", "always changed"
                problems.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                if kind == "changed outs":
                    continue
                for path, what in paths.items() if isinstance(paths, dict) else [(paths, kind)]:
                    if kind == "changed deps" and what == "deleted":
                        continue  # another stage's output, absent until it runs
                    problems.append(f"{stage}: {kind}: {path}: {what}")
    assert not problems, "a fresh clone disagrees with dvc.lock:\n" + "\n".join(problems)
