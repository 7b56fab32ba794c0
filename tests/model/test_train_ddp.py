"""Several processes from the stage command: `train.devices: 2` on CPU re-runs the stage under
torchrun (gloo, DDP). It writes what one process writes, only once (rank 0), and with the same
global batch its loss stays within a small tolerance of the single-process run. GPU-only settings
fail with one line on a machine without CUDA, and GPU runs are marked `gpu`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sftpipe.model.train import TrainError, TrainParams, launch_command, train
from tests.tiny_sft import formatted_processed, run_stage, tiny_gpt2_base

PARAMS = """seed: 3
train:
  method: full
  max_steps: 6
  batch_size: {batch}
  learning_rate: 3.0e-3
  warmup: 0
  save_steps: 3
  device: cpu
  devices: {devices}
  max_eval_samples: 8
  batch_tokens: null
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    base = tiny_gpt2_base(root)
    data, _ = formatted_processed(base, root)
    return base, data


def layout(repo: Path) -> list[str]:
    """Output files, with per-rank RNG states of a checkpoint counted as one."""
    files = {str(p.relative_to(repo)) for p in (repo / "models").rglob("*") if p.is_file()}
    files |= {str(p.relative_to(repo)) for p in (repo / "reports").rglob("*") if p.is_file()}
    return sorted({f.split("rng_state")[0] + "rng_state" if "rng_state" in f else f for f in files})


@pytest.mark.slow
def test_torchrun_on_two_processes_matches_one(tiny, tmp_path):
    base, data = tiny
    runs = {}
    for devices in (1, 2):
        repo = tmp_path / f"p{devices}"
        repo.mkdir()
        (repo / "params.yaml").write_text(PARAMS.format(batch=4 // devices, devices=devices))
        proc = run_stage(
            repo, "train.py", "--data", str(data), "--base", str(base), env={"SFTPIPE_TRACKING": "off"}
        )
        assert proc.stdout.count("train: 6 steps") == 1  # rank 0 alone reports
        runs[devices] = (repo, json.loads((repo / "reports/train.json").read_text()))
    (one, r1), (two, r2) = runs[1], runs[2]
    assert r1["processes"] == 1 and r2["processes"] == 2
    assert layout(one) == layout(two)
    assert sorted(p.name for p in (two / ".cache/checkpoints").iterdir()) == [
        "checkpoint-3",
        "checkpoint-6",
        "sftpipe_complete",
        "sftpipe_run.json",
    ]
    assert r1["steps"] == r2["steps"] == 6 and r1["tokens_seen"] == r2["tokens_seen"]
    assert r1["rows"]["seen"] == r2["rows"]["seen"] == 24  # 6 steps x a global batch of 4 rows
    assert r1["trained_tokens"]["seen"] == r2["trained_tokens"]["seen"]
    assert r2["loss_end"] == pytest.approx(r1["loss_end"], rel=0.03)
    assert r2["eval_loss"] == pytest.approx(r1["eval_loss"], rel=0.03)


def test_launch_command(monkeypatch, tmp_path):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    argv = ["stages/train.py", "--params", "p.yaml"]
    assert launch_command(TrainParams(device="cpu"), argv) is None  # auto on CPU: one process
    cmd = launch_command(TrainParams(devices=3), argv)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3"]
    assert cmd[-3:] == argv
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\n")
    cmd = launch_command(TrainParams(devices=2, accelerate_config=str(config)), argv)
    assert cmd[1:7] == [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        "2",
    ]
    with pytest.raises(TrainError, match="accelerate_config: nope.yaml: no such file"):
        launch_command(TrainParams(accelerate_config="nope.yaml"), argv)
    monkeypatch.setenv("LOCAL_RANK", "0")  # already under a launcher: train here
    assert launch_command(TrainParams(devices=2), argv) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the one-line refusal without CUDA")
@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"method": "qlora"}, "train.method: qlora needs a CUDA GPU"),
        ({"attn_implementation": "flash_attention_2"}, "flash_attention_2 needs a CUDA GPU"),
        ({"liger": True}, "train.liger: Liger kernels need a CUDA GPU"),
    ],
)
def test_gpu_settings_fail_in_one_line_without_cuda(change, words, tiny, tmp_path):
    base, data = tiny
    with pytest.raises(TrainError, match=words) as err:
        train(TrainParams(**change), 1, data, base, tmp_path / "sft", tmp_path / "ckpt")
    assert "\n" not in str(err.value)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_gpu_training_loads_bf16_weights(method, tiny, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    base, data = tiny
    params = TrainParams(method=method, lora={"target_modules": ["c_attn"]}, max_steps=4, device="cuda")
    report = train(params, 1, data, base, tmp_path / "sft", tmp_path / "ckpt").report
    assert report["device"] == "cuda" and report["dtype"] in ("bfloat16", "float16")
    assert report["loss_end"] < report["loss_start"]
