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


def test_ci_installs_from_requirements_and_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "pip install -r requirements.txt" in readme and "pip install -q -r requirements.txt" in ci
    assert any(line.split("#")[0].strip() == "pytest" for line in readme.splitlines())
    assert "\npytest\n" in ci
