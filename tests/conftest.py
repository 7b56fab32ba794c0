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


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    """Write raw JSONL lines (str or bytes) to `path`."""
    path.write_bytes(b"".join((ln.encode() if isinstance(ln, str) else ln) + b"\n" for ln in lines))
    return path


# What a fresh clone of the project holds, for tests that run `dvc repro` in a temporary copy.
REPO_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore")
REPO_DIRS = ("sftpipe", "stages", ".dvc", "data/raw")


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
