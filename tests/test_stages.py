"""Every stage script is the same few lines: parse args, load only its own params sections, call
its library entry, write or print its report, and run under the stage runner by its own name."""

from __future__ import annotations

import ast

import pytest
import yaml

from tests.conftest import ROOT

STAGES = sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_script_shape(stage):
    path = ROOT / "stages" / f"{stage}.py"
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name}: no docstring (it is the --help text)"
    runs = [c for c in _calls(tree) if _name(c) == "run" and getattr(c.func, "value", None) is not None
            and getattr(c.func.value, "id", "") == "cli"]  # fmt: skip
    assert len(runs) == 1, f"{path.name}: call cli.run(main, stage=...) once"
    kw = {k.arg: k.value for k in runs[0].keywords}
    # the runner logs the stage to MLflow by name, unless the script opens its own stage run
    named = [kw["stage"]] if "stage" in kw else [c.args[0] for c in _calls(tree) if _name(c) == "stage_run"]
    assert [getattr(n, "value", None) for n in named] == [stage], (
        f"{path.name}: cli.run(main, stage={stage!r}) or tracking.stage_run({stage!r}, ...) names the stage"
    )
    loads = [c for c in _calls(tree) if _name(c) == "load_params"]
    if stage != "summary":  # summary reads reports only, no params
        assert len(loads) == 1 and loads[0].keywords, f"{path.name}: load only its own params sections, once"
    imports = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "sftpipe.params" not in imports, f"{path.name}: sftpipe.params imports every stage's code"
    assert len(path.read_text().splitlines()) <= 100, f"{path.name}: logic belongs in sftpipe/"
