"""Experiments re-run only what changed: a queued evaluate-only change must not train again.

The train and evaluate stages exactly as dvc.yaml declares them, in a throwaway DVC project with
the tiny data and the real SmolLM2 base `dvc add`ed, run through `dvc exp run --queue` and
`dvc queue start` as a user would. Training checkpoints live outside DVC's outputs
(`.cache/checkpoints`), so a queue workspace, which has none, must still find train unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.tiny_sft import ROOT, TINY_PARAMS

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = {**os.environ, "SFTPIPE_TRACKING": "off", "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # this venv's python and dvc
    return env


def _sh(repo: Path, *cmd: str, timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _project(tmp: Path, base_dir: Path, tiny_data: Path) -> Path:
    """A git + DVC project with this checkout's code and dvc.yaml's train and evaluate stages."""
    repo = tmp / "project"
    shutil.copytree(ROOT / "sftpipe", repo / "sftpipe", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "stages").mkdir()
    for script in ("train.py", "evaluate.py"):
        shutil.copy(ROOT / "stages" / script, repo / "stages" / script)
    shutil.copytree(tiny_data, repo / "data/processed/hf")
    (repo / "data/processed/metadata.json").write_text(json.dumps({"template": "tokenizer"}))
    # what the inputs stage writes for evaluate: its task files' fingerprints (none here)
    (repo / "data/interim/inputs").mkdir(parents=True)
    (repo / "data/interim/inputs/evaluate.json").write_text("{}\n")
    shutil.copytree(base_dir, repo / "models/base")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in ("train", "evaluate")}}))
    (repo / "params.yaml").write_text(TINY_PARAMS + "dedup:\n  decontaminate:\n    sets: {}\n")
    (repo / ".gitignore").write_text("__pycache__/\n.cache/\n")
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t")
    _sh(repo, "git", "init", "-q")
    _sh(repo, "dvc", "init", "-q")
    _sh(repo, "dvc", "config", "cache.type", "symlink,copy")
    _sh(repo, "dvc", "add", "-q", "data/processed/hf", "models/base", "data/interim/inputs/evaluate.json")
    _sh(repo, "git", "add", "-A")
    _sh(repo, *git, "commit", "-q", "-m", "tiny project")
    return repo


def test_a_queued_evaluate_only_change_does_not_train(base_dir, tiny_data, tmp_path):
    repo = _project(tmp_path, base_dir, tiny_data)
    first = _sh(repo, "dvc", "repro")
    assert "Running stage 'train'" in first and "Running stage 'evaluate'" in first
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline")
    trained = json.loads((repo / "reports/train.json").read_text())

    _sh(repo, "dvc", "exp", "run", "--queue", "-n", "fewer-generations", "-S", "evaluate.generations=1")
    # the worker outlives `dvc queue start` and would hold captured pipes open: no capture here
    subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=repo, env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = _sh(repo, "dvc", "queue", "status")
        if "fewer-generations" in status and ("Success" in status or "Failed" in status):
            break
        time.sleep(5)
    _sh(repo, "dvc", "queue", "stop", "--kill")
    logs = _sh(repo, "dvc", "queue", "logs", "fewer-generations")
    assert "Success" in status, f"{status}\n{logs[-3000:]}"
    assert "Stage 'train' didn't change, skipping" in logs, logs[-3000:]
    assert "Running stage 'train'" not in logs and "Running stage 'evaluate'" in logs

    _sh(repo, "dvc", "exp", "apply", "fewer-generations")
    assert json.loads((repo / "reports/train.json").read_text()) == trained  # the same training
    assert json.loads((repo / "reports/evaluate.json").read_text())["generation"]["n"] == 1
    # without the checkpoints (a fresh clone, a `dvc checkout`), train still reads as up to date
    shutil.rmtree(repo / ".cache", ignore_errors=True)
    assert "train" not in _sh(repo, "dvc", "status", "train")
