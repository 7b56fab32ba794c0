"""tracking: where runs go, DVC digests, secret scrubbing, and the MLflow runs the train and
evaluate stages leave (params, metrics, tags, dataset input with its DVC digest, artifacts), with
a canary API key in the environment that must appear nowhere in the store."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftpipe.runtime import tracking
from tests.conftest import dvc
from tests.tiny_sft import CANARY


def test_repo_root_maps_experiment_workspaces_to_their_repo(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "sub").mkdir()
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpab12"
    (workspace / ".dvc").mkdir(parents=True)
    assert tracking.repo_root(repo / "sub") == repo.resolve()
    assert tracking.repo_root(workspace) == repo.resolve()
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    monkeypatch.chdir(tmp_path)
    assert tracking.repo_root() == repo.resolve()


def test_tracking_uri_defaults_to_sqlite_in_the_repo_root(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking._artifact_location(tracking.tracking_uri()) == (tmp_path.resolve() / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_dvc_md5_matches_what_dvc_records(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "b.bin").write_bytes(bytes(range(256)))
    dvc(tmp_path, "init", "--no-scm", "-q")
    dvc(tmp_path, "add", "-q", "data")
    recorded = (tmp_path / "data.dvc").read_text()
    assert f"md5: {tracking.dvc_md5(data)}\n" in recorded and tracking.dvc_md5(data).endswith(".dir")
    assert tracking.dvc_md5(data / "a.txt") == "9f9f90dbe3e5ee1218c86b8839db1995"  # md5 of b"alpha\n"
    assert tracking.dvc_md5(tmp_path / "absent") is None


def test_scrub_and_params_keep_names_and_drop_secrets(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-1234567890-abcdef")
    params = {
        "generator": {"api_key_env": "OPENAI_API_KEY", "base_url": "http://127.0.0.1:8080/v1"},
        "api_key": "literally-anything",
        "note": "key sk-abcdefghijklmnop and hf_abcdefghijklmnopqrstu and tok-1234567890-abcdef",
        "lora": {"target_modules": ["q_proj", "v_proj"], "r": 8},
        "flag": True,
    }
    assert tracking.safe_params(params) == {
        "generator.api_key_env": "OPENAI_API_KEY",
        "generator.base_url": "http://127.0.0.1:8080/v1",
        "api_key": "***",
        "note": "key *** and *** and ***",
        "lora.target_modules": '["q_proj", "v_proj"]',
        "lora.r": "8",
        "flag": "true",
    }
    assert tracking.numeric(
        {"in": 3, "dropped": {"too_long": 1}, "ok": True, "name": "x", "nan": float("nan")}
    ) == {
        "in": 3.0,
        "dropped.too_long": 1.0,
        "ok": 1.0,
    }


def test_stage_run_logs_params_metrics_digests_and_failures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    monkeypatch.setenv("SOME_API_KEY", CANARY)
    Path("in.txt").write_text("input\n")
    with tracking.stage_run("clean", {"min_chars": 3, "api_key_env": "SOME_API_KEY"}, deps=["in.txt"]) as run:
        Path("out.jsonl").write_text(f'{{"text": "leaked {CANARY}"}}\n')
        run.outs.append("out.jsonl")
        run.log_metrics({"in": 5, "out": 4, "dropped": {"empty": 1}})
        run.log_artifact("out.jsonl")
    with pytest.raises(RuntimeError), tracking.stage_run("dedup", {"threshold": 0.8}):
        raise RuntimeError("boom")

    import mlflow

    client = mlflow.MlflowClient()
    runs = {
        r.data.tags["stage"]: r
        for r in mlflow.search_runs(experiment_names=["sftpipe"], output_format="list")
        if "stage" in r.data.tags
    }
    ok = runs["clean"]
    assert ok.info.status == "FINISHED" and runs["dedup"].info.status == "FAILED"
    assert ok.data.params == {"min_chars": "3", "api_key_env": "SOME_API_KEY"}
    assert {k: v for k, v in ok.data.metrics.items() if k != "duration_s"} == {
        "in": 5.0,
        "out": 4.0,
        "dropped.empty": 1.0,
    }
    assert ok.data.tags["dvc.deps.in.txt"] == tracking.dvc_md5("in.txt")
    assert ok.data.tags["dvc.outs.out.jsonl"] == tracking.dvc_md5("out.jsonl")
    assert ok.data.tags["dvc_exp_name"] == "exp-1"
    local = client.download_artifacts(ok.info.run_id, "out.jsonl", str(tmp_path / "dl"))
    assert Path(local).read_text() == '{"text": "leaked ***"}\n'  # scrubbed on the way in


def test_stages_of_one_build_nest_under_one_parent_holding_params_and_headline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    Path("params.yaml").write_text("seed: 1\ntrain:\n  learning_rate: 0.001\n")
    tracking.log_stage("clean", {"clean": {"min_chars": 3}}, {"in": 5})
    tracking.log_stage("summary", None, {"val": {"delta": -0.01}})
    Path("params.yaml").write_text("seed: 1\ntrain:\n  learning_rate: 0.002\n")  # another build
    tracking.log_stage("clean", {"clean": {"min_chars": 3}}, {"in": 5})

    import mlflow

    everything = mlflow.search_runs(experiment_names=["sftpipe"], output_format="list")
    parents = {r.info.run_id: r for r in everything if "stage" not in r.data.tags}
    children = [r for r in everything if "stage" in r.data.tags]
    assert len(parents) == 2 and len(children) == 3
    by_parent: dict[str, list[str]] = {}
    for r in children:
        by_parent.setdefault(r.data.tags["mlflow.parentRunId"], []).append(r.data.tags["stage"])
    first = next(pid for pid, stages in by_parent.items() if "summary" in stages)
    assert sorted(by_parent[first]) == ["clean", "summary"]
    assert parents[first].data.params == {"seed": "1", "train.learning_rate": "0.001"}
    assert parents[first].data.metrics == {"val.delta": -0.01}  # the headline, on the build
    (second,) = set(parents) - {first}
    assert parents[second].data.params["train.learning_rate"] == "0.002" and by_parent[second] == ["clean"]


def test_tracking_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setenv("SFTPIPE_TRACKING", "off")
    assert tracking.log_stage("clean", {"a": 1}, {"in": 1}) is None
    monkeypatch.setenv("SFTPIPE_TRACKING", "on")
    monkeypatch.setenv("RANK", "1")  # a non-main process of a multi-GPU launch
    assert tracking.log_stage("clean", {"a": 1}, {"in": 1}) is None
    assert not (tmp_path / "m.db").exists()


def test_importing_tracking_does_not_import_mlflow():
    code = "import sys, sftpipe.runtime.tracking, sftpipe.params; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_train_run_records_data_params_and_lineage(stage_repo):
    import mlflow

    mlflow.set_tracking_uri(stage_repo["env"]["MLFLOW_TRACKING_URI"])
    everything = mlflow.search_runs(experiment_names=["sftpipe"], output_format="list")
    runs = {r.data.tags["stage"]: r for r in everything if "stage" in r.data.tags}
    assert set(runs) == {"train", "evaluate"}
    (parent,) = [r for r in everything if "stage" not in r.data.tags]  # one build: both stages under it
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert parent.info.run_name == "tiny-exp" and parent.data.params["train.learning_rate"] == "0.001"
    run = runs["train"]
    data_md5 = tracking.dvc_md5(stage_repo["data"])
    params = run.data.params
    assert (
        params["seed"] == "7"
        and params["train.learning_rate"] == "0.001"
        and params["train.method"] == "lora"
    )
    assert params["train.lora.target_modules"] == json.dumps(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    report = json.loads((stage_repo["repo"] / "reports/train.json").read_text())
    assert run.data.metrics["eval_loss"] == pytest.approx(report["eval_loss"])
    assert run.data.metrics["loss_last"] == pytest.approx(report["loss_last"])
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1].value == pytest.approx(report["loss_last"], rel=1e-5, abs=1e-6)  # report: 6 decimals
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=stage_repo["repo"], capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = run.data.tags
    assert tags["git_commit"] == commit and tags["dvc_exp_name"] == "tiny-exp"
    assert tags[f"dvc.deps.{stage_repo['data']}"] == data_md5
    assert tags[f"dvc.deps.{stage_repo['base']}"] == tracking.dvc_md5(stage_repo["base"])
    assert tags["dvc.outs.models/sft"] == tracking.dvc_md5(stage_repo["repo"] / "models/sft")
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == data_md5 and inp.dataset.name == str(stage_repo["data"])
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training"}
    assert json.loads(inp.dataset.profile)["num_rows"] == 24
    schema = json.loads(inp.dataset.schema)["mlflow_colspec"]
    assert sorted(c["name"] for c in schema) == ["id", "source", "text"]
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "adapter/sft/adapter_model.safetensors").stat().st_size > 1_000_000
    assert json.loads((artifacts / "train.json").read_text()) == report
    assert "train:" in (artifacts / "params.yaml").read_text()
    assert runs["evaluate"].data.metrics["trained.val.loss"] < runs["evaluate"].data.metrics["base.val.loss"]


@pytest.mark.slow
def test_canary_secret_reaches_no_param_tag_metric_or_artifact(stage_repo):
    """The stages ran with OPENAI_API_KEY set to a canary; nothing in the store may hold it."""
    import mlflow

    mlflow.set_tracking_uri(stage_repo["env"]["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["sftpipe"], output_format="list")
    assert runs
    for run in runs:
        texts = [*run.data.params, *run.data.params.values(), *run.data.tags, *run.data.tags.values()]
        texts += list(run.data.metrics)
        texts += [
            i.dataset.source + (i.dataset.profile or "") + (i.dataset.schema or "")
            for i in run.inputs.dataset_inputs
        ]
        assert not [t for t in texts if CANARY in t], run.info.run_name
        root = Path(run.info.artifact_uri.removeprefix("file://"))
        files = [f for f in root.rglob("*") if f.is_file()]
        assert files or "stage" not in run.data.tags  # a build's parent run holds no files
        assert not [f for f in files if CANARY.encode() in f.read_bytes()]
    # The store itself, byte for byte (params, tags, inputs all live in it).
    assert CANARY.encode() not in (stage_repo["repo"] / "mlflow.db").read_bytes()
    for path in (stage_repo["repo"] / "reports").rglob("*"):
        assert not path.is_file() or CANARY.encode() not in path.read_bytes()


@pytest.mark.slow
def test_trained_model_is_logged_and_registered_with_its_dataset_digest(tmp_path, monkeypatch):
    """An adapter on a tiny GPT-2 base, logged as an MLflow transformers model of the stage's run
    and registered; the version names the run and carries the dataset's DVC md5."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model

    from tests.tiny_sft import tiny_gpt2_base

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    base = tiny_gpt2_base(tmp_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora = LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), lora).save_pretrained("sft")
    AutoTokenizer.from_pretrained(str(base)).save_pretrained("sft")
    Dataset.from_dict({"id": ["a", "b"], "text": ["x", "y"]}).save_to_disk("hf")
    from datasets import load_from_disk

    with tracking.stage_run("train", {"train": {"registered_model": "tiny-sft"}}, deps=["hf"]) as run:
        run.log_dataset(load_from_disk("hf"), "hf")
        run.log_model(base, "sft", "tiny-sft")

    import mlflow

    client = mlflow.MlflowClient()
    (version,) = client.search_model_versions("name='tiny-sft'")
    assert version.run_id == run.run_id
    assert version.tags["dataset.hf"] == tracking.dvc_md5("hf")
    (inp,) = client.get_run(run.run_id).inputs.dataset_inputs
    assert inp.dataset.source_type == "local" and json.loads(inp.dataset.source)["uri"] == str(
        tmp_path / "hf"
    )
    loaded = mlflow.transformers.load_model(f"models:/tiny-sft/{version.version}", return_type="components")
    assert loaded["model"].config.n_layer == 2  # the base came along: it serves without models/base
