"""The shape of the code: no function in the refactored packages grows past MAX_LINES (read with
`ast`, nothing is imported)."""

import ast

import pytest

from tests.conftest import ROOT

MAX_LINES = 60
PACKAGES = ("sftpipe/data/dedup", "sftpipe/distill")


def long_functions(folder: str) -> list[str]:
    """`path:line name (lines)` of every function or method in `folder` longer than MAX_LINES."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


@pytest.mark.parametrize("folder", PACKAGES)
def test_no_function_is_longer_than_max_lines(folder):
    assert (ROOT / folder).is_dir()
    assert long_functions(folder) == []


def test_the_check_sees_a_long_function(tmp_path, monkeypatch):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert long_functions("pkg") == [f"pkg/m.py:5 long ({MAX_LINES + 1} lines)"]
