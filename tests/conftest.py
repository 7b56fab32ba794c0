"""Shared fixtures. Real corpora come from ../shared and are skipped cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPORA = SHARED / "corpora"
GPT2 = SHARED / "tokenizers" / "gpt2"


@pytest.fixture
def corpora() -> Path:
    if not CORPORA.is_dir():
        pytest.skip("../shared/corpora is absent")
    return CORPORA


@pytest.fixture
def gpt2_dir() -> Path:
    if not GPT2.is_dir():
        pytest.skip("../shared/tokenizers/gpt2 is absent")
    return GPT2


@pytest.fixture(scope="session")
def ray_engine():
    """One local Ray instance with 2 CPUs for the whole session (it takes seconds to start)."""
    ray = pytest.importorskip("ray")
    from sftpipe.core.engine import init_ray

    started = not ray.is_initialized()
    init_ray(2)
    yield
    if started:
        ray.shutdown()


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    """Write raw JSONL lines (str or bytes) to `path`."""
    path.write_bytes(b"".join((ln.encode() if isinstance(ln, str) else ln) + b"\n" for ln in lines))
    return path


# What a fresh clone of the project holds, for tests that run `dvc repro` in a temporary copy.
REPO_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore")
REPO_DIRS = ("sftpipe", "stages", ".dvc", "data/raw", "data/knowledge")


def copy_repo(dest: Path) -> Path:
    """A throwaway copy of the repo with its own git and DVC state; returns its path."""
    import shutil
    import subprocess

    dest.mkdir(parents=True, exist_ok=True)
    for name in REPO_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    for name in REPO_DIRS:
        ignore = shutil.ignore_patterns("__pycache__", "tmp", "cache")
        shutil.copytree(ROOT / name, dest / name, ignore=ignore, dirs_exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def dvc(repo: Path, *args: str, check: bool = True):
    """Run the dvc CLI of this environment in `repo`, with this interpreter first on PATH."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc_bin = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc_bin), *args], cwd=repo, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def format_table(rows: list[dict], tokenizer=None):
    """A table shaped like the format stage's output, from rows with at least id and source.

    Defaults: cluster = id, a one-exchange conversation, and (with a tokenizer) real token ids whose
    labels train on the completion only.
    """
    import json

    import pyarrow as pa

    out = []
    for r in rows:
        prompt = r.get("prompt", f"Q {r['id']}\n")
        completion = r.get("completion", f"A {r['id']}")
        text = r.get("text", prompt + completion)
        if tokenizer is not None:
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            labels = [-100] * len(p_ids) + ids[len(p_ids) :]
        else:
            ids = list(range(1, 4))
            labels = [-100, 2, 3]
        messages = [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": completion}]
        out.append({
            "id": r["id"], "source": r["source"], "cluster": r.get("cluster", r["id"]),
            "messages": json.dumps(messages), "meta": json.dumps(r.get("meta", {})),
            "text": text, "prompt": prompt, "completion": completion,
            "input_ids": ids, "labels": labels, "n_tokens": len(ids),
        })  # fmt: skip
    schema = pa.schema([
        ("id", pa.string()), ("source", pa.string()), ("cluster", pa.string()), ("messages", pa.string()),
        ("meta", pa.string()), ("text", pa.string()), ("prompt", pa.string()), ("completion", pa.string()),
        ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())), ("n_tokens", pa.int32()),
    ])  # fmt: skip
    return pa.Table.from_pylist(out, schema=schema)


def set_params(repo: Path, **changes) -> dict:
    """Rewrite the copy's params.yaml with `changes` applied (dotted keys: "mix.weights" = {...})."""
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


# The real SmolLM2 base and tiny exported datasets (train / evaluate / tracking tests); defined
# here so that their session-scoped fixtures run once for every module.
from tests.tiny_sft import base_dir, stage_repo, tiny_data  # noqa: E402, F401
