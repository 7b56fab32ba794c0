"""The inputs stage's fingerprints: each consumer's JSON changes exactly when the bytes it reads do."""

import hashlib

import pytest

from sftpipe.core.config import ParamsError
from sftpipe.data import inputs
from sftpipe.io.sources import SourceSpec


def _spec(**kw) -> SourceSpec:
    return SourceSpec.model_validate(kw)


def test_a_folder_source_changes_only_with_its_own_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.jsonl").write_text('{"text": "x"}\n')
    before = inputs.source("a", _spec(path=str(tmp_path / "a")))
    (tmp_path / "b" / "y.jsonl").write_text('{"text": "y"}\n')  # another source's folder
    (tmp_path / "a" / "notes.txt").write_text("not a readable format")  # ingest skips it too
    assert inputs.source("a", _spec(path=str(tmp_path / "a"))) == before
    (tmp_path / "a" / "z.jsonl").write_text('{"text": "z"}\n')
    after = inputs.source("a", _spec(path=str(tmp_path / "a")))
    assert sorted(after["files"]) == [str(tmp_path / "a" / "x.jsonl"), str(tmp_path / "a" / "z.jsonl")]
    # a rename is a change too, although the bytes are the same
    (tmp_path / "a" / "z.jsonl").rename(tmp_path / "a" / "w.jsonl")
    assert inputs.source("a", _spec(path=str(tmp_path / "a"))) != after


def test_package_and_hub_sources_are_named_by_version():
    packaged = inputs.source("s", _spec(package="sftpipe", file="__init__.py"))
    assert packaged["input"].startswith("sftpipe==") and " md5:" in packaged["input"]
    assert inputs.source("h", _spec(hub="org/data", revision="abc")) == {"input": "hub:org/data@abc"}


def test_a_missing_file_names_the_params_key(tmp_path):
    with pytest.raises(ParamsError, match=r"^sources\.mine\.path: .*nope.jsonl: no such file"):
        inputs.source("mine", _spec(path=str(tmp_path / "nope.jsonl")))
    params = {"evaluate": {"tasks": {"gsm": {"path": str(tmp_path / "gone.jsonl")}}}}
    with pytest.raises(ParamsError, match=r"^evaluate\.tasks\.gsm\.path: "):
        inputs.evaluation_files(params)


def test_evaluation_files_cover_sets_tasks_and_judge_prompts(tmp_path):
    for name in ("set.jsonl", "task.jsonl", "prompts.jsonl"):
        (tmp_path / name).write_text(f'{{"question": "{name}"}}\n')
    params = {
        "dedup": {"decontaminate": {"sets": {"gsm": str(tmp_path / "set.jsonl")}}},
        "evaluate": {
            "tasks": {"gsm": {"path": str(tmp_path / "task.jsonl"), "kind": "gsm8k"}},
            "judge": {"prompts": str(tmp_path / "prompts.jsonl")},
        },
    }
    sets, files = inputs.evaluation_files(params)
    assert list(sets) == ["gsm"] and sorted(files) == ["judge.prompts", "tasks.gsm"]
    md5 = hashlib.md5(b'{"question": "task.jsonl"}\n').hexdigest()
    assert files["tasks.gsm"] == {str(tmp_path / "task.jsonl"): md5}
    # absent sections (a stage's defaults) fingerprint nothing
    assert inputs.evaluation_files({}) == ({}, {})


def test_write_lays_out_one_file_per_consumer(corpora, tmp_path):
    path = corpora / "alpaca_libre_v2.jsonl"
    counts = inputs.write(tmp_path / "out", {"libre": _spec(path=str(path))}, {})
    assert counts == {"sources": 1, "decontaminate": 0, "evaluate": 0, "distill": 0}
    written = (tmp_path / "out" / "sources" / "libre.json").read_text()
    assert hashlib.md5(path.read_bytes()).hexdigest() in written
    assert (tmp_path / "out" / "evaluate.json").read_text() == "{}\n"
    assert (tmp_path / "out" / "distill.json").read_text() == "{}\n"


def test_distill_models_are_fingerprinted_file_by_file(tmp_path):
    """Every file of an NLI model folder (weights too, which no source reader would list) and the
    GGUF file; replacing the weights changes the fingerprint."""
    nli = tmp_path / "nli"
    nli.mkdir()
    (nli / "config.json").write_text("{}")
    (nli / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "m.gguf").write_bytes(b"gguf")
    params = {"distill": {"nli": {"model": str(nli)}, "local": {"gguf": str(tmp_path / "m.gguf")}}}
    before = inputs.distill_files(params)
    assert sorted(before["nli.model"]) == [str(nli / "config.json"), str(nli / "model.safetensors")]
    assert list(before["local.gguf"]) == [str(tmp_path / "m.gguf")]
    (nli / "model.safetensors").write_bytes(b"other weights")
    assert inputs.distill_files(params)["nli.model"] != before["nli.model"]
    assert inputs.distill_files({"distill": {"nli": {"model": None}}}) == {}
    assert inputs.distill_files({"distill": {**params["distill"], "enabled": False}}) == {}  # not read
    with pytest.raises(ParamsError, match=r"^distill\.nli\.model: .*gone: no such file or folder"):
        inputs.distill_files({"distill": {"nli": {"model": str(tmp_path / "gone")}}})


def test_a_missing_model_writes_nothing(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    params = {"distill": {"nli": {"model": "cross-encoder/nli-deberta-v3-xsmall"}}}
    with pytest.raises(
        ParamsError, match=r"^distill\.nli\.model: .* no such file or folder \(a local path; .*hf download"
    ):
        inputs.write(tmp_path / "out", {"a": _spec(path=str(tmp_path / "a.jsonl"))}, params)
    assert not (tmp_path / "out").exists()
