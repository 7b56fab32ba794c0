"""The README is the contract: its params table is the typed params, and CI runs its commands."""

from sftpipe.paramdoc import END, START, table
from tests.conftest import ROOT


def test_readme_params_table_is_current():
    readme = (ROOT / "README.md").read_text()
    assert START in readme and END in readme, "README lacks the params table markers"
    current = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert current == table(), "README params table is stale: regenerate with `python -m sftpipe.paramdoc`"


def test_every_param_is_documented():
    undocumented = [line.split("|")[1].strip() for line in table().splitlines()[2:] if line.endswith("|  |")]
    assert undocumented == []


def _block_after(readme: str, heading: str) -> list[str]:
    """The commands of the first bash block under `heading`, comments stripped."""
    block = readme.split(heading, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_ci_runs_exactly_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci.splitlines()]
    readme = (ROOT / "README.md").read_text()
    quickstart = _block_after(readme, "## Quickstart")
    assert quickstart == ["pip install -r requirements-dev.txt", "dvc repro", "pytest"]
    lint = [c for c in _block_after(readme, "## Developing") if not c.startswith("pytest")]
    for command in quickstart + lint:
        assert command in ci_lines, f".ci/run does not run the README command {command!r}"


def test_setup_installs_what_the_tests_need():
    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in dev
    for tool in ("pytest", "ruff", "mypy"):
        assert any(line.startswith(f"{tool}==") for line in dev), (
            f"{tool} is not pinned in requirements-dev.txt"
        )


def test_readme_experiment_examples_name_existing_params():
    """`dvc exp run -S key=value` stops with "Key ... is not in struct" unless the key exists."""
    import re

    from sftpipe.core.config import load_yaml

    params = load_yaml(ROOT / "params.yaml")
    readme = (ROOT / "README.md").read_text()
    keys = re.findall(r"-S ([A-Za-z0-9_.]+)=", readme)
    assert keys, "the README shows no `dvc exp run -S` example"
    for key in keys:
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, (
                f"README example -S {key}=...: no such key in params.yaml"
            )
            node = node[part]
